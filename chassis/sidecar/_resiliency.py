"""Dapr Resiliency resources (`kind: Resiliency`): timeouts, retries and circuit breakers per target.

daprd applies a policy around every call to a component (outbound: state, publish, output binding),
to an app (service invocation) and from a component to the app (inbound: pub/sub delivery, input
bindings). The policy for a target is the named one from `spec.targets`, else the most specific
default policy name (`DefaultStatestoreComponentOutboundRetryPolicy`...), else the broadest
(`DefaultRetryPolicy`); each of timeout, retry and circuit breaker is resolved on its own.
"""

from __future__ import annotations

import ast
import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from chassis.sidecar._errors import ResourceError, SidecarError
from chassis.sidecar.components import parse_duration

__all__ = [
    "CircuitBreaker",
    "CircuitOpen",
    "Policy",
    "Resiliency",
    "RetryPolicy",
    "Trip",
    "parse_resiliency",
]

_T = TypeVar("_T")
Kind = Literal["timeout", "retry", "circuitBreaker"]
_POLICY_SECTIONS: dict[str, Kind] = {
    "timeouts": "timeout",
    "retries": "retry",
    "circuitBreakers": "circuitBreaker",
}
_DEFAULT_SUFFIX: dict[Kind, str] = {
    "timeout": "Timeout",
    "retry": "Retry",
    "circuitBreaker": "CircuitBreaker",
}
# cenkalti/backoff as daprd configures it for `policy: exponential`.
_INITIAL_INTERVAL = 0.5
_MULTIPLIER = 1.5
_RANDOMIZATION = 0.5


class CircuitOpen(SidecarError):
    """The circuit breaker refuses the call (gobreaker's ErrOpenState / ErrTooManyRequests text)."""


class PolicyTimeout(SidecarError):
    """The policy's timeout elapsed before the call finished (Go's context error text)."""

    def __init__(self) -> None:
        super().__init__("context deadline exceeded")


