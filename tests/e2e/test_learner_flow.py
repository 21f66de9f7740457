"""The learner flow end to end on `chassis up`: submit, grade through pub/sub, read the grade back."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import sys

from e2e_kit import REPO, GradeAudit, Learner, Platform

from chassis._protogen import GEN_DIR

SUBMISSIONS = 200


async def test_every_one_of_200_concurrent_submissions_is_graded_exactly_once(
    platform: Platform, learner: Learner
) -> None:
    ids = await asyncio.gather(*(learner.submit(n) for n in range(SUBMISSIONS)))
    assert len(set(ids)) == SUBMISSIONS

    graded = await learner.wait_graded(ids)

    grade_events = await GradeAudit(platform.workdir).collect()
    assert sorted(grade_events) == sorted(ids), "every submission has grade events, and no other does"
    for submission_id, events in grade_events.items():
        assert len({e["id"] for e in events}) == 1, f"{submission_id} graded more than once: {events}"
        stored = graded[submission_id].grade
        assert (stored.score, stored.max_score) == (events[0]["data"]["score"], events[0]["data"]["maxScore"])
    scores = {n: graded[i].grade.score for n, i in enumerate(ids)}
    assert {scores[n] for n in scores if n % 3 == 0} == {3.0}, "a wrong first answer costs one point"
    assert {scores[n] for n in scores if n % 3 != 0} == {4.0}


async def test_one_trace_follows_a_submission_across_every_hop(platform: Platform, learner: Learner) -> None:
    trace_id = secrets.token_hex(16)
    submission_id = await learner.submit(1, traceparent=f"00-{trace_id}-{secrets.token_hex(8)}-01")
    await learner.wait_graded([submission_id])

    spans = [s for s in platform.spans() if s["trace_id"] == trace_id]
    by_service = {(s["service"], s["name"]) for s in spans}
    services = {service for service, _ in by_service}
    assert {"assessment", "grading", "assessment-sidecar", "grading-sidecar"} <= services, by_service
    assert any(s == "assessment" and "SubmitAssignment" in n for s, n in by_service), by_service
    assert ("grading", "handle submissions") in by_service, by_service
    grade_event = (await GradeAudit(platform.workdir).collect())[submission_id][0]
    assert grade_event["traceparent"].split("-")[1] == trace_id
    assert grade_event["traceid"] == grade_event["traceparent"]


async def test_the_learner_journey_example_prints_the_grade_and_trace_id(platform: Platform) -> None:
    env = {
        **os.environ,
        "DAPR_GRPC_PORT": str(platform.ports["assessment"]["daprGRPCPort"]),
        "PYTHONPATH": str(REPO / GEN_DIR),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(REPO / "examples" / "learner_journey.py"),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    text = output.decode()
    assert process.returncode == 0, text
    assert re.search(r"trace id: [0-9a-f]{32}", text), text
    assert re.search(r"grade.*\d", text, re.IGNORECASE), text


def test_stopping_the_platform_leaves_no_process_behind(platform: Platform) -> None:
    assert platform.process is not None
    children = _descendants(platform.process.pid)
    assert len(children) >= 4, "two sidecars and two apps were running"
    assert platform.stop() == 0
    alive = [pid for pid in children if _alive(pid)]
    assert alive == [], f"left running: {alive}"


def _descendants(pid: int) -> list[int]:
    """Every process below `pid`, read from /proc (no psutil needed on Linux)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parents[int(entry)] = int(stat.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        children = [child for child, parent in parents.items() if parent == current]
        found += children
        frontier += children
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
