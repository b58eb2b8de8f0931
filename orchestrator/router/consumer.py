"""The router's event side: read the stream in a consumer group and act on each event.

For each event: resume the jobs waiting for it, then evaluate hooks. Delivery is at least
once: the entries of a router that died are claimed by another after `claim_idle_ms`, and
each hook firing acts once. An entry is acknowledged alone, once handled: a bad entry is set
aside as a dead letter and never holds up its batch, and an entry whose webhook is still
being delivered stays pending (kept this router's, so no other router claims it) until the
delivery ends. Entries trimmed before any router read them are counted and logged by id.

A batch read costs one round trip while no job waits: the acknowledgements of the batch
before, the read, the hooks' version and the count of waiting jobs go in one pipeline (a
second trip asks which of the batch's subjects are waited on, when some job waits). Under
load most batches hold an entry or two, so round trips, not decoding, were the router's
cost (four per batch before).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

from redis.exceptions import ResponseError

from orchestrator import logs
from orchestrator.globs import any_match
from orchestrator.metrics import EVENTS, event_type_label
from orchestrator.router.firings import HookEngine
from orchestrator.router.policies import ha
from orchestrator.services import Services
from orchestrator.store import keys
from orchestrator.store.events import EventReader
from schemas import event_types as et
from schemas.events import Event
from schemas.hooks import Hook

log = logging.getLogger("vmorch.router")
BATCH = 100


class EventConsumer:
    def __init__(self, services: Services, engine: HookEngine | None = None):
        self.services = services
        self.settings = services.settings
        self.redis = services.redis
        self.reader = EventReader(services.redis)
        self.engine = engine or HookEngine(services)
        self.consumer = f"{socket.gethostname()}-{id(self):x}"
        self.group = self.settings.router_group
        self._next_claim = 0.0
        self._claim_cursor = "0-0"
        self.in_flight: dict[str, tuple[asyncio.Task[bool], ...]] = {}
        self.acks: list[str] = []  # handled entries, acknowledged with the next read
        self.lost = 0  # entries trimmed before this router read them (also in events:lost)

    async def setup(self, *, from_start: bool = False) -> None:
        """The routers' consumer group (reading new entries, or the whole stream) and the
        built-in HA hook, made once whichever router comes first."""
        start = "0" if from_start else "$"
        try:
            await self.redis.xgroup_create(keys.EVENTS, self.group, id=start, mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
        await ha.ensure_hook(self.services)

    async def run(self, stop: asyncio.Event) -> None:
        await self.setup()
        try:
            while not stop.is_set():
                try:
                    await self.step(block_ms=1000)
                except ResponseError as e:
                    if "NOGROUP" in str(e):
                        await self.setup()  # the stream was deleted (or Redis emptied): again
                        continue
                    log.exception("router: event handling failed; retrying")
                    await asyncio.sleep(0.5)
                except Exception:  # Redis away: log, keep going
                    log.exception("router: event handling failed; retrying")
                    await asyncio.sleep(0.5)
        finally:
            try:
                await self.flush_acks()
            except Exception:  # unacknowledged entries are claimed and handled again
                log.warning("router: acking %d entries on the way out failed", len(self.acks))
            await self.engine.close()

    async def flush_acks(self) -> None:
        if self.acks:
            await self.redis.xack(keys.EVENTS, self.group, *self.acks)
            self.acks = []

    async def _read(self, block_ms: int) -> tuple[list[Any], str, int]:
        """New entries, with what the batch needs to know read in the same round trip:
        the acknowledgements of the last batch go first (before the read blocks), the
        hooks' version and the number of waiting jobs after it (Redis runs a client's
        commands in order, so both are read once the entries are there)."""
        pipe = self.redis.pipeline(transaction=False)
        acks, self.acks = self.acks, []
        if acks:
            pipe.xack(keys.EVENTS, self.group, *acks)
        pipe.xreadgroup(self.group, self.consumer, {keys.EVENTS: ">"}, count=BATCH, block=block_ms)
        self.services.hooks.queue_version(pipe)
        self.services.waits.queue_any_waiting(pipe)
        try:
            replies = await pipe.execute()
        except BaseException:
            self.acks = acks + self.acks  # sent again with the next read
            raise
        read, version, waiting = replies[-3:]
        entries = [e for _, batch in read or [] for e in batch]
        return entries, str(version or "0"), int(waiting or 0)

    async def _claim(self) -> list[Any]:
        """A dead router's stale entries (every claim_idle_ms/2), walking the pending list
        with XAUTOCLAIM's cursor; ids Redis reports deleted were trimmed unhandled."""
        now = time.monotonic()
        if now < self._next_claim:
            return []
        self._next_claim = now + self.settings.claim_idle_ms / 2000
        cursor, claimed, deleted = await self.redis.xautoclaim(
            keys.EVENTS,
            self.group,
            self.consumer,
            min_idle_time=self.settings.claim_idle_ms,
            start_id=self._claim_cursor,
            count=BATCH,
        )
        self._claim_cursor = str(cursor)
        if deleted:
            await self._count_lost([str(d) for d in deleted])
        return [e for e in claimed if e[0] not in self.in_flight]

    async def _count_lost(self, ids: list[str]) -> None:
        self.lost += len(ids)
        await self.redis.incrby(keys.EVENTS_LOST, len(ids))
        log.error(
            "router: %d event(s) were trimmed before any router handled them: %s",
            len(ids),
            " ".join(ids[:20]),
        )
        await self.redis.xack(keys.EVENTS, self.group, *ids)

    async def step(self, block_ms: int = 1000) -> int:
        """Claim stale entries or read new ones, handle each, ack what is done."""
        await self._keep_in_flight()
        entries = await self._claim()
        if entries:
            hooks, waiting = await self._batch_context(entries)
        else:
            entries, version, n_waiting = await self._read(block_ms)
            if not entries:
                return 0
            hooks = await self.engine.hooks(version)
            # with no job waiting, no entry can resume one: a job is `waiting` before its
            # wait is registered, and registering finds the events that came before it
            waiting = await self._waited_on(entries) if n_waiting else set()
        events: list[tuple[str, Event]] = []
        done: list[str] = []
        empty = [sid for sid, f in entries if not f]
        if empty:
            await self._count_lost(empty)
        for sid, fields in entries:
            if not fields:
                continue
            if "t" in fields:
                EVENTS.labels(event_type_label(fields["t"])).inc()
            if self._concerns_nobody(fields, hooks, waiting):
                done.append(sid)  # most job.* echoes: no hook, no wait, nothing to decode
                continue
            event = self.reader.decode(sid, fields)
            if event is None:
                await self.reader.dead_letter(sid, fields, "not an event envelope")
                done.append(sid)  # acknowledged alone: it never blocks its batch
                continue
            events.append((sid, event))
            if "t" not in fields:  # written without the type field
                EVENTS.labels(event_type_label(event.type)).inc()
            if "s" not in fields and event.subject:  # written without the subject field
                waiting |= await self.services.waits.subjects_waited_on([event.subject])
        for sid, event in events:
            try:
                with logs.bound(event_id=event.id, event_type=event.type):
                    waited = event.subject in waiting
                    if await self.handle(sid, event, hooks=hooks, check_waits=waited):
                        done.append(sid)
            except Exception:
                # this entry stays pending and is handled again; the rest of the batch goes on
                log.exception("router: handling event %s (%s) failed", sid, event.type)
        self.acks += done
        return len(entries)

    async def _waited_on(self, entries: list[Any]) -> set[str]:
        return await self.services.waits.subjects_waited_on(
            [f.get("s") or None for _, f in entries if f]
        )

    async def _batch_context(self, entries: list[Any]) -> tuple[list[Hook], set[str]]:
        """The hooks (read again only when their version changed) and which subjects of the
        batch some job waits on, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        self.services.hooks.queue_version(pipe)
        waited_on = self.services.waits.queue_waited_on(
            pipe, [f.get("s") or None for _, f in entries if f]
        )
        version, *flags = await pipe.execute()
        return await self.engine.hooks(str(version or "0")), waited_on(flags)

    @staticmethod
    def _concerns_nobody(fields: dict[str, str], hooks: list[Hook], waiting: set[str]) -> bool:
        """A job event (known by the entry's type field, without decoding it) that no job
        waits on and no enabled hook matches: the router has nothing to do with it."""
        type_ = fields.get("t")
        if not type_ or not type_.startswith(et.JOB_PREFIX) or fields.get("s") in waiting:
            return False
        return not any(h.enabled and any_match(type_, h.match.types) for h in hooks)

    async def handle(
        self, sid: str, event: Event, *, hooks: list[Hook] | None = None, check_waits: bool = True
    ) -> bool:
        """Act on one event. True when the entry may be acknowledged now."""
        svc = self.services
        vm = None
        # about a VM: its lifecycle (subject: the VM) and its guest (data: vm_id; the answer
        # to a job's message has the job as its subject)
        ref = event.subject if event.type.startswith("vm.") else None
        if event.type.startswith("guest."):
            ref = str(event.data.get("vm_id") or "") or None
        if ref:
            vm = await svc.inventory.find_vm(ref)
            reporter = event.data.get("server")
            if vm is not None and vm.server and reporter and reporter != vm.server:
                # from a server the VM has left (its old server, back after a relocation):
                # it says nothing about the VM, neither to waits nor to hooks
                return True
        for job_id in await svc.waits.on_event(sid, event) if check_waits else []:
            job = await svc.jobs.get(job_id)
            await svc.dispatcher.dispatch(job_id, job.queue)
        handled = await self.engine.handle(
            event, vm, hooks if hooks is not None else await self.engine.hooks()
        )
        if handled.pending:
            self.in_flight[sid] = handled.pending
            return False
        return handled.complete

    async def _keep_in_flight(self) -> None:
        """Acknowledge entries whose deliveries ended well (those that did not stay pending
        and are handled again once idle), and reset the idle time of the others, so that
        no other router claims them meanwhile (their firings are leased anyway)."""
        if not self.in_flight:
            return
        settled = [sid for sid, tasks in self.in_flight.items() if all(t.done() for t in tasks)]
        acks = []
        for sid in settled:
            tasks = self.in_flight.pop(sid)
            if all(not t.cancelled() and t.exception() is None and t.result() for t in tasks):
                acks.append(sid)
        if acks:
            await self.redis.xack(keys.EVENTS, self.group, *acks)
        if self.in_flight:
            await self.redis.xclaim(
                keys.EVENTS, self.group, self.consumer, 0, list(self.in_flight), justid=True
            )
