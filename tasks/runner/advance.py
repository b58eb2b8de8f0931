"""The step runner: one `advance` call moves a job forward by one step or a few quick ones.

It takes the job's lease (fencing token) and keeps it renewed by a heartbeat for as long as
it works on the job, runs the next step, records the outcome with a fenced compare-and-set,
releases the lease and only then publishes the next `advance` (so the next worker does not
find the lease still held). Transient failures are retried after an exponential backoff
with jitter (the router's timer dispatches the job again); a permanent failure, or an
abort, undoes the done steps in reverse (`compensation`). Every write carries the fencing
token, so a worker that lost its lease records nothing. Waiting steps: `waiting`.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Literal

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from orchestrator import logs
from orchestrator.clock import due_in_ms
from orchestrator.errors import AbortRequested, LeaseLost, NotFound, Retryable, VmorchError
from orchestrator.jobs import transitions as tr
from orchestrator.store import jobdoc
from orchestrator.store.fence import Fence
from orchestrator.store.jobs import Versioned
from schemas.base import utcnow
from schemas.jobs import ErrorInfo, Job, JobState, StepState
from tasks.runner import compensation, waiting
from tasks.runner.heartbeat import Heartbeat
from tasks.runner.middleware import Middlewares, default_middlewares
from tasks.runtime import Runtime
from tasks.step import Outputs, Step, StepContext, Wait
from tasks.workflows.registry import steps_for

log = logging.getLogger("vmorch.runner")


class Runner:
    """Runs one job's steps under one lease."""

    # Errors worth another attempt of the whole step: vmorch's retryable branch, and Redis
    # being briefly unreachable (or slow) from the worker.
    RETRYABLE = (Retryable, RedisConnectionError, RedisTimeoutError, TimeoutError)

    def __init__(
        self,
        rt: Runtime,
        job_id: str,
        token: int,
        hb: Heartbeat,
        middlewares: Middlewares | None = None,
    ):
        self.rt, self.job_id, self.token, self.hb = rt, job_id, token, hb
        self.fence = Fence(job_id, token)
        self.middlewares = middlewares or default_middlewares(rt.settings)
        self.t0 = time.monotonic()
        self.to_dispatch: list[str] = []  # published once the lease is released
        self.cur: Versioned | None = None  # the last version read or written
        self.deadline = self.t0 + rt.settings.step_slice_ms / 1000  # of the steps run at once
        self.started: int | None = None  # a step this runner marked running with the last write
        # queues paused or rate-limited when the lease was taken (read with it, for a
        # queued job): only a job of one of them asks for admission before it starts
        self.controlled: frozenset[str] = frozenset()

    # -- helpers the step modules share --------------------------------------------------
    def update(
        self,
        mutate: Callable[[Job], Job | None],
        *,
        step: str | None = None,
        due_ms: int | Literal["-"] | None = None,
    ) -> Job:
        """Commit `mutate` with the fencing token (LeaseLost when the lease is gone)."""
        self.cur, heads = self.rt.loop.run(
            self.rt.jobs.update_v(
                self.job_id, mutate, current=self.cur, fence=self.token, step=step, due_ms=due_ms
            )
        )
        self.to_dispatch.extend(heads)  # the next job on this VM (and a clone's source)
        return self.cur.job

    def ctx(
        self, job: Job, attempt: int, outputs: Outputs, *, abortable: bool = True
    ) -> StepContext:
        """A step's context. An undo is not `abortable`: it is the abort's own work, so an
        abort seen meanwhile must not stop it (a lost lease still does)."""
        return StepContext(
            job=job,
            runtime=self.rt,
            attempt=attempt,
            outputs=outputs,
            lease_lost=self.hb.lost,
            abort_seen=self.hb.abort if abortable else threading.Event(),
            token=self.token,
        )

    def _reporter(self, idx: int, name: str) -> Callable[[float, dict[str, Any]], None]:
        """What `StepContext.report` does for step `idx`: a fenced write of its progress."""

        def report(fraction: float, detail: dict[str, Any]) -> None:
            self.update(lambda j: tr.step_progress(j, idx, fraction, detail), step=name)

        return report

    def transition(self, job: Job, step: str, frm: str, to: str, note: str = "") -> None:
        self.middlewares.after_transition(job, step, frm, to, time.monotonic() - self.t0, note)

    def error_info(self, e: BaseException) -> ErrorInfo:
        if isinstance(e, VmorchError):
            return ErrorInfo(code=e.code, message=e.message, retryable=e.retryable)
        if isinstance(e, self.RETRYABLE):
            return ErrorInfo(code="redis_unavailable", message="Redis unreachable", retryable=True)
        # details of unexpected errors go to the worker log, not to every viewer of the job
        return ErrorInfo(code="internal", message=f"internal error ({type(e).__name__}); see logs")

    def backoff_s(self, attempt: int) -> float:
        s = self.rt.settings
        return float(
            min(s.retry_max_s, s.retry_base_s * (2 ** (attempt - 1))) * random.uniform(0.5, 1.0)
        )

    # -- entry -----------------------------------------------------------------------------
    def advance(self) -> None:
        """Run steps of the job while they end quickly: further steps run under the same
        lease until `step_slice_ms` has passed, then the rest goes back on the queue."""
        while self._advance_once():
            if self.started is None and not self.may_go_on():
                self.to_dispatch.append(self.job_id)
                return

    def may_go_on(self) -> bool:
        """Whether this runner may start another step under its lease now."""
        return time.monotonic() < self.deadline and not self.hb.abort.is_set()

    def _then_running(self, idx: int, steps: list[Step]) -> Callable[[Job], Job]:
        """The mutation that also starts step `idx`, if this runner is to run it now; its
        due time is then the dead-worker timer, as for any running step."""
        if idx < len(steps) and self.may_go_on():
            return lambda j: tr.next_running(j, idx)
        return lambda j: j

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
            err = self.error_info(e)
            self.update(lambda j: tr.failed_outright(j, err))
            return False
        if job.state == JobState.QUEUED:
            job = self._start(job, steps)
            if job.state == JobState.QUEUED or job.state.terminal:
                return False
        if job.abort_requested or job.state == JobState.ABORTING or job.error is not None:
            compensation.compensate(self, job, steps)
            return False
        if job.state == JobState.WAITING:
            waiting_idx = next(i for i, s in enumerate(job.steps) if s.state == StepState.WAITING)
            return waiting.check(self, job, steps, waiting_idx)
        active = (StepState.PENDING, StepState.RUNNING)
        idx = next((i for i, s in enumerate(job.steps) if s.state in active), None)
        if idx is None:
            self.update(tr.succeeded)
            return False
        retry_at = job.steps[idx].retry_at
        if retry_at is not None and retry_at > utcnow():
            # an early (duplicate) message: keep the backoff, let the timer bring it back
            ms = int(retry_at.timestamp() * 1000)
            self.rt.loop.run(self.rt.jobs.set_due(self.job_id, ms))
            return False
        return self._run_step(job, steps, idx)

    def _start(self, job: Job, steps: list[Step]) -> Job:
        if job.links.vm_id and self.rt.loop.run(self.rt.jobs.ahead_of(job))[1]:
            # Not this job's turn on its VM (or a clone's source): the job ahead dispatches
            # it when it ends (and the router's timer checks again, should that be lost).
            return job
        if job.queue in self.controlled:  # paused or rate-limited when the lease was taken
            admission = self.rt.loop.run(self.rt.services.queues.admit(job.queue, job.id))
            if admission.verdict != "go":  # it stays queued: held, or timed for later
                self.transition(job, "-", "queued", "queued", f"{job.queue}: {admission.verdict}")
                return job
        plan = [tr.Planned(s.name, s.description, s.undo is None, s.no_return) for s in steps]
        records = tr.plan_records(job, plan)
        at = next((i for i, r in enumerate(records) if r.state != StepState.DONE), len(records))
        first = self._then_running(at, steps)

        def start(j: Job) -> Job | None:
            started = tr.started(j, records)
            return None if started is None else first(started)

        job = self.update(start, due_ms=due_in_ms(self.rt.settings.lease_ms))
        self.transition(job, "-", "queued", job.state.value)
        self._note_started(job, steps, at)
        return job

    def _note_started(self, job: Job, steps: list[Step], idx: int) -> None:
        """Remember step `idx` if the last write started it (it runs next, without a write
        of its own: one write per step ends it and starts the next)."""
        if idx < len(job.steps) and job.steps[idx].state == StepState.RUNNING:
            self.started = idx
            self.transition(job, steps[idx].name, "pending", "running", "attempt 1")

    # -- one step --------------------------------------------------------------------------
    def _run_step(self, job: Job, steps: list[Step], idx: int) -> bool:
        step = steps[idx]
        if self.started == idx:  # marked running by this runner's last write
            self.started = None
            attempt = job.steps[idx].attempts
        else:
            attempt = job.steps[idx].attempts + 1
            job = self.update(
                lambda j: tr.step_running(j, idx, attempt),
                step=step.name,
                # the dead-worker timer: due when the lease would run out (the heartbeat
                # keeps it ahead while this worker lives)
                due_ms=due_in_ms(self.rt.settings.lease_ms),
            )
            self.transition(job, step.name, "pending", "running", f"attempt {attempt}")
        outputs = tr.outputs_of(job)
        with logs.bound(step=step.name, server=outputs.get("server")):
            return self._attempt(job, steps, idx, attempt, outputs)

    def _attempt(
        self, job: Job, steps: list[Step], idx: int, attempt: int, outputs: Outputs
    ) -> bool:
        step = steps[idx]
        ctx = self.ctx(job, attempt, outputs)
        ctx.reporter = self._reporter(idx, step.name)
        error: BaseException | None = None
        try:
            self.middlewares.before_step(ctx, step)
            out = step.run(ctx) or {}
            ctx.check()
        except LeaseLost:
            raise
        except self.RETRYABLE as e:
            error = e
            self._retry_or_fail(steps, idx, e, attempt)
            return False
        except Exception as e:  # permanent: undo what was done
            error = e
            if not isinstance(e, VmorchError):
                log.exception("job=%s step=%s crashed", job.id, step.name)
            self.fail_step(steps, idx, e)
            return False
        finally:
            self.middlewares.after_step(ctx, step, error)
        if isinstance(out, Wait):
            return waiting.begin(self, job, steps, idx, out)
        return self.complete(steps, idx, out)

    def complete(self, steps: list[Step], idx: int, out: Outputs) -> bool:
        """Record the step done (a waiting job runs again), and start the next one in the
        same write when this runner goes on; the last step ends the job."""
        s = self.rt.settings
        then = self._then_running(idx + 1, steps)
        going_on = idx + 1 < len(steps) and self.may_go_on()
        job = self.update(
            lambda j: then(tr.step_done(j, idx, out)),
            step=steps[idx].name,
            due_ms=due_in_ms(s.lease_ms if going_on else s.redispatch_after_s * 1000),
        )
        self.transition(job, steps[idx].name, "running", "done")
        if job.state == JobState.SUCCEEDED:
            self.transition(job, "-", "running", "succeeded")
            return False
        self._note_started(job, steps, idx + 1)
        return True

    def _retry_or_fail(self, steps: list[Step], idx: int, e: Exception, attempt: int) -> None:
        if attempt >= self.rt.settings.step_max_attempts:
            self.fail_step(steps, idx, e)
            return
        delay_s = getattr(e, "delay_s", None) or self.backoff_s(attempt)
        err = self.error_info(e)
        retry_at = utcnow() + timedelta(seconds=delay_s)
        job = self.update(
            lambda j: tr.step_retry(j, idx, err, retry_at),
            step=steps[idx].name,
            due_ms=due_in_ms(delay_s * 1000),
        )
        self.transition(
            job, steps[idx].name, "running", "pending", f"retry in {delay_s:.2f}s: {err.message}"
        )

    def fail_step(self, steps: list[Step], idx: int, e: BaseException) -> None:
        err = self.error_info(e)
        name = steps[idx].name
        aborted = isinstance(e, AbortRequested)
        job = self.update(lambda j: tr.step_failed(j, idx, err, name, aborted=aborted), step=name)
        self.transition(job, name, "running", "failed", err.message)
        compensation.compensate(self, job, steps)


def advance(rt: Runtime, job_id: str) -> str:
    """Move `job_id` forward, if no other worker holds it. Returns what happened."""
    with logs.bound(job_id=job_id):
        return _advance(rt, job_id)


def _advance(rt: Runtime, job_id: str) -> str:
    taken = rt.loop.run(rt.leases.acquire_and_read(job_id))
    if taken is None:
        return "busy"
    token, doc, version, controlled = taken
    if not doc:
        rt.loop.run(rt.leases.release(job_id, token))
        return "missing"
    runner: Runner | None = None
    try:
        with Heartbeat(rt, job_id, token) as hb:
            runner = Runner(rt, job_id, token, hb)
            runner.controlled = controlled
            runner.cur = Versioned(jobdoc.decode(doc), version)
            links = runner.cur.job.links
            logs.bind(kind=runner.cur.job.kind, vm_id=links.vm_id, vm=links.vm_name)
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
    return "advanced"
