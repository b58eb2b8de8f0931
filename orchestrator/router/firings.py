"""Hook firings: which hooks an event fires, for which subjects, and what each firing does.

Each (hook, event, subject) is claimed with a lease before it acts and marked done after,
so an event read again (by another router, after this one died) acts at most once per
firing, at least once in all. Background actions (webhooks) run in a bounded pool beside the
event path, their firing lease renewed while they run (a delivery whose lease was taken over
stops at once: one delivery of a firing at a time); when the pool is full the firing is
given back untouched and the event is handled again later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from orchestrator.errors import NotFound
from orchestrator.globs import any_match
from orchestrator.router.actions import ActionContext, ActionKind, Firing, registry
from orchestrator.router.actions.webhook import WebhookSender
from orchestrator.router.hooks import matches
from orchestrator.router.policies import ha
from orchestrator.services import Services
from orchestrator.targets import WebhookAllowList
from schemas import event_types as et
from schemas.events import Event
from schemas.hooks import Hook, HookRun
from schemas.inventory import Vm

log = logging.getLogger("vmorch.router.hooks")


@dataclass(frozen=True)
class Handled:
    """What became of one event: `complete` once every firing is done (the entry may be
    acknowledged when `pending` finishes too); otherwise some firing is in another router's
    hands or could not start, and the entry must be handled again later."""

    complete: bool
    pending: tuple[asyncio.Task[bool], ...] = ()


class Deliveries:
    """Background actions in flight, at most `limit` at once."""

    def __init__(self, services: Services, ctx: ActionContext, limit: int) -> None:
        self.services, self.ctx, self.limit = services, ctx, limit
        self.tasks: set[asyncio.Task[bool]] = set()

    def start(self, firing: Firing, kind: ActionKind) -> asyncio.Task[bool] | None:
        if len(self.tasks) >= self.limit:
            return None
        task = asyncio.create_task(self._run(firing, kind), name=f"hook:{firing.hook.id}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def _run(self, firing: Firing, kind: ActionKind) -> bool:
        """True once the firing is recorded and done; False when its lease was lost (another
        router acts on it) or the action crashed (it is acted on again later)."""
        s = self.services.settings
        hooks = self.services.hooks
        action = asyncio.create_task(
            asyncio.wait_for(kind.act(self.ctx, firing), s.webhook_delivery_max_s)
        )
        try:
            while not action.done():
                await asyncio.wait({action}, timeout=s.hook_lease_ms / 3000)
                if action.done():
                    break
                if not await hooks.renew_firing(firing.hook, firing.key, s.hook_lease_ms):
                    log.warning("hook=%s firing lease lost; stopping its delivery", firing.hook.id)
                    action.cancel()
                    return False
            try:
                run = action.result()
            except TimeoutError:
                run = firing.run("failed", f"delivery cut off after {s.webhook_delivery_max_s:g} s")
            await hooks.settle(run, firing.hook, firing.key)
            return True
        except Exception:
            log.exception("hook=%s action failed; the firing is given back", firing.hook.id)
            with contextlib.suppress(Exception):
                await hooks.release_firing(firing.hook, firing.key)
            return False
        finally:
            if not action.done():
                action.cancel()

    async def close(self) -> None:
        for t in list(self.tasks):
            t.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks)


class HookEngine:
    """Evaluates hooks for events; one per router process."""

    def __init__(self, services: Services) -> None:
        self.services = services
        s = services.settings
        self.sender = WebhookSender(WebhookAllowList(s.webhook_allowed_hosts))
        ctx = ActionContext(services, self.sender)
        self.ctx = ctx
        self.actions = registry()
        self.deliveries = Deliveries(services, ctx, s.webhook_concurrency)
        self._version = ""
        self._cache: list[Hook] = []

    async def close(self) -> None:
        await self.deliveries.close()
        await self.sender.close()

    async def hooks(self, version: str | None = None) -> list[Hook]:
        """The hooks, read again only when one changed: when their `version` (read here
        unless given) is not the one of the cached list."""
        if version is None:
            version = await self.services.hooks.version()
        if version != self._version:
            self._cache = await self.services.hooks.all()
            self._version = version
        return self._cache

    async def handle(self, event: Event, vm: Vm | None, hooks: list[Hook]) -> Handled:
        if event.type == et.HOOK_RETRY_REQUESTED:
            return await self._retry(event)
        if event.type.startswith(et.JOB_PREFIX) and event.data.get("hook_id"):
            return Handled(True)  # a job a hook started fires no hooks: no loop on itself
        hooks = [h for h in hooks if h.enabled and any_match(event.type, h.match.types)]
        if not hooks:
            return Handled(True)  # most events (job.* echoes among them) concern no hook
        caused_by = event.data.get("caused_by_job")
        complete, pending = True, []
        for hook in hooks:
            for subject, target in await self._targets(hook, event, vm):
                firing = Firing(hook, event, subject, target)
                outcome = await self._fire(firing, caused_by)
                if isinstance(outcome, asyncio.Task):
                    pending.append(outcome)
                else:
                    complete &= outcome
        return Handled(complete, tuple(pending))

    async def _retry(self, request: Event) -> Handled:
        """An operator's retry of a hook run (`POST /v1/hooks/{id}/runs/{run}/retry`): the
        hook's action again, on the run's own event and subject, recorded as a new run."""
        svc = self.services
        hook_id, run_id = str(request.data.get("hook_id")), str(request.data.get("run_id"))
        try:
            hook = await svc.hooks.get(hook_id)
        except NotFound:
            return Handled(True)  # deleted since it was asked
        run = await svc.hooks.run(hook_id, run_id)
        if run is None or run.event is None:
            log.warning("hook=%s run=%s: not kept, cannot be retried", hook_id, run_id)
            return Handled(True)
        subject = run.subject or run.event.type
        # the VM the firing was about: its subject for a VM's event, and for HA's firings
        # (a server.down fires for each VM of the server, by id)
        about_vm = hook.id == ha.HA_HOOK_ID or run.event.type.startswith("vm.")
        vm = await svc.inventory.find_vm(subject) if about_vm else None
        by = str(request.data.get("by", ""))
        firing = Firing(hook, run.event, subject, vm, retry=(run, by, request.id))
        outcome = await self._fire(firing, None)
        if isinstance(outcome, asyncio.Task):
            return Handled(True, (outcome,))
        return Handled(outcome)

    async def _targets(
        self, hook: Hook, event: Event, vm: Vm | None
    ) -> list[tuple[str, Vm | None]]:
        if hook.id == ha.HA_HOOK_ID:
            return await ha.targets(self.services, hook, event, vm)
        if matches(hook.match, event, vm):
            return [(event.subject or event.type, vm)]
        return []

    async def _fire(self, firing: Firing, caused_by: str | None) -> bool | asyncio.Task[bool]:
        """True: done (now or before); False: busy elsewhere; a task: acting in background."""
        hooks, s = self.services.hooks, self.services.settings
        hook = firing.hook
        claim = await hooks.claim_firing(hook, firing.key, s.hook_lease_ms)
        if claim != "claimed":
            return claim == "done"
        # an operator's retry acts whatever flood control or the hook's filters would say
        skipped = None if firing.retry else await self._skip(firing, caused_by)
        if skipped is not None:
            await hooks.settle(skipped, hook, firing.key)
            return True
        kind = self.actions[hook.action.kind]
        if kind.background:
            task = self.deliveries.start(firing, kind)
            if task is None:  # the pool is full: give the firing back, try again later
                await hooks.release_firing(hook, firing.key)
                return False
            return task
        await hooks.settle(await kind.act(self.ctx, firing), hook, firing.key)
        return True

    async def _skip(self, firing: Firing, caused_by: str | None) -> HookRun | None:
        """The run to record instead of acting, or None to act."""
        hook, event, subject = firing.hook, firing.event, firing.subject
        if caused_by and hook.match.unexpected_only:
            return firing.run("skipped", f"caused by job {caused_by}", caused_by)
        if hook.id == ha.HA_HOOK_ID:
            reason = ha.skip_reason(event, firing.vm)
            if reason is not None:
                return firing.run("skipped", reason)
        if await self.services.hooks.within_window(hook, subject, f"{event.id}:{subject}"):
            return firing.run("suppressed", f"fired for {subject} within {hook.window_s:g}s")
        return None
