"""The audit trail: one record per write to the API (and per token change made with the CLI
on Redis directly), readable by admins at `GET /v1/audit`."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from schemas.base import Frozen


class AuditRecord(Frozen):
    """Who did what, when, through which request, and how it ended."""

    id: str = Field(default="", description="stream position; the page cursor")
    at: datetime
    token_id: str = Field(description="the caller's token id (`local` for the CLI on Redis)")
    token_name: str
    role: str
    request_id: str = Field(description="the X-Request-Id the api answered with")
    action: str = Field(description="what was asked, from the route: jobs.abort, hooks.delete")
    method: str = ""
    path: str = ""
    status: int = Field(description="the HTTP status the api answered")
    target: str = Field(default="", description="the object acted on: a job, hook, queue...")
    reason: str = Field(default="", description="the reason the caller gave, if any")
