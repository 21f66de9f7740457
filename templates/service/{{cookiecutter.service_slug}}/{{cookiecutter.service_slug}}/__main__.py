"""Entry point: `python -m {{ cookiecutter.service_slug }}` (what dapr.yaml runs)."""

from {{ cookiecutter.service_slug }}.service import build_service

if __name__ == "__main__":
    build_service().run()
