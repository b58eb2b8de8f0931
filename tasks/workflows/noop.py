"""A workflow of no-op steps: exercises the engine (retries, failure, abort) without libvirt."""

from __future__ import annotations

from orchestrator.errors import HypervisorUnavailable, Permanent
from schemas.requests import Noop
from tasks.step import Outputs, Step, StepContext, Wait


def _make(index: int, req: Noop) -> Step:
    waits = req.wait_for is not None and index == req.steps

    def run(ctx: StepContext) -> Outputs | Wait:
        """Converges trivially: it changes nothing outside the journal. The waiting step
        takes the stream position first, so an event during its delay still counts."""
        if ctx.attempt <= req.transient_failures:
            raise HypervisorUnavailable(f"simulated transient failure {ctx.attempt}")
        since = ctx.stream_position() if waits else ""
        if req.step_delay_ms:
            ctx.sleep(req.step_delay_ms / 1000)
        if req.fail_at == index:
            raise Permanent(f"simulated permanent failure at step {index}")
        if waits and req.wait_for:
            return Wait(
                types=[req.wait_for],
                subject=ctx.job.id,
                since=since,
                timeout_s=req.wait_timeout_s,
                on_timeout=req.on_timeout,
                outputs={f"step{index}": "ok"},
            )
        return {f"step{index}": "ok"}

    def undo(ctx: StepContext) -> None:
        """Nothing to reverse; recorded so compensation order is visible in the journal."""

    return Step(
        name=f"noop-{index}",
        run=run,
        undo=undo,
        description="does nothing",
        escalate=lambda ctx: {"escalated_by": "deadline"},
    )


def steps(req: Noop) -> list[Step]:
    return [_make(i, req) for i in range(1, req.steps + 1)]
