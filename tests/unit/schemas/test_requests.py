"""Request validation: names, fields and kinds are refused with a clear error."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from schemas.requests import job_request_adapter

BASE = {"kind": "vm.create_from_template", "pool": "p", "template": "t", "name": "ok"}


@pytest.mark.parametrize(
    "name", ["", "../etc", "a/b", "x\ny", "-lead", "a" * 64, "sp ace", "a..b", "nul\x00"]
)
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(ValidationError) as e:
        job_request_adapter.validate_python({**BASE, "name": name})
    assert e.value.errors()[0]["loc"][-1] == "name"


@pytest.mark.parametrize(
    "patch",
    [
        {"vcpus": 0},
        {"memory_mib": 1},
        {"vcpus": "two"},
        {"unknown": 1},
        {"vnics": [{"network": "n", "mac": "zz"}]},
    ],
)
def test_bad_fields_are_refused(patch: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        job_request_adapter.validate_python({**BASE, **patch})


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValidationError):
        job_request_adapter.validate_python({"kind": "vm.explode", "vm": "x"})


def test_names_follow_the_pattern_their_schema_shows() -> None:
    import re

    from pydantic import TypeAdapter

    from schemas.base import Name

    adapter = TypeAdapter(Name)
    schema = adapter.json_schema()
    shown = re.compile(schema["pattern"])
    for name in ["web1", "a", "a.b", "a.", "a_b-c.d", "A" * 63]:
        adapter.validate_python(name)
        assert shown.search(name) and len(name) <= schema["maxLength"]
    for name in ["", ".a", "a..b", "-a", "a/b", "a b", "web1\n", "A" * 64]:
        with pytest.raises(ValidationError):
            adapter.validate_python(name)
        assert not (shown.fullmatch(name) and len(name) <= schema["maxLength"]), name


def test_the_documented_job_kinds_are_the_accepted_ones() -> None:
    from typing import get_args

    from schemas.requests import INTERNAL_KINDS, ClientJobRequest, JobRequest

    def kinds(union: object) -> set[str]:
        members = get_args(get_args(union)[0])
        return {get_args(m.model_fields["kind"].annotation)[0] for m in members}

    assert kinds(ClientJobRequest) == kinds(JobRequest) - INTERNAL_KINDS
    assert kinds(JobRequest) >= INTERNAL_KINDS
