"""Side-by-side benchmarks of the embedded sidecar (`python -m benchmarks`); not part of the test run."""
