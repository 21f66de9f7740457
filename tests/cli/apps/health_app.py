"""Test app for `chassis up`: a gRPC server on APP_PORT answering grpc.health.v1 SERVING until SIGTERM."""

import asyncio
import json
import os
import signal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


async def main() -> None:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{os.environ['APP_PORT']}")
    await server.start()
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    names = ["APP_ID", "APP_PORT", "DAPR_GRPC_PORT", "GREETING"]
    print("env " + json.dumps({"cwd": os.getcwd(), **{n: os.environ.get(n) for n in names}}), flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(grace=1)


asyncio.run(main())
