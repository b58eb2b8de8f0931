"""Action `submit_job`: submit the hook's request, filled with values from the inventory."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import ValidationError

from orchestrator.errors import VmorchError
from orchestrator.router.hooks import fill
from schemas.hooks import HookRun, SubmitJobAction
from schemas.jobs import JobLinks
from schemas.requests import JobRequest, job_request_adapter

if TYPE_CHECKING:
    from orchestrator.router.actions import ActionContext, Firing


async def act(ctx: ActionContext, firing: Firing) -> HookRun:
    """Idempotent: the key is (event, subject) scoped to the hook, so a firing acted on
    again (another router, after this one died) returns the job it submitted."""
    action = firing.hook.action
    if not isinstance(action, SubmitJobAction):
        raise TypeError(f"not a submit_job action: {action.kind}")
    try:
        req = job_request_adapter.validate_python(fill(action.request, values_of(firing)))
    except ValidationError as e:  # what failed and why, never the values (no input)
        why = "; ".join(
            f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}"
            for err in e.errors(include_input=False, include_url=False)
        )
        return firing.run("failed", why[:500])
    return await submit(ctx, firing, req)


def values_of(firing: Firing) -> dict[str, str]:
    """What a hook's placeholders are filled with. VM names and ids come from vmorch's
    inventory, never from the event (a domain vmorch does not manage may be named like
    one it does)."""
    vm, event = firing.vm, firing.event
    return {
        "vm_id": vm.id if vm else "",
        "vm_name": vm.name if vm else "",
        "server": str(event.data.get("server", "")),
        "pool": vm.pool if vm else str(event.data.get("pool", "")),
        "event_id": event.id,
        "event_type": event.type,
        "subject": firing.subject,
    }


async def submit(ctx: ActionContext, firing: Firing, req: JobRequest) -> HookRun:
    """Submit a hook's job, idempotently per firing (event and subject, or an operator's
    retry of one) and hook, linked to both."""
    event = firing.event
    try:
        job, _ = await ctx.services.submitter.submit(
            req,
            submitted_by=f"hook:{firing.hook.name}",
            idem_key=firing.key,  # (event, subject); an operator's retry has its own
            idem_scope=f"hook:{firing.hook.id}",
            links=JobLinks(hook_id=firing.hook.id, event_id=event.id),
            internal=True,
        )
    except VmorchError as e:
        return firing.run("failed", str(e)[:500])
    return firing.run("submitted", job.kind, job.id)
