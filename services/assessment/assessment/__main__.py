"""Entry point: `python -m assessment` (what dapr.yaml runs)."""

from assessment.service import build_service

if __name__ == "__main__":
    build_service().run()
