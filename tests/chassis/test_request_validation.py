"""Protovalidate rules at the edge: a request breaking its proto's rules is refused with INVALID_ARGUMENT and
BadRequest field violations before the servicer runs; every RPC request of the contracts carries rules."""

from __future__ import annotations

import importlib
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import grpc
import pytest
from buf.validate import validate_pb2
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message_factory import GetMessageClass
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from mooc.assessment.v1 import assessment_pb2 as api
from mooc.assessment.v1 import assessment_pb2_grpc as api_grpc

from chassis._errors import InvalidMessage
from chassis._middleware import MiddlewareInterceptor
from chassis._validation import check_requests, validate
from chassis.cli import main
from chassis.invoke import channel
from chassis.testing import AppProcess, Sidecar, free_port

APPS = Path(__file__).parent / "apps"
ROOT = Path(__file__).resolve().parents[2]
QUIZ = "intro-python-quiz-1"


def stored_rows(workdir: Path) -> list[tuple[str, str]]:
    """Every (key, etag) in the sidecars' embedded state store: what 'nothing stored' is checked against."""
    with sqlite3.connect(f"file:{workdir / 'state.db'}?mode=ro", uri=True) as db:
        return sorted(db.execute("SELECT key, etag FROM state"))


def bad_request_of(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """The BadRequest in the call's rich status details, as field -> description."""
    status = rpc_status.from_call(error)
    assert status is not None, "no grpc-status-details-bin trailer"
    [detail] = status.details
    found = error_details_pb2.BadRequest()
    assert detail.Unpack(found)
    return {violation.field: violation.description for violation in found.field_violations}


async def test_an_invalid_submission_is_refused_with_field_violations_and_never_stored(
    tmp_path: Path,
    sidecar_factory: Callable[..., Sidecar],
    app_factory: Callable[..., AppProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_port()
    sidecar = sidecar_factory("validated", app_port=port)
    app_factory("validated_service", app_id="validated", app_port=port, sidecar=sidecar, pythonpath=[APPS])
    caller = sidecar_factory("caller")  # the call goes caller -> its sidecar -> validated's sidecar -> app
    monkeypatch.setenv("DAPR_GRPC_PORT", str(caller.grpc_port))
    valid = api.SubmitAssignmentRequest(
        learner_id="learner-1",
        assignment_id=QUIZ,
        answers=[api.MultipleChoiceAnswer(question_id="q1", choice="b")],
    )
    invalid = api.SubmitAssignmentRequest(
        learner_id="learner 1; DROP TABLE",
        answers=[
            api.MultipleChoiceAnswer(question_id="q1", choice="b"),
            api.MultipleChoiceAnswer(question_id="q1"),
        ],
        short_answer="x" * 10_001,
    )

    async with channel("validated") as ch:
        stub = api_grpc.AssessmentServiceStub(ch)
        first = await stub.SubmitAssignment(valid)
        before = stored_rows(tmp_path)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.SubmitAssignment(invalid)
        after = stored_rows(tmp_path)
        read_back = await stub.GetSubmission(api.GetSubmissionRequest(submission_id=first.submission_id))

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    message = refused.value.details() or ""
    assert message.startswith("invalid mooc.assessment.v1.SubmitAssignmentRequest: learner_id: ")
    assert "assignment_id is required" in message and "answers[1].choice is required" in message
    violations = bad_request_of(refused.value)
    assert set(violations) == {"learner_id", "assignment_id", "answers[1].choice", "short_answer"}
    assert violations["assignment_id"] == "value is required"
    assert violations["short_answer"] == "must be at most 10000 characters"
    assert before and after == before  # the servicer, which stores whatever reaches it, never ran
    assert first.submission_id == f"learner-1-{QUIZ}"
    assert [(a.question_id, a.choice) for a in read_back.answers] == [("q1", "b")]


async def test_a_server_streaming_request_is_checked_before_the_handler_streams() -> None:
    handled: list[str] = []

    async def watch(request: api.GetSubmissionRequest, context: Any) -> AsyncIterator[api.Submission]:
        handled.append(request.submission_id)
        for status in (api.Submission.STATUS_SUBMITTED, api.Submission.STATUS_GRADED):
            yield api.Submission(submission_id=request.submission_id, status=status)

    rpcs = {
        "Watch": grpc.unary_stream_rpc_method_handler(
            watch,
            request_deserializer=api.GetSubmissionRequest.FromString,
            response_serializer=api.Submission.SerializeToString,
        )
    }
    checked = MiddlewareInterceptor([check_requests], skip=lambda method: False)
    server = grpc.aio.server(interceptors=[checked])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.v1.Watcher", rpcs),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = ch.unary_stream(
                "/test.v1.Watcher/Watch",
                request_serializer=api.GetSubmissionRequest.SerializeToString,
                response_deserializer=api.Submission.FromString,
            )
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                async for _ in call(api.GetSubmissionRequest(submission_id="../etc/passwd")):
                    pass
            streamed = [s.status async for s in call(api.GetSubmissionRequest(submission_id="s-1"))]
    finally:
        await server.stop(None)

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert set(bad_request_of(refused.value)) == {"submission_id"}
    assert streamed == [api.Submission.STATUS_SUBMITTED, api.Submission.STATUS_GRADED]
    assert handled == ["s-1"]  # the refused request never reached the handler


def test_validate_names_each_field_and_lets_valid_and_rule_free_messages_pass() -> None:
    validate(api.SubmitAssignmentRequest(learner_id="l", assignment_id="a-1"))
    validate(api.SubmitAssignmentResponse())  # no rules at all

    with pytest.raises(InvalidMessage) as caught:
        validate(
            api.SubmitAssignmentRequest(
                learner_id="l", assignment_id="a" * 129, answers=[api.MultipleChoiceAnswer(choice="b")]
            )
        )
    assert caught.value.message_type == "mooc.assessment.v1.SubmitAssignmentRequest"
    assert caught.value.violations == (
        ("assignment_id", "string.max_len", "must be at most 128 characters"),
        ("answers[0].question_id", "required", "value is required"),
    )
    assert str(caught.value) == (
        "invalid mooc.assessment.v1.SubmitAssignmentRequest: assignment_id: must be at most 128 characters;"
        " answers[0].question_id is required"
    )


def api_protos() -> list[str]:
    """The RPC contracts: proto/mooc/<domain>/v1/*.proto, events aside (they have no requests)."""
    found = sorted(p.relative_to(ROOT / "proto") for p in (ROOT / "proto/mooc").glob("*/v1/*.proto"))
    return [str(p) for p in found if p.parts[1] != "events"]


def request_types(proto: str) -> Iterator[Descriptor]:
    module = importlib.import_module(proto.removesuffix(".proto").replace("/", ".") + "_pb2")
    for service in module.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            yield method.input_type


def unbounded_fields(message: Descriptor, seen: frozenset[str] = frozenset()) -> Iterator[str]:
    """Strings, bytes, lists and maps a caller could make as large as they like, as dotted paths."""
    for field in message.fields:
        rules = field.GetOptions().Extensions[validate_pb2.field]
        path = f"{message.name}.{field.name}"
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            if not rules.map.HasField("max_pairs"):
                yield path
            continue
        if field.is_repeated and not rules.repeated.HasField("max_items"):
            yield path
        elif field.type == FieldDescriptor.TYPE_STRING and not rules.string.HasField("max_len"):
            if not rules.repeated.items.string.HasField("max_len"):
                yield path
        elif field.type == FieldDescriptor.TYPE_BYTES and not rules.bytes.HasField("max_len"):
            yield path
        elif field.message_type is not None and field.message_type.full_name not in seen:
            yield from unbounded_fields(field.message_type, seen | {message.full_name})


@pytest.mark.parametrize("proto", api_protos())
def test_every_request_of_the_contracts_has_rules_refusing_empty_and_unbounded_input(proto: str) -> None:
    requests = list(request_types(proto))
    assert requests, f"{proto} declares no RPC"
    for request in requests:
        with pytest.raises(InvalidMessage):  # something is always required
            validate(GetMessageClass(request)())
        assert list(unbounded_fields(request)) == [], f"{proto}: bound these with protovalidate rules"


def test_the_vendored_validate_proto_is_the_one_protovalidate_checks_with() -> None:
    """Same messages, fields and extensions as the installed protovalidate's own descriptor (its file
    options for other languages, and json names protoc adds on its own, aside)."""
    from protovalidate._gen.buf.validate import validate_pb

    theirs = descriptor_pb2.FileDescriptorProto.FromString(validate_pb._DESC.proto.to_binary())
    ours = descriptor_pb2.FileDescriptorProto()
    validate_pb2.DESCRIPTOR.CopyToProto(ours)
    for descriptor in (theirs, ours):
        descriptor.ClearField("options")
        for field in _every_field(descriptor):
            field.ClearField("json_name")
    assert ours == theirs, (
        f"proto/buf/validate/validate.proto differs from protovalidate {version('protovalidate')}'s"
    )


def _every_field(file: descriptor_pb2.FileDescriptorProto) -> Iterator[descriptor_pb2.FieldDescriptorProto]:
    yield from file.extension
    pending = list(file.message_type)
    while pending:
        message = pending.pop()
        yield from message.field
        yield from message.extension
        pending += message.nested_type


def test_a_project_without_the_vendored_file_compiles_its_rules(tmp_path: Path) -> None:
    contract = tmp_path / "proto/mooc/forum/v1/forum.proto"
    contract.parent.mkdir(parents=True)
    contract.write_text(
        'syntax = "proto3";\npackage mooc.forum.v1;\nimport "buf/validate/validate.proto";\n'
        "message PostRequest {\n  string text = 1 [(buf.validate.field).string.max_len = 10];\n}\n"
    )
    assert main(["protoc", "--project-dir", str(tmp_path)]) == 0
    gen = tmp_path / ".chassis/gen"
    assert (gen / "buf/validate/validate_pb2.py").is_file()  # from protovalidate's own descriptor

    # In a fresh interpreter, on the project's generated code only: the rule compiled and is enforced.
    check = (
        "from mooc.forum.v1.forum_pb2 import PostRequest\n"
        "from chassis._validation import validate\n"
        "validate(PostRequest(text='short'))\n"
        "validate(PostRequest(text='far too long'))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(gen)}
    ran = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=60)
    assert ran.returncode == 1
    assert (
        "InvalidMessage: invalid mooc.forum.v1.PostRequest: text: must be at most 10 characters" in ran.stderr
    )