# ---- retries ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """`policy: constant|exponential`, `duration`, `maxInterval`, `maxRetries` (-1 = forever), `matching`.

    `matching.gRPCStatusCodes` / `httpStatusCodes` narrow which failures are retried (None: every one).
    """

    policy: Literal["constant", "exponential"] = "constant"
    duration: float = 5.0
    max_interval: float = 60.0
    max_retries: int = -1
    grpc_codes: frozenset[int] | None = None
    http_codes: frozenset[int] | None = None

    def delay(self, attempt: int) -> float | None:
        """Seconds to wait before retry number `attempt` (1 = first retry); None = give up."""
        if self.max_retries >= 0 and attempt > self.max_retries:
            return None
        if self.policy == "constant":
            return self.duration
        # next = prev x 1.5, each randomised x (0.5..1.5), capped at maxInterval.
        current = min(_INITIAL_INTERVAL * _MULTIPLIER ** max(0, attempt - 1), self.max_interval)
        factor = random.uniform(1 - _RANDOMIZATION, 1 + _RANDOMIZATION)
        return min(current * factor, self.max_interval)


# ---- circuit breakers ---------------------------------------------------------------------------

_TRIP_NAMES = frozenset(
    {"requests", "totalSuccesses", "totalFailures", "consecutiveSuccesses", "consecutiveFailures"}
)
_ALLOWED_NODES = (
    ast.Expression,
    ast.BoolOp,
    ast.And,
    ast.Or,
    ast.UnaryOp,
    ast.Not,
    ast.USub,
    ast.BinOp,
    ast.Add,
    ast.Sub,
    ast.Mult,
    ast.Div,
    ast.Compare,
    ast.Gt,
    ast.GtE,
    ast.Lt,
    ast.LtE,
    ast.Eq,
    ast.NotEq,
    ast.Name,
    ast.Load,
    ast.Constant,
)


class Trip:
    """A CEL `trip` expression over gobreaker's counts, e.g. `consecutiveFailures > 5`.

    The CEL subset daprd users write: the five count names, numbers, arithmetic, comparisons,
    `&&`, `||`, `!` and parentheses. It is parsed with Python's `ast` and only those nodes are
    allowed, so nothing else can run.
    """

    def __init__(self, expression: str) -> None:
        text = expression.replace("&&", " and ").replace("||", " or ")
        text = text.replace("!=", "\0").replace("!", " not ").replace("\0", "!=")
        try:
            tree = ast.parse(text.strip(), mode="eval")
        except SyntaxError:
            raise ValueError(f"invalid trip expression {expression!r}") from None
        for node in ast.walk(tree):
            if not isinstance(node, _ALLOWED_NODES):
                raise ValueError(f"trip expression {expression!r}: {type(node).__name__} is not supported")
            if isinstance(node, ast.Name) and node.id not in _TRIP_NAMES:
                raise ValueError(
                    f"trip expression {expression!r}: unknown name {node.id!r}"
                    f" (use {', '.join(sorted(_TRIP_NAMES))})"
                )
            if isinstance(node, ast.Constant) and not isinstance(node.value, int | float):
                raise ValueError(f"trip expression {expression!r}: only numbers are allowed")
        self.expression = expression
        self._code = compile(tree, "<trip>", "eval")

    def __call__(self, counts: Mapping[str, int]) -> bool:
        try:
            return bool(eval(self._code, {"__builtins__": {}}, dict(counts)))
        except ZeroDivisionError:
            return False


@dataclass(frozen=True)
class BreakerSpec:
    """`maxRequests` (half-open), `interval` (count reset, 0 = never), `timeout` (open -> half-open)."""

    max_requests: int = 1
    interval: float = 0.0
    timeout: float = 60.0
    trip: Trip = field(default_factory=lambda: Trip("consecutiveFailures > 5"))


class CircuitBreaker:
    """sony/gobreaker's state machine: closed -> open (trip) -> half-open (after timeout) -> closed."""

    def __init__(self, spec: BreakerSpec, clock: Callable[[], float] = time.monotonic) -> None:
        self.spec = spec
        self._clock = clock
        self.state: Literal["closed", "open", "half-open"] = "closed"
        self._counts = dict.fromkeys(_TRIP_NAMES, 0)
        self._expiry = 0.0  # closed: next count reset (0 = never); open: when it turns half-open
        self._set_state("closed")

    def _set_state(self, state: Literal["closed", "open", "half-open"]) -> None:
        self.state = state
        self._counts = dict.fromkeys(_TRIP_NAMES, 0)
        now = self._clock()
        if state == "closed":
            self._expiry = now + self.spec.interval if self.spec.interval > 0 else 0.0
        elif state == "open":
            self._expiry = now + self.spec.timeout
        else:
            self._expiry = 0.0

    def _tick(self) -> None:
        now = self._clock()
        if self.state == "closed" and self._expiry and now >= self._expiry:
            self._set_state("closed")  # a new generation: counts cleared
        elif self.state == "open" and now >= self._expiry:
            self._set_state("half-open")

    def before(self) -> None:
        """Admit one call or raise CircuitOpen."""
        self._tick()
        if self.state == "open":
            raise CircuitOpen("circuit breaker is open")
        if self.state == "half-open" and self._counts["requests"] >= self.spec.max_requests:
            raise CircuitOpen("too many requests")
        self._counts["requests"] += 1

    def after(self, success: bool) -> None:
        """Record the outcome of an admitted call."""
        counts = self._counts
        if success:
            counts["totalSuccesses"] += 1
            counts["consecutiveSuccesses"] += 1
            counts["consecutiveFailures"] = 0
            if self.state == "half-open" and counts["consecutiveSuccesses"] >= self.spec.max_requests:
                self._set_state("closed")
            return
        counts["totalFailures"] += 1
        counts["consecutiveFailures"] += 1
        counts["consecutiveSuccesses"] = 0
        if self.state == "half-open" or (self.state == "closed" and self.spec.trip(counts)):
            self._set_state("open")


