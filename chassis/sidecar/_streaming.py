"""Streaming subscriptions (`SubscribeTopicEventsAlpha1`) as daprd serves them: no app port needed.

The client's first message must be an `initial_request{pubsub_name, topic, metadata, dead_letter_topic}`;
the sidecar answers `initial_response{}` first (the SDK discards it), then one `event_message` per event.
The client acks each by id with `event_processed{id, status}`; several events may be in flight. One
stream per pubsub/topic per app: a second initial request for the same topic is rejected. When the
stream ends, unacknowledged events are redelivered to the next subscriber.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
from dapr.proto.runtime.v1 import pubsub_pb2

from chassis.sidecar import _cloudevents as ce
from chassis.sidecar import _status
from chassis.sidecar._errors import SidecarError
from chassis.sidecar._outcomes import Delivery, Outcome, status_outcome
from chassis.sidecar._status import ApiError
from chassis.sidecar._subscriptions import Subscription, streaming

if TYPE_CHECKING:
    from chassis.sidecar._delivery import Deliverer
    from chassis.sidecar._grpc_api import ApiContext

log = logging.getLogger("chassis.sidecar.streaming")

Context = grpc.aio.ServicerContext[Any, Any]
_Response = pubsub_pb2.SubscribeTopicEventsResponseAlpha1
_Request = pubsub_pb2.SubscribeTopicEventsRequestAlpha1


class StreamSink:
    """Delivers events over one open stream and waits for the client's ack of each."""

    def __init__(self, context: Context) -> None:
        self._context = context
        self._pending: dict[str, asyncio.Future[int]] = {}
        self._write_lock = asyncio.Lock()  # one writer at a time on a gRPC stream
        self._opened = asyncio.Event()
        self._closed = False

    async def open(self) -> None:
        """Send the initial response; events may follow only after it."""
        await self._write(_Response(initial_response=pubsub_pb2.SubscribeTopicEventsResponseInitialAlpha1()))
        self._opened.set()

    async def deliver(self, delivery: Delivery) -> Outcome:
        """Send one event_message and wait for its event_processed; a closed stream hands it back."""
        await self._opened.wait()
        try:
            request = ce.topic_event_request(
                delivery.event, topic=delivery.topic, pubsub=delivery.pubsub, path=delivery.path
            )
        except ce.EnvelopeError as err:
            log.warning("cannot read pub/sub event %s: %s", delivery.id, err)
            return Outcome.RETRY
        if self._closed or request.id in self._pending:  # the same id in flight: try again later
            return Outcome.REQUEUE
        answer = self._pending[request.id] = asyncio.get_running_loop().create_future()
        try:
            await self._write(_Response(event_message=request))
            return status_outcome(request.id, await answer)
        except Exception:  # StreamClosed, or the write failed because the RPC is over
            return Outcome.REQUEUE
        finally:
            self._pending.pop(request.id, None)

    async def deliver_bulk(self, batch: list[Delivery]) -> list[Outcome]:
        """Streams have no bulk form (daprd neither): each event separately."""
        return list(await asyncio.gather(*(self.deliver(d) for d in batch)))

    def acked(self, processed: pubsub_pb2.SubscribeTopicEventsRequestProcessedAlpha1) -> None:
        answer = self._pending.get(processed.id)
        if answer is None or answer.done():
            log.warning("ack for unknown or already answered pub/sub event %s ignored", processed.id)
            return
        answer.set_result(processed.status.status)

    def close(self) -> None:
        """The stream ended: every event still waiting for an ack is redelivered later."""
        self._closed = True
        self._opened.set()  # deliveries waiting for the initial response see the stream closed
        for answer in self._pending.values():
            if not answer.done():
                answer.set_exception(StreamClosed())

    async def _write(self, response: _Response) -> None:
        async with self._write_lock:
            await self._context.write(response)


class StreamClosed(Exception):
    """The client went away before acknowledging."""


async def subscribe_topic_events(ctx: ApiContext, context: Context) -> None:
    """Serve one SubscribeTopicEventsAlpha1 stream until the client or the sidecar ends it."""
    deliverer = ctx.deliverer
    if deliverer is None:
        await _status.unimplemented("SubscribeTopicEventsAlpha1").abort(context)
    sink = StreamSink(context)
    try:
        sub = await _subscribe(context, deliverer, sink)
    except ApiError as err:
        await err.abort(context)
    if sub is None:
        return
    log.info("streaming subscription to %s/%s opened", sub.pubsub, sub.topic)
    try:
        await sink.open()
        await _read_acks(context, sink, deliverer)
    finally:
        deliverer.remove(sub.pubsub, sub.topic, sink)
        sink.close()
        log.info("streaming subscription to %s/%s closed", sub.pubsub, sub.topic)


async def _subscribe(context: Context, deliverer: Deliverer, sink: StreamSink) -> Subscription | None:
    """Read and check the initial request, then bind the topic to this stream (None: client left)."""
    first = await context.read()
    if not isinstance(first, _Request):  # grpc.aio.EOF: the client half-closed at once
        return None
    initial = _initial_request(first)
    sub = streaming(initial.pubsub_name, initial.topic, dict(initial.metadata), initial.dead_letter_topic)
    if deliverer.bound(sub.pubsub, sub.topic):
        # daprd's compstore error (a plain Go error, so gRPC UNKNOWN).
        message = f"streamer already subscribed to pubsub {sub.pubsub!r} topic {sub.topic!r}"
        raise ApiError(grpc.StatusCode.UNKNOWN, message)
    try:
        await deliverer.add(sub, sink)
    except SidecarError as err:
        raise ApiError(grpc.StatusCode.UNKNOWN, str(err)) from None
    return sub


def _initial_request(
    first: pubsub_pb2.SubscribeTopicEventsRequestAlpha1,
) -> pubsub_pb2.SubscribeTopicEventsRequestInitialAlpha1:
    """daprd's checks, in its order (plain Go errors: gRPC UNKNOWN)."""
    if not first.HasField("initial_request"):
        raise ApiError(grpc.StatusCode.UNKNOWN, "initial request is required")
    initial = first.initial_request
    if not initial.pubsub_name:
        raise ApiError(grpc.StatusCode.UNKNOWN, "pubsubName is required")
    if not initial.topic:
        raise ApiError(grpc.StatusCode.UNKNOWN, "topic is required")
    return initial


async def _read_acks(context: Context, sink: StreamSink, deliverer: Deliverer) -> None:
    """Read event_processed messages until the client half-closes or the sidecar stops."""
    stopping = asyncio.create_task(deliverer.stopping.wait())
    try:
        while True:
            reading = asyncio.ensure_future(context.read())
            done, _ = await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if reading not in done:
                reading.cancel()
                with contextlib.suppress(BaseException):
                    await reading
                return  # the sidecar stops: end the stream (the SDK reconnects to the next one)
            message = reading.result()
            if not isinstance(message, _Request):  # grpc.aio.EOF
                return
            if message.HasField("event_processed"):
                sink.acked(message.event_processed)
    finally:
        stopping.cancel()
