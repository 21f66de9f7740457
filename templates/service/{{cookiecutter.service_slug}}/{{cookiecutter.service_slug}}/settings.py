"""The service's configuration: the chassis' own settings plus what this service adds."""

from __future__ import annotations

from chassis import ServiceSettings
from pydantic import Field
from pydantic_settings import SettingsConfigDict


class Settings(ServiceSettings):
    """Read once at start-up; own fields come from `{{ cookiecutter.service_slug | upper }}_*` variables."""

    model_config = SettingsConfigDict(
        env_prefix="{{ cookiecutter.service_slug | upper }}_", env_file=".env", extra="ignore", populate_by_name=True
    )

    max_title_length: int = Field(200, ge=1, description="longest record title accepted")
