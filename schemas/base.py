"""Shared model configuration and constrained field types."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

# A letter or digit, then letters, digits, '.', '_' and '-' with no two dots in a row. The
# same pattern is checked here and shown in the JSON schema, so clients (and fuzzers) that
# follow the schema send names that are accepted.
NAME_PATTERN = r"^[A-Za-z0-9](?:\.?[A-Za-z0-9_-])*\.?$"
NAME_MAX = 63
_NAME_RE = re.compile(NAME_PATTERN)


class Frozen(BaseModel):
    """Base of every contract: immutable, and unknown fields are an error, not ignored."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def is_name(value: str) -> bool:
    """Whether `value` is a valid object name (see `Name`)."""
    # fullmatch: with match, `$` also matched before a final newline ("web1\n" passed).
    return len(value) <= NAME_MAX and _NAME_RE.fullmatch(value) is not None


def _check_name(value: str) -> str:
    # Names end up in libvirt XML, volume file names and Redis keys: keep them boring.
    if not is_name(value):
        raise ValueError(
            "must be 1-63 characters of letters, digits, '.', '_' or '-', starting with a "
            "letter or digit, without '..' (no path separators or control characters)"
        )
    return value


Name = Annotated[
    str,
    AfterValidator(_check_name),
    # extra, not a replacement: a narrower max_length on top (VmName) still shows
    Field(json_schema_extra={"minLength": 1, "maxLength": NAME_MAX, "pattern": NAME_PATTERN}),
]
"""An object name: bounded length, no path separators, no control characters."""

MemoryMiB = Annotated[int, Field(ge=16, le=4 * 1024 * 1024)]
VcpuCount = Annotated[int, Field(ge=1, le=256)]


def _canonical_pinning(value: dict[str, list[int]]) -> dict[str, list[int]]:
    # one form for one meaning: vCPUs in order, each one's physical CPUs sorted, once each
    return {k: sorted(set(value[k])) for k in sorted(value, key=int)}


CpuSet = Annotated[list[Annotated[int, Field(ge=0, le=4095)]], Field(min_length=1, max_length=256)]
Pinning = Annotated[
    dict[Annotated[str, Field(pattern=r"^(0|[1-9][0-9]{0,2})$")], CpuSet],
    Field(
        min_length=1,
        max_length=256,
        description='vCPU number -> the physical CPUs it may run on ({"0": [2], "1": [3, 4]})',
    ),
    AfterValidator(_canonical_pinning),
]
"""Hard partitioning: each vCPU mapped to one or more physical CPUs of its server."""


def utcnow() -> datetime:
    return datetime.now(UTC)
