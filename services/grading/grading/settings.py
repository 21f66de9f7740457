"""The service's configuration: the chassis' own settings plus what this service adds."""

from __future__ import annotations

from chassis import ServiceSettings
from pydantic import Field
from pydantic_settings import SettingsConfigDict


class Settings(ServiceSettings):
    """Read once at start-up; own fields come from `GRADING_*` variables."""

    model_config = SettingsConfigDict(
        env_prefix="GRADING_", env_file=".env", extra="ignore", populate_by_name=True
    )

    short_answer_threshold: float = Field(
        0.5, gt=0, le=1, description="share of rubric keywords a short answer needs for its point"
    )
    submissions_topic: str = Field("submissions", min_length=1)
    grades_topic: str = Field("grades", min_length=1)
