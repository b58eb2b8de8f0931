"""The agent (workers/agent/agent.py) over fakeredis, with a fake EventConnection: the test
delivers events from a thread, as libvirt's event loop does, and sets the server's states."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import fakeredis
import pytest

from orchestrator.services import Services
from orchestrator.settings import Settings
from orchestrator.store import keys
from schemas.events import Event
from schemas.inventory import Server, ServerFacts, VmState
from schemas.requests import job_request_adapter
from workers.agent import agent as agent_mod
from workers.agent.agent import ServerWatch
from workers.hypervisor.events import DomainEvent, DomainStatus

SERVER = Server(name="srv-x1", pool="pool-x", uri="test:///default", memory_mib=1024, cpus=2)
UUIDS = [f"00000000-0000-0000-0000-{i:012d}" for i in range(10)]


class FakeConnection:
    """Stands for EventConnection: `states` is what the server lists."""

    made: list[FakeConnection] = []
    states: dict[str, DomainStatus] = {}

    def __init__(self, uri: str, on_event: Any, on_close: Any, keepalive: Any):
        self.on_event: Callable[[DomainEvent], None] = on_event
        self.on_close: Callable[[str], None] = on_close
        FakeConnection.made.append(self)

    def open(self) -> None:
        pass

    def domain_states(self) -> dict[str, DomainStatus]:
        return dict(FakeConnection.states)

    def facts(self) -> ServerFacts:
        return ServerFacts(cpus=4, memory_mib=1024, memory_free_mib=512, networks=["n1"])

    def close(self) -> None:
        pass


@pytest.fixture(autouse=True)
def fake_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeConnection.made = []
    FakeConnection.states = {}
    monkeypatch.setattr(agent_mod, "EventConnection", FakeConnection)


def _event(i: int, type_: str, state: VmState, at: datetime | None = None) -> DomainEvent:
    uuid = UUIDS[i % len(UUIDS)]
    detail = "paused" if state == VmState.SUSPENDED else "unpaused"
    return DomainEvent(type_, uuid, f"d{i % len(UUIDS)}", detail, state, at or datetime.now(UTC))


async def _with_agent(
    settings: Settings, body: Callable[[ServerWatch, Services, asyncio.Event], Awaitable[None]]
) -> None:
    redis = fakeredis.FakeAsyncRedis(decode_responses=True)
    services = Services.build(settings, redis)
    watch = ServerWatch(services, SERVER)
    stop = asyncio.Event()
    task = asyncio.create_task(watch.run(stop))
    try:
        await _until(lambda: _types(redis, "server.up"))
        await body(watch, services, asyncio.Event())
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        await redis.aclose()


async def _stream(redis: Any) -> list[Event]:
    return [Event.read(f["e"]) for _, f in await redis.xrange(keys.EVENTS)]


async def _types(redis: Any, type_: str) -> list[Event]:
    return [e for e in await _stream(redis) if e.type == type_]


async def _until(probe: Callable[[], Awaitable[Any]], timeout_s: float = 5.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not (value := await probe()):
        if loop.time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.01)
    return value


async def _deliver(conn: FakeConnection, evs: Sequence[DomainEvent]) -> None:
    """From another thread, as libvirt's event loop would; then let the loop take them."""
    t = threading.Thread(target=lambda: [conn.on_event(e) for e in evs])
    t.start()
    t.join()
    await asyncio.sleep(0)


def _gate(services: Services) -> tuple[asyncio.Event, list[int]]:
    """Hold every publish until the gate opens; record the batch sizes. (A batch goes to
    `publish_unexpected` whole, its events from the first one a job may have caused on
    to `publish_many`.)"""
    gate, sizes = asyncio.Event(), []
    publish_unexpected = services.events.publish_unexpected

    async def gated(events: Sequence[Event]) -> int:
        await gate.wait()
        sizes.append(len(events))
        return await publish_unexpected(events)

    services.events.publish_unexpected = gated  # type: ignore[method-assign]
    return gate, sizes


def test_events_are_published_in_batches_in_order_with_the_time_libvirt_delivered_them(
    settings: Settings,
) -> None:
    async def body(watch: ServerWatch, services: Services, _: asyncio.Event) -> None:
        # given a publisher held up while 7 events arrive
        gate, sizes = _gate(services)
        at = datetime.now(UTC) - timedelta(hours=1)
        evs = [
            _event(i, "vm.lifecycle.suspended", VmState.SUSPENDED, at + timedelta(seconds=i))
            for i in range(7)
        ]
        await _deliver(FakeConnection.made[-1], evs)
        # when it goes on
        gate.set()
        got = await _until(lambda: _n(_types(services.redis, "vm.lifecycle.suspended"), 7))
        # then they were published in order, in batches of at most agent_batch_max
        assert [e.data["observed_at"] for e in got] == [e.observed_at.isoformat() for e in evs]
        assert all(e.time >= datetime.fromisoformat(e.data["observed_at"]) for e in got)
        assert max(sizes) <= 3 and sum(sizes) == 7 and len(sizes) >= 3
        # and the last states are recorded
        await _until(lambda: _last_is(services, {u: "suspended" for u in UUIDS[:7]}))

    asyncio.run(_with_agent(settings.model_copy(update={"agent_batch_max": 3}), body))


