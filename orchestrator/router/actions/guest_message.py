"""Action `guest_message`: send a key/value message to the VM's guest (comes with guest
messaging; refused until then, with a run that says so)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from schemas.hooks import HookRun

if TYPE_CHECKING:
    from orchestrator.router.actions import ActionContext, Firing


async def act(ctx: ActionContext, firing: Firing) -> HookRun:
    return firing.run("refused", "guest messages are not available yet")
