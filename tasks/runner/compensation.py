"""Compensation: after a permanent failure or an abort, undo in reverse, then end the job.

Undone are the done steps (a step without an undo keeps its effect and stays `done`), a
step left half-done by a retry or a dead worker, and the failed step when its effect may
be partial. Compensation stops at a done point of no return (`Step.no_return`: a cold
move's switch to its target), and at an undo that fails: what came before it stays in
place (undoing it could strand what the failed undo left behind, e.g. the volumes of a
domain that could not be undefined).
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING

from orchestrator.errors import LeaseLost
from orchestrator.jobs import transitions as tr
from schemas.base import utcnow
from schemas.jobs import ErrorInfo, Job, StepState
from tasks.step import Step

if TYPE_CHECKING:
    from tasks.runner.advance import Runner

log = logging.getLogger("vmorch.runner")
_HALF_DONE = (StepState.RUNNING, StepState.WAITING, StepState.UNDOING)


def compensate(runner: Runner, job: Job, steps: list[Step]) -> None:
    from tasks.runner import waiting

    if job.wait is not None:
        waiting.end(runner, job, job.wait)
    stuck: str | None = None
    for idx in reversed(range(len(job.steps))):
        rec, step = job.steps[idx], steps[idx]
        half_done = rec.state in _HALF_DONE or (rec.state == StepState.PENDING and rec.attempts > 0)
        if rec.state == StepState.PENDING and not half_done:
            job = runner.update(partial(tr.with_step, idx=idx, state=StepState.SKIPPED))
            continue
        failed_needs_undo = (
            rec.state == StepState.FAILED
            and step.undo_on_failure
            and not rec.outputs.get(tr.UNDO_DONE)
        )
        if not (rec.state == StepState.DONE or half_done or failed_needs_undo):
            continue
        if rec.state == StepState.DONE and step.no_return:
            break  # a point of no return: it and what came before it stay
        if rec.state == StepState.DONE and step.undo is None:
            continue  # nothing to undo: its effect is kept, and the step says done
        job, ok = _undo(runner, job, steps, idx, keep_failed=rec.state == StepState.FAILED)
        if not ok:
            stuck = step.name
            break
    job = runner.update(lambda j: tr.ended(j, stuck))
    runner.transition(job, "-", "compensating", job.state.value)


def _undo(
    runner: Runner, job: Job, steps: list[Step], idx: int, *, keep_failed: bool
) -> tuple[Job, bool]:
    step = steps[idx]
    if not keep_failed:
        job = runner.update(lambda j: tr.with_step(j, idx, state=StepState.UNDOING), step=step.name)
    rec = job.steps[idx]
    ctx = runner.ctx(job, rec.attempts, {**tr.outputs_of(job), **rec.outputs}, abortable=False)
    err: ErrorInfo | None = None
    if step.undo is not None:
        for attempt in range(1, runner.rt.settings.step_max_attempts + 1):
            try:
                step.undo(ctx)
                err = None
                break
            except LeaseLost:
                raise
            except runner.RETRYABLE as e:
                err = runner.error_info(e)
                ctx.sleep(runner.backoff_s(attempt))
            except Exception as e:
                log.exception("job=%s undo of %s failed", job.id, step.name)
                err = runner.error_info(e)
                break
    if keep_failed:
        outs = {**rec.outputs, tr.UNDO_DONE: err is None}
        job = runner.update(lambda j: tr.with_step(j, idx, outputs=outs), step=step.name)
    elif err is None:
        job = runner.update(
            lambda j: tr.with_step(j, idx, state=StepState.UNDONE, ended_at=utcnow()),
            step=step.name,
        )
    else:
        failed = ErrorInfo(code=err.code, message=f"undo failed: {err.message}")
        job = runner.update(
            lambda j: tr.with_step(j, idx, state=StepState.FAILED, error=failed), step=step.name
        )
    runner.transition(job, step.name, "undoing", job.steps[idx].state.value)
    return job, err is None
