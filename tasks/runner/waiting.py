"""Waiting steps: a step that returned `Wait` holds no worker until its event comes.

The wait is stored (fenced) with its deadline; the router resumes the job when a matching
event arrives, and the job's timer brings it back to check its target state every
`wait_recheck_s` (an event may be missed) and at the deadline, where the step fails or
escalates.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from orchestrator.clock import due_in_ms
from orchestrator.errors import LeaseLost, Permanent, VmorchError
from orchestrator.jobs import transitions as tr
from schemas.base import utcnow
from schemas.jobs import Job, WaitInfo
from tasks.step import Outputs, Step, Wait

if TYPE_CHECKING:
    from tasks.runner.advance import Runner

log = logging.getLogger("vmorch.runner")


def recheck_ms(runner: Runner, info: WaitInfo) -> int:
    """When to look again without an event: the deadline, or sooner to check the state."""
    deadline_ms = int(info.deadline.timestamp() * 1000)
    return min(deadline_ms, due_in_ms(runner.rt.settings.wait_recheck_s * 1000))


def _store(
    runner: Runner, steps: list[Step], idx: int, w: Wait, deadline: datetime | None = None
) -> tuple[Job, bool]:
    """Record step `idx` waiting for `w` (until `deadline`, else `w.timeout_s` from now)
    and register the wait. Returns the job, and whether its event is on the stream already
    (registering scans from `w.since`: an event between the action and now counts)."""
    info = WaitInfo(
        step=idx,
        types=w.types,
        subject=w.subject,
        since=w.since,
        deadline=deadline or utcnow() + timedelta(seconds=w.timeout_s),
        on_timeout=w.on_timeout,
    )
    job = runner.update(
        lambda j: tr.step_waiting(j, idx, info, w.outputs),
        step=steps[idx].name,
        due_ms=recheck_ms(runner, info),
    )
    early = runner.rt.loop.run(runner.rt.waits.register(job.id, info, fence=runner.fence))
    return job, early is not None


def begin(runner: Runner, job: Job, steps: list[Step], idx: int, w: Wait) -> bool:
    job, early = _store(runner, steps, idx, w)
    runner.transition(job, steps[idx].name, "running", "waiting", f"{w.types} on {w.subject}")
    if steps[idx].resume is not None:  # its next round runs when the job comes back
        if early:
            runner.to_dispatch.append(job.id)
        return False
    return check(runner, job, steps, idx)


def end(runner: Runner, job: Job, info: WaitInfo) -> None:
    runner.rt.loop.run(runner.rt.waits.clear(job.id, info.subject, fence=runner.fence))


def check(runner: Runner, job: Job, steps: list[Step], idx: int) -> bool:
    """Finish the waiting step if its event came or its target state holds; at the
    deadline fail it or escalate; otherwise leave it waiting (no worker held)."""
    step, rec = steps[idx], job.steps[idx]
    info = runner.rt.loop.run(runner.rt.waits.get(job.id)) or job.wait
    if step.resume is not None:
        return _next_round(runner, job, steps, idx, info)
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


def _next_round(
    runner: Runner, job: Job, steps: list[Step], idx: int, info: WaitInfo | None
) -> bool:
    """A step that waits in rounds: its `resume` decides, each time the job comes back,
    whether it is done or waits again (a new registration, scanned back from its `since`)."""
    step, rec = steps[idx], job.steps[idx]
    # at the round's deadline a step that asks for it (`last_look`) has one more `resume`
    # (it may end the step, as a message job does with the answers it has); only if it
    # would wait again does the step fail
    late = info is not None and info.matched is None and utcnow() >= info.deadline
    if late and info is not None and not step.last_look:
        end(runner, job, info)
        runner.fail_step(steps, idx, Permanent(f"no {info.types} event before the deadline"))
        return False
    ctx = runner.ctx(job, rec.attempts, {**tr.outputs_of(job), **rec.outputs})
    assert step.resume is not None
    try:
        out = step.resume(ctx)
    except LeaseLost:
        raise
    except runner.RETRYABLE:
        if info is not None:
            runner.rt.loop.run(runner.rt.jobs.set_due(job.id, recheck_ms(runner, info)))
        return False
    except Exception as e:
        if not isinstance(e, VmorchError):  # a bug: its traceback goes to the worker log
            log.exception("job=%s step=%s crashed resuming", job.id, step.name)
        if info is not None:
            end(runner, job, info)
        runner.fail_step(steps, idx, e)
        return False
    if not isinstance(out, Wait):
        if info is not None:
            end(runner, job, info)
        return runner.complete(steps, idx, out)
    if late and info is not None:
        end(runner, job, info)
        runner.fail_step(steps, idx, Permanent(f"no {info.types} event before the deadline"))
        return False
    woken = info is not None and info.matched is not None
    if (
        info is not None
        and not woken
        and (out.types, out.subject, out.outputs) == (info.types, info.subject, rec.outputs)
    ):
        # a recheck that changed nothing: the same wait goes on, its deadline kept
        runner.rt.loop.run(runner.rt.jobs.set_due(job.id, recheck_ms(runner, info)))
        return False
    if info is not None:
        end(runner, job, info)
    # a new round after an event starts its own deadline; after a recheck it keeps the
    # round's (a wait that is only looked at again never runs out otherwise)
    job, early = _store(runner, steps, idx, out, None if woken or info is None else info.deadline)
    if early:
        runner.to_dispatch.append(job.id)  # its event came already: the next round now
    return False
