"""The retry policy around every call the chassis makes to a sidecar or, through it, to another service.

Only failures that say "try again" are retried (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED);
an ETag conflict (ABORTED) or bad input (INVALID_ARGUMENT) is an answer, and retrying cannot change it.
"""

from __future__ import annotations

import logging

import grpc
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

TRANSIENT_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
)

_log = logging.getLogger("chassis.resilience")


def grpc_code_of(exc: BaseException) -> grpc.StatusCode | None:
    """The gRPC status behind an error, also when the Dapr SDK wrapped it (DaprInternalError's cause)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        code = getattr(current, "code", None)
        if callable(code):
            value = code()
            if isinstance(value, grpc.StatusCode):
                return value
        current = current.__cause__ or current.__context__
    return None


def is_transient(exc: BaseException) -> bool:
    """True when the error means the peer could not answer now, so the same call may succeed later."""
    return grpc_code_of(exc) in TRANSIENT_CODES


def retrying(
    *,
    attempts: int = 5,
    max_seconds: float = 30.0,
    initial_backoff: float = 0.1,
    max_backoff: float = 2.0,
) -> AsyncRetrying:
    """A tenacity policy: exponential back-off, full jitter, at most `attempts` tries within `max_seconds`.

    Use as `await retrying()(coroutine_function, *args)` (a plain lambda returning a coroutine is not
    awaited per attempt) or `async for attempt in retrying(): with attempt: ...`; the last error is
    re-raised as it was when the policy gives up.
    """
    return AsyncRetrying(
        retry=retry_if_exception(is_transient),
        stop=stop_after_attempt(attempts) | stop_after_delay(max_seconds),
        # "Full jitter": a random wait up to the exponential bound, so many clients do not retry in step.
        wait=wait_random_exponential(multiplier=initial_backoff, max=max_backoff),
        before_sleep=_log_retry,
        reraise=True,
    )


def _log_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    _log.warning(
        "transient failure, retrying (attempt %d): %s",
        state.attempt_number,
        grpc_code_of(error) if error else None,
    )
