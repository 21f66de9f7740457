"""The {{ cookiecutter.service_name }} service: its gRPC API, with records kept in the Dapr state store."""

from __future__ import annotations

from typing import Any

import grpc
from chassis import Service, load_settings
from mooc.{{ cookiecutter.service_slug }}.v1 import {{ cookiecutter.service_slug }}_pb2 as pb
from mooc.{{ cookiecutter.service_slug }}.v1 import {{ cookiecutter.service_slug }}_pb2_grpc as pb_grpc

from {{ cookiecutter.service_slug }}.settings import Settings

APP_ID = "{{ cookiecutter.service_name }}"
Context = grpc.aio.ServicerContext[Any, Any]


def check_record(record: pb.Record, max_title_length: int) -> str | None:
    """What is wrong with `record` by this service's settings, or None when it can be stored.

    The proto's protovalidate rules (an id, bounded lengths) were checked before the call got here.
    """
    if len(record.title) > max_title_length:
        return f"record.title is longer than {max_title_length} characters"
    return None


class {{ cookiecutter.service_pascal }}Servicer(pb_grpc.{{ cookiecutter.service_pascal }}ServiceServicer):
    """Implements mooc.{{ cookiecutter.service_slug }}.v1.{{ cookiecutter.service_pascal }}Service."""

    def __init__(self, service: Service, settings: Settings) -> None:
        self._records = service.state(pb.Record)
        self._settings = settings

    async def PutRecord(self, request: pb.PutRecordRequest, context: Context) -> pb.PutRecordResponse:
        problem = check_record(request.record, self._settings.max_title_length)
        if problem is not None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        await self._records.save(request.record.record_id, request.record)
        return pb.PutRecordResponse(record_id=request.record.record_id)

    async def GetRecord(self, request: pb.GetRecordRequest, context: Context) -> pb.Record:
        stored = await self._records.get(request.record_id) if request.record_id else None
        if stored is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no record {request.record_id!r}")
        return stored.value


def build_service(settings: Settings | None = None) -> Service:
    """The service with its servicer registered; `run()` it, or `serve()` it inside a test."""
    settings = settings or load_settings(Settings)
    service = Service(APP_ID, settings)
    service.add_servicer(
        pb_grpc.add_{{ cookiecutter.service_pascal }}ServiceServicer_to_server,
        {{ cookiecutter.service_pascal }}Servicer(service, settings),
    )
    return service