# ---- policies -----------------------------------------------------------------------------------


def _always(error: BaseException) -> bool:
    return True


@dataclass
class Policy:
    """What applies to one target: any of timeout, retry and circuit breaker (None = not set)."""

    timeout: float | None = None
    retry: RetryPolicy | None = None
    breaker: CircuitBreaker | None = None

    @property
    def empty(self) -> bool:
        return self.timeout is None and self.retry is None and self.breaker is None

    def retry_delay(self, attempt: int) -> float | None:
        """Seconds before retry `attempt` (1 = first); None = give up (no retry policy: give up)."""
        return self.retry.delay(attempt) if self.retry else None

    async def run(
        self, fn: Callable[[], Awaitable[_T]], *, retryable: Callable[[BaseException], bool] = _always
    ) -> _T:
        """Call `fn` under the timeout, the breaker and the retries, as daprd's policy runner does.

        An error `retryable` rejects is returned at once and counts as a success for the breaker
        (it is the caller's mistake, e.g. an ETag mismatch, not a failing component).
        An open breaker is not retried.
        """
        attempt = 0
        while True:
            try:
                return await self._once(fn, retryable)
            except CircuitOpen:
                raise
            except Exception as err:
                attempt += 1
                delay = self.retry_delay(attempt) if retryable(err) else None
                if delay is None:
                    raise
            await asyncio.sleep(delay)

    async def _once(self, fn: Callable[[], Awaitable[_T]], retryable: Callable[[BaseException], bool]) -> _T:
        if self.breaker:
            self.breaker.before()
        try:
            if self.timeout is None:
                result = await fn()
            else:
                try:
                    async with asyncio.timeout(self.timeout):
                        result = await fn()
                except TimeoutError:
                    raise PolicyTimeout() from None
        except Exception as err:
            if self.breaker:
                self.breaker.after(not retryable(err))
            raise
        if self.breaker:
            self.breaker.after(True)
        return result


NO_POLICY = Policy()


@dataclass
class Resiliency:
    """The merged Resiliency resources in scope for one app; hands out cached policies per target."""

    timeouts: dict[str, float] = field(default_factory=dict)
    retries: dict[str, RetryPolicy] = field(default_factory=dict)
    breakers: dict[str, BreakerSpec] = field(default_factory=dict)
    apps: dict[str, dict[str, str]] = field(default_factory=dict)
    components: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)  # name -> in/outbound
    names: list[str] = field(default_factory=list)
    _cache: dict[tuple[str, str], Policy] = field(default_factory=dict)

    def app(self, app_id: str) -> Policy:
        """Policy for calls to app `app_id` (service invocation)."""
        return self._policy(("app", app_id), self.apps.get(app_id, {}), ["App"])

    def component_outbound(self, name: str, kind: str = "") -> Policy:
        """Policy for sidecar -> component calls; `kind` is the type's block (state, pubsub, bindings...)."""
        target = self.components.get(name, {}).get("outbound", {})
        block = _block(kind)
        specific = [f"{block}ComponentOutbound"] if block else []
        return self._policy(("out", name), target, [*specific, "ComponentOutbound", "Component"])

    def component_inbound(self, name: str, kind: str = "") -> Policy:
        """Policy for component -> app calls (pub/sub delivery, input binding events)."""
        target = self.components.get(name, {}).get("inbound", {})
        block = _block(kind)
        specific = [f"{block}ComponentInbound"] if block in ("Pubsub", "Binding") else []
        return self._policy(("in", name), target, [*specific, "ComponentInbound", "Component"])

    def _policy(self, key: tuple[str, str], target: Mapping[str, str], defaults: list[str]) -> Policy:
        if key not in self._cache:
            timeout = self._resolve("timeout", target, defaults, self.timeouts)
            retry = self._resolve("retry", target, defaults, self.retries)
            breaker = self._resolve("circuitBreaker", target, defaults, self.breakers)
            self._cache[key] = Policy(timeout, retry, CircuitBreaker(breaker) if breaker else None)
        return self._cache[key]

    @staticmethod
    def _resolve(kind: Kind, target: Mapping[str, str], defaults: list[str], named: Mapping[str, Any]) -> Any:
        """Named target policy, else Default<Specific><Kind>Policy ... Default<Kind>Policy."""
        if kind in target:
            return named[target[kind]]
        suffix = _DEFAULT_SUFFIX[kind]
        for middle in [*defaults, ""]:
            candidate = f"Default{middle}{suffix}Policy"
            if candidate in named:
                return named[candidate]
        return None


