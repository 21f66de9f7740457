"""A service with two middlewares that write what they see to MIDDLEWARE_LOG (JSON lines).

`outer` and `inner` log every call before and after the rest of the chain; `gate` refuses an RPC
whose caller sent `x-blocked` (PERMISSION_DENIED, the handler never runs) and asks for a redelivery
of an event whose submission id starts with "retry-" the first time it sees it.
"""

from __future__ import annotations

import json
import os
from typing import Any

import grpc
from mooc.assessment.v1 import assessment_pb2 as api
from mooc.assessment.v1 import assessment_pb2_grpc as api_grpc
from mooc.events.v1.assessment_pb2 import SubmissionCreated

from chassis import Call, EventContext, Next, Retry, Service

service = Service("middleware")
announce = service.publisher(SubmissionCreated, topic="submissions")
LOG = os.environ["MIDDLEWARE_LOG"]
retried: set[str] = set()


def write(**entry: Any) -> None:
    with open(LOG, "a") as log:
        log.write(json.dumps(entry) + "\n")


def logging_middleware(label: str) -> Any:
    async def log_around(call: Call, call_next: Next) -> object:
        message = type(call.message).__name__ if call.message is not None else None
        write(at=f"{label}-before", kind=call.kind, name=call.name, message=message, metadata=call.metadata)
        result = await call_next(call)
        write(at=f"{label}-after", kind=call.kind, name=call.name)
        return result

    return log_around


async def gate(call: Call, call_next: Next) -> object:
    if call.kind == "rpc" and "x-blocked" in call.metadata and call.rpc is not None:
        await call.rpc.abort(grpc.StatusCode.PERMISSION_DENIED, "blocked by the gate middleware")
    if call.kind == "consume" and isinstance(call.message, SubmissionCreated):
        submission_id = call.message.submission_id
        if submission_id.startswith("retry-") and submission_id not in retried:
            retried.add(submission_id)
            raise Retry("the gate middleware asks for one redelivery")
    if call.kind == "publish":
        call.metadata["x-published-by"] = "middleware"  # sent with the event
    return await call_next(call)


service.use(logging_middleware("outer"), logging_middleware("inner"), gate)


class Assessment(api_grpc.AssessmentServiceServicer):
    async def SubmitAssignment(
        self, request: api.SubmitAssignmentRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api.SubmitAssignmentResponse:
        write(at="handler", kind="rpc", name=request.learner_id)
        submission_id = f"{request.learner_id}-{request.assignment_id}"
        await announce.publish(SubmissionCreated(submission_id=submission_id, learner_id=request.learner_id))
        return api.SubmitAssignmentResponse(submission_id=submission_id)


@service.subscribe(topic="submissions", event=SubmissionCreated)
async def on_submission(event: SubmissionCreated, ctx: EventContext) -> None:
    write(at="handler", kind="consume", name=event.submission_id, metadata=dict(ctx.metadata))


service.add_servicer(api_grpc.add_AssessmentServiceServicer_to_server, Assessment())

if __name__ == "__main__":
    service.run()
