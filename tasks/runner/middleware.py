"""Step middleware: code that runs around every step and after every transition, without
touching the runner (fault injection, the per-transition log line; next metrics, tracing).

As in dramatiq: `before_step` hooks run in order, `after_step` and `after_transition` in
reverse; a hook that fails is logged and not raised, except from `before_step`, where
raising is how a middleware makes the step fail (fault injection does that on purpose).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from orchestrator.errors import Permanent
from orchestrator.metrics import STEP_DURATION
from orchestrator.settings import Settings
from schemas.jobs import Job
from tasks.step import Step, StepContext

log = logging.getLogger("vmorch.runner")


class StepMiddleware:
    """Base class: every hook does nothing."""

    def before_step(self, ctx: StepContext, step: Step) -> None:
        """Runs right before the step; raising fails the attempt as the step would."""

    def after_step(self, ctx: StepContext, step: Step, error: BaseException | None) -> None:
        """Runs after the step returned (error None) or raised."""

    def after_transition(
        self, job: Job, step: str, frm: str, to: str, elapsed_s: float, note: str = ""
    ) -> None:
        """Runs after a job or step change was committed (`to` is a state name)."""


class Middlewares:
    def __init__(self, items: Sequence[StepMiddleware]) -> None:
        self.items = list(items)

    def before_step(self, ctx: StepContext, step: Step) -> None:
        for m in self.items:
            m.before_step(ctx, step)

    def after_step(self, ctx: StepContext, step: Step, error: BaseException | None) -> None:
        for m in reversed(self.items):
            try:
                m.after_step(ctx, step, error)
            except Exception:
                log.exception("middleware %s after_step failed", type(m).__name__)

    def after_transition(
        self, job: Job, step: str, frm: str, to: str, elapsed_s: float, note: str = ""
    ) -> None:
        for m in reversed(self.items):
            try:
                m.after_transition(job, step, frm, to, elapsed_s, note)
            except Exception:
                log.exception("middleware %s after_transition failed", type(m).__name__)


class TransitionLog(StepMiddleware):
    """One structured line per change: job, kind, step, from -> to, elapsed seconds."""

    def after_transition(
        self, job: Job, step: str, frm: str, to: str, elapsed_s: float, note: str = ""
    ) -> None:
        log.info(
            "job=%s kind=%s step=%s %s -> %s elapsed_s=%.3f%s",
            job.id,
            job.kind,
            step,
            frm,
            to,
            elapsed_s,
            f" ({note})" if note else "",
        )


class StepMetrics(StepMiddleware):
    """Each attempt's duration in `vmorch_step_duration_seconds` (kind, step, outcome:
    done (a step that begins to wait counts as done: its wait is the job's, not the
    step's), retry or failed)."""

    def __init__(self) -> None:
        self._started: dict[tuple[str, str], float] = {}

    def before_step(self, ctx: StepContext, step: Step) -> None:
        self._started[(ctx.job.id, step.name)] = time.monotonic()

    def after_step(self, ctx: StepContext, step: Step, error: BaseException | None) -> None:
        t0 = self._started.pop((ctx.job.id, step.name), None)
        if t0 is None:  # an earlier middleware failed the attempt before this one ran
            return
        retryable = getattr(error, "retryable", False)
        outcome = "done" if error is None else "retry" if retryable else "failed"
        STEP_DURATION.labels(ctx.job.kind, step.name, outcome).observe(time.monotonic() - t0)


class FaultInjection(StepMiddleware):
    """Chaos drills (off by default): a delay before every step, and a permanent failure of
    the steps named `<job kind>:<step name>` in VMORCH_CHAOS_FAIL_STEPS."""

    def __init__(self, settings: Settings) -> None:
        self.delay_s = settings.chaos_step_delay_ms / 1000
        self.fail = set(settings.chaos_fail_steps)

    def before_step(self, ctx: StepContext, step: Step) -> None:
        if self.delay_s:
            ctx.sleep(self.delay_s)
        ctx.check()
        if f"{ctx.job.kind}:{step.name}" in self.fail:
            raise Permanent(f"injected failure at {step.name} (VMORCH_CHAOS_FAIL_STEPS)")


def default_middlewares(settings: Settings) -> Middlewares:
    return Middlewares([TransitionLog(), StepMetrics(), FaultInjection(settings)])
