"""Jobs and their step journal, as stored in Redis and returned by the API."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import Field

from schemas.base import Frozen
from schemas.requests import JobRequest


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ABORTING = "aborting"
    ABORTED = "aborted"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.ABORTED})

# Which transitions the engine allows. Every transition is a compare-and-set on the stored state.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.ABORTED, JobState.FAILED}),
    JobState.RUNNING: frozenset(
        {JobState.WAITING, JobState.SUCCEEDED, JobState.FAILED, JobState.ABORTING}
    ),
    JobState.WAITING: frozenset(
        {JobState.RUNNING, JobState.SUCCEEDED, JobState.FAILED, JobState.ABORTING}
    ),
    JobState.ABORTING: frozenset({JobState.ABORTED, JobState.FAILED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.ABORTED: frozenset(),
}


class StepState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    DONE = "done"
    FAILED = "failed"
    UNDOING = "undoing"
    UNDONE = "undone"
    SKIPPED = "skipped"


class ErrorInfo(Frozen):
    code: str
    message: str
    retryable: bool = False


class StepRecord(Frozen):
    """One step of a job's journal."""

    name: str
    description: str = ""
    state: StepState = StepState.PENDING
    attempts: int = 0
    started_at: datetime | None = None
    ended_at: datetime | None = None
    error: ErrorInfo | None = None
    outputs: dict[str, Any] = Field(default_factory=dict)
    retry_at: datetime | None = None
    progress: float | None = Field(
        default=None, ge=0, le=1, description="how far a running step is (0-1), if it says"
    )
    detail: dict[str, Any] = Field(
        default_factory=dict,
        description="what a running step last reported (a migration: data processed, "
        "remaining, dirty rate)",
    )


class WaitInfo(Frozen):
    """What a waiting step waits for: an event of `types` about `subject`, until `deadline`."""

    step: int
    types: list[str]
    subject: str
    since: str = Field(description="stream position before the step acted")
    deadline: datetime
    on_timeout: Literal["fail", "escalate"] = "fail"
    matched: dict[str, Any] | None = None


class JobLinks(Frozen):
    """What a job works on and what caused it."""

    vm_id: str | None = None
    vm_name: str | None = None
    # a second VM the job holds, in whose operation queue it also waits its turn: a
    # clone's source (no other job of the source runs while it is copied)
    source_vm_id: str | None = None
    pool: str | None = None
    parent_job: str | None = None
    hook_id: str | None = None
    event_id: str | None = None
    # the failed or aborted job this one retries (it stays as the record of that attempt)
    retry_of: str | None = None


class Recovery(Frozen):
    """An operator ended the job by hand (OpenNebula's `recover`): nothing was undone or
    run; the operator says the job's effect is in place (succeeded) or not (failed)."""

    state: JobState
    from_state: JobState
    by: str
    reason: str
    at: datetime


class Job(Frozen):
    id: str
    kind: str
    request: JobRequest
    state: JobState = JobState.QUEUED
    steps: list[StepRecord] = Field(default_factory=list)
    progress: float = 0.0
    submitted_by: str
    queue: str
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    ended_at: datetime | None = None
    result: dict[str, Any] = Field(default_factory=dict)
    error: ErrorInfo | None = None
    links: JobLinks = Field(default_factory=JobLinks)
    abort_requested: bool = False
    undone_steps: list[str] = Field(default_factory=list)
    waiting_for_job: str | None = Field(
        default=None, description="the job ahead of this one on the same VM"
    )
    vm_queue_position: int | None = None
    wait: WaitInfo | None = Field(default=None, description="what a waiting job waits for")
    idempotency_key: str | None = None
    retried_as: str | None = Field(default=None, description="the job that retries this one")
    recovery: Recovery | None = Field(
        default=None, description="set when an operator marked the job succeeded or failed"
    )
