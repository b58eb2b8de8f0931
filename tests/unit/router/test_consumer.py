"""The router's handling of events: HA targeting, stale servers, loops, flood retries."""

from __future__ import annotations

import asyncio
import json

from orchestrator.router.consumer import EventConsumer
from orchestrator.router.policies.ha import HA_HOOK_ID, HA_SPEC
from orchestrator.services import Services
from orchestrator.settings import Settings
from orchestrator.store import keys
from orchestrator.store.events import make_event
from orchestrator.store.hooks import HookStore
from schemas.events import Event
from schemas.hooks import HookSpec
from schemas.inventory import Vm, VmState
from tasks.runner.advance import advance
from tasks.testing import Engine


def router(engine: Engine) -> EventConsumer:
    r = EventConsumer(engine.services)
    engine.run(HookStore(engine.redis).create(HA_SPEC, hook_id=HA_HOOK_ID, builtin=True))
    return r


def ha_vm(engine: Engine, desired: VmState) -> Vm:
    vm = Vm(
        id="11111111-2222-3333-4444-555555555555",
        name="db",
        pool="p",
        server="s1",
        ha=True,
        state=VmState.RUNNING,
    )
    engine.run(engine.inventory.save_vm(vm))
    engine.run(engine.inventory.set_desired(vm.id, desired))
    return vm


def destroyed(vm: Vm, server: str = "s1") -> object:
    return make_event(
        "vm.lifecycle.stopped",
        f"libvirt://{server}",
        vm.id,
        {"vm_id": vm.id, "server": server, "detail": "destroyed"},
    )


def ha_runs(engine: Engine) -> list[str]:
    return [r.outcome for r in engine.run(HookStore(engine.redis).runs(HA_HOOK_ID))]


def test_ha_restarts_a_vm_meant_to_run(engine: Engine) -> None:
    r = router(engine)
    vm = ha_vm(engine, VmState.RUNNING)
    engine.run(r.handle("1-0", destroyed(vm)))  # type: ignore[arg-type]
    assert ha_runs(engine) == ["submitted"]


def test_ha_leaves_a_vm_a_job_stopped_even_when_seen_late(engine: Engine) -> None:
    # e.g. the stop is only observed after the agent reconnects, too late to be attributed
    r = router(engine)
    vm = ha_vm(engine, VmState.STOPPED)
    engine.run(r.handle("1-0", destroyed(vm)))  # type: ignore[arg-type]
    assert ha_runs(engine) == ["skipped"]


def test_events_from_a_server_the_vm_left_are_ignored(engine: Engine) -> None:
    r = router(engine)
    vm = ha_vm(engine, VmState.RUNNING)  # placed on s1
    engine.run(r.handle("1-0", destroyed(vm, server="s0")))  # type: ignore[arg-type]
    assert ha_runs(engine) == []


def test_jobs_started_by_a_hook_fire_no_hooks(engine: Engine) -> None:
    r = router(engine)
    store = HookStore(engine.redis)
    hook, _ = engine.run(
        store.create(
            HookSpec.model_validate(
                {
                    "name": "loop",
                    "match": {"types": ["job.*"]},
                    "window_s": 0,
                    "action": {"kind": "submit_job", "request": {"kind": "noop"}},
                }
            )
        )
    )
    job_event = make_event("job.queued", "vmorch://api", "j1", {"job_id": "j1", "hook_id": hook.id})
    engine.run(r.handle("1-0", job_event))
    assert engine.run(store.runs(hook.id)) == []
    plain = make_event("job.queued", "vmorch://api", "j2", {"job_id": "j2"})
    engine.run(r.handle("2-0", plain))
    assert [x.outcome for x in engine.run(store.runs(hook.id))] == ["submitted"]


def test_a_retried_firing_is_not_taken_for_a_flood(engine: Engine) -> None:
    store = HookStore(engine.redis)
    hook, _ = engine.run(
        store.create(
            HookSpec.model_validate(
                {
                    "name": "w",
                    "match": {"types": ["t.*"]},
                    "window_s": 60,
                    "action": {"kind": "submit_job", "request": {"kind": "noop"}},
                }
            )
        )
    )
    # a router set the window for this firing, then died before acting
    assert engine.run(store.within_window(hook, "s", "e1:s")) is False
    # the router that fires it again is not suppressed; another event within the window is
    assert engine.run(store.within_window(hook, "s", "e1:s")) is False
    assert engine.run(store.within_window(hook, "s", "e2:s")) is True


def test_placeholders_are_filled_once_from_the_given_values() -> None:
    from orchestrator.router.hooks import fill

    out = fill(
        {"vm": "{vm_id}", "n": ["{vm_name}-x"], "k": 3}, {"vm_id": "{vm_name}", "vm_name": "db"}
    )
    assert out == {"vm": "{vm_name}", "n": ["db-x"], "k": 3}


