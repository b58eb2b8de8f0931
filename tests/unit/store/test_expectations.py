"""Attribution consumes expectations: each expected event is one job's, once (M5)."""

from __future__ import annotations

from datetime import timedelta

from orchestrator.store.events import make_event
from schemas import event_types as et
from schemas.events import Event
from tasks.testing import Engine

VM = "11111111-2222-3333-4444-555555555555"


def lifecycle(type_: str) -> Event:
    return make_event(type_, "libvirt://s1", VM, {"vm_id": VM, "server": "s1"})


def attribute(engine: Engine, event: Event) -> str | None:
    exp = engine.services.expectations
    return engine.run(exp.attribute(event, engine.jobs))  # type: ignore[no-any-return]


def test_a_destroy_right_after_a_restart_is_unexpected(engine: Engine) -> None:
    # given a restart job that expected (and saw) its own stop and start
    restart = engine.submit({"kind": "noop"})
    exp = engine.services.expectations
    engine.run(exp.expect(VM, restart.id, [et.VM_STOPPED]))
    engine.run(exp.expect(VM, restart.id, [et.VM_STARTED, et.VM_RESUMED]))
    assert attribute(engine, lifecycle(et.VM_STOPPED)) == restart.id
    assert attribute(engine, lifecycle(et.VM_STARTED)) == restart.id
    engine.drain()  # the restart ends
    # when the VM is destroyed outside vmorch a moment later, then no job explains it
    assert attribute(engine, lifecycle(et.VM_STOPPED)) is None


def test_a_start_expects_started_or_resumed_once(engine: Engine) -> None:
    start = engine.submit({"kind": "noop"})
    exp = engine.services.expectations
    engine.run(exp.expect(VM, start.id, [et.VM_STARTED, et.VM_RESUMED]))
    assert attribute(engine, lifecycle(et.VM_STARTED)) == start.id
    # a later resume (of a pause nobody asked vmorch for) is not the start's
    assert attribute(engine, lifecycle(et.VM_RESUMED)) is None


def test_each_event_goes_to_the_job_that_expected_it(engine: Engine) -> None:
    restart, kill = engine.submit({"kind": "noop"}), engine.submit({"kind": "noop"})
    exp = engine.services.expectations
    engine.run(exp.expect(VM, restart.id, [et.VM_STOPPED]))
    assert attribute(engine, lifecycle(et.VM_STOPPED)) == restart.id
    engine.run(exp.expect(VM, kill.id, [et.VM_STOPPED]))
    assert attribute(engine, lifecycle(et.VM_STOPPED)) == kill.id


def test_an_ended_jobs_event_counts_only_if_seen_within_the_grace(engine: Engine) -> None:
    # given a quick job (a kill) that ended before its event was published
    kill = engine.submit({"kind": "noop"})
    exp = engine.services.expectations
    engine.run(exp.expect(VM, kill.id, [et.VM_STOPPED]))
    engine.drain()
    ended = engine.get(kill.id).ended_at
    assert ended is not None
    late = lifecycle(et.VM_STOPPED)
    late = late.model_copy(
        update={"data": {**late.data, "observed_at": (ended + timedelta(seconds=30)).isoformat()}}
    )
    # then an event seen long after it ended is not the kill's
    assert attribute(engine, late) is None
    # and one seen right after it is
    prompt = late.model_copy(
        update={"data": {**late.data, "observed_at": (ended + timedelta(seconds=1)).isoformat()}}
    )
    assert attribute(engine, prompt) == kill.id


def test_recording_the_same_expectation_twice_expects_one_event(engine: Engine) -> None:
    # a step run twice (at least once delivery) records its expectation twice
    job = engine.submit({"kind": "noop"})
    exp = engine.services.expectations
    for _ in range(2):
        engine.run(exp.expect(VM, job.id, [et.VM_STOPPED]))
    assert attribute(engine, lifecycle(et.VM_STOPPED)) == job.id
    assert attribute(engine, lifecycle(et.VM_STOPPED)) is None


def test_events_no_job_can_have_caused_go_at_once_up_to_the_first_that_may(
    store_engine: Engine,
) -> None:
    # given a VM with an expectation recorded, and one without
    engine, other = store_engine, "99999999-2222-3333-4444-555555555555"
    job = engine.submit({"kind": "noop"})
    engine.run(engine.services.expectations.expect(VM, job.id, [et.VM_STOPPED]))

    def on(vm: str, type_: str) -> Event:
        return make_event(type_, "libvirt://s1", vm, {"vm_id": vm})

    batch = [
        on(other, et.VM_SUSPENDED),
        make_event("server.up", "libvirt://s1", "s1", {}),
        on(VM, et.VM_STOPPED),  # may be the job's: attributed by the caller
        on(other, et.VM_RESUMED),  # after it: kept for the caller too, so order holds
    ]
    # when the batch is published without attribution
    n = engine.run(engine.services.events.publish_unexpected(batch))
    # then the two leading events are on the stream, in order, and the rest are not
    assert n == 2
    entries = engine.run(engine.redis.xrange("vmorch:events"))
    ids = [Event.read(f["e"]).id for _, f in entries]
    assert ids[-2:] == [batch[0].id, batch[1].id]
    assert batch[2].id not in ids and batch[3].id not in ids
    # and a batch with no expected VM goes whole
    assert engine.run(engine.services.events.publish_unexpected([on(other, et.VM_STOPPED)])) == 1
