"""Component YAML loading: the embedded components load; every mistake is one line naming file and field."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from chassis.sidecar._errors import ResourceError
from chassis.sidecar._resources import DRIVERS, load_specs, open_resources, parse_duration
from chassis.sidecar.components.pubsub_sqlite import SqlitePubSub

EMBEDDED = Path(__file__).resolve().parents[2] / "dapr" / "components" / "embedded"

STATE = """
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: statestore}
spec:
  type: state.sqlite
  version: v1
  metadata:
  - {name: connectionString, value: state.db}
"""


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def component(
    ctype: str = "state.sqlite", metadata: str = "  - {name: connectionString, value: x.db}"
) -> str:
    return (
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: c}\n"
        f"spec:\n  type: {ctype}\n  version: v1\n  metadata:\n{metadata}\n"
    )


def test_embedded_components_load() -> None:
    specs = {spec.name: spec for spec in load_specs([EMBEDDED])}
    assert specs["statestore"].type == "state.sqlite"
    assert specs["statestore"].metadata == {"connectionString": ".chassis/data/state.db"}
    assert specs["pubsub"].type == "pubsub.sqlite"
    assert specs["pubsub"].metadata["processingTimeout"] == "10s"
    assert specs["pubsub"].source == EMBEDDED / "pubsub.yaml"


async def test_embedded_components_open_and_create_their_files(tmp_path: Path) -> None:
    resources = await open_resources([EMBEDDED], app_id="a", base_dir=tmp_path)
    try:
        assert set(resources.state_stores) == {"statestore"}
        assert set(resources.pubsubs) == {"pubsub"}
        pubsub = resources.pubsubs["pubsub"]
        assert isinstance(pubsub, SqlitePubSub) and pubsub.processing_timeout == 10.0
        await resources.state_stores["statestore"].set("k", b"v")
    finally:
        await resources.close()
    assert (tmp_path / ".chassis/data/state.db").is_file()
    assert (tmp_path / ".chassis/data/pubsub.db").is_file()


def test_multi_document_files_skip_other_kinds(tmp_path: Path) -> None:
    write(
        tmp_path,
        "all.yml",
        """
        apiVersion: dapr.io/v2alpha1
        kind: Subscription
        metadata: {name: s}
        spec: {pubsubname: pubsub, topic: t, routes: {default: /t}}
        ---
        apiVersion: dapr.io/v1alpha1
        kind: Component
        metadata: {name: p}
        spec:
          type: pubsub.sqlite
          version: v1
          metadata:
          - {name: connectionString, value: p.db}
          - {name: maxLenApprox, value: 1000}
          - {name: flag, value: true}
          - {name: empty}
        scopes: [a, b]
        ---
        apiVersion: dapr.io/v1alpha1
        kind: Configuration
        metadata: {name: daprConfig}
        spec: {tracing: {samplingRate: "1"}}
        """,
    )
    write(tmp_path, "notes.txt", "not: [yaml")
    [spec] = load_specs([tmp_path])
    assert spec.metadata == {"connectionString": "p.db", "maxLenApprox": "1000", "flag": "true", "empty": ""}
    assert spec.scopes == ("a", "b")
    assert spec.source == tmp_path / "all.yml"


async def test_components_out_of_scope_are_not_opened(tmp_path: Path) -> None:
    write(tmp_path / "res", "s.yaml", STATE + "scopes: [other-app]\n")
    resources = await open_resources([tmp_path / "res"], app_id="a", base_dir=tmp_path)
    try:
        assert resources.state_stores == {}
        assert [s.name for s in resources.specs] == ["statestore"]
    finally:
        await resources.close()
    assert not (tmp_path / "state.db").exists()


async def test_open_failure_names_the_component_and_closes_the_others(tmp_path: Path) -> None:
    write(tmp_path / "res", "a.yaml", STATE)
    write(tmp_path / "res", "b.yaml", component("pubsub.sqlite", "  - {name: connectionString, value: adir}"))
    (tmp_path / "adir").mkdir()
    with pytest.raises(ResourceError) as caught:
        await open_resources([tmp_path / "res"], app_id="a", base_dir=tmp_path)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'res' / 'b.yaml'}: component 'c': ")
    assert "cannot open database" in message and "\n" not in message


CONN = "  - {name: connectionString, value: x.db}\n"
NO_META = "apiVersion: dapr.io/v1alpha1\nkind: Component\nspec: {type: state.sqlite, version: v1}\n"

BAD_FILES = [
    ("key: [unclosed", "line 1 column 15", "invalid YAML"),
    ("- just\n- a list\n", "document", "expected a mapping"),
    (NO_META, "metadata", "missing"),
    (STATE.replace("metadata: {name: statestore}", "metadata: {}"), "metadata.name", "missing"),
    (STATE.replace("  type: state.sqlite\n", ""), "spec.type", "missing"),
    (STATE.replace("  version: v1\n", ""), "spec.version", "missing"),
    (STATE.replace("version: v1", "version: v2"), "spec.version", "state.sqlite has no version 'v2'"),
    (component("state.mongodb"), "spec.type", "unknown component type 'state.mongodb'"),
    (component(metadata="  - {name: keyPrefix, value: name}"), "spec.metadata.connectionString", "required"),
    (component(metadata='  - {name: connectionString, value: ""}'),
     "spec.metadata.connectionString", "required"),
    (component(metadata="  - name: connectionString\n    secretKeyRef: {name: s, key: k}"),
     "auth.secretStore", "required when metadata uses secretKeyRef"),
    (component(metadata="  - {name: connectionString, value: [a, b]}"),
     "spec.metadata.connectionString.value", "scalar"),
    (component(metadata="  - {value: x}"), "spec.metadata[0].name", "missing"),
    (component(metadata=CONN + "  - {name: keyPrefix, value: 'a||b'}"),
     "spec.metadata.keyPrefix", "can't contain '||'"),
    (component(metadata=CONN + "  - {name: tableName, value: 'x; drop'}"),
     "spec.metadata.tableName", "identifier"),
    (component("pubsub.sqlite", CONN + "  - {name: processingTimeout, value: -1s}"),
     "spec.metadata.processingTimeout", "must be positive"),
    (component("pubsub.sqlite", CONN + "  - {name: processingTimeout, value: ten}"),
     "spec.metadata.processingTimeout", "invalid duration 'ten'"),
    (STATE + "scopes: a\n", "scopes", "list of app ids"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "field", "problem"), BAD_FILES)
def test_each_error_is_one_line_naming_file_and_field(
    tmp_path: Path, text: str, field: str, problem: str
) -> None:
    path = write(tmp_path, "bad.yaml", text)
    with pytest.raises(ResourceError) as caught:
        load_specs([tmp_path])
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {field}: "), message
    assert problem in message


def test_error_in_a_multi_document_file_names_the_document(tmp_path: Path) -> None:
    path = write(tmp_path, "two.yaml", STATE + "---\n" + STATE.replace("state.sqlite", "state.nope"))
    with pytest.raises(
        ResourceError, match="^" + str(path) + "#2: spec.type: unknown component type 'state.nope'"
    ):
        load_specs([tmp_path])


def test_duplicate_component_name_across_files(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", STATE)
    second = write(tmp_path, "b.yaml", STATE)
    with pytest.raises(ResourceError) as caught:
        load_specs([tmp_path])
    assert str(caught.value) == (
        f"{second}: metadata.name: duplicate component name 'statestore' (also in {tmp_path / 'a.yaml'})"
    )


def test_missing_resources_path(tmp_path: Path) -> None:
    with pytest.raises(
        ResourceError, match=f"^{tmp_path / 'nope'}: resources path: no such file or directory$"
    ):
        load_specs([tmp_path / "nope"])


def test_resource_paths_may_be_files(tmp_path: Path) -> None:
    path = write(tmp_path, "one.yaml", STATE)
    assert [s.name for s in load_specs([path])] == ["statestore"]


def test_every_driver_declares_its_shape() -> None:
    assert set(DRIVERS) >= {"state.sqlite", "pubsub.sqlite", "state.redis", "pubsub.redis"}
    for ctype, driver in DRIVERS.items():
        assert ctype.startswith(driver.kind + ".")
    for ctype in ("state.sqlite", "pubsub.sqlite", "state.redis", "pubsub.redis"):
        where = "redisHost" if ctype.endswith(".redis") else "connectionString"
        assert DRIVERS[ctype].required == (where,)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("15s", 15.0), ("100ms", 0.1), ("1m30s", 90.0), ("1h", 3600.0), ("1.5s", 1.5), ("250us", 0.00025),
     ("0", 0.0), ("10", 10.0), ("-2s", -2.0), ("2h45m0.5s", 9900.5)],
)  # fmt: skip
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "15x", "1s2", "1d", "ten", "-", "1.2.3s"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)
