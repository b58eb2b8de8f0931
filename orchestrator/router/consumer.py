"""The router's event side: read the stream in a consumer group and act on each event.

For each event: resume the jobs waiting for it, then evaluate hooks. Events a vmorch job
caused (`caused_by_job`, set by the agent from the job's recorded expectations) are recorded
as skipped by hooks meant for unexpected changes. Delivery is at least once: entries of a
router that died are claimed by another after `claim_idle_ms`, and each (hook, event,
subject) fires once, so a re-read event does not act twice.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import socket
import time
from typing import Any

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from orchestrator.errors import VmorchError
from orchestrator.jobs.dispatch import Dispatcher
from orchestrator.jobs.submit import Submitter
from orchestrator.router.actions.webhook import WebhookAllowList, WebhookSender
from orchestrator.settings import Settings
from orchestrator.store import keys
from orchestrator.store.expectations import Expectations
from orchestrator.store.hooks import HookStore, fill, matches
from orchestrator.store.inventory import InventoryStore
from orchestrator.store.jobs import JobStore
from orchestrator.store.waits import Waits
from schemas.base import utcnow
from schemas.events import Event
from schemas.hooks import (
    GuestMessageAction,
    Hook,
    HookMatch,
    HookRun,
    HookSpec,
    SubmitJobAction,
    WebhookAction,
)
from schemas.inventory import Vm, VmState
from schemas.jobs import JobLinks
from schemas.requests import job_request_adapter

log = logging.getLogger("vmorch.router")

HA_HOOK_ID = "builtin-ha"
HA_SPEC = HookSpec(
    name="ha-restart",
    match=HookMatch(types=["vm.lifecycle.crashed", "vm.lifecycle.stopped", "server.down"]),
    action=SubmitJobAction(
        kind="submit_job",
        request={"kind": "vm.ha_restart", "vm": "{vm_id}", "reason": "{event_type}"},
    ),
    window_s=0,
)
# a guest that shut itself down, or a VM saved or migrated away, did not fail
_NOT_A_FAILURE = {"shutdown", "saved", "migrated", "from_snapshot"}


class EventRouter:
    def __init__(self, settings: Settings, redis: Redis, dispatcher: Dispatcher):
        self.settings = settings
        self.redis = redis
        self.jobs = JobStore(redis, redispatch_after_s=settings.redispatch_after_s)
        self.inventory = InventoryStore(redis)
        self.hooks = HookStore(redis)
        self.waits = Waits(redis)
        self.expectations = Expectations(redis)
        self.dispatcher = dispatcher
        self.submitter = Submitter(self.jobs, self.inventory, dispatcher)
        self.sender = WebhookSender(WebhookAllowList(settings.webhook_allowed_hosts))
        self.consumer = f"{socket.gethostname()}-{id(self):x}"
        self.group = settings.router_group
        self._next_claim = 0.0
        self._hooks_version = ""
        self._hooks_cache: list[Hook] = []

    async def setup(self) -> None:
        try:
            await self.redis.xgroup_create(keys.EVENTS, self.group, id="$", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
        if not await self.redis.exists(keys.hook(HA_HOOK_ID)):
            await self.hooks.create(HA_SPEC, hook_id=HA_HOOK_ID, builtin=True)

    async def run(self, stop: asyncio.Event) -> None:
        await self.setup()
        while not stop.is_set():
            try:
                await self.step(block_ms=1000)
            except ResponseError as e:
                if "NOGROUP" in str(e):
                    await self.setup()  # the stream was deleted (or Redis emptied): again
                    continue
                log.exception("router: event handling failed; retrying")
                await asyncio.sleep(0.5)
            except Exception:  # Redis away, a bad entry: log, keep going
                log.exception("router: event handling failed; retrying")
                await asyncio.sleep(0.5)
        await self.sender.close()

    async def step(self, block_ms: int = 1000) -> int:
        """Claim a dead router's stale entries (every claim_idle_ms/2), read new ones,
        handle and ack each."""
        entries: list[Any] = []
        now = time.monotonic()
        if now >= self._next_claim:
            self._next_claim = now + self.settings.claim_idle_ms / 2000
            _, claimed, _ = await self.redis.xautoclaim(
                keys.EVENTS,
                self.group,
                self.consumer,
                min_idle_time=self.settings.claim_idle_ms,
                start_id="0-0",
                count=100,
            )
            entries = list(claimed)
        if not entries:
            read = await self.redis.xreadgroup(
                self.group, self.consumer, {keys.EVENTS: ">"}, count=100, block=block_ms
            )
            entries = [e for _, batch in read for e in batch]
        # one look at the hooks and one pipelined look at the waits for the whole batch,
        # one XACK at the end: most entries (job.* echoes) then cost nothing more
        events = [(sid, Event.model_validate_json(f["e"])) for sid, f in entries if f]
        hooks = await self._hooks()
        waiting = await self.waits.subjects_waited_on([e.subject for _, e in events])
        done = [sid for sid, f in entries if not f]  # trimmed by MAXLEN: only to ack
        for sid, event in events:
            if await self.handle(sid, event, hooks=hooks, check_waits=event.subject in waiting):
                done.append(sid)
            # else: a firing is in another router's hands; the entry stays pending
        if done:
            await self.redis.xack(keys.EVENTS, self.group, *done)
        return len(entries)

    async def handle(
        self, sid: str, event: Event, *, hooks: list[Hook] | None = None, check_waits: bool = True
    ) -> bool:
        """Act on one event. False when a hook firing is still in another router's hands."""
        vm = None
        if event.subject and event.type.startswith("vm."):
            vm = await self.inventory.find_vm(event.subject)
            reporter = event.data.get("server")
            if vm is not None and vm.server and reporter and reporter != vm.server:
                # from a server the VM has left (its old server, back after a relocation):
                # it says nothing about the VM, neither to waits nor to hooks
                return True
        for job_id in await self.waits.on_event(sid, event) if check_waits else []:
            job = await self.jobs.get(job_id)
            await self.dispatcher.dispatch(job_id, job.queue)
        if event.type.startswith("job.") and event.data.get("hook_id"):
            return True  # a job a hook started fires no hooks: no hook can loop on itself
        hooks = [
            h
            for h in (hooks if hooks is not None else await self._hooks())
            if h.enabled and any(fnmatch.fnmatchcase(event.type, t) for t in h.match.types)
        ]
        if not hooks:
            return True  # most events (job.* echoes among them) concern no hook
        caused_by = event.data.get("caused_by_job")
        if (
            caused_by is None
            and event.type.startswith("vm.")
            and not event.source.startswith("libvirt://")
        ):  # the agent has attributed already
            caused_by = await self.expectations.attribute(event, self.jobs)
        complete = True
        for hook in hooks:
            for subject, target in await self._targets(hook, event, vm):
                complete &= await self._fire(hook, event, subject, target, caused_by)
        return complete

    async def _hooks(self) -> list[Hook]:
        """The hooks, read again only when one changed (one GET per event, not 1 + 2 a hook)."""
        version = await self.hooks.version()
        if version != self._hooks_version:
            self._hooks_cache = await self.hooks.all()
            self._hooks_version = version
        return self._hooks_cache

    async def _targets(
        self, hook: Hook, event: Event, vm: Vm | None
    ) -> list[tuple[str, Vm | None]]:
        if hook.id != HA_HOOK_ID:
            if matches(hook.match, event, vm):
                return [(event.subject or event.type, vm)]
            return []
        # the HA policy: VMs marked ha that stopped without a vmorch job or a guest asking
        if event.type == "server.down":
            server = event.data.get("server")
            return [
                (v.id, v)
                for v in await self.inventory.vms()
                if v.ha and v.server == server and v.desired_state == VmState.RUNNING
            ]
        if vm is None or not vm.ha or not matches(hook.match, event, vm):
            return []
        return [(vm.id, vm)]

    async def _fire(
        self, hook: Hook, event: Event, subject: str, vm: Vm | None, caused_by: str | None
    ) -> bool:
        claim = await self.hooks.claim_firing(hook, event, subject, self.settings.hook_lease_ms)
        if claim != "claimed":
            return claim == "done"  # done already, or still in another router's hands
        await self._decide(hook, event, subject, vm, caused_by)
        await self.hooks.finish_firing(hook, event, subject)
        return True

    async def _decide(
        self, hook: Hook, event: Event, subject: str, vm: Vm | None, caused_by: str | None
    ) -> None:

        def run(outcome: Any, detail: str = "", job_id: str | None = None) -> HookRun:
            return HookRun(
                hook_id=hook.id,
                event_id=event.id,
                event_type=event.type,
                subject=subject,
                at=utcnow(),
                action=hook.action.kind,
                outcome=outcome,
                detail=detail,
                job_id=job_id,
            )

        if caused_by and hook.match.unexpected_only:
            await self.hooks.record(run("skipped", f"caused by job {caused_by}", caused_by))
            return
        detail = event.data.get("detail")
        if hook.id == HA_HOOK_ID and vm is not None and vm.desired_state != VmState.RUNNING:
            # a VM a job stopped, even if the stop is only seen late (after a reconnect)
            await self.hooks.record(
                run("skipped", f"the VM is not meant to run (desired {vm.desired_state})")
            )
            return
        if hook.id == HA_HOOK_ID and detail in _NOT_A_FAILURE:
            await self.hooks.record(
                run("skipped", f"stopped by the guest or by design ({detail}), not a failure")
            )
            return
        if await self.hooks.within_window(hook, subject, f"{event.id}:{subject}"):
            await self.hooks.record(
                run("suppressed", f"fired for {subject} within {hook.window_s:g}s")
            )
            return
        await self.hooks.record(await self._act(hook, event, subject, vm, run))

    async def _act(
        self, hook: Hook, event: Event, subject: str, vm: Vm | None, run: Any
    ) -> HookRun:
        action = hook.action
        if isinstance(action, SubmitJobAction):
            # VM names and ids come from vmorch's inventory, never from the event (a domain
            # vmorch does not manage may be named like one it does)
            values = {
                "vm_id": vm.id if vm else "",
                "vm_name": vm.name if vm else "",
                "server": str(event.data.get("server", "")),
                "pool": vm.pool if vm else str(event.data.get("pool", "")),
                "event_id": event.id,
                "event_type": event.type,
                "subject": subject,
            }
            try:
                req = job_request_adapter.validate_python(fill(action.request, values))
                job, _ = await self.submitter.submit(
                    req,
                    submitted_by=f"hook:{hook.name}",
                    idem_key=f"{event.id}:{subject}",
                    idem_scope=f"hook:{hook.id}",
                    links=JobLinks(hook_id=hook.id, event_id=event.id),
                )
            except (VmorchError, ValidationError) as e:
                return run("failed", str(e)[:500])  # type: ignore[no-any-return]
            return run("submitted", job.kind, job.id)  # type: ignore[no-any-return]
        if isinstance(action, WebhookAction):
            secret = await self.hooks.secret(hook.id)
            if not secret:  # never sign with an empty key: anyone could forge that
                return run("refused", "no webhook secret: PATCH the hook with rotate_secret")  # type: ignore[no-any-return]
            result = await self.sender.deliver(
                str(action.url),
                secret.encode(),
                event.model_dump_json().encode(),
                f"{hook.id}:{event.id}",
                action.timeout_s,
                action.retries,
            )
            detail = f"{result.detail} (attempts {result.attempts}, status {result.status})"
            return run(result.outcome, detail)  # type: ignore[no-any-return]
        assert isinstance(action, GuestMessageAction)
        return run("refused", "guest messages are not available yet")  # type: ignore[no-any-return]
