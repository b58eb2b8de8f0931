"""The step runner: one `advance` call moves a job forward by one step.

It takes the job's lease (fencing token) and keeps it renewed by a heartbeat for as long as
it works on the job, runs the next step, records the outcome with a fenced compare-and-set,
releases the lease and only then publishes the next `advance` (so the next worker does not
find the lease still held). Transient failures are retried after an exponential backoff
with jitter (the router's timer dispatches the job again); a permanent failure, or an
abort, undoes the done steps in reverse. Every write carries the fencing token, so a worker
that lost its lease records nothing.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from typing import Literal

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from orchestrator.errors import (
    AbortRequested,
    LeaseLost,
    NotFound,
    Permanent,
    Retryable,
    VmorchError,
)
from orchestrator.store.jobs import Versioned
from schemas.base import utcnow
from schemas.jobs import ErrorInfo, Job, JobState, StepRecord, StepState, WaitInfo
from tasks.runtime import Runtime
from tasks.step import Outputs, Step, StepContext, Wait
from tasks.workflows.registry import steps_for

log = logging.getLogger("vmorch.runner")

# Errors worth another attempt of the whole step: vmorch's retryable branch, and Redis
# being briefly unreachable from the worker.
RETRYABLE = (Retryable, RedisConnectionError, RedisTimeoutError)


class Heartbeat:
    """Renews the lease while the runner works; notices a lost lease and an abort request.

    The lease counts as lost when a renewal is refused (another worker took it) or when no
    renewal has succeeded for `lease_ms` (this worker cannot reach Redis, so by now the
    router may have handed the job to another worker).
    """

    def __init__(self, rt: Runtime, job_id: str, token: int):
        self.rt, self.job_id, self.token = rt, job_id, token
        self.lost = threading.Event()
        self.abort = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="vmorch-heartbeat")

    def _beat(self) -> None:
        rt = self.rt
        if not rt.loop.run(rt.leases.renew(self.job_id, self.token), timeout_s=5):
            self.lost.set()
            return
        # keep the router's dead-worker timer ahead of us while we hold the lease
        rt.loop.run(rt.jobs.set_due(self.job_id, rt.due_in_ms(rt.settings.lease_ms * 2)))
        if rt.loop.run(rt.jobs.get(self.job_id)).abort_requested:
            self.abort.set()

    def _loop(self) -> None:
        lease_s = self.rt.settings.lease_ms / 1000
        last_ok = time.monotonic()
        while not self._stop.wait(lease_s / 3) and not self.lost.is_set():
            try:
                self._beat()
                last_ok = time.monotonic()
            except Exception:
                log.warning("job=%s heartbeat failed", self.job_id, exc_info=True)
                if time.monotonic() - last_ok >= lease_s:
                    self.lost.set()

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _error(e: BaseException) -> ErrorInfo:
    if isinstance(e, VmorchError):
        return ErrorInfo(code=e.code, message=e.message, retryable=e.retryable)
    if isinstance(e, RETRYABLE):
        return ErrorInfo(code="redis_unavailable", message="Redis unreachable", retryable=True)
    # details of unexpected errors go to the worker log, not to every viewer of the job
    return ErrorInfo(code="internal", message=f"internal error ({type(e).__name__}); see logs")


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


def _succeeded(j: Job) -> Job:
    result = {k: v for k, v in _outputs(j).items() if not k.startswith("_")}
    return j.model_copy(
        update={
            "state": JobState.SUCCEEDED,
            "ended_at": utcnow(),
            "progress": 1.0,
            "result": result,
        }
    )


def _backoff_s(rt: Runtime, attempt: int) -> float:
    base = rt.settings.retry_base_s * (2 ** (attempt - 1))
    return float(min(rt.settings.retry_max_s, base) * random.uniform(0.5, 1.0))


class Runner:
    def __init__(self, rt: Runtime, job_id: str, token: int, hb: Heartbeat):
        self.rt, self.job_id, self.token, self.hb = rt, job_id, token, hb
        self.t0 = time.monotonic()
        self.to_dispatch: list[str] = []  # published once the lease is released
        self.cur: Versioned | None = None  # the last version read or written

    def _update(
        self,
        mutate: Callable[[Job], Job | None],
        *,
        step: str | None = None,
        due_ms: int | Literal["-"] | None = None,
    ) -> Job:
        self.cur, head = self.rt.loop.run(
            self.rt.jobs.update_v(
                self.job_id, mutate, current=self.cur, fence=self.token, step=step, due_ms=due_ms
            )
        )
        if head:
            self.to_dispatch.append(head)  # the next job on this VM
        return self.cur.job

    def _ctx(self, job: Job, attempt: int, outputs: Outputs) -> StepContext:
        return StepContext(
            job=job,
            runtime=self.rt,
            attempt=attempt,
            outputs=outputs,
            lease_lost=self.hb.lost,
            abort_seen=self.hb.abort,
        )

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
        """Run steps of the job while they end quickly: further steps run under the same
        lease until `step_slice_ms` has passed, then the rest goes back on the queue."""
        deadline = self.t0 + self.rt.settings.step_slice_ms / 1000
        while self._advance_once():
            if time.monotonic() >= deadline or self.hb.abort.is_set():
                self.to_dispatch.append(self.job_id)
                return

    def _advance_once(self) -> bool:
        """One step (or the start, or the ending). True when the job may go on at once."""
        if self.cur is None:
            self.cur = self.rt.loop.run(self.rt.jobs.get_versioned(self.job_id))
            if self.cur is None:
                raise NotFound(f"job {self.job_id} not found")
        job = self.cur.job
        if job.state.terminal:
            return False
        try:
            steps = steps_for(job.request)
        except Exception as e:  # an unknown kind or a bad request cannot get better
            self._finish_failed(_error(e))
            return False
        if job.state == JobState.QUEUED:
            job = self._start(job, steps)
            if job.state == JobState.QUEUED or job.state.terminal:
                return False
        if job.abort_requested or job.state == JobState.ABORTING or job.error is not None:
            self._compensate(job, steps)
            return False
        if job.state == JobState.WAITING:
            waiting = next(i for i, s in enumerate(job.steps) if s.state == StepState.WAITING)
            return self._check_wait(job, steps, waiting)
        active = (StepState.PENDING, StepState.RUNNING)
        idx = next((i for i, s in enumerate(job.steps) if s.state in active), None)
        if idx is None:
            self._update(_succeeded)
            return False
        retry_at = job.steps[idx].retry_at
        if retry_at is not None and retry_at > utcnow():
            # an early (duplicate) message: keep the backoff, let the timer bring it back
            ms = int(retry_at.timestamp() * 1000)
            self.rt.loop.run(self.rt.jobs.set_due(self.job_id, ms))
            return False
        return self._run_step(job, steps, idx)

    def _start(self, job: Job, steps: list[Step]) -> Job:
        if job.links.vm_id:
            queue = self.rt.loop.run(self.rt.jobs.vm_queue(job.links.vm_id))
            if queue and queue[0] != job.id:
                # Not this job's turn on the VM: the job ahead dispatches it when it ends
                # (and the router's timer checks again, should that message be lost).
                return job

        def start(j: Job) -> Job | None:
            if j.state != JobState.QUEUED:
                return None
            records = [StepRecord(name=s.name, description=s.description) for s in steps]
            return j.model_copy(
                update={"state": JobState.RUNNING, "steps": records, "started_at": utcnow()}
            )

        job = self._update(start)
        self._log(job, "-", "queued", job.state.value)
        return job

    # -- one step --------------------------------------------------------------------------
    def _run_step(self, job: Job, steps: list[Step], idx: int) -> bool:
        step = steps[idx]
        attempt = job.steps[idx].attempts + 1
        job = self._update(
            lambda j: _with_step(
                j,
                idx,
                state=StepState.RUNNING,
                attempts=attempt,
                started_at=utcnow(),
                retry_at=None,
            ),
            step=step.name,
            due_ms=self.rt.due_in_ms(self.rt.settings.lease_ms * 2),
        )
        self._log(job, step.name, "pending", f"running (attempt {attempt})")
        ctx = self._ctx(job, attempt, _outputs(job))
        try:
            self._inject_faults(ctx, step)
            out = step.run(ctx) or {}
            ctx.check()
        except LeaseLost:
            raise
        except RETRYABLE as e:
            self._retry_or_fail(job, steps, idx, e, attempt)
            return False
        except Exception as e:  # permanent: undo what was done
            if not isinstance(e, VmorchError):
                log.exception("job=%s step=%s crashed", job.id, step.name)
            self._fail_step(steps, idx, e)
            return False

        if isinstance(out, Wait):
            return self._begin_wait(job, steps, idx, out)
        return self._complete(steps, idx, out)

    def _complete(self, steps: list[Step], idx: int, out: Outputs) -> bool:
        """Record the step done (a waiting job runs again); the last step ends the job."""

        def done(j: Job) -> Job:
            j = _with_step(j, idx, state=StepState.DONE, ended_at=utcnow(), outputs=out, error=None)
            if j.state == JobState.WAITING:
                j = j.model_copy(update={"state": JobState.RUNNING, "wait": None})
            last = all(s.state == StepState.DONE for s in j.steps)
            # the last step's record also ends the job: one write, no extra message
            return _succeeded(j) if last and j.state == JobState.RUNNING else j

        job = self._update(
            done,
            step=steps[idx].name,
            due_ms=self.rt.due_in_ms(self.rt.settings.redispatch_after_s * 1000),
        )
        self._log(job, steps[idx].name, "running", "done")
        if job.state == JobState.SUCCEEDED:
            self._log(job, "-", "running", "succeeded")
            return False
        return True

    # -- waits -----------------------------------------------------------------------------
    def _begin_wait(self, job: Job, steps: list[Step], idx: int, w: Wait) -> bool:
        info = WaitInfo(
            step=idx,
            types=w.types,
            subject=w.subject,
            since=w.since,
            deadline=utcnow() + timedelta(seconds=w.timeout_s),
            on_timeout=w.on_timeout,
        )

        def wait(j: Job) -> Job:
            j = _with_step(j, idx, state=StepState.WAITING, outputs=w.outputs)
            state = JobState.WAITING if j.state == JobState.RUNNING else j.state
            return j.model_copy(update={"state": state, "wait": info})

        job = self._update(wait, step=steps[idx].name, due_ms=self._recheck_ms(info))
        self._log(job, steps[idx].name, "running", f"waiting for {w.types} on {w.subject}")
        # registering also finds an event that came between the action and now
        self.rt.loop.run(self.rt.waits.register(job.id, info))
        return self._check_wait(job, steps, idx)

    def _recheck_ms(self, info: WaitInfo) -> int:
        """When to look again without an event: the deadline, or sooner to check the state."""
        deadline_ms = int(info.deadline.timestamp() * 1000)
        return min(deadline_ms, self.rt.due_in_ms(self.rt.settings.wait_recheck_s * 1000))

    def _check_wait(self, job: Job, steps: list[Step], idx: int) -> bool:
        """Finish the waiting step if its event came or its target state holds; at the
        deadline fail it or escalate; otherwise leave it waiting (no worker held)."""
        step, rec = steps[idx], job.steps[idx]
        info = self.rt.loop.run(self.rt.waits.get(job.id)) or job.wait
        ctx = self._ctx(job, rec.attempts, {**_outputs(job), **rec.outputs})
        out: Outputs | None = None
        if info is not None and info.matched is not None:
            out = {
                **rec.outputs,
                "event": {"id": info.matched.get("id"), "type": info.matched.get("type")},
            }
        elif step.settled is not None:
            try:
                out = step.settled(ctx)
            except LeaseLost:
                raise
            except RETRYABLE:
                out = None  # look again at the next check
            except Exception as e:
                if info is not None:
                    self._end_wait(job, info)
                self._fail_step(steps, idx, e)
                return False
        if out is None:
            if info is not None and utcnow() < info.deadline:
                self.rt.loop.run(self.rt.jobs.set_due(job.id, self._recheck_ms(info)))
                return False
            if info is not None and info.on_timeout == "escalate" and step.escalate:
                try:
                    out = {**rec.outputs, **step.escalate(ctx), "escalated": True}
                except Exception as e:
                    self._end_wait(job, info)
                    self._fail_step(steps, idx, e)
                    return False
            else:
                if info is not None:
                    self._end_wait(job, info)
                types = info.types if info else "?"
                self._fail_step(steps, idx, Permanent(f"no {types} event before the deadline"))
                return False
        if info is not None:
            self._end_wait(job, info)
        return self._complete(steps, idx, out)

    def _end_wait(self, job: Job, info: WaitInfo) -> None:
        self.rt.loop.run(self.rt.waits.clear(job.id, info.subject))

    def _inject_faults(self, ctx: StepContext, step: Step) -> None:
        """Chaos drills: a configured delay before the step, or a configured failure."""
        settings = self.rt.settings
        if settings.chaos_step_delay_ms:
            ctx.sleep(settings.chaos_step_delay_ms / 1000)
        ctx.check()
        if f"{ctx.job.kind}:{step.name}" in settings.chaos_fail_steps:
            raise Permanent(f"injected failure at {step.name} (VMORCH_CHAOS_FAIL_STEPS)")

    def _retry_or_fail(
        self, job: Job, steps: list[Step], idx: int, e: Exception, attempt: int
    ) -> None:
        if attempt >= self.rt.settings.step_max_attempts:
            self._fail_step(steps, idx, e)
            return
        delay_s = getattr(e, "delay_s", None) or _backoff_s(self.rt, attempt)
        err = _error(e)
        job = self._update(
            lambda j: _with_step(
                j,
                idx,
                state=StepState.PENDING,
                error=err,
                retry_at=utcnow() + timedelta(seconds=delay_s),
            ),
            step=steps[idx].name,
            due_ms=self.rt.due_in_ms(delay_s * 1000),
        )
        self._log(job, steps[idx].name, "running", f"retry in {delay_s:.2f}s ({err.message})")

    def _fail_step(self, steps: list[Step], idx: int, e: BaseException) -> None:
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

        job = self._update(fail, step=steps[idx].name)
        self._log(job, steps[idx].name, "running", f"failed ({err.message})")
        self._compensate(job, steps)

    # -- endings ---------------------------------------------------------------------------
    def _compensate(self, job: Job, steps: list[Step]) -> None:
        """Undo in reverse: done steps, a step left half-done by a retry or a dead worker,
        and the failed step when its effect may be partial. Stops at an undo that fails:
        what came before it stays in place (undoing it could strand what the failed undo
        left behind, e.g. volumes of a domain that could not be undefined)."""
        if job.wait is not None:
            self._end_wait(job, job.wait)
        stuck: str | None = None
        for idx in reversed(range(len(job.steps))):
            rec, step = job.steps[idx], steps[idx]
            half_done = rec.state in (StepState.RUNNING, StepState.WAITING, StepState.UNDOING) or (
                rec.state == StepState.PENDING and rec.attempts > 0
            )
            if rec.state == StepState.PENDING and not half_done:
                job = self._update(partial(_with_step, idx=idx, state=StepState.SKIPPED))
                continue
            failed_needs_undo = (
                rec.state == StepState.FAILED
                and step.undo_on_failure
                and not rec.outputs.get("_undo_done")
            )
            if not (rec.state == StepState.DONE or half_done or failed_needs_undo):
                continue
            job, ok = self._undo(job, steps, idx, keep_failed=rec.state == StepState.FAILED)
            if not ok:
                stuck = step.name
                break
        self._end(job, stuck)

    def _end(self, job: Job, stuck: str | None) -> None:
        ended = (
            JobState.ABORTED
            if (job.abort_requested or job.state == JobState.ABORTING)
            else JobState.FAILED
        )
        undone = [s.name for s in job.steps if s.state == StepState.UNDONE]

        def end(j: Job) -> Job:
            err = j.error or ErrorInfo(code="aborted", message="aborted by request")
            if stuck:
                err = err.model_copy(
                    update={
                        "message": f"{err.message}; undo of {stuck} "
                        "failed, the steps before it were left in place"
                    }
                )
            return j.model_copy(
                update={"state": ended, "ended_at": utcnow(), "undone_steps": undone, "error": err}
            )

        job = self._update(end)
        self._log(job, "-", "compensating", ended.value)

    def _undo(
        self, job: Job, steps: list[Step], idx: int, *, keep_failed: bool
    ) -> tuple[Job, bool]:
        step = steps[idx]
        if not keep_failed:
            job = self._update(
                lambda j: _with_step(j, idx, state=StepState.UNDOING), step=step.name
            )
        ctx = self._ctx(job, job.steps[idx].attempts, {**_outputs(job), **job.steps[idx].outputs})
        err: ErrorInfo | None = None
        if step.undo is not None:
            for attempt in range(1, self.rt.settings.step_max_attempts + 1):
                try:
                    step.undo(ctx)
                    err = None
                    break
                except LeaseLost:
                    raise
                except RETRYABLE as e:
                    err = _error(e)
                    ctx.sleep(_backoff_s(self.rt, attempt))
                except Exception as e:
                    log.exception("job=%s undo of %s failed", job.id, step.name)
                    err = _error(e)
                    break
        if keep_failed:
            outs = {**job.steps[idx].outputs, "_undo_done": err is None}
            job = self._update(lambda j: _with_step(j, idx, outputs=outs), step=step.name)
        elif err is None:
            job = self._update(
                lambda j: _with_step(j, idx, state=StepState.UNDONE, ended_at=utcnow()),
                step=step.name,
            )
        else:
            failed = ErrorInfo(code=err.code, message=f"undo failed: {err.message}")
            job = self._update(
                lambda j: _with_step(j, idx, state=StepState.FAILED, error=failed), step=step.name
            )
        self._log(job, step.name, "undo", job.steps[idx].state.value)
        return job, err is None

    def _finish_failed(self, err: ErrorInfo) -> None:
        def end(j: Job) -> Job:
            state = JobState.ABORTED if j.state == JobState.ABORTING else JobState.FAILED
            return j.model_copy(update={"state": state, "ended_at": utcnow(), "error": err})

        self._update(end)


def advance(rt: Runtime, job_id: str) -> str:
    """Move `job_id` forward, if no other worker holds it. Returns what happened."""
    taken = rt.loop.run(rt.leases.acquire_and_read(job_id))
    if taken is None:
        return "busy"
    token, doc, version = taken
    if not doc:
        rt.loop.run(rt.leases.release(job_id, token))
        return "missing"
    outcome = "advanced"
    runner: Runner | None = None
    try:
        with Heartbeat(rt, job_id, token) as hb:
            runner = Runner(rt, job_id, token, hb)
            runner.cur = Versioned(Job.model_validate_json(doc), version)
            runner.advance()
    except LeaseLost:
        log.warning("job=%s lease lost: stopped without recording", job_id)
        rt.loop.run(rt.leases.release(job_id, token))
        return "lease_lost"  # the new lease holder carries on; publish nothing
    except NotFound:
        rt.loop.run(rt.leases.release(job_id, token))
        return "missing"
    except BaseException:
        rt.loop.run(rt.leases.release(job_id, token))
        raise
    messages = []
    for jid in runner.to_dispatch:
        queue = runner.cur.job.queue if runner.cur and jid == job_id else None
        if queue is None:
            with contextlib.suppress(NotFound):
                queue = rt.loop.run(rt.jobs.get(jid)).queue
        if queue is not None:
            messages.append((queue, rt.messages.advance(jid, queue)))
    rt.loop.run(rt.leases.release_and_push(job_id, token, messages))
    return outcome
