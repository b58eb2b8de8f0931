"""The one event envelope, with CloudEvents 1.0 attribute names."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field

from schemas.base import Frozen


class Event(Frozen):
    specversion: str = "1.0"
    id: str
    source: str = Field(description="libvirt://<server>, guest://<vm>, vmorch://api, ...")
    type: str = Field(description="vm.lifecycle.started, job.succeeded, server.down, ...")
    subject: str | None = None
    time: datetime
    data: dict[str, Any] = Field(default_factory=dict)
