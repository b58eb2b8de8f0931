"""Action `guest_message`: send a key/value message to the guest of the event's VM (a
`vm.message` job, submitted like `submit_job`'s: once per event and subject)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import ValidationError

from orchestrator.router.actions.submit_job import submit, values_of
from orchestrator.router.hooks import fill
from schemas.hooks import GuestMessageAction, HookRun
from schemas.requests import GuestKeyValue, SendMessages

if TYPE_CHECKING:
    from orchestrator.router.actions import ActionContext, Firing


async def act(ctx: ActionContext, firing: Firing) -> HookRun:
    action = firing.hook.action
    if not isinstance(action, GuestMessageAction):
        raise TypeError(f"not a guest_message action: {action.kind}")
    if firing.vm is None:
        return firing.run("refused", "the event is about no VM vmorch manages")
    try:
        msg = GuestKeyValue(key=action.key, value=fill(action.value, values_of(firing)))
    except ValidationError as e:  # what failed and why, never the values (no input)
        why = "; ".join(err["msg"] for err in e.errors(include_input=False, include_url=False))
        return firing.run("failed", why[:500])
    req = SendMessages(
        kind="vm.message", vms=[firing.vm.id], messages=[msg], timeout_s=action.timeout_s
    )
    return await submit(ctx, firing, req)
