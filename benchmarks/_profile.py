"""Optional py-spy sampling of a benchmarked process (set BENCH_PROFILE=<dir>), summarised as top frames.

Sampling perturbs the figures, so profiled runs are separate from the recorded ones.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

_LINE = re.compile(r":\d+\)$")
TOP = 15
# Leaf frames that mean "waiting for I/O", not work: dropped so percentages are of busy samples.
_IDLE = ("EpollSelector.select (selectors.py)",)


@contextlib.contextmanager
def profiling(pid: int, name: str) -> Iterator[None]:
    """py-spy record of `pid` while the block runs, when BENCH_PROFILE is set; else nothing."""
    folder = os.environ.get("BENCH_PROFILE")
    beside = Path(sys.executable).with_name("py-spy")
    spy = str(beside) if beside.exists() else shutil.which("py-spy") or "py-spy"
    if not folder:
        yield
        return
    out = Path(folder) / f"{name}.collapsed"
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = [spy, "record", "-p", str(pid), "-f", "raw", "-o", str(out), "-r", "200", "--nonblocking"]
    recorder = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        recorder.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        recorder.wait(30)
    summary = summarise(out)
    (Path(folder) / f"{name}.top.txt").write_text(summary)
    print(f"\n#### profile of {name} (py-spy, {out})\n\n{summary}")


def _frame(frame: str) -> str:
    return _LINE.sub(")", frame.strip())


def summarise(collapsed: Path) -> str:
    """Top frames by self samples and by inclusive samples from py-spy's collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [_frame(f) for f in stack.split(";") if f]
        if not frames or not count.isdigit() or frames[-1] in _IDLE:
            continue
        samples += int(count)
        own[frames[-1]] += int(count)
        for frame in set(frames):
            total[frame] += int(count)
    ours = collections.Counter({f: n for f, n in total.items() if "chassis/" in f or "dapr/" in f})
    tables = [("self", own), ("inclusive", total), ("inclusive, chassis/dapr code only", ours)]
    return "\n".join(_table(kind, counter, samples) for kind, counter in tables)


def _table(kind: str, counter: collections.Counter[str], samples: int) -> str:
    rows = [f"| {100 * n / max(samples, 1):5.1f}% | `{frame}` |" for frame, n in counter.most_common(TOP)]
    return f"| {kind} % of {samples} busy samples | frame |\n|---|---|\n" + "\n".join(rows) + "\n"
