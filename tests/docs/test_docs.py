"""Every Python example in docs/ runs as written, as its own process, against a real sidecar.

The sidecar has the embedded state store and pub/sub, and a local-file secret store named
`secretstore` holding the secret the configuration page reads.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from chassis._protogen import ensure_generated
from chassis.testing import Sidecar
from chassis.testing._processes import write_default_resources

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
SECRET_STORE = """\
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: secretstore
spec:
  type: secretstores.local.file
  version: v1
  metadata:
  - {name: secretsFile, value: secrets.json}
  - {name: multiValued, value: "true"}
"""


def examples() -> list[tuple[str, str]]:
    found = []
    for page in sorted(DOCS.glob("*.md")):
        for number, block in enumerate(PYTHON_BLOCK.findall(page.read_text()), start=1):
            found.append((f"{page.name}#{number}", block))
    return found


def test_every_page_has_an_example() -> None:
    pages = {name.split("#")[0] for name, _ in examples()}
    assert pages == {page.name for page in DOCS.glob("*.md")} - {"README.md"}


@pytest.mark.parametrize(("name", "code"), examples(), ids=[name for name, _ in examples()])
def test_the_example_runs(
    name: str, code: str, sidecar_factory: Callable[..., Sidecar], tmp_path: Path
) -> None:
    resources = write_default_resources(tmp_path / "components")
    (resources / "secretstore.yaml").write_text(SECRET_STORE)
    (tmp_path / "secrets.json").write_text(json.dumps({"grading": {"model-token": "t0k"}}))
    sidecar = sidecar_factory("docs", resources=[resources])
    script = tmp_path / "example.py"
    script.write_text(code)
    env = os.environ | sidecar.app_env() | {"APP_ID": "docs", "PYTHONPATH": str(ensure_generated(ROOT))}
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"{name} failed:\n{result.stdout}\n{result.stderr}"
