"""The per-server agent: libvirt domain events in, CloudEvents on the Redis stream out.

It keeps one libvirt connection (with keepalive) to its server and registers for domain
events. When the connection drops it emits `server.down`, reconnects with backoff, compares
every domain's state with the last state it published and emits what it missed (marked
`observed_after_reconnect`), then `server.up`. The last published states are kept in Redis,
so a restarted agent also catches up.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from typing import Any

import libvirt
import redis.asyncio as aredis

from orchestrator.services import Services, connect
from orchestrator.settings import Settings
from orchestrator.store import keys
from orchestrator.store.events import make_event
from schemas.inventory import Server, VmState
from workers.hypervisor.adapter import _STATES, silence_libvirt_errors
from workers.hypervisor.states import change_type, ensure_event_loop, lifecycle

log = logging.getLogger("vmorch.agent")


@dataclass(frozen=True)
class DomainEvent:
    type: str
    uuid: str
    name: str
    detail: str
    state: VmState | None
    extra: dict[str, Any]


class ServerWatch:
    def __init__(self, services: Services, server: Server):
        self.settings = services.settings
        self.server = server
        self.redis = services.redis
        self.events = services.events
        self.inventory = services.inventory
        self.jobs = services.jobs
        self.expectations = services.expectations
        self.ha = services.ha
        self.queue: asyncio.Queue[DomainEvent | None] = asyncio.Queue()
        self.closed = asyncio.Event()
        self.publish_lock = asyncio.Lock()
        self.loop = asyncio.get_running_loop()
        self.last_key = keys.agent_last(server.name)

    # --- callbacks, on libvirt's event thread -------------------------------------------
    def _post(self, ev: DomainEvent) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, ev)

    def _on_lifecycle(
        self, _c: Any, dom: libvirt.virDomain, event: int, detail: int, _o: Any
    ) -> None:
        type_, name, state = lifecycle(event, detail)
        self._post(DomainEvent(type_, dom.UUIDString(), dom.name(), name, state, {}))

    def _on_simple(self, type_: str) -> Any:
        def cb(_c: Any, dom: libvirt.virDomain, *args: Any) -> None:
            extra = {"args": [a for a in args[:-1] if isinstance(a, str | int | float)]}
            self._post(DomainEvent(type_, dom.UUIDString(), dom.name(), "", None, extra))

        return cb

    def _on_close(self, _c: Any, reason: int, _o: Any) -> None:
        log.warning("server=%s connection closed (reason %s)", self.server.name, reason)
        self.loop.call_soon_threadsafe(self.closed.set)

    # --- connection ----------------------------------------------------------------------
    def _connect(self) -> libvirt.virConnect:
        conn = libvirt.open(self.server.uri)
        conn.setKeepAlive(2, 3)  # a silent daemon is declared dead after about 6 s
        conn.registerCloseCallback(self._on_close, None)
        conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None
        )
        for ev_id, type_ in (
            (libvirt.VIR_DOMAIN_EVENT_ID_REBOOT, "vm.reboot"),
            (libvirt.VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE, "vm.agent.lifecycle"),
            (libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_ADDED, "vm.device.added"),
            (libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, "vm.device.removed"),
            (libvirt.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED, "vm.job.completed"),
        ):
            try:
                conn.domainEventRegisterAny(None, ev_id, self._on_simple(type_), None)
            except libvirt.libvirtError:
                log.info("server=%s does not support %s events", self.server.name, type_)
        return conn

    @staticmethod
    def _states(conn: libvirt.virConnect) -> dict[str, tuple[str, VmState]]:
        return {
            d.UUIDString(): (d.name(), _STATES.get(d.state()[0], VmState.UNKNOWN))
            for d in conn.listAllDomains()
        }

    # --- publishing ----------------------------------------------------------------------
    async def _publish(self, ev: DomainEvent, reconnect: bool = False) -> None:
        data: dict[str, Any] = {
            "vm_id": ev.uuid,
            "vm_name": ev.name,
            "server": self.server.name,
            "pool": self.server.pool,
            "detail": ev.detail,
            **ev.extra,
        }
        if ev.state is not None:
            data["state"] = ev.state.value
        if reconnect:
            data["observed_after_reconnect"] = True
        event = make_event(ev.type, f"libvirt://{self.server.name}", ev.uuid, data)
        # the job whose recorded expectation explains this event, if any: decided now,
        # while that job is still running, and carried by the event
        caused_by = await self.expectations.attribute(event, self.jobs)
        if caused_by:
            event = event.model_copy(update={"data": {**data, "caused_by_job": caused_by}})
        await self.events.publish(event)
        if ev.state is not None:
            pipe = self.redis.pipeline(transaction=False)
            if ev.state == VmState.DELETED:
                pipe.hdel(self.last_key, ev.uuid)
            else:
                pipe.hset(self.last_key, ev.uuid, ev.state.value)
            await pipe.execute()
            await self.inventory.set_vm_state(ev.uuid, ev.state, server=self.server.name)

    async def _server_event(self, type_: str) -> None:
        if type_ == "server.down":  # since when: HA relocates only after a grace period
            await self.ha.mark_server_down(self.server.name)
        else:
            await self.ha.mark_server_up(self.server.name)
        await self.events.publish(
            make_event(
                type_,
                f"libvirt://{self.server.name}",
                self.server.name,
                {"server": self.server.name, "pool": self.server.pool},
            )
        )

    async def _reconcile(self, conn: libvirt.virConnect, reconnect: bool) -> None:
        """Emit every change between the last published states and what the server has.

        Live events wait meanwhile (the publish lock): one read between the state snapshot
        and the comparison would otherwise make a fresh state look like a missed change."""
        async with self.publish_lock:
            now = await asyncio.to_thread(self._states, conn)
            last = {k: VmState(v) for k, v in (await self.redis.hgetall(self.last_key)).items()}
            for uuid in sorted(set(now) | set(last)):
                before = last.get(uuid)
                name, after = now.get(uuid, ("", VmState.DELETED))
                if before != after:
                    await self._publish(
                        DomainEvent(change_type(before, after), uuid, name, "observed", after, {}),
                        reconnect=reconnect,
                    )

    async def _drain(self) -> None:
        """Publish live events in order; while Redis is away, keep trying the same event."""
        while (ev := await self.queue.get()) is not None:
            delay_s = 0.1
            while True:
                try:
                    async with self.publish_lock:
                        await self._publish(ev)
                    break
                except aredis.RedisError:
                    log.warning(
                        "server=%s cannot publish %s; retrying in %.1fs",
                        self.server.name,
                        ev.type,
                        delay_s,
                    )
                    await asyncio.sleep(delay_s)
                    delay_s = min(delay_s * 2, 5.0)

    async def run(self, stop: asyncio.Event) -> None:
        ensure_event_loop()
        drain = asyncio.create_task(self._drain())
        backoff_s, was_up, down_sent = 0.2, False, False
        try:
            while not stop.is_set():
                conn: libvirt.virConnect | None = None
                try:
                    conn = await asyncio.to_thread(self._connect)
                    backoff_s = 0.2
                    self.closed.clear()
                    await self._reconcile(conn, reconnect=was_up)
                    await self._server_event("server.up")
                    was_up, down_sent = True, False
                    await _first(stop.wait(), self.closed.wait())
                    if not stop.is_set():
                        await self._server_event("server.down")
                        down_sent = True
                except (libvirt.libvirtError, aredis.RedisError) as e:
                    # the server or Redis went away mid-way: start over (reconnect, compare)
                    log.warning("server=%s: %s; reconnecting", self.server.name, e)
                    if not down_sent and isinstance(e, libvirt.libvirtError):
                        with _quiet(aredis.RedisError):
                            await self._server_event("server.down")
                            down_sent = True
                    await _wait(stop, backoff_s * random.uniform(0.5, 1.0))
                    backoff_s = min(backoff_s * 2, 10.0)
                finally:
                    if conn is not None:
                        with _quiet():
                            conn.close()
        finally:
            self.queue.put_nowait(None)
            await drain


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with _quiet(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def _first(*aws: Any) -> None:
    tasks = [asyncio.ensure_future(a) for a in aws]
    _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for t in pending:
        t.cancel()


def _quiet(*errors: type[BaseException]) -> Any:
    import contextlib

    return contextlib.suppress(*(errors or (libvirt.libvirtError,)))


async def run_agent(settings: Settings, server: str, stop: asyncio.Event) -> None:
    silence_libvirt_errors()
    r = connect(settings)
    services = Services.build(settings, r)
    try:
        srv = await services.inventory.server(server)
        await ServerWatch(services, srv).run(stop)
    finally:
        await r.aclose()
