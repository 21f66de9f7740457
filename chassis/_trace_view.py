"""`chassis trace TRACE_ID`: one trace of the JSON-lines span file, drawn as a waterfall in the terminal.

The file is the one CHASSIS_TRACE_FILE names (see `chassis._telemetry.span_record` for its lines);
every process of a run appends to it, so one trace shows every hop: apps and sidecars alike.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from chassis._telemetry import TRACE_FILE_ENV

DEFAULT_TRACE_FILE = Path(".chassis") / "traces.jsonl"
MIN_BAR = 10
MIN_LABEL = 20
BLOCK = "█"

Span = dict[str, Any]


def default_trace_file() -> Path:
    """$CHASSIS_TRACE_FILE, else `.chassis/traces.jsonl` in the current folder."""
    return Path(os.environ.get(TRACE_FILE_ENV) or DEFAULT_TRACE_FILE)


def main_trace(trace_id: str, path: Path) -> int:
    """Print the waterfall of `trace_id`; one line on stderr and 1 when there is nothing to draw."""
    try:
        spans = read_trace(path, trace_id)
    except FileNotFoundError:
        print(
            f"chassis trace: no trace file at {path} (set {TRACE_FILE_ENV} or pass --file)", file=sys.stderr
        )
        return 1
    except OSError as err:
        print(f"chassis trace: cannot read {path}: {err.strerror}", file=sys.stderr)
        return 1
    if not spans:
        print(f"chassis trace: trace {trace_id} is not in {path}", file=sys.stderr)
        return 1
    print("\n".join(render(spans, shutil.get_terminal_size().columns)))
    return 0


def read_trace(path: Path, trace_id: str) -> list[Span]:
    """Every span record of `trace_id` in the file (FileNotFoundError when there is no file)."""
    wanted = trace_id.strip().lower()
    spans = []
    with path.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # not a span line (the file is shared; a crashed writer may leave half a line)
            if isinstance(record, dict) and record.get("trace_id") == wanted and _has_times(record):
                spans.append(record)
    return spans


def _has_times(record: Span) -> bool:
    return isinstance(record.get("start"), int) and isinstance(record.get("end"), int)


def render(spans: list[Span], width: int) -> list[str]:
    """The waterfall: a title, a column header, then one line per span in tree order.

    Columns: service, span name indented under its parent (`!` marks an error), start offset and
    duration in ms, and the span's bar on a timeline of the whole trace filling the rest of `width`.
    """
    rows = list(tree_order(spans))
    services = [str(span.get("service") or "?") for _, span in rows]
    origin = min(span["start"] for span in spans)
    total = max(max(span["end"] for span in spans) - origin, 1)
    labels = [_label(span, depth) for depth, span in rows]
    starts = [f"{(span['start'] - origin) / 1e6:.1f}" for _, span in rows]
    durations = [f"{(span['end'] - span['start']) / 1e6:.1f}" for _, span in rows]
    start_w = max(len("start ms"), *map(len, starts))
    dur_w = max(len("ms"), *map(len, durations))
    service_w = max(len("service"), *map(len, services))
    fixed_w = service_w + 2 + 2 + start_w + 2 + dur_w + 2
    label_w = min(max(len("span"), *map(len, labels)), max(MIN_LABEL, width - fixed_w - MIN_BAR))
    bar_w = max(MIN_BAR, width - fixed_w - label_w)
    count = f"{len(spans)} span{'s' if len(spans) > 1 else ''}"
    title = f"trace {spans[0]['trace_id']}: {count}, {total / 1e6:.1f} ms"
    header = f"{'service':<{service_w}}  {'span':<{label_w}}  {'start ms':>{start_w}}  {'ms':>{dur_w}}"
    lines = [title, header]
    for i, (_, span) in enumerate(rows):
        bar = _bar(span["start"] - origin, span["end"] - origin, total, bar_w)
        line = (
            f"{services[i]:<{service_w}}  {_fit(labels[i], label_w):<{label_w}}  "
            f"{starts[i]:>{start_w}}  {durations[i]:>{dur_w}}  {bar}"
        )
        lines.append(line.rstrip())
    return lines


def tree_order(spans: list[Span]) -> Iterator[tuple[int, Span]]:
    """(depth, span) parents first, siblings by start time; a span whose parent is not here is a root."""
    ids = {span["span_id"] for span in spans}
    children: dict[str, list[Span]] = {}
    roots = []
    for span in sorted(spans, key=lambda s: (s["start"], s["end"])):
        parent = span.get("parent_id")
        if isinstance(parent, str) and parent in ids and parent != span["span_id"]:
            children.setdefault(parent, []).append(span)
        else:
            roots.append(span)
    seen: set[int] = set()
    for root in roots:
        yield from _walk(root, children, seen)
    # Spans only reachable through a cycle of parent ids (a corrupt file) still get a line.
    for span in spans:
        if id(span) not in seen:
            yield from _walk(span, children, seen)


def _walk(root: Span, children: dict[str, list[Span]], seen: set[int]) -> Iterator[tuple[int, Span]]:
    stack = [(0, root)]
    while stack:
        depth, span = stack.pop()
        if id(span) in seen:
            continue
        seen.add(id(span))
        yield depth, span
        stack.extend((depth + 1, child) for child in reversed(children.get(span["span_id"], [])))


def _label(span: Span, depth: int) -> str:
    failed = " !" if span.get("status") == "ERROR" else ""
    return f"{'  ' * depth}{span.get('name', '')}{failed}"


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def _bar(start: int, end: int, total: int, width: int) -> str:
    """The span's place on a `width`-cell timeline of the whole trace; at least one cell, however short."""
    first = min(start * width // total, width - 1)  # integer nanoseconds: no rounding surprises
    last = max(-(-end * width // total), first + 1)
    return " " * first + BLOCK * (min(last, width) - first)
