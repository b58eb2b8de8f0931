"""Waiting steps: a step that returned `Wait` holds no worker until its event comes.

The wait is stored (fenced) with its deadline; the router resumes the job when a matching
event arrives, and the job's timer brings it back to check its target state every
`wait_recheck_s` (an event may be missed) and at the deadline, where the step fails or
escalates.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from orchestrator.clock import due_in_ms
from orchestrator.errors import LeaseLost, Permanent
from orchestrator.jobs import transitions as tr
from schemas.base import utcnow
from schemas.jobs import Job, WaitInfo
from tasks.step import Outputs, Step, Wait

if TYPE_CHECKING:
    from tasks.runner.advance import Runner


def recheck_ms(runner: Runner, info: WaitInfo) -> int:
    """When to look again without an event: the deadline, or sooner to check the state."""
    deadline_ms = int(info.deadline.timestamp() * 1000)
    return min(deadline_ms, due_in_ms(runner.rt.settings.wait_recheck_s * 1000))


def begin(runner: Runner, job: Job, steps: list[Step], idx: int, w: Wait) -> bool:
    info = WaitInfo(
        step=idx,
        types=w.types,
        subject=w.subject,
        since=w.since,
        deadline=utcnow() + timedelta(seconds=w.timeout_s),
        on_timeout=w.on_timeout,
    )
    job = runner.update(
        lambda j: tr.step_waiting(j, idx, info, w.outputs),
        step=steps[idx].name,
        due_ms=recheck_ms(runner, info),
    )
    runner.transition(job, steps[idx].name, "running", "waiting", f"{w.types} on {w.subject}")
    # registering also finds an event that came between the action and now
    runner.rt.loop.run(runner.rt.waits.register(job.id, info, fence=runner.fence))
    return check(runner, job, steps, idx)


def end(runner: Runner, job: Job, info: WaitInfo) -> None:
    runner.rt.loop.run(runner.rt.waits.clear(job.id, info.subject, fence=runner.fence))


def check(runner: Runner, job: Job, steps: list[Step], idx: int) -> bool:
    """Finish the waiting step if its event came or its target state holds; at the
    deadline fail it or escalate; otherwise leave it waiting (no worker held)."""
    step, rec = steps[idx], job.steps[idx]
    info = runner.rt.loop.run(runner.rt.waits.get(job.id)) or job.wait
    ctx = runner.ctx(job, rec.attempts, {**tr.outputs_of(job), **rec.outputs})
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
        except runner.RETRYABLE:
            out = None  # look again at the next check
        except Exception as e:
            if info is not None:
                end(runner, job, info)
            runner.fail_step(steps, idx, e)
            return False
    if out is None:
        if info is not None and utcnow() < info.deadline:
            runner.rt.loop.run(runner.rt.jobs.set_due(job.id, recheck_ms(runner, info)))
            return False
        if info is not None and info.on_timeout == "escalate" and step.escalate:
            try:
                out = {**rec.outputs, **step.escalate(ctx), "escalated": True}
            except Exception as e:
                end(runner, job, info)
                runner.fail_step(steps, idx, e)
                return False
        else:
            if info is not None:
                end(runner, job, info)
            types = info.types if info else "?"
            runner.fail_step(steps, idx, Permanent(f"no {types} event before the deadline"))
            return False
    if info is not None:
        end(runner, job, info)
    return runner.complete(steps, idx, out)
