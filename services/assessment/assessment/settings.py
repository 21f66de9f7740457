"""The service's configuration: the chassis' own settings plus what this service adds."""

from __future__ import annotations

from pathlib import Path

from chassis import ServiceSettings
from pydantic import Field
from pydantic_settings import SettingsConfigDict


class Settings(ServiceSettings):
    """Read once at start-up; own fields come from `ASSESSMENT_*` variables."""

    model_config = SettingsConfigDict(
        env_prefix="ASSESSMENT_", env_file=".env", extra="ignore", populate_by_name=True
    )

    catalogue_path: Path | None = Field(
        None, description="a JSON file of assignments; the catalogue bundled with the service when unset"
    )
    submissions_store: str = Field(
        "assessment-outbox",
        min_length=1,
        description="the state store of submissions; its component must enable Dapr's outbox to "
        "publish on submissions_topic",
    )
    submissions_topic: str = Field("submissions", min_length=1)
    grades_topic: str = Field("grades", min_length=1)
