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
