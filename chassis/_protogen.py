"""Compiles the project's contracts (`proto/`) into an importable, typed package under `.chassis/gen`.

Generated code is never committed: every launch and test session calls `ensure_generated`, which
recompiles only when a `.proto` file changed, so what runs always matches what `proto/` says.

Contracts may carry protovalidate rules (`import "buf/validate/validate.proto"`). That file is compiled
with them: from `proto/` where the project vendors it (buf needs the source to lint), otherwise from
the descriptor the installed `protovalidate` validates with, so a project fresh from `chassis new`
compiles too.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from importlib import metadata, resources
from pathlib import Path

from chassis._errors import ContractError

PROTO_DIR = "proto"
GEN_DIR = Path(".chassis") / "gen"
_STAMP = ".proto-digest"
VALIDATE_PROTO = "buf/validate/validate.proto"


def find_project_root(start: Path) -> Path | None:
    """The nearest folder at or above `start` that holds a `proto/` folder."""
    for folder in (start.resolve(), *start.resolve().parents):
        if (folder / PROTO_DIR).is_dir():
            return folder
    return None


def ensure_generated(root: Path) -> Path:
    """Compile `root/proto` into `root/.chassis/gen` unless it is up to date; return the gen folder."""
    proto_root = root / PROTO_DIR
    protos = sorted(proto_root.rglob("*.proto"))
    if not protos:
        raise ContractError(f"no .proto files under {proto_root}")
    out = root / GEN_DIR
    digest = _digest(proto_root, protos)
    stamp = out / _STAMP
    if stamp.is_file() and stamp.read_text() == digest:
        return out
    _compile_atomically(proto_root, protos, out, digest)
    return out


def _digest(proto_root: Path, protos: list[Path]) -> str:
    sha = hashlib.sha256(metadata.version("protovalidate").encode())  # its descriptor may be compiled
    for proto in protos:
        sha.update(str(proto.relative_to(proto_root)).encode())
        sha.update(proto.read_bytes())
    return sha.hexdigest()


def _compile_atomically(proto_root: Path, protos: list[Path], out: Path, digest: str) -> None:
    """Compile into a sibling temp folder, then swap it in, so concurrent readers never see half a package."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="gen-", dir=out.parent))
    try:
        _protoc(proto_root, protos, staging)
        _add_package_markers(staging)
        (staging / _STAMP).write_text(digest)
        retired = out.with_name(f"{out.name}.old-{os.getpid()}")
        if out.exists():
            out.rename(retired)
        staging.rename(out)
        shutil.rmtree(retired, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _protoc(proto_root: Path, protos: list[Path], out: Path) -> None:
    from grpc_tools import protoc  # heavy import: only when compiling

    well_known = resources.files("grpc_tools") / "_proto"
    bin_dir = Path(sys.executable).parent
    names = [str(p.relative_to(proto_root)) for p in protos]
    with tempfile.TemporaryDirectory(prefix="protovalidate-") as scratch:
        rules = []
        if VALIDATE_PROTO not in names and _import_rules(protos):
            rules = [f"--descriptor_set_in={_protovalidate_descriptor(Path(scratch))}"]
            names.append(VALIDATE_PROTO)
        args = [
            "grpc_tools.protoc",
            f"--proto_path={proto_root}",
            f"--proto_path={well_known}",
            *rules,
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
            f"--mypy_out={out}",
            f"--mypy_grpc_out={out}",
            *names,
        ]
        if protoc.main(args) != 0:
            raise ContractError(f"protoc failed on {proto_root} (its errors are printed above)")


def _import_rules(protos: list[Path]) -> bool:
    return any(f'import "{VALIDATE_PROTO}";' in proto.read_text() for proto in protos)


def _protovalidate_descriptor(folder: Path) -> Path:
    """protovalidate's own `buf/validate/validate.proto`, as a descriptor set protoc reads in its place."""
    from google.protobuf import descriptor_pb2

    try:  # not public API, hence the pin `protovalidate<3` and the clear error if it moves
        from protovalidate._gen.buf.validate import validate_pb
    except ImportError as err:
        raise ContractError(
            f"cannot read {VALIDATE_PROTO} from the installed protovalidate ({err}); vendor it as "
            f"proto/{VALIDATE_PROTO} instead"
        ) from err
    descriptors = descriptor_pb2.FileDescriptorSet()
    descriptors.file.add().MergeFromString(validate_pb._DESC.proto.to_binary())
    path = folder / "protovalidate.binpb"
    path.write_bytes(descriptors.SerializeToString())
    return path


def _add_package_markers(out: Path) -> None:
    """Make every generated folder a regular package with PEP 561 typing."""
    for folder in [out, *(p for p in out.rglob("*") if p.is_dir())]:
        if folder != out:
            (folder / "__init__.py").touch()
    for top in (p for p in out.iterdir() if p.is_dir()):
        (top / "py.typed").touch()