def test_a_webhook_without_a_secret_is_refused_not_signed_with_an_empty_key(
    engine: Engine,
) -> None:
    # given an allowed webhook hook whose secret is gone
    settings = Settings(redis_url="redis://unused", webhook_allowed_hosts=["hooks.example"])
    r = EventConsumer(Services.build(settings, engine.redis))
    store = HookStore(engine.redis)
    hook, _ = engine.run(
        store.create(
            HookSpec.model_validate(
                {
                    "name": "wh",
                    "match": {"types": ["t.*"], "unexpected_only": False},
                    "action": {"kind": "webhook", "url": "http://hooks.example/x"},
                }
            )
        )
    )
    engine.run(engine.redis.delete(keys.hook_secret(hook.id)))
    sent: list[bytes] = []

    async def deliver(url: str, secret: bytes, *args: object) -> object:
        sent.append(secret)
        raise AssertionError("a delivery was attempted")

    r.engine.sender.deliver = deliver  # type: ignore[assignment,method-assign]

    async def handle_and_finish() -> None:
        await r.handle("1-0", make_event("t.x", "vmorch://test", "s", {}))
        await asyncio.gather(*r.engine.deliveries.tasks)  # webhooks run in the background

    # when an event matches, then nothing is sent and the run says why
    engine.run(handle_and_finish())
    [run] = engine.run(store.runs(hook.id))
    assert (run.outcome, sent) == ("refused", [])
    assert "no webhook secret" in run.detail


def test_an_unreadable_entry_is_set_aside_and_never_blocks_its_batch(engine: Engine) -> None:
    # given a batch with an entry that is no event, one from a newer writer with an
    # envelope attribute this version does not know, and an ordinary one
    c = EventConsumer(engine.services)
    engine.run(c.setup())
    r = engine.redis
    engine.run(r.xadd(keys.EVENTS, {"e": "{not json"}))
    newer = make_event("vm.lifecycle.started", "libvirt://s1", "x", {}).model_dump(mode="json")
    engine.run(r.xadd(keys.EVENTS, {"e": json.dumps({**newer, "traceparent": "00-ab-cd-01"})}))
    engine.run(r.xadd(keys.EVENTS, {"e": make_event("t.x", "test://", "y", {}).model_dump_json()}))
    # when the router reads them
    assert engine.run(c.step(block_ms=10)) == 3
    engine.run(c.flush_acks())  # (sent with the next read otherwise)
    # then all three are acknowledged, the bad one kept with its raw fields
    pending = engine.run(r.xpending(keys.EVENTS, c.group))
    assert pending["pending"] == 0
    [(_, dead)] = engine.run(r.xrange(keys.EVENTS_DEAD))
    assert dead["f.e"] == "{not json" and dead["reason"]
    # and the newer writer's event was read, its unknown attribute ignored
    assert Event.read(json.dumps({**newer, "traceparent": "x"})).type == "vm.lifecycle.started"


def test_handled_entries_are_acknowledged_with_the_next_read(engine: Engine) -> None:
    # given a router that handled two entries
    c = EventConsumer(engine.services)
    engine.run(c.setup())
    r = engine.redis
    for subject in ("a", "b"):
        engine.run(
            r.xadd(keys.EVENTS, {"e": make_event("t.x", "test://", subject, {}).model_dump_json()})
        )
    assert engine.run(c.step(block_ms=10)) == 2
    # then they stay pending until its next read, which acknowledges them in the same trip
    assert engine.run(r.xpending(keys.EVENTS, c.group))["pending"] == 2
    assert engine.run(c.step(block_ms=10)) == 0
    assert engine.run(r.xpending(keys.EVENTS, c.group))["pending"] == 0
    assert c.acks == []


def test_a_batch_asks_about_waits_only_while_some_job_waits(engine: Engine) -> None:
    # given a router, and a job that will wait for `test.ping` about itself
    c = EventConsumer(engine.services)
    engine.run(c.setup())
    asked: list[list[str | None]] = []
    real = engine.services.waits.subjects_waited_on

    async def spy(subjects: list[str | None]) -> set[str]:
        asked.append(subjects)
        return await real(subjects)

    engine.services.waits.subjects_waited_on = spy  # type: ignore[method-assign]
    job = engine.submit({"kind": "noop", "steps": 1, "wait_for": "test.ping"})
    # while no job waits, a batch costs no waits lookup
    engine.run(c.step(block_ms=10))
    assert asked == []
    advance(engine.rt, engine.broker.pop())  # the step starts waiting; the worker returns
    assert engine.get(job.id).state.value == "waiting"
    # once one waits, its event is looked up and resumes it through the router
    engine.run(
        engine.redis.xadd(
            keys.EVENTS,
            {
                "e": make_event("test.ping", "test://", job.id, {}).model_dump_json(),
                "t": "test.ping",
                "s": job.id,
            },
        )
    )
    engine.run(c.step(block_ms=10))
    assert any(job.id in a for a in asked)
    assert engine.broker.pending() == [job.id]  # dispatched again by the router
    engine.drain()
    assert engine.get(job.id).state.value == "succeeded"