def test_a_full_queue_stops_taking_live_events_and_compares_states_once_drained(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(watch: ServerWatch, services: Services, _: asyncio.Event) -> None:
        # given a publisher held up, and a burst of 40 events on 10 domains: more than the
        # queue holds; the domains all end up running
        gate, _sizes = _gate(services)
        FakeConnection.states = {
            u: DomainStatus(f"d{i}", VmState.RUNNING, "unpaused") for i, u in enumerate(UUIDS)
        }
        kinds = [
            ("vm.lifecycle.suspended", VmState.SUSPENDED),
            ("vm.lifecycle.resumed", VmState.RUNNING),
        ]
        burst = [_event(i, *kinds[(i // 10) % 2]) for i in range(40)]
        await _deliver(FakeConnection.made[-1], burst)
        # then the queue stayed bounded and the events it could not take were counted
        assert watch.queue.qsize() <= 5 and watch.not_taken > 0
        # when the publisher goes on
        gate.set()
        # then, once drained, the agent compared states: every domain's last published
        # state is the server's, and the changes it found say so
        await _until(lambda: _last_is(services, {u: "running" for u in UUIDS}))
        compared = [
            e for e in await _stream(services.redis) if e.data.get("observed_after_overflow")
        ]
        assert compared and {e.data["detail"] for e in compared} == {"unpaused"}
        assert watch.not_taken_total == 40 - (
            len(await _stream(services.redis)) - 1 - len(compared)
        )
        assert not watch.overflowing
        assert "event queue full" in caplog.text and "were not taken" in caplog.text

    asyncio.run(_with_agent(settings.model_copy(update={"agent_queue_max": 5}), body))


async def _last_is(services: Services, want: dict[str, str]) -> bool:
    """The agent's last published states are `want`."""
    return bool(await services.redis.hgetall(keys.agent_last(SERVER.name)) == want)


def test_after_a_reconnect_a_change_carries_the_state_reason_as_its_detail(
    settings: Settings,
) -> None:
    async def body(watch: ServerWatch, services: Services, _: asyncio.Event) -> None:
        # given a running domain the agent has reported
        first = FakeConnection.made[-1]
        await _deliver(first, [_event(0, "vm.lifecycle.started", VmState.RUNNING)])
        await _until(lambda: _types(services.redis, "vm.lifecycle.started"))
        # when the connection drops and, meanwhile, the guest shuts itself down
        FakeConnection.states = {UUIDS[0]: DomainStatus("d0", VmState.STOPPED, "shutdown")}
        first.on_close("eof")
        # then after reconnecting the agent reports the stop with its reason
        [stopped] = await _until(lambda: _types(services.redis, "vm.lifecycle.stopped"))
        assert stopped.data["detail"] == "shutdown"
        assert stopped.data["observed_after_reconnect"] is True
        assert stopped.data["state"] == "stopped" and "observed_at" in stopped.data
        types = [e.type for e in await _stream(services.redis)]
        assert types.index("server.down") < types.index("vm.lifecycle.stopped")
        assert types[-1] == "server.up"

    asyncio.run(_with_agent(settings, body))


def test_attribution_still_applies_to_each_event_of_a_batch(settings: Settings) -> None:
    async def body(watch: ServerWatch, services: Services, _: asyncio.Event) -> None:
        # given a running job that expects a suspend of one domain
        job, _ = await services.submitter.submit(
            job_request_adapter.validate_python({"kind": "noop", "steps": 1}),
            submitted_by="test",
            internal=True,
        )
        await services.expectations.expect(UUIDS[1], job.id, ["vm.lifecycle.suspended"])
        gate, _sizes = _gate(services)
        await _deliver(
            FakeConnection.made[-1],
            [_event(i, "vm.lifecycle.suspended", VmState.SUSPENDED) for i in range(3)],
        )
        gate.set()
        got = await _until(lambda: _n(_types(services.redis, "vm.lifecycle.suspended"), 3))
        # then only that domain's event is the job's
        assert [e.data.get("caused_by_job") for e in got] == [None, job.id, None]

    asyncio.run(_with_agent(settings, body))


async def _n(aw: Awaitable[list[Event]], n: int) -> list[Event] | None:
    got = await aw
    return got if len(got) >= n else None
