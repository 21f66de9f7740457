"""Secret stores (`secretstores.local.file`, `secretstores.local.env`) and `secretKeyRef` in components.

Driven through the official SDK against a real sidecar; bad references stop the sidecar with one line.
"""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from dapr.clients import DaprClient
from sidecar_support import RunningSidecar, child_env, embedded_components, sidecar_process, stop_all

from chassis.sidecar._errors import ResourceError
from chassis.sidecar._resources import open_resources

SECRETS = {"redisPassword": "hunter2", "db": {"path": "data/secret-state.db", "user": "ann"}, "n": 7}

FILE_STORE = """\
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: files}
spec:
  type: secretstores.local.file
  version: v1
  metadata:
  - {name: secretsFile, value: secrets.json}
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: multi}
spec:
  type: secretstores.local.file
  version: v1
  metadata:
  - {name: secretsFile, value: secrets.json}
  - {name: nestedSeparator, value: "."}
  - {name: multiValued, value: "true"}
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: env}
spec:
  type: secretstores.local.env
  version: v1
"""

# A state store whose connection string comes from the file store.
SECRET_STATE = """\
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: secretstate}
spec:
  type: state.sqlite
  version: v1
  metadata:
  - name: connectionString
    secretKeyRef: {name: "db:path", key: "db:path"}
auth: {secretStore: files}
"""


def _resources(folder: Path, *extra: str) -> Path:
    embedded_components(folder)
    (folder / "secrets.yaml").write_text(FILE_STORE)
    for index, text in enumerate(extra):
        (folder / f"extra{index}.yaml").write_text(text)
    return folder


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSidecar]:
    """One sidecar for the module's read-only tests."""
    workdir = tmp_path_factory.mktemp("secrets")
    (workdir / "secrets.json").write_text(json.dumps(SECRETS))
    folder = _resources(workdir / "res", SECRET_STATE)
    sidecar = sidecar_process("secrets-app", workdir, resources=[folder], env={"MOOC_TOKEN": "t0k3n"})
    sidecar.spawn()
    try:
        sidecar.wait_ready(sidecar.healthy, "healthy")
        yield sidecar
    finally:
        stop_all([sidecar])


@pytest.fixture
def sidecar(running: RunningSidecar, dapr_env: Callable[[RunningSidecar], None]) -> RunningSidecar:
    dapr_env(running)
    return running


def _client(sidecar: RunningSidecar) -> DaprClient:
    return DaprClient()


def test_file_store_flattens_nested_json(sidecar: RunningSidecar) -> None:
    with _client(sidecar) as client:
        assert client.get_secret("files", "redisPassword").secret == {"redisPassword": "hunter2"}
        assert client.get_secret("files", "db:user").secret == {"db:user": "ann"}
        assert client.get_secret("files", "n").secret == {"n": "7"}
        bulk = client.get_bulk_secret("files").secrets
    assert bulk["db:path"] == {"db:path": "data/secret-state.db"}
    assert set(bulk) == {"redisPassword", "db:path", "db:user", "n"}


def test_multi_valued_file_store_groups_by_top_level_key(sidecar: RunningSidecar) -> None:
    with _client(sidecar) as client:
        assert client.get_secret("multi", "db").secret == {"path": "data/secret-state.db", "user": "ann"}
        assert client.get_bulk_secret("multi").secrets["redisPassword"] == {"redisPassword": "hunter2"}


def test_env_store_reads_the_sidecar_environment(sidecar: RunningSidecar) -> None:
    with _client(sidecar) as client:
        assert client.get_secret("env", "MOOC_TOKEN").secret == {"MOOC_TOKEN": "t0k3n"}
        assert client.get_bulk_secret("env").secrets["MOOC_TOKEN"] == {"MOOC_TOKEN": "t0k3n"}


def test_errors_name_the_store_and_key(sidecar: RunningSidecar) -> None:
    with _client(sidecar) as client:
        with pytest.raises(grpc.RpcError) as missing:
            client.get_secret("files", "nope")
        with pytest.raises(grpc.RpcError) as unknown:
            client.get_secret("vault", "x")
    assert missing.value.code().name == "INTERNAL"
    assert "failed getting secret with key nope from secret store files" in str(missing.value.details())
    assert unknown.value.code().name == "INVALID_ARGUMENT"
    assert "failed finding secret store with key vault" in str(unknown.value.details())


def http_get(sidecar: RunningSidecar, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{sidecar.http_port}{path}", timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_the_http_api_serves_the_same_secrets(sidecar: RunningSidecar) -> None:
    assert http_get(sidecar, "/v1.0/secrets/files/redisPassword") == (200, {"redisPassword": "hunter2"})
    multi = {"path": "data/secret-state.db", "user": "ann"}
    assert http_get(sidecar, "/v1.0/secrets/multi/db") == (200, multi)
    status, bulk = http_get(sidecar, "/v1.0/secrets/files/bulk")
    assert status == 200 and bulk["db:user"] == {"db:user": "ann"} and len(bulk) == 4

    status, missing = http_get(sidecar, "/v1.0/secrets/files/nope")
    assert (status, missing["errorCode"]) == (500, "ERR_SECRET_GET")
    assert "failed getting secret with key nope from secret store files" in missing["message"]
    status, unknown = http_get(sidecar, "/v1.0/secrets/vault/x")
    assert (status, unknown["errorCode"]) == (401, "ERR_SECRET_STORE_NOT_FOUND")


def test_secret_key_ref_fills_component_metadata(sidecar: RunningSidecar) -> None:
    with _client(sidecar) as client:
        client.save_state("secretstate", "k", b"v")
        assert client.get_state("secretstate", "k").data == b"v"
    assert (sidecar.cwd / "data" / "secret-state.db").exists()  # the path came from the secret


def test_a_missing_secret_stops_the_sidecar_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "secrets.json").write_text(json.dumps(SECRETS))
    folder = _resources(tmp_path / "res", SECRET_STATE.replace('name: "db:path"', 'name: "db:nope"'))
    argv = sidecar_process("bad", tmp_path, resources=[folder]).argv
    done = subprocess.run(argv, cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "extra0.yaml: spec.metadata.connectionString.secretKeyRef: secret 'db:nope' not found" in lines[0]


@pytest.mark.parametrize(
    ("component", "expected"),
    [
        (SECRET_STATE.replace("auth: {secretStore: files}\n", ""), "auth.secretStore: required"),
        (SECRET_STATE.replace("secretStore: files", "secretStore: vault"), "auth.secretStore: secret store"),
        (SECRET_STATE.replace('key: "db:path"', 'key: "other"'), "has no key 'other'"),
    ],
)
async def test_bad_secret_references_name_file_and_field(
    tmp_path: Path, component: str, expected: str
) -> None:
    (tmp_path / "secrets.json").write_text(json.dumps(SECRETS))
    folder = _resources(tmp_path / "res", component)
    with pytest.raises(ResourceError) as error:
        resources = await open_resources([folder], app_id="a", base_dir=tmp_path)
        await resources.close()
    assert str(error.value).startswith(str(folder / "extra0.yaml"))
    assert expected in str(error.value)
