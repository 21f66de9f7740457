"""The chassis API is typed end to end: typical service code passes `mypy --strict`, and the mistakes a
service author makes (a handler for the wrong event, publishing the wrong message, storing the wrong
model) are type errors, not surprises at run time."""

from __future__ import annotations

from pathlib import Path

import pytest
from mypy import api

ROOT = Path(__file__).resolve().parents[2]
TYPICAL = Path(__file__).with_name("typical_service.py")

# Each mistake: (what the typical file says, what a careless author writes, what mypy must say).
MISTAKES = [
    (
        "async def on_grade(event: GradeCompleted, ctx: EventContext)",
        "async def on_grade(event: SubmissionCreated, ctx: EventContext)",
        "Argument 1 has incompatible type",
    ),
    (
        "await resubmit.publish(again,",
        "await resubmit.publish(GradeRecord(),",
        'Argument 1 to "publish" of "Publisher" has incompatible type "GradeRecord"',
    ),
    (
        "lambda current: add_grade(current, grade)",
        "lambda current: grade",
        "Incompatible return value type",
    ),
]


def strict(path: Path, cache: Path) -> tuple[str, int]:
    out, err, status = api.run(
        ["--strict", "--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", str(cache), str(path)]
    )
    return out + err, status


def test_typical_service_code_passes_mypy_strict(tmp_path: Path) -> None:
    report, status = strict(TYPICAL, tmp_path / "cache")
    assert status == 0, report


def test_an_authors_mistakes_are_type_errors(tmp_path: Path) -> None:
    text = TYPICAL.read_text()
    for original, mistake, _ in MISTAKES:
        assert original in text, f"typical_service.py no longer says {original!r}"
        text = text.replace(original, mistake)
    careless = tmp_path / "careless_service.py"
    careless.write_text(text)
    report, status = strict(careless, tmp_path / "cache")
    assert status == 1
    missing = [expected for _, _, expected in MISTAKES if expected not in report]
    if missing:
        pytest.fail(f"mypy did not report {missing}:\n{report}")
