"""The invoke benchmark's target: a bare grpc.aio server answering grpc.health.v1 Check (no protos)."""

from __future__ import annotations

import asyncio
import os

import grpc
from grpc_health.v1 import health, health_pb2_grpc


async def serve(port: int) -> None:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(serve(int(os.environ["APP_PORT"])))
