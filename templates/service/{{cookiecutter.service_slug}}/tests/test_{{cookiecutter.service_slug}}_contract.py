"""The service keeps its contract: every RPC of its proto implemented, every event with a schema."""

from __future__ import annotations

from {{ cookiecutter.service_slug }}.service import APP_ID, build_service
from {{ cookiecutter.service_slug }}.settings import Settings


def test_the_service_keeps_its_contract() -> None:
    contract = build_service(Settings(app_id=APP_ID)).contract()
    assert contract.apis, "the service serves no proto service"
    assert contract.problems() == []
