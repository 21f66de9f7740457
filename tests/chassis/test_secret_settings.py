"""Settings from a Dapr secret store, read through a real sidecar's secrets API (secretstores.local.file).

The environment wins over the store; a missing secret or key stops the start with one line naming the
setting, as a bad environment variable does.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import pytest
from pydantic import SecretStr
from pydantic_settings import SettingsConfigDict

from chassis import DaprSecret, ServiceSettings, load_settings
from chassis.testing import Sidecar
from chassis.testing._processes import write_default_resources

SECRET_STORE = """\
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: vault
spec:
  type: secretstores.local.file
  version: v1
  metadata:
  - {name: secretsFile, value: secrets.json}
  - {name: nestedSeparator, value: ":"}
  - {name: multiValued, value: "true"}
"""


class CourseSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="COURSES_")

    db_password: Annotated[SecretStr, DaprSecret("db", key="password", store="vault")]
    api_key: Annotated[str, DaprSecret("api-key", store="vault")] = "unset"


@pytest.fixture
def sidecar(
    sidecar_factory: Callable[..., Sidecar], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Sidecar:
    resources = write_default_resources(tmp_path / "components")
    (resources / "vault.yaml").write_text(SECRET_STORE)
    (tmp_path / "secrets.json").write_text(json.dumps({"db": {"password": "s3cret"}, "api-key": "k-123"}))
    started = sidecar_factory("courses", resources=[resources])
    for name, value in started.app_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("APP_ID", "courses")
    return started


def test_marked_fields_come_from_the_secret_store(sidecar: Sidecar) -> None:
    settings = load_settings(CourseSettings)
    assert settings.db_password.get_secret_value() == "s3cret"
    assert settings.api_key == "k-123"


def test_the_environment_wins_over_the_store(sidecar: Sidecar, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COURSES_API_KEY", "from-env")
    assert load_settings(CourseSettings).api_key == "from-env"


def test_a_missing_secret_is_one_line_naming_the_setting(sidecar: Sidecar, tmp_path: Path) -> None:
    script = tmp_path / "load.py"
    script.write_text(
        textwrap.dedent(
            """
            from typing import Annotated
            from chassis import DaprSecret, ServiceSettings, load_settings

            class Settings(ServiceSettings):
                token: Annotated[str, DaprSecret("nope", store="vault")]

            load_settings(Settings)
            """
        )
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    [line] = lines
    assert line.startswith("config error: TOKEN: cannot read secret 'nope' from 'vault'")


def test_a_missing_key_names_the_secret_and_the_key(
    sidecar: Sidecar, capsys: pytest.CaptureFixture[str]
) -> None:
    class Settings(ServiceSettings):
        user: Annotated[str, DaprSecret("db", key="user", store="vault")]

    with pytest.raises(SystemExit) as stopped:
        load_settings(Settings)
    assert stopped.value.code == 2
    assert capsys.readouterr().err == "config error: USER: secret 'db' in store 'vault' has no key 'user'\n"
