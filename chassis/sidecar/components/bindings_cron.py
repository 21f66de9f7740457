"""`bindings.cron` (input): fire an event on a schedule, as Dapr's cron binding does.

`schedule` accepts robfig/cron's SecondOptional parser syntax: 5 fields, or 6 with seconds first,
the descriptors `@yearly`...`@hourly`, `@every <duration>`, and a `CRON_TZ=<zone>` (or `TZ=`) prefix.
Each fire carries empty data and the metadata {"timeZone", "readTimeUTC"}.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter  # type: ignore[import-untyped]

from chassis.sidecar._errors import InvalidMetadata
from chassis.sidecar.components import BindingCallback, Driver, meta_get, parse_duration

__all__ = ["DRIVER", "CronBinding", "Schedule", "parse_schedule"]

log = logging.getLogger("chassis.sidecar.bindings.cron")

_DESCRIPTORS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule: `next_after(t)` is the next fire time (epoch seconds) strictly after t."""

    zone_name: str
    zone: tzinfo
    every: float | None = None
    cron: str = ""

    def next_after(self, now: float) -> float:
        if self.every is not None:
            return now + self.every
        start = datetime.fromtimestamp(now, self.zone)
        seconds = len(self.cron.split()) == 6
        it = croniter(self.cron, start, second_at_beginning=seconds)
        nxt: datetime = it.get_next(datetime)
        return nxt.timestamp()


def parse_schedule(text: str) -> Schedule:
    """Parse a `schedule` value; ValueError saying what is wrong."""
    spec = text.strip()
    zone_name, zone = "Local", datetime.now().astimezone().tzinfo or UTC
    if spec.startswith(("CRON_TZ=", "TZ=")):
        prefix, _, spec = spec.partition(" ")
        zone_name = prefix.split("=", 1)[1]
        try:
            zone = ZoneInfo(zone_name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {zone_name!r}") from None
        spec = spec.strip()
    if spec.startswith("@every"):
        every = parse_duration(spec.removeprefix("@every").strip())
        if every <= 0:
            raise ValueError(f"@every needs a positive duration, got {spec!r}")
        return Schedule(zone_name, zone, every=every)
    cron = _DESCRIPTORS.get(spec, spec)
    if cron.startswith("@"):
        raise ValueError(f"unknown descriptor {spec!r}")
    if len(cron.split()) not in (5, 6):
        raise ValueError(f"expected 5 or 6 fields (seconds first), got {len(cron.split())} in {spec!r}")
    if not croniter.is_valid(cron, second_at_beginning=len(cron.split()) == 6):
        raise ValueError(f"invalid cron expression {spec!r}")
    return Schedule(zone_name, zone, cron=cron)


def go_time_string(moment: datetime) -> str:
    """Go's `time.Time.String()` for a UTC time: `2006-01-02 15:04:05.999999999 +0000 UTC`."""
    fraction = f"{moment.microsecond:06d}".rstrip("0")
    return moment.strftime("%Y-%m-%d %H:%M:%S") + (f".{fraction}" if fraction else "") + " +0000 UTC"


class CronBinding:
    """Runs one timer task between start() and stop()."""

    def __init__(self, name: str, schedule: Schedule, clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self.schedule = schedule
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls, name: str, metadata: Mapping[str, str], *, app_id: str, base_dir: Path
    ) -> CronBinding:
        return cls(name, parse_schedule(meta_get(metadata, "schedule")))

    async def start(self, callback: BindingCallback) -> None:
        self._task = asyncio.create_task(self._run(callback), name=f"cron-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def close(self) -> None:
        await self.stop()

    async def _run(self, callback: BindingCallback) -> None:
        due = self.schedule.next_after(self._clock())
        while True:
            await asyncio.sleep(max(0.0, due - self._clock()))
            metadata = {"timeZone": self.schedule.zone_name, "readTimeUTC": go_time_string(datetime.now(UTC))}
            try:
                await callback(b"", metadata)
            except Exception:  # a failing handler must not stop the schedule
                log.exception("cron binding %s: delivering the event failed", self.name)
            # Skip fires missed while the handler ran (robfig/cron does not queue them either).
            due = self.schedule.next_after(max(due, self._clock()))


def _check(metadata: Mapping[str, str]) -> None:
    try:
        parse_schedule(meta_get(metadata, "schedule"))
    except ValueError as err:
        raise InvalidMetadata("schedule", str(err)) from None


DRIVER = Driver(
    kind="bindings", versions=("v1",), required=("schedule",), check=_check, open=CronBinding.open
)
