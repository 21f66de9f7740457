"""A stand-in consumer of `grades` for the service test: appends every event it receives to a file."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from chassis import EventContext, Service, ServiceSettings, load_settings
from google.protobuf import json_format
from mooc.events.v1.grading_pb2 import GradeCompleted

OUT = Path(os.environ["GRADE_WATCHER_OUT"])

service = Service("grade-watcher", load_settings(ServiceSettings))


def append(line: dict[str, object]) -> None:
    with OUT.open("a", encoding="utf-8") as out:
        out.write(json.dumps(line) + "\n")


@service.subscribe(topic="grades", event=GradeCompleted)
async def record(event: GradeCompleted, ctx: EventContext) -> None:
    line = {"id": ctx.id, "event": json_format.MessageToDict(event, preserving_proto_field_name=True)}
    await asyncio.to_thread(append, line)


if __name__ == "__main__":
    service.run()
