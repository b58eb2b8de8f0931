"""Job transitions as pure functions `Job -> Job`: the rules of the job lifecycle in one
place, shared by the API (abort), the router and the workers' step runner.

None of them does I/O; the caller commits the result with a fenced compare-and-set
(`JobStore.update_v`). Each returns the job as it must be stored, or raises Conflict for a
transition the lifecycle does not allow.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from orchestrator.errors import Conflict
from schemas.base import utcnow
from schemas.jobs import ErrorInfo, Job, JobState, StepRecord, StepState, WaitInfo

Outputs = dict[str, Any]
UNDO_DONE = "_undo_done"  # a failed step's outputs: its undo ran (internal; not in results)


def with_step(job: Job, idx: int, **update: object) -> Job:
    """The job with step `idx` changed, and progress recounted: done steps, and the part a
    running step reported of itself."""
    steps = list(job.steps)
    steps[idx] = steps[idx].model_copy(update=update)
    done = sum(1.0 for s in steps if s.state == StepState.DONE)
    done += sum(s.progress or 0.0 for s in steps if s.state == StepState.RUNNING)
    return job.model_copy(update={"steps": steps, "progress": round(done / len(steps), 4)})


def step_progress(job: Job, idx: int, fraction: float, detail: dict[str, Any]) -> Job | None:
    """A running step reports how far it is; None (no write) once it is not running."""
    if job.steps[idx].state != StepState.RUNNING:
        return None
    return with_step(job, idx, progress=round(min(max(fraction, 0.0), 1.0), 4), detail=detail)


def outputs_of(job: Job) -> Outputs:
    """The merged outputs of the done steps: what later steps and the result see."""
    merged: Outputs = {}
    for s in job.steps:
        if s.state == StepState.DONE:
            merged.update(s.outputs)
    return merged


@dataclass(frozen=True)
class Planned:
    """A step of a job's plan as the journal needs it: `keeps` when compensation keeps its
    effect (no undo), `no_return` when it and what came before it are never undone."""

    name: str
    description: str = ""
    keeps: bool = False
    no_return: bool = False


def plan_records(job: Job, plan: list[Planned]) -> list[StepRecord]:
    """The step journal a job starts with: one pending record per step of its plan; but a
    retried job (its failed attempt's records carried over) keeps the leading steps that
    attempt left done whose effect is surely still there: steps compensation keeps (no
    undo) and those up to a done point of no return. A done step with an undo that was not
    undone (the attempt was ended by hand, or an undo failed) runs again: what it held
    (a migration slot, a placement) was the old job's."""
    records = [StepRecord(name=p.name, description=p.description) for p in plan]
    done = 0
    for old, p in zip(job.steps, plan, strict=False):
        if old.name != p.name or old.state != StepState.DONE:
            break
        done += 1
    last_no_return = max((i for i in range(done) if plan[i].no_return), default=-1)
    for i in range(done):
        if i > last_no_return and not plan[i].keeps:
            break
        records[i] = job.steps[i]
    return records


def started(job: Job, records: list[StepRecord]) -> Job | None:
    """queued -> running with its step journal; None when another worker started it."""
    if job.state != JobState.QUEUED:
        return None
    return job.model_copy(
        update={"state": JobState.RUNNING, "steps": records, "started_at": utcnow()}
    )


def succeeded(job: Job) -> Job:
    result = {k: v for k, v in outputs_of(job).items() if not k.startswith("_")}
    return job.model_copy(
        update={
            "state": JobState.SUCCEEDED,
            "ended_at": utcnow(),
            "progress": 1.0,
            "result": result,
        }
    )


def step_running(job: Job, idx: int, attempt: int) -> Job:
    return with_step(
        job,
        idx,
        state=StepState.RUNNING,
        attempts=attempt,
        started_at=utcnow(),
        retry_at=None,
        progress=None,
        detail={},
    )


def step_done(job: Job, idx: int, out: Outputs) -> Job:
    """The step is done (a waiting job runs again); the last step's record ends the job:
    one write, no extra message."""
    job = with_step(
        job, idx, state=StepState.DONE, ended_at=utcnow(), outputs=out, error=None, progress=None
    )
    if job.state == JobState.WAITING:
        job = job.model_copy(update={"state": JobState.RUNNING, "wait": None})
    last = all(s.state == StepState.DONE for s in job.steps)
    return succeeded(job) if last and job.state == JobState.RUNNING else job


def next_running(job: Job, idx: int) -> Job:
    """Step `idx` running (first attempt) in the same write that ended the step before it or
    started the job, when it may start at once: the job runs, no abort or error is
    recorded, and the step is fresh (pending, never tried, no backoff). Otherwise the job
    unchanged, and the runner looks at it again as after any write."""
    if (
        job.state != JobState.RUNNING
        or job.abort_requested
        or job.error is not None
        or idx >= len(job.steps)
    ):
        return job
    rec = job.steps[idx]
    if rec.state != StepState.PENDING or rec.attempts or rec.retry_at is not None:
        return job
    return step_running(job, idx, 1)


def step_waiting(job: Job, idx: int, info: WaitInfo, outputs: Outputs) -> Job:
    job = with_step(job, idx, state=StepState.WAITING, outputs=outputs)
    state = JobState.WAITING if job.state == JobState.RUNNING else job.state
    return job.model_copy(update={"state": state, "wait": info})


def step_retry(job: Job, idx: int, err: ErrorInfo, retry_at: datetime) -> Job:
    return with_step(job, idx, state=StepState.PENDING, error=err, retry_at=retry_at)


def step_failed(job: Job, idx: int, err: ErrorInfo, name: str, *, aborted: bool) -> Job:
    """The step failed for good; the job's error names it (an abort keeps the abort's)."""
    job = with_step(job, idx, state=StepState.FAILED, ended_at=utcnow(), error=err)
    if aborted:
        return job
    return job.model_copy(
        update={"error": ErrorInfo(code=err.code, message=f"step {name}: {err.message}")}
    )


def ended(job: Job, stuck: str | None) -> Job:
    """After compensation: aborted (if asked) or failed, listing the undone steps; `stuck`
    names an undo that failed (the steps before it were left in place)."""
    state = (
        JobState.ABORTED
        if (job.abort_requested or job.state == JobState.ABORTING)
        else JobState.FAILED
    )
    err = job.error or ErrorInfo(code="aborted", message="aborted by request")
    if stuck:
        err = err.model_copy(
            update={
                "message": f"{err.message}; undo of {stuck} "
                "failed, the steps before it were left in place"
            }
        )
    undone = [s.name for s in job.steps if s.state == StepState.UNDONE]
    return job.model_copy(
        update={"state": state, "ended_at": utcnow(), "undone_steps": undone, "error": err}
    )


def failed_outright(job: Job, err: ErrorInfo) -> Job:
    """A job that cannot run at all (unknown kind, bad request): failed, or aborted."""
    state = JobState.ABORTED if job.state == JobState.ABORTING else JobState.FAILED
    return job.model_copy(update={"state": state, "ended_at": utcnow(), "error": err})


def abort_requested(job: Job, reason: str) -> Job | None:
    """Queued: aborted at once. Running or waiting: aborting (stops at the next safe point,
    then undoes). Already aborting: unchanged (None). Ended: Conflict."""
    if job.state.terminal:
        raise Conflict(f"job {job.id} already ended ({job.state.value})")
    if job.state == JobState.ABORTING:
        return None
    error = ErrorInfo(
        code="aborted", message="aborted by request" + (f": {reason}" if reason else "")
    )
    if job.state == JobState.QUEUED:
        return job.model_copy(
            update={
                "state": JobState.ABORTED,
                "abort_requested": True,
                "ended_at": utcnow(),
                "error": error,
            }
        )
    return job.model_copy(
        update={"state": JobState.ABORTING, "abort_requested": True, "error": error}
    )
