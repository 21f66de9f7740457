"""The edge benchmark's target: one AssessmentService, served bare (grpc.aio) or as a chassis Service.

EDGE_MODE=bare: a plain grpc.aio server with the servicer, nothing else.
EDGE_MODE=traced: the same with OpenTelemetry's server interceptor only (what tracing alone costs).
EDGE_MODE=chassis: `chassis.Service`, as every service runs: OpenTelemetry's server interceptor, the
protovalidate check of each request and the middleware chain (no middleware of its own).
EDGE_MODE=middleware: the same plus three pass-through middlewares, the cost of a longer chain.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import grpc
from mooc.assessment.v1 import assessment_pb2 as api
from mooc.assessment.v1 import assessment_pb2_grpc as api_grpc
from opentelemetry.instrumentation.grpc import aio_server_interceptor

from chassis import Call, Next, Service, ServiceSettings

SUBMISSION = api.Submission(submission_id="s-1", learner_id="l-1", status=api.Submission.STATUS_GRADED)


class Assessment(api_grpc.AssessmentServiceServicer):
    async def GetSubmission(
        self, request: api.GetSubmissionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api.Submission:
        return SUBMISSION


async def passing(call: Call, call_next: Next) -> object:
    return await call_next(call)


async def serve_bare(port: int, *, traced: bool) -> None:
    server = grpc.aio.server(interceptors=[aio_server_interceptor()] if traced else [])
    api_grpc.add_AssessmentServiceServicer_to_server(Assessment(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def serve_chassis(port: int, middlewares: int) -> None:
    service = Service("bench-edge", ServiceSettings(app_id="bench-edge", app_port=port))
    service.use(*[passing] * middlewares)
    service.add_servicer(api_grpc.add_AssessmentServiceServicer_to_server, Assessment())
    service.run()


if __name__ == "__main__":
    port, mode = int(os.environ["APP_PORT"]), os.environ["EDGE_MODE"]
    if mode in ("bare", "traced"):
        asyncio.run(serve_bare(port, traced=mode == "traced"))
    else:
        serve_chassis(port, middlewares=3 if mode == "middleware" else 0)
