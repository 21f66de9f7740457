"""Settings: typed, env-named, and a bad value is one readable line plus exit code 2."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pydantic_settings import SettingsConfigDict

from chassis import ServiceSettings, load_settings


class GradingSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="GRADING_")

    passing_score: float = 0.5


def test_shared_fields_keep_their_dapr_names_under_a_service_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_ID", "grading")
    monkeypatch.setenv("APP_PORT", "6001")
    monkeypatch.setenv("DAPR_GRPC_PORT", "6002")
    monkeypatch.setenv("CHASSIS_DRAIN_SECONDS", "2.5")
    monkeypatch.setenv("GRADING_PASSING_SCORE", "0.75")

    settings = load_settings(GradingSettings)

    assert (settings.app_id, settings.app_port, settings.dapr_grpc_port) == ("grading", 6001, 6002)
    assert settings.drain_seconds == 2.5
    assert settings.passing_score == 0.75
    assert (settings.state_store, settings.pubsub, settings.dapr_http_port) == ("statestore", "pubsub", 3500)


def _load_in_subprocess(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "load.py"
    script.write_text(
        textwrap.dedent(
            """
            from pydantic_settings import SettingsConfigDict
            from chassis import ServiceSettings, load_settings

            class GradingSettings(ServiceSettings):
                model_config = SettingsConfigDict(env_prefix="GRADING_")
                passing_score: float = 0.5

            load_settings(GradingSettings)
            print("loaded")
            """
        )
    )
    return subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("env", "line"),
    [
        ({}, "config error: APP_ID: Field required (not set)"),
        (
            {"APP_ID": "g", "APP_PORT": "http"},
            "config error: APP_PORT: Input should be a valid integer, "
            "unable to parse string as an integer (got 'http')",
        ),
        (
            {"APP_ID": "g", "GRADING_PASSING_SCORE": "high"},
            "config error: GRADING_PASSING_SCORE: Input should be a valid number, "
            "unable to parse string as a number (got 'high')",
        ),
    ],
)
def test_a_bad_setting_stops_the_process_with_one_line(
    tmp_path: Path, env: dict[str, str], line: str
) -> None:
    result = _load_in_subprocess(tmp_path, {"PATH": "/usr/bin:/bin", **env})

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [line]


def test_values_can_come_from_a_dotenv_file(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("APP_ID=from-dotenv\nGRADING_PASSING_SCORE=0.9\n")

    result = _load_in_subprocess(tmp_path, {"PATH": "/usr/bin:/bin"})

    assert (result.returncode, result.stdout.strip(), result.stderr) == (0, "loaded", "")
