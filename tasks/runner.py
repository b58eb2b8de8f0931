"""The step runner: one `advance` call moves a job forward by one step.

It takes the job's lease (fencing token), runs the next step while a heartbeat renews the
lease, records the outcome with a fenced compare-and-set, and publishes the next `advance`.
Transient failures are retried after an exponential backoff with jitter (the router's timer
dispatches the job again); a permanent failure, or an abort, undoes the done steps in reverse.
Every write carries the fencing token, so a worker that lost its lease records nothing.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from typing import Literal

from orchestrator.errors import (
    AbortRequested,
    LeaseLost,
    NotFound,
    Permanent,
    Retryable,
    VmorchError,
)
from schemas.base import utcnow
from schemas.jobs import ErrorInfo, Job, JobState, StepRecord, StepState
from tasks.engine import Outputs, Step, StepContext
from tasks.registry import steps_for
from tasks.runtime import Runtime

log = logging.getLogger("vmorch.runner")


class Heartbeat:
    """Renews the lease while a step runs; notices a lost lease and an abort request."""

    def __init__(self, rt: Runtime, job_id: str, token: int):
        self.rt, self.job_id, self.token = rt, job_id, token
        self.lost = threading.Event()
        self.abort = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="vmorch-heartbeat")

    def _loop(self) -> None:
        interval_s = self.rt.settings.lease_ms / 3000
        while not self._stop.wait(interval_s):
            try:
                if not self.rt.loop.run(self.rt.leases.renew(self.job_id, self.token)):
                    self.lost.set()
                    return
                job = self.rt.loop.run(self.rt.jobs.get(self.job_id))
                if job.abort_requested:
                    self.abort.set()
                # keep the router's dead-worker timer ahead of us while we hold the lease
                self.rt.loop.run(
                    self.rt.jobs.set_due(
                        self.job_id, self.rt.due_in_ms(self.rt.settings.lease_ms * 2)
                    )
                )
            except Exception:  # a missed beat is not fatal; the lease has slack
                log.warning("job=%s heartbeat failed", self.job_id, exc_info=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _error(e: BaseException) -> ErrorInfo:
    if isinstance(e, VmorchError):
        return ErrorInfo(code=e.code, message=e.message, retryable=e.retryable)
    return ErrorInfo(code="internal", message=f"{type(e).__name__}: {e}")


def _with_step(job: Job, idx: int, **update: object) -> Job:
    steps = list(job.steps)
    steps[idx] = steps[idx].model_copy(update=update)
    done = sum(1 for s in steps if s.state == StepState.DONE)
    return job.model_copy(update={"steps": steps, "progress": round(done / len(steps), 4)})


def _outputs(job: Job) -> Outputs:
    merged: Outputs = {}
    for s in job.steps:
        if s.state == StepState.DONE:
            merged.update(s.outputs)
    return merged


def _backoff_s(rt: Runtime, attempt: int) -> float:
    base = rt.settings.retry_base_s * (2 ** (attempt - 1))
    return float(min(rt.settings.retry_max_s, base) * random.uniform(0.5, 1.0))


class Runner:
    def __init__(self, rt: Runtime, job_id: str, token: int):
        self.rt, self.job_id, self.token = rt, job_id, token
        self.t0 = time.monotonic()

    def _update(
        self,
        mutate: Callable[[Job], Job | None],
        *,
        step: str | None = None,
        due_ms: int | Literal["-"] | None = None,
    ) -> tuple[Job, str]:
        job, head = self.rt.loop.run(
            self.rt.jobs.update(self.job_id, mutate, fence=self.token, step=step, due_ms=due_ms)
        )
        if head:
            self._dispatch_head(head)
        return job, head

    def _dispatch_head(self, head: str) -> None:
        try:
            nxt = self.rt.loop.run(self.rt.jobs.get(head))
            self.rt.dispatch(head, nxt.queue)
        except NotFound:
            pass

    def _log(self, job: Job, step: str, frm: str, to: str) -> None:
        log.info(
            "job=%s kind=%s step=%s %s -> %s elapsed_s=%.3f",
            job.id,
            job.kind,
            step,
            frm,
            to,
            time.monotonic() - self.t0,
        )

    # -- entry -----------------------------------------------------------------------------
    def advance(self) -> None:
        job = self.rt.loop.run(self.rt.jobs.get(self.job_id))
        if job.state.terminal:
            return
        try:
            steps = steps_for(job.request)
        except Exception as e:  # an unknown kind or a bad request cannot get better
            self._finish_failed(job, _error(e))
            return
        if job.state == JobState.QUEUED:
            job = self._start(job, steps)
            if job.state == JobState.QUEUED or job.state.terminal:
                return
        if job.abort_requested or job.state == JobState.ABORTING or job.error is not None:
            self._compensate(job, steps)
            return
        idx = next(
            (
                i
                for i, s in enumerate(job.steps)
                if s.state in (StepState.PENDING, StepState.RUNNING)
            ),
            None,
        )
        if idx is None:
            self._succeed(job)
            return
        self._run_step(job, steps, idx)

    def _start(self, job: Job, steps: list[Step]) -> Job:
        if job.links.vm_id:
            queue = self.rt.loop.run(self.rt.jobs.vm_queue(job.links.vm_id))
            if queue and queue[0] != job.id:
                # Not this job's turn on the VM: the job ahead dispatches it when it ends.
                self.rt.loop.run(self.rt.jobs.update(self.job_id, lambda j: None, due_ms="-"))
                return job

        def start(j: Job) -> Job | None:
            if j.state != JobState.QUEUED:
                return None
            records = [StepRecord(name=s.name, description=s.description) for s in steps]
            return j.model_copy(
                update={"state": JobState.RUNNING, "steps": records, "started_at": utcnow()}
            )

        job, _ = self._update(start)
        self._log(job, "-", "queued", job.state.value)
        return job

    # -- one step --------------------------------------------------------------------------
    def _run_step(self, job: Job, steps: list[Step], idx: int) -> None:
        step = steps[idx]
        attempt = job.steps[idx].attempts + 1
        lease_due = self.rt.due_in_ms(self.rt.settings.lease_ms * 2)
        job, _ = self._update(
            lambda j: _with_step(
                j,
                idx,
                state=StepState.RUNNING,
                attempts=attempt,
                started_at=utcnow(),
                retry_at=None,
            ),
            step=step.name,
            due_ms=lease_due,
        )
        self._log(job, step.name, "pending", f"running (attempt {attempt})")
        with Heartbeat(self.rt, self.job_id, self.token) as hb:
            ctx = StepContext(
                job=job,
                runtime=self.rt,
                attempt=attempt,
                outputs=_outputs(job),
                lease_lost=hb.lost,
                abort_seen=hb.abort,
            )
            try:
                self._inject_faults(ctx, step)
                out = step.run(ctx) or {}
            except LeaseLost:
                raise
            except Retryable as e:
                self._retry_or_fail(job, steps, idx, e, attempt)
                return
            except Exception as e:  # permanent: undo what was done
                if not isinstance(e, VmorchError):
                    log.exception("job=%s step=%s crashed", job.id, step.name)
                self._fail_step(job, steps, idx, e)
                return
        job, _ = self._update(
            lambda j: _with_step(
                j, idx, state=StepState.DONE, ended_at=utcnow(), outputs=out, error=None
            ),
            step=step.name,
            due_ms=self.rt.due_in_ms(self.rt.settings.redispatch_after_s * 1000),
        )
        self._log(job, step.name, "running", "done")
        self.rt.dispatch(job.id, job.queue)

    def _inject_faults(self, ctx: StepContext, step: Step) -> None:
        """Chaos drills: a configured delay before the step, or a configured failure."""
        settings = self.rt.settings
        if settings.chaos_step_delay_ms:
            ctx.sleep(settings.chaos_step_delay_ms / 1000)
        ctx.check()
        if f"{ctx.job.kind}:{step.name}" in settings.chaos_fail_steps:
            raise Permanent(f"injected failure at {step.name} (VMORCH_CHAOS_FAIL_STEPS)")

    def _retry_or_fail(
        self, job: Job, steps: list[Step], idx: int, e: Retryable, attempt: int
    ) -> None:
        if attempt >= self.rt.settings.step_max_attempts:
            self._fail_step(job, steps, idx, e)
            return
        delay_s = getattr(e, "delay_s", None) or _backoff_s(self.rt, attempt)
        retry_at = utcnow() + timedelta(seconds=delay_s)
        job, _ = self._update(
            lambda j: _with_step(
                j, idx, state=StepState.PENDING, error=_error(e), retry_at=retry_at
            ),
            step=steps[idx].name,
            due_ms=self.rt.due_in_ms(delay_s * 1000),
        )
        self._log(job, steps[idx].name, "running", f"retry in {delay_s:.2f}s ({e.message})")

    def _fail_step(self, job: Job, steps: list[Step], idx: int, e: BaseException) -> None:
        err = _error(e)

        def fail(j: Job) -> Job:
            j = _with_step(j, idx, state=StepState.FAILED, ended_at=utcnow(), error=err)
            if isinstance(e, AbortRequested):
                return j
            return j.model_copy(
                update={
                    "error": ErrorInfo(
                        code=err.code, message=f"step {steps[idx].name}: {err.message}"
                    )
                }
            )

        job, _ = self._update(fail, step=steps[idx].name)
        self._log(job, steps[idx].name, "running", f"failed ({err.message})")
        self._compensate(job, steps)

    # -- endings ---------------------------------------------------------------------------
    def _compensate(self, job: Job, steps: list[Step]) -> None:
        """Undo done steps in reverse (and the failed one, whose effect may be partial)."""
        for idx in reversed(range(len(job.steps))):
            rec = job.steps[idx]
            if rec.state == StepState.PENDING:
                job, _ = self._update(partial(_with_step, idx=idx, state=StepState.SKIPPED))
                continue
            undo_failed = rec.state == StepState.FAILED and not rec.outputs.get("_undo_done")
            if (
                rec.state not in (StepState.DONE, StepState.UNDOING, StepState.RUNNING)
                and not undo_failed
            ):
                continue
            job = self._undo(job, steps, idx, keep_failed=undo_failed)
        ended = (
            JobState.ABORTED
            if (job.abort_requested or job.state == JobState.ABORTING)
            else JobState.FAILED
        )
        undone = [s.name for s in job.steps if s.state == StepState.UNDONE]

        def end(j: Job) -> Job:
            return j.model_copy(
                update={
                    "state": ended,
                    "ended_at": utcnow(),
                    "undone_steps": undone,
                    "error": j.error or ErrorInfo(code="aborted", message="aborted by request"),
                }
            )

        job, _ = self._update(end)
        self._log(job, "-", "compensating", ended.value)

    def _undo(self, job: Job, steps: list[Step], idx: int, *, keep_failed: bool) -> Job:
        step = steps[idx]
        if not keep_failed:
            job, _ = self._update(
                lambda j: _with_step(j, idx, state=StepState.UNDOING), step=step.name
            )
        ctx = StepContext(
            job=job,
            runtime=self.rt,
            attempt=job.steps[idx].attempts,
            outputs={**_outputs(job), **job.steps[idx].outputs},
        )
        err: ErrorInfo | None = None
        if step.undo is not None:
            for attempt in range(1, self.rt.settings.step_max_attempts + 1):
                try:
                    step.undo(ctx)
                    err = None
                    break
                except Retryable as e:
                    err = _error(e)
                    time.sleep(_backoff_s(self.rt, attempt))
                except Exception as e:
                    err = _error(e)
                    break
        if keep_failed:
            outs = {**job.steps[idx].outputs, "_undo_done": err is None}
            job, _ = self._update(lambda j: _with_step(j, idx, outputs=outs), step=step.name)
        elif err is None:
            job, _ = self._update(
                lambda j: _with_step(j, idx, state=StepState.UNDONE, ended_at=utcnow()),
                step=step.name,
            )
        else:
            job, _ = self._update(
                lambda j: _with_step(
                    j,
                    idx,
                    state=StepState.FAILED,
                    error=ErrorInfo(code=err.code, message=f"undo failed: {err.message}"),
                ),
                step=step.name,
            )
        self._log(job, step.name, "done", job.steps[idx].state.value)
        return job

    def _succeed(self, job: Job) -> None:
        result = {k: v for k, v in _outputs(job).items() if not k.startswith("_")}

        def end(j: Job) -> Job:
            return j.model_copy(
                update={
                    "state": JobState.SUCCEEDED,
                    "ended_at": utcnow(),
                    "progress": 1.0,
                    "result": result,
                }
            )

        job, _ = self._update(end)
        self._log(job, "-", "running", "succeeded")

    def _finish_failed(self, job: Job, err: ErrorInfo) -> None:
        def end(j: Job) -> Job:
            state = JobState.ABORTED if j.state == JobState.ABORTING else JobState.FAILED
            if j.state == JobState.QUEUED:
                state = JobState.FAILED
            return j.model_copy(update={"state": state, "ended_at": utcnow(), "error": err})

        self._update(end)


def advance(rt: Runtime, job_id: str) -> str:
    """Move `job_id` forward by one step, if no other worker holds it. Returns what happened."""
    token = rt.loop.run(rt.leases.acquire(job_id))
    if token is None:
        return "busy"
    try:
        Runner(rt, job_id, token).advance()
        return "advanced"
    except LeaseLost:
        log.warning("job=%s lease lost: stopped without recording", job_id)
        return "lease_lost"
    except NotFound:
        return "missing"
    finally:
        rt.loop.run(rt.leases.release(job_id, token))