def _block(kind: str) -> str:
    """`state.sqlite` -> `Statestore` (the word daprd's default policy names use)."""
    prefix = kind.split(".", 1)[0]
    return {
        "state": "Statestore",
        "pubsub": "Pubsub",
        "bindings": "Binding",
        "secretstores": "Secretstore",
        "configuration": "Configuration",
        "lock": "Lock",
    }.get(prefix, "")


# ---- YAML -------------------------------------------------------------------------------------


def parse_resiliency(into: Resiliency, where: str, doc: Mapping[str, Any]) -> None:
    """Merge one `kind: Resiliency` document into `into`; ResourceError naming the field when invalid."""
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        raise ResourceError(where, "spec", "missing or not a mapping")
    policies = _section(where, spec, "policies", "spec.policies")
    into.names.append(str((doc.get("metadata") or {}).get("name", where)))
    for section in _POLICY_SECTIONS:
        for name, value in _section(where, policies, section, f"spec.policies.{section}").items():
            _add_policy(into, where, section, str(name), value)
    _parse_targets(into, where, _section(where, spec, "targets", "spec.targets"))


def _section(where: str, parent: Mapping[str, Any], key: str, label: str) -> Mapping[str, Any]:
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ResourceError(where, label, "expected a mapping")
    return value


def _add_policy(into: Resiliency, where: str, section: str, name: str, value: Any) -> None:
    label = f"spec.policies.{section}.{name}"
    if section == "timeouts":
        into.timeouts[name] = _duration(where, label, value)
    elif section == "retries":
        into.retries[name] = _retry(where, label, value)
    else:
        into.breakers[name] = _breaker(where, label, value)


def _duration(where: str, label: str, value: Any) -> float:
    try:
        seconds = parse_duration(str(value))
    except ValueError as err:
        raise ResourceError(where, label, str(err)) from None
    if seconds < 0:
        raise ResourceError(where, label, "must not be negative")
    return seconds


def _int(where: str, label: str, value: Any) -> int:
    try:
        return int(str(value))
    except ValueError:
        raise ResourceError(where, label, f"expected an integer, got {value!r}") from None


def _fields(where: str, label: str, value: Any, allowed: set[str]) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ResourceError(where, label, "expected a mapping")
    for key in value:
        if key not in allowed:
            raise ResourceError(
                where, f"{label}.{key}", f"unknown field (allowed: {', '.join(sorted(allowed))})"
            )
    return value


def _retry(where: str, label: str, value: Any) -> RetryPolicy:
    spec = _fields(where, label, value, {"policy", "duration", "maxInterval", "maxRetries", "matching"})
    policy = str(spec.get("policy", "constant"))
    if policy not in ("constant", "exponential"):
        raise ResourceError(where, f"{label}.policy", f"expected constant or exponential, got {policy!r}")
    matching = _fields(where, f"{label}.matching", spec.get("matching") or {}, set(_STATUS_RANGES))
    grpc_label, http_label = f"{label}.matching.gRPCStatusCodes", f"{label}.matching.httpStatusCodes"
    return RetryPolicy(
        "constant" if policy == "constant" else "exponential",
        _duration(where, f"{label}.duration", spec.get("duration", "5s")),
        _duration(where, f"{label}.maxInterval", spec.get("maxInterval", "60s")),
        _int(where, f"{label}.maxRetries", spec.get("maxRetries", -1)),
        _status_codes(where, grpc_label, matching.get("gRPCStatusCodes")),
        _status_codes(where, http_label, matching.get("httpStatusCodes")),
    )


