"""A workflow of no-op steps: exercises the engine (retries, failure, abort) without libvirt."""

from __future__ import annotations

from orchestrator.errors import HypervisorUnavailable, Permanent
from schemas.requests import Noop
from tasks.engine import Outputs, Step, StepContext


def _make(index: int, req: Noop) -> Step:
    def run(ctx: StepContext) -> Outputs:
        """Converges trivially: it changes nothing outside the journal."""
        if ctx.attempt <= req.transient_failures:
            raise HypervisorUnavailable(f"simulated transient failure {ctx.attempt}")
        if req.step_delay_ms:
            ctx.sleep(req.step_delay_ms / 1000)
        if req.fail_at == index:
            raise Permanent(f"simulated permanent failure at step {index}")
        return {f"step{index}": "ok"}

    def undo(ctx: StepContext) -> None:
        """Nothing to reverse; recorded so compensation order is visible in the journal."""

    return Step(name=f"noop-{index}", run=run, undo=undo, description="does nothing")


def steps(req: Noop) -> list[Step]:
    return [_make(i, req) for i in range(1, req.steps + 1)]
