"""Hook actions, one module per kind, looked up by the action's `kind`.

An action gets the firing (hook, event, subject, VM) and returns the HookRun to record.
Actions that talk to the outside world (`background=True`: webhooks) run beside the
event path, so no receiver can hold up the events behind them.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from orchestrator.router.actions.webhook import WebhookSender
from orchestrator.services import Services
from schemas.base import utcnow
from schemas.events import Event
from schemas.hooks import Hook, HookRun
from schemas.inventory import Vm

Outcome = Literal["submitted", "delivered", "failed", "refused", "suppressed", "skipped"]


@dataclass(frozen=True)
class Firing:
    """One hook acting on one event for one subject."""

    hook: Hook
    event: Event
    subject: str
    vm: Vm | None
    # an operator's retry of a run: (the run, who asked, the request's event id), which
    # keys the firing apart from the original one (that one is done)
    retry: tuple[HookRun, str, str] | None = None

    @property
    def key(self) -> str:
        """What claims and settles the firing: one (hook, event, subject), or one retry."""
        if self.retry is not None:
            return f"retry:{self.retry[2]}"
        return f"{self.event.id}:{self.subject}"

    def run(self, outcome: Outcome, detail: str = "", job_id: str | None = None) -> HookRun:
        return HookRun(
            id=uuid.uuid4().hex[:12],
            retry_of=self.retry[0].id if self.retry else None,
            retried_by=self.retry[1] if self.retry else None,
            event=self.event,
            hook_id=self.hook.id,
            event_id=self.event.id,
            event_type=self.event.type,
            subject=self.subject,
            at=utcnow(),
            action=self.hook.action.kind,
            outcome=outcome,
            detail=detail,
            job_id=job_id,
        )


@dataclass(frozen=True)
class ActionContext:
    services: Services
    sender: WebhookSender


ActFn = Callable[[ActionContext, Firing], Awaitable[HookRun]]


@dataclass(frozen=True)
class ActionKind:
    act: ActFn
    background: bool = False


def registry() -> dict[str, ActionKind]:
    """kind -> action (imported here so that each module stays one action)."""
    from orchestrator.router.actions import guest_message, submit_job, webhook

    return {
        "submit_job": ActionKind(submit_job.act),
        "webhook": ActionKind(webhook.act, background=True),
        "guest_message": ActionKind(guest_message.act),
    }
