"""Alerts: errors vmorch could not resolve by itself, kept until an operator acknowledges."""

from __future__ import annotations

from datetime import datetime

from schemas.base import Frozen


class Alert(Frozen):
    id: str
    type: str
    subject: str
    message: str
    at: datetime
    job_id: str | None = None
    acknowledged_by: str | None = None
    acknowledged_at: datetime | None = None
