"""The service's own rule on its own: a title within the configured length."""

from __future__ import annotations

from mooc.{{ cookiecutter.service_slug }}.v1 import {{ cookiecutter.service_slug }}_pb2 as pb

from {{ cookiecutter.service_slug }}.service import check_record


def test_a_record_with_an_id_is_storable() -> None:
    assert check_record(pb.Record(record_id="r-1", title="ok"), max_title_length=10) is None


def test_a_title_longer_than_the_limit_is_refused() -> None:
    problem = check_record(pb.Record(record_id="r-1", title="x" * 11), max_title_length=10)
    assert problem == "record.title is longer than 10 characters"
