"""The per-server agent: libvirt domain events in, CloudEvents on the Redis stream out.

It keeps one `EventConnection` (with keepalive) to its server. Each event carries the time
libvirt delivered it (`observed_at`; the envelope's `time` is when it was published). Events
wait in a bounded queue; one drain task publishes them in order, in batches of up to
`agent_batch_max` (one pipelined round trip for the batch, each event still attributed on
its own to the job that caused it).

Nothing is lost silently. When the queue is full the agent stops taking live events, counts
them, and once it has caught up compares every domain's state with the last state it
published and emits what changed (marked `observed_after_overflow`). When the connection
drops it emits `server.down`, reconnects with backoff, compares states the same way
(marked `observed_after_reconnect`), then emits `server.up`. A change found by comparing
carries the domain's state reason as its detail (`shutdown`: the guest stopped itself;
`destroyed`, `crashed`, ...), or `observed` when libvirt gives none. The last published
states are kept in Redis, so a restarted agent also catches up.

It also serves the guest message channel of every domain running on the server
(`channels.py`), following the states it publishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, Literal, TypeVar

import redis.asyncio as aredis

from orchestrator import logs, metrics
from orchestrator.errors import HypervisorUnavailable
from orchestrator.metrics import AGENT_RECONNECTS
from orchestrator.services import Services, connect
from orchestrator.settings import Settings
from orchestrator.store import keys
from orchestrator.store.events import make_event
from schemas import event_types as et
from schemas.events import Event
from schemas.inventory import Server, VmState
from workers.agent.channels import GuestChannels
from workers.agent.coalesce import CoalescingRedis
from workers.hypervisor.adapter import silence_libvirt_errors
from workers.hypervisor.events import DomainEvent, EventConnection, Keepalive
from workers.hypervisor.states import observed_change

log = logging.getLogger("vmorch.agent")
T = TypeVar("T")
# Why states are compared: the agent started, its connection came back, its queue overflowed.
Cause = Literal["start", "reconnect", "overflow"]
_FLAGS: dict[Cause, str | None] = {
    "start": None,
    "reconnect": "observed_after_reconnect",
    "overflow": "observed_after_overflow",
}


@dataclass
class _Compare:
    """A queue item: compare states here, in the order of the events (after a reconnect,
    `done` tells the connection loop how it went)."""

    cause: Cause
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class _Stop:
    """A queue item: publish what came before, then stop."""


_Item = DomainEvent | _Compare | _Stop


class ServerWatch:
    def __init__(self, services: Services, server: Server):
        s = services.settings
        self.settings = s
        self.server = server
        self.source = f"libvirt://{server.name}"
        self.redis = services.redis
        self.events = services.events
        self.inventory = services.inventory
        self.jobs = services.jobs
        # attribution's reads, issued together by concurrent publishes, in one round trip
        self.expectations = Services.build(s, CoalescingRedis(services.redis)).expectations
        self.ha = services.ha
        self.servers = services.servers
        self.keepalive = Keepalive(s.libvirt_keepalive_interval_s, s.libvirt_keepalive_count)
        self.batch_max = s.agent_batch_max
        self.queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=s.agent_queue_max)
        self.overflowing = False  # not taking live events until the queue has drained
        self.not_taken = 0  # live events left out since the queue filled up
        self.not_taken_total = 0
        self.conn: EventConnection | None = None
        self._inbox: list[DomainEvent] = []  # delivered by libvirt, not yet taken
        self._inbox_lock = threading.Lock()
        self._wake_pending = False
        self.closed = asyncio.Event()
        self.loop = asyncio.get_running_loop()
        self.last_key = keys.agent_last(server.name)
        self.channels = GuestChannels(services, server, lambda: self.conn)

    # --- from libvirt's event thread -----------------------------------------------------
    def _on_event(self, ev: DomainEvent) -> None:
        # One wake-up of the loop for a run of events, not one each: a burst costs the
        # loop (and the GIL it shares with this thread) far less.
        with self._inbox_lock:
            self._inbox.append(ev)
            if self._wake_pending:
                return
            self._wake_pending = True
        self.loop.call_soon_threadsafe(self._take_inbox)

    def _closed_by_libvirt(self, conn: EventConnection, reason: str) -> None:
        def closed() -> None:
            if conn is self.conn:  # not an older connection's late notice
                log.warning("server=%s connection closed (%s)", self.server.name, reason)
                self.closed.set()

        self.loop.call_soon_threadsafe(closed)

    # --- on the loop ---------------------------------------------------------------------
    def _take_inbox(self) -> None:
        with self._inbox_lock:
            evs, self._inbox = self._inbox, []
            self._wake_pending = False
        for ev in evs:
            self._take(ev)

    def _take(self, ev: DomainEvent) -> None:
        if not self.overflowing:
            try:
                self.queue.put_nowait(ev)
                return
            except asyncio.QueueFull:
                self.overflowing = True
                log.warning(
                    "server=%s event queue full (%d): not taking live events until it "
                    "drains, then comparing states",
                    self.server.name,
                    self.queue.maxsize,
                )
        self.not_taken += 1
        self.not_taken_total += 1

    def _data(self, ev: DomainEvent, flag: str | None) -> dict[str, Any]:
        data: dict[str, Any] = {
            "vm_id": ev.uuid,
            "vm_name": ev.name,
            "server": self.server.name,
            "pool": self.server.pool,
            "detail": ev.detail,
            "observed_at": ev.observed_at.isoformat(),
            **ev.extra,
        }
        if ev.state is not None:
            data["state"] = ev.state.value
        if flag:
            data[flag] = True
        return data

    async def _publish(self, evs: Sequence[DomainEvent], flag: str | None = None) -> None:
        """Publish `evs` in order, in one round trip, then record the states they leave."""

        async def attributed(event: Event) -> Event:
            # the job whose recorded expectation explains this event, if any: decided now,
            # while that job is still running, and carried by the event
            caused_by = await self.expectations.attribute(event, self.jobs)
            if caused_by:
                event = event.model_copy(
                    update={"data": {**event.data, "caused_by_job": caused_by}}
                )
            return event

        # events about VMs that no job expects anything of go at once, in one round trip;
        # from the first that may be expected on, each is attributed on its own, all at
        # once (their reads share a round trip: `coalesce`), and then appended
        plain = [make_event(ev.type, self.source, ev.uuid, self._data(ev, flag)) for ev in evs]
        n = await self.events.publish_unexpected(plain)
        events = await asyncio.gather(*(attributed(e) for e in plain[n:]))
        await self.events.publish_many(events)
        final = {ev.uuid: ev.state for ev in evs if ev.state is not None}
        if not final:
            return
        names = {ev.uuid: ev.name for ev in evs}
        for uuid, st in final.items():
            self.channels.track(uuid, st == VmState.RUNNING, names.get(uuid, ""))
        pipe = self.redis.pipeline(transaction=False)
        gone = [u for u, st in final.items() if st == VmState.DELETED]
        kept = {u: st.value for u, st in final.items() if st != VmState.DELETED}
        if gone:
            pipe.hdel(self.last_key, *gone)
        if kept:
            pipe.hset(self.last_key, mapping=kept)
        await self.inventory.add_vm_states(pipe, final, server=self.server.name)
        await pipe.execute()

    async def _server_event(self, type_: str) -> None:
        if type_ == "server.down":  # since when: HA relocates only after a grace period
            await self.ha.mark_server_down(self.server.name)
        else:
            await self.ha.mark_server_up(self.server.name)
        await self.events.publish(
            make_event(
                type_,
                self.source,
                self.server.name,
                {"server": self.server.name, "pool": self.server.pool},
            )
        )

    async def _compare(self, conn: EventConnection, cause: Cause) -> None:
        """Emit every change between the last published states and what the server has.

        Runs on the drain task, so the events queued before it are published first and a
        stale one cannot overwrite what the comparison found."""
        if self.overflowing or self.not_taken:
            log.warning(
                "server=%s %d live events were not taken (%d in all): comparing states",
                self.server.name,
                self.not_taken,
                self.not_taken_total,
            )
        self.overflowing, self.not_taken = False, 0  # take live events again from now on
        timeout_s = self.settings.libvirt_call_timeout_s
        now = await asyncio.wait_for(asyncio.to_thread(conn.domain_states), timeout_s)
        at = datetime.now(UTC)
        self.channels.sync({u: st.name for u, st in now.items() if st.state == VmState.RUNNING})
        last = {k: VmState(v) for k, v in (await self.redis.hgetall(self.last_key)).items()}
        changes = []
        for uuid in sorted(set(now) | set(last)):
            before = last.get(uuid)
            status = now.get(uuid)
            after = status.state if status else VmState.DELETED
            if before != after:
                type_, detail = observed_change(before, after, status.reason if status else "")
                changes.append(
                    DomainEvent(type_, uuid, status.name if status else "", detail, after, at)
                )
        flag = _FLAGS[cause]
        for i in range(0, len(changes), self.batch_max):
            await self._publish(changes[i : i + self.batch_max], flag)

    async def _until_done(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """`fn()`, tried again while Redis is away (the same batch, so order is kept)."""
        delay_s = 0.1
        while True:
            try:
                return await fn()
            except aredis.RedisError:
                log.warning(
                    "server=%s cannot %s; retrying in %.1fs", self.server.name, what, delay_s
                )
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 5.0)

    async def _next_batch(self) -> tuple[list[DomainEvent], _Compare | _Stop | None]:
        """Up to batch_max queued events (waiting for the first), and the item that ended
        the batch, if not the batch's size or an empty queue."""
        batch: list[DomainEvent] = []
        item = await self.queue.get()
        while isinstance(item, DomainEvent):
            batch.append(item)
            if len(batch) >= self.batch_max:
                return batch, None
            try:
                item = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                return batch, None
        return batch, item

    async def _drain(self) -> None:
        """The one publisher: events in order, comparisons in their place among them."""
        while True:
            batch, item = await self._next_batch()
            if batch:
                try:
                    await self._until_done(
                        f"publish {len(batch)} events", partial(self._publish, batch)
                    )
                except Exception:  # never silently: compare states in their place
                    log.exception("server=%s cannot publish a batch", self.server.name)
                    self.overflowing = True
                    self.not_taken += len(batch)
                    self.not_taken_total += len(batch)
            if isinstance(item, _Compare):
                await self._run_compare(item)
            elif isinstance(item, _Stop):
                return
            elif self.overflowing and self.queue.empty():
                await self._catch_up()

    async def _run_compare(self, item: _Compare) -> None:
        conn = self.conn
        try:
            if conn is None:
                raise HypervisorUnavailable("not connected")
            await self._compare(conn, item.cause)
        except Exception as e:  # the connection loop decides: reconnect and compare again
            item.done.set_exception(e)
        else:
            item.done.set_result(None)

    async def _catch_up(self) -> None:
        """After an overflow, once the queue has drained: compare states."""
        conn = self.conn
        if conn is None:
            self.overflowing = False  # the reconnect compares states anyway
            return
        try:
            await self._until_done("compare states", partial(self._compare, conn, "overflow"))
        except Exception as e:  # the server does not answer: reconnecting compares again
            log.warning("server=%s cannot compare states: %s; reconnecting", self.server.name, e)
            if conn is self.conn:
                self.closed.set()

    # --- the connection loop -------------------------------------------------------------
    async def _connect(self) -> EventConnection:
        conn = EventConnection(
            self.server.uri,
            self._on_event,
            lambda reason: self._closed_by_libvirt(conn, reason),
            self.keepalive,
        )
        try:
            await asyncio.wait_for(
                asyncio.to_thread(conn.open), self.settings.libvirt_call_timeout_s
            )
        except BaseException:
            conn.close()  # also one whose open is still under way on its thread
            raise
        self.conn = conn
        return conn

    async def _close(self, conn: EventConnection) -> None:
        """Close on a thread, without waiting for long: closing is a call to the daemon,
        which may be the one that stopped answering."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.to_thread(conn.close), self.settings.libvirt_call_timeout_s
            )

    async def _remove_stale_copies(self, conn: EventConnection) -> None:
        """Before this server's reports count again: a domain here of a VM that vmorch has
        placed on another server (moved, fenced, while this one did not answer) is a stale
        copy on the same disks. It is destroyed and undefined, and an event says so."""
        timeout_s = self.settings.libvirt_call_timeout_s
        here = await asyncio.wait_for(asyncio.to_thread(conn.domain_states), timeout_s)
        for vm in await self.inventory.vms_by_id(sorted(here)):
            if not vm.server or vm.server == self.server.name:
                continue
            removed = await asyncio.wait_for(
                asyncio.to_thread(conn.remove_domain, vm.id), timeout_s
            )
            if not removed:
                continue
            log.warning(
                "server=%s removed a stale copy of vm %s (placed on %s)",
                self.server.name,
                vm.name,
                vm.server,
            )
            await self.events.publish(
                make_event(
                    et.VM_STALE_COPY_REMOVED,
                    self.source,
                    vm.id,
                    {
                        "vm_id": vm.id,
                        "vm_name": vm.name,
                        "server": self.server.name,
                        "placed_on": vm.server,
                        "state_before": here[vm.id].state.value,
                    },
                )
            )

    async def _keep_facts(self, conn: EventConnection, stop: asyncio.Event) -> None:
        """Until the connection closes (or the agent stops): record what the server has
        now, and again every `agent_facts_interval_s` (for the API's views; kept three
        intervals, so a server no agent watches loses them)."""
        every_s = self.settings.agent_facts_interval_s
        while not (stop.is_set() or self.closed.is_set()):
            try:
                facts = await asyncio.wait_for(
                    asyncio.to_thread(conn.facts), self.settings.libvirt_call_timeout_s
                )
                await self.servers.record_facts(self.server.name, facts, ttl_s=3 * every_s)
            except (HypervisorUnavailable, TimeoutError, aredis.RedisError) as e:
                # a dead server's connection is closed by keepalive; Redis comes back: the
                # next interval tries again (neither is a reason to reconnect to libvirt)
                log.info("server=%s facts not recorded: %s", self.server.name, e)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_first(stop.wait(), self.closed.wait()), every_s)

    async def _compared(self, cause: Cause) -> None:
        item = _Compare(cause)
        await self.queue.put(item)
        await item.done

    async def run(self, stop: asyncio.Event) -> None:
        drain = asyncio.create_task(self._drain())
        doorbell = asyncio.create_task(self.channels.doorbell(stop))
        qemu_agents = asyncio.create_task(self.channels.qemu_agents(stop))
        backoff_s, was_up, down_sent = 0.2, False, False
        try:
            while not stop.is_set():
                conn: EventConnection | None = None
                try:
                    self.closed.clear()
                    conn = await self._connect()
                    backoff_s = 0.2
                    await self._remove_stale_copies(conn)
                    if was_up:
                        AGENT_RECONNECTS.labels(self.server.name).inc()
                    await self._compared("reconnect" if was_up else "start")
                    await self._server_event("server.up")
                    was_up, down_sent = True, False
                    await self._keep_facts(conn, stop)
                    if not stop.is_set():
                        await self._server_event("server.down")
                        down_sent = True
                except (HypervisorUnavailable, TimeoutError, aredis.RedisError) as e:
                    # the server or Redis went away mid-way: start over (reconnect, compare)
                    log.warning("server=%s: %s; reconnecting", self.server.name, e)
                    if not down_sent and not isinstance(e, aredis.RedisError):
                        with contextlib.suppress(aredis.RedisError):
                            await self._server_event("server.down")
                            down_sent = True
                    await _wait(stop, backoff_s * random.uniform(0.5, 1.0))
                    backoff_s = min(backoff_s * 2, 10.0)
                finally:
                    if conn is not None:
                        self.conn = None
                        await self._close(conn)
        finally:
            doorbell.cancel()
            qemu_agents.cancel()
            await self.channels.close()
            await self.queue.put(_Stop())
            await drain
            for t in (doorbell, qemu_agents):
                with contextlib.suppress(asyncio.CancelledError):
                    await t


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def _first(*aws: Any) -> None:
    tasks = [asyncio.ensure_future(a) for a in aws]
    _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for t in pending:
        t.cancel()


async def run_agent(settings: Settings, server: str, stop: asyncio.Event) -> None:
    silence_libvirt_errors()
    logs.bind(server=server)  # on every line of this process
    metrics.serve(settings.metrics_host, settings.metrics_port)
    r = connect(settings)
    services = Services.build(settings, r)
    try:
        srv = await services.inventory.server(server)
        await ServerWatch(services, srv).run(stop)
    finally:
        await r.aclose()
