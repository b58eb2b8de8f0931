"""Shared model configuration and constrained field types."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class Frozen(BaseModel):
    """Base of every contract: immutable, and unknown fields are an error, not ignored."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def _check_name(value: str) -> str:
    # Names end up in libvirt XML, volume file names and Redis keys: keep them boring.
    if not _NAME_RE.match(value):
        raise ValueError(
            "must be 1-63 characters of letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (no path separators or control characters)"
        )
    if value in {".", ".."} or ".." in value:
        raise ValueError("must not contain '..'")
    return value


Name = Annotated[str, AfterValidator(_check_name)]
"""An object name: bounded length, no path separators, no control characters."""

MemoryMiB = Annotated[int, Field(ge=16, le=4 * 1024 * 1024)]
VcpuCount = Annotated[int, Field(ge=1, le=256)]


def utcnow() -> datetime:
    return datetime.now(UTC)
