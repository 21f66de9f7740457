"""Entry point: `python -m grading` (what dapr.yaml runs)."""

from grading.service import build_service

if __name__ == "__main__":
    build_service().run()