# The codes `matching` may list, as daprd validates them.
_STATUS_RANGES = {"gRPCStatusCodes": (0, 16), "httpStatusCodes": (100, 599)}


def _status_codes(where: str, label: str, value: Any) -> frozenset[int] | None:
    """`"429,500-599"` -> those codes; empty or unset -> None (retry every failure), as daprd."""
    text = "" if value is None else str(value).strip()
    if not text:
        return None
    low, high = _STATUS_RANGES[label.rsplit(".", 1)[1]]
    codes: set[int] = set()
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        try:
            start, end = int(first), int(last or first)
        except ValueError:
            raise ResourceError(
                where, label, f"expected codes or ranges like 429,500-599, got {part!r}"
            ) from None
        if not low <= start <= end <= high:
            raise ResourceError(where, label, f"{part.strip()!r} is not a range within {low}-{high}")
        codes.update(range(start, end + 1))
    return frozenset(codes)


def _breaker(where: str, label: str, value: Any) -> BreakerSpec:
    spec = _fields(where, label, value, {"maxRequests", "interval", "timeout", "trip"})
    try:
        trip = Trip(str(spec.get("trip", "consecutiveFailures > 5")))
    except ValueError as err:
        raise ResourceError(where, f"{label}.trip", str(err)) from None
    return BreakerSpec(
        max(1, _int(where, f"{label}.maxRequests", spec.get("maxRequests", 1))),
        _duration(where, f"{label}.interval", spec.get("interval", "0s")),
        _duration(where, f"{label}.timeout", spec.get("timeout", "60s")),
        trip,
    )


_TARGET_KEYS: dict[str, tuple[Kind, str]] = {
    "timeout": ("timeout", "timeouts"),
    "retry": ("retry", "retries"),
    "circuitBreaker": ("circuitBreaker", "circuitBreakers"),
}


def _parse_targets(into: Resiliency, where: str, targets: Mapping[str, Any]) -> None:
    for app_id, value in _section(where, targets, "apps", "spec.targets.apps").items():
        into.apps[str(app_id)] = _target(into, where, f"spec.targets.apps.{app_id}", value)
    for name, value in _section(where, targets, "components", "spec.targets.components").items():
        label = f"spec.targets.components.{name}"
        directions = _fields(where, label, value, {"inbound", "outbound"})
        into.components[str(name)] = {
            direction: _target(into, where, f"{label}.{direction}", directions[direction])
            for direction in directions
        }


def _target(into: Resiliency, where: str, label: str, value: Any) -> dict[str, str]:
    allowed = {*_TARGET_KEYS, "circuitBreakerScope", "circuitBreakerCacheSize"}
    spec = _fields(where, label, value, allowed)
    known: dict[str, Mapping[str, object]] = {
        "timeouts": into.timeouts,
        "retries": into.retries,
        "circuitBreakers": into.breakers,
    }
    target: dict[str, str] = {}
    for key, (kind, section) in _TARGET_KEYS.items():
        if key in spec:
            name = str(spec[key])
            if name not in known[section]:
                raise ResourceError(where, f"{label}.{key}", f"no {section} policy named {name!r}")
            target[kind] = name
    return target


def redelivery_delay(policy: Policy, attempts: int, *, dead_letter: bool, fallback: float) -> float | None:
    """When to redeliver a pub/sub message the app failed `attempts` times; None = dead-letter it now.

    With an inbound retry policy its delays apply; once exhausted the message goes to the dead-letter
    topic if there is one (as daprd does), else back to the broker's own back-off (`fallback`).
    Without a policy: the broker's back-off, unless a dead-letter topic takes the message at once.
    """
    if policy.retry is not None:
        delay = policy.retry_delay(attempts)
        if delay is not None:
            return delay
    return None if dead_letter else fallback
