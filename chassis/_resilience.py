"""Client-side resilience: which failures the chassis retries, and where each Resiliency policy runs.

Every policy of the Dapr Resiliency YAML runs in exactly one place, so retries never multiply:

- the sidecar runs what daprd runs: a component's outbound timeout, retries and circuit breaker
  (state, publish, output bindings), and an app's timeout and circuit breaker on proxied calls;
- the chassis runs what daprd leaves to the client: the *retry* policy of `apps.<appId>` (or Dapr's
  default app retry policy names) around unary calls through `chassis.invoke.channel`, because a
  proxied gRPC stream cannot be replayed by the sidecar.

So a sidecar call whose component has an outbound retry policy is made once (`Dapr.call`), a call to
an app without a retry policy keeps the built-in transient policy (`retrying()`), and nothing retries
an answer from an open circuit breaker: the breaker said stop. The hop from the app to its own
sidecar (sidecar restarting, connection refused) never reached the sidecar, so waiting for it is not
stacking: the chassis's calls use gRPC's `wait_for_ready`, bounded by the call's deadline.

The YAML is read from the same resources folders the sidecar reads (`CHASSIS_RESOURCES_PATH`, which
`chassis run`/`chassis up` export), filtered by `scopes` with the sidecar's own parser.
Only failures that say "try again" are retried (UNAVAILABLE, DEADLINE_EXCEEDED of one attempt while
the caller's deadline has time left); an ETag conflict (ABORTED) or bad input (INVALID_ARGUMENT) is an
answer, and retrying cannot change it.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    stop_before_delay,
    stop_never,
    wait_random_exponential,
)
from tenacity.stop import stop_base

from chassis._errors import ConfigError

if TYPE_CHECKING:
    from chassis.sidecar._resiliency import Resiliency, RetryPolicy

TRANSIENT_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
)
# What a YAML app retry policy retries: the callee (or the way to it) could not answer in time.
APP_RETRY_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
# gobreaker's ErrOpenState / ErrTooManyRequests, as daprd and the embedded sidecar word a refusal.
BREAKER_REFUSALS = ("circuit breaker is open", "too many requests")
DEFAULT_ATTEMPTS = 5

_log = logging.getLogger("chassis.resilience")


def grpc_code_of(exc: BaseException) -> grpc.StatusCode | None:
    """The gRPC status behind an error, also when the Dapr SDK wrapped it (DaprInternalError's cause)."""
    for error in _chain(exc):
        code = getattr(error, "code", None)
        if callable(code):
            value = code()
            if isinstance(value, grpc.StatusCode):
                return value
    return None


def _details_of(exc: BaseException) -> str:
    for error in _chain(exc):
        details = getattr(error, "details", None)
        if callable(details):
            text = details()
            if isinstance(text, str):
                return text
    return str(exc)


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not s for s in seen):
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def is_breaker_refusal(exc: BaseException) -> bool:
    """True when a circuit breaker refused the call (UNAVAILABLE "circuit breaker is open" ...)."""
    if grpc_code_of(exc) != grpc.StatusCode.UNAVAILABLE:
        return False
    details = _details_of(exc)
    return any(refusal in details for refusal in BREAKER_REFUSALS)


def is_transient(exc: BaseException) -> bool:
    """True when the error means the peer could not answer now, so the same call may succeed later."""
    return grpc_code_of(exc) in TRANSIENT_CODES and not is_breaker_refusal(exc)


def retrying(
    *,
    attempts: int = DEFAULT_ATTEMPTS,
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


def app_retrying(policy: RetryPolicy | None, *, budget: float) -> AsyncRetrying:
    """The retries around one call to an app, all of them within `budget` seconds (the caller's deadline).

    With a YAML retry policy: its back-off (constant `duration`, or exponential up to `maxInterval`
    with daprd's randomisation) and `maxRetries`, on UNAVAILABLE and DEADLINE_EXCEEDED (or the codes
    its `matching.gRPCStatusCodes` lists). Without one: the built-in transient policy. Either way
    no retry starts once the deadline would pass, and an open circuit breaker's answer is final.
    """
    if policy is None:
        return retrying().copy(stop=stop_after_attempt(DEFAULT_ATTEMPTS) | stop_before_delay(budget))
    retries = policy.max_retries
    attempts: stop_base = stop_after_attempt(retries + 1) if retries >= 0 else stop_never
    return AsyncRetrying(
        retry=retry_if_exception(functools.partial(_app_retryable, policy)),
        stop=attempts | stop_before_delay(budget),
        wait=lambda state: policy.delay(state.attempt_number) or 0.0,
        before_sleep=_log_retry,
        reraise=True,
    )


def _app_retryable(policy: RetryPolicy, exc: BaseException) -> bool:
    """UNAVAILABLE or DEADLINE_EXCEEDED, or the codes the policy's `matching.gRPCStatusCodes` lists."""
    code = grpc_code_of(exc)
    if code is None or is_breaker_refusal(exc):
        return False
    if policy.grpc_codes is not None:
        return int(code.value[0]) in policy.grpc_codes
    return code in APP_RETRY_CODES


def _log_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    _log.warning(
        "transient failure, retrying (attempt %d): %s",
        state.attempt_number,
        grpc_code_of(error) if error else None,
    )


class Deadline:
    """One overall deadline that every attempt of a call shares."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._ends = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(0.0, self._ends - time.monotonic())


# ---- the policies in the Resiliency YAML --------------------------------------------------------


@dataclass(frozen=True)
class ClientPolicies:
    """The part of the Resiliency YAML the chassis acts on, for one app (its `scopes`)."""

    resiliency: Resiliency | None = None
    kinds: dict[str, str] = field(default_factory=dict)  # component name -> type, for default names

    def app_retry(self, app_id: str) -> RetryPolicy | None:
        """The retry policy for calls to `app_id` (named, else DefaultAppRetryPolicy/DefaultRetryPolicy)."""
        return self.resiliency.app(app_id).retry if self.resiliency else None

    def sidecar_retries(self, component: str) -> bool:
        """True when the sidecar retries calls to `component` (it has an outbound retry policy)."""
        if self.resiliency is None:
            return False
        return self.resiliency.component_outbound(component, self.kinds.get(component, "")).retry is not None


NO_POLICIES = ClientPolicies()


def load_policies(paths: Sequence[Path], app_id: str) -> ClientPolicies:
    """The Resiliency documents in scope for `app_id` in `paths`; ConfigError naming file and field."""
    if not paths:
        return NO_POLICIES
    return _load(tuple(Path(p).resolve() for p in paths), app_id)


@functools.lru_cache(maxsize=32)
def _load(paths: tuple[Path, ...], app_id: str) -> ClientPolicies:
    """Read once per process: the YAML is start-up configuration, as it is for the sidecar."""
    # The sidecar's own parser, imported only when there is YAML to read (it brings every driver).
    from chassis.sidecar import _resources
    from chassis.sidecar._errors import ResourceError

    try:
        return ClientPolicies(_resources.load_resiliency(paths, app_id), _resources.component_types(paths))
    except ResourceError as err:
        raise ConfigError(str(err)) from None
