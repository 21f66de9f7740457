"""A tiny proctoring service: answers CheckAction and records the engagement signals it receives.

CheckAction holds a learner named "held-*" (reason "second device detected"), answers a learner
named "late-*" only after GATE_DELAY seconds (default 5), and allows everyone else. Every signal
from `proctoring.signals` is appended to SIGNALS_LOG as one JSON line, with its CloudEvent's traceparent.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import grpc
from google.protobuf import json_format
from mooc.events.v1.proctoring_pb2 import EngagementSignal
from mooc.proctoring.v1 import proctoring_pb2 as api
from mooc.proctoring.v1 import proctoring_pb2_grpc as api_grpc

from chassis import EventContext, Service

service = Service("proctoring")
SIGNALS_LOG = os.environ["SIGNALS_LOG"]
GATE_DELAY = float(os.environ.get("GATE_DELAY", "5"))


class Proctoring(api_grpc.ProctoringServiceServicer):
    async def CheckAction(
        self, request: api.CheckActionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api.CheckActionResponse:
        if request.learner_id.startswith("held-"):
            return api.CheckActionResponse(
                decision=api.CheckActionResponse.DECISION_HOLD, reason="second device detected"
            )
        if request.learner_id.startswith("late-"):
            await asyncio.sleep(GATE_DELAY)
        return api.CheckActionResponse(decision=api.CheckActionResponse.DECISION_ALLOW)


def record_signal(record: dict[str, object]) -> None:
    with open(SIGNALS_LOG, "a") as log:
        log.write(json.dumps(record) + "\n")


@service.subscribe(topic="proctoring.signals", event=EngagementSignal)
async def on_signal(signal: EngagementSignal, ctx: EventContext) -> None:
    record = json_format.MessageToDict(signal, preserving_proto_field_name=True)
    record["cloudevent_traceparent"] = ctx.traceparent
    record_signal(record)


service.add_servicer(api_grpc.add_ProctoringServiceServicer_to_server, Proctoring())

if __name__ == "__main__":
    service.run()
