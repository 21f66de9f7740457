"""`python -m benchmarks [invoke edge state pubsub bulk scaffold]`: run the chosen benchmarks (default all),
print tables.

Set BENCH_PROFILE=<dir> to sample the sidecar with py-spy during each measurement (figures then skewed).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

from benchmarks import bulk, edge, invoke, pubsub, scaffold, state
from benchmarks._common import clean_environment, report

SUITES = {
    "invoke": invoke,
    "edge": edge,
    "state": state,
    "pubsub": pubsub,
    "bulk": bulk,
    "scaffold": scaffold,
}
TITLES = {
    "invoke": "invoke hop (grpc.health Check: direct vs sidecar proxy)",
    "edge": "a service's own RPC: bare grpc.aio vs chassis.Service (no sidecar)",
    "state": "state get/save (async SDK)",
    "pubsub": "publish and publish -> handler",
    "bulk": "delivery rate on Redis",
    "scaffold": "chassis new -> the new service's tests -> chassis up (all apps up)",
}


def _machine() -> str:
    with open("/proc/cpuinfo") as cpuinfo:
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line), "?")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"nproc {os.cpu_count()}, {model}, Python {platform.python_version()}, load {load}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("suites", nargs="*", help=f"any of {', '.join(SUITES)} (default: all)")
    chosen = parser.parse_args(argv).suites or list(SUITES)
    unknown = sorted(set(chosen) - set(SUITES))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    clean_environment()
    print(f"# benchmarks ({time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())})\n\n{_machine()}")
    failed = 0
    for name in chosen:
        started = time.monotonic()
        try:
            report(TITLES[name], SUITES[name].run())
        except Exception as err:  # one broken benchmark must not cost the others' figures
            print(f"\n### {TITLES[name]}\n\nFAILED: {err!r}")
            failed += 1
        print(f"\n({name}: {time.monotonic() - started:.1f} s, load {os.getloadavg()[0]:.2f})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
