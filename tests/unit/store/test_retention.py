"""Retention: finished jobs past the retention or beyond the cap leave no trace in Redis;
kept jobs, and jobs still running or waiting, are untouched (M7)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import libvirt
import pytest

from orchestrator.clock import now_ms
from orchestrator.errors import Conflict
from orchestrator.router.timers import Timers
from orchestrator.settings import Settings
from orchestrator.store import keys, retention
from schemas.jobs import Job, JobState
from tasks.testing import Engine
from tests.unit.conftest import FLEET

MakeEngine = Callable[[Settings], Engine]


def traces(engine: Engine, job_ids: Iterable[str]) -> dict[str, str]:
    """Every key whose name or contents names one of `job_ids`, with what it holds.

    Left out: the event stream (a log with its own bound, event_stream_maxlen)."""
    wanted = set(job_ids)
    found: dict[str, str] = {}

    async def scan() -> None:
        r = engine.redis
        async for key in r.scan_iter(count=1000):
            kind = await r.type(key)
            if key == keys.EVENTS:
                continue
            if kind == "string":
                content = [await r.get(key)]
            elif kind == "hash":
                content = [f"{k}={v}" for k, v in (await r.hgetall(key)).items()]
            elif kind == "zset":
                content = list(await r.zrange(key, 0, -1))
            elif kind == "set":
                content = list(await r.smembers(key))
            elif kind == "list":
                content = list(await r.lrange(key, 0, -1))
            else:
                content = [f"<{kind}>"]
            text = key + " " + " ".join(str(c) for c in content)
            if any(j in text for j in wanted):
                found[key] = text[:300]

    engine.run(scan())
    return found


def ended_ms(engine: Engine, job_id: str) -> int:
    return int(engine.run(engine.redis.zscore(keys.JOBS_ENDED, job_id)))


def housekeeping(engine: Engine) -> None:
    engine.run(Timers(engine.services).housekeeping())


def run_noop(engine: Engine, **request: object) -> Job:
    """Run a noop job; once it has ended, wait for the clock to pass the millisecond it
    ended in, so that jobs run one after another end in that order on `jobs:ended`."""
    job = engine.submit({"kind": "noop", "steps": 2, **request})
    engine.drain()
    done = engine.get(job.id)
    if done.state.terminal:
        end = ended_ms(engine, job.id)
        deadline = time.monotonic() + 1
        while now_ms() <= end and time.monotonic() < deadline:
            pass  # at most a millisecond
    return done


def test_expired_jobs_leave_no_trace_and_the_others_stay_listable(
    make_engine: MakeEngine,
    settings: Settings,
    conn: libvirt.virConnect,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given: a 1 s retention, and old jobs of every shape: a VM created and restarted (VM
    # indexes, expectations), failed, aborted while waiting (a wait), aborted while queued,
    # submitted with an Idempotency-Key...
    s = settings.model_copy(update={"job_retention_s": 1.0, "wait_recheck_s": 3600.0})
    engine = make_engine(s)
    engine.run(engine.inventory.load(FLEET))
    create = engine.submit(
        {
            "kind": "vm.create_from_template",
            "pool": "pool-u",
            "template": "t1",
            "name": "keep-me",
            "vnics": [{"network": "default"}],
        }
    )
    engine.drain()
    vm_id = engine.get(create.id).links.vm_id
    assert vm_id is not None
    restart = engine.submit({"kind": "vm.restart", "vm": "keep-me"})
    engine.drain()
    failed = run_noop(engine, fail_at=2)
    waited = run_noop(engine, wait_for="never.comes", wait_timeout_s=3600)
    assert waited.state == JobState.WAITING
    engine.run(engine.submitter.abort(waited.id))
    engine.drain()
    queued = engine.submit({"kind": "noop"})
    engine.run(engine.submitter.abort(queued.id))
    replayable = engine.submit({"kind": "noop", "steps": 1}, idem_key="once", idem_scope="t")
    engine.drain()
    # ...and one job that is still waiting, older than all of those
    live = run_noop(engine, wait_for="never.comes", wait_timeout_s=3600)
    old = [create.id, restart.id, failed.id, waited.id, queued.id, replayable.id]
    assert {engine.get(j).state for j in old} == {
        JobState.SUCCEEDED,
        JobState.FAILED,
        JobState.ABORTED,
    }
    # what a worker that crashed as the job ended may leave: its wait and its lease
    assert waited.wait is not None
    engine.run(engine.redis.set(keys.wait(waited.id), waited.wait.model_dump_json()))
    engine.run(engine.redis.sadd(keys.waits_on(waited.wait.subject), waited.id))
    engine.run(engine.redis.set(keys.lease(failed.id), "7", px=60_000))
    fields = engine.run(engine.redis.hkeys(keys.expectations(vm_id)))
    assert any(f.startswith(f"{restart.id}|") for f in fields)
    # and jobs that ended after them, within the retention
    stop = engine.submit({"kind": "vm.stop", "vm": "keep-me"})
    engine.drain()
    recent = [stop.id, run_noop(engine).id, run_noop(engine).id]  # in creation order
    assert max(ended_ms(engine, j) for j in old) < min(ended_ms(engine, j) for j in recent)

    # when: the router's housekeeping runs at a time when only the old jobs are 1 s past
    # their end (the retention's clock, set between the two groups)
    cutoff = (max(ended_ms(engine, j) for j in old) + min(ended_ms(engine, j) for j in recent)) / 2
    monkeypatch.setattr(retention, "now_ms", lambda: int(cutoff) + 1000)
    housekeeping(engine)

    # then: no key names an old job, but for what outlives it by design: the VM's record
    # says which job created it, and the Idempotency-Key keeps its TTL
    left = traces(engine, old)
    assert set(left) == {keys.vm(vm_id), keys.idempotency("t:once")}, left
    assert engine.run(engine.redis.ttl(keys.idempotency("t:once"))) > 0
    # the kept jobs are whole and listable, newest first, by every index
    listed, cursor = engine.run(engine.jobs.list(limit=50))
    assert [j.id for j in listed] == [*reversed(recent), live.id] and cursor is None
    assert engine.get(live.id).state == JobState.WAITING
    assert engine.run(engine.redis.exists(keys.wait(live.id)))
    by_vm, _ = engine.run(engine.jobs.list(vm_id=vm_id))
    assert [j.id for j in by_vm] == [stop.id]
    by_state, _ = engine.run(engine.jobs.list(state="succeeded", kind="noop"))
    assert [j.id for j in by_state] == list(reversed(recent[1:]))
    assert all(engine.run(engine.redis.exists(keys.fence(j))) for j in recent)
    assert engine.run(engine.redis.zcard(keys.JOBS_ENDED)) == len(recent)
    # a replay of the deleted job's request is refused, not run a second time
    with pytest.raises(Conflict, match="deleted"):
        engine.submit({"kind": "noop", "steps": 1}, idem_key="once", idem_scope="t")
    assert engine.run(engine.redis.zcard(keys.JOBS_ALL)) == len(recent) + 1
    fresh = engine.submit({"kind": "noop", "steps": 1}, idem_key="twice", idem_scope="t")
    assert engine.get(fresh.id).state == JobState.QUEUED


def test_the_cap_keeps_the_newest_finished_jobs(
    make_engine: MakeEngine, settings: Settings
) -> None:
    # given: room for 3 finished jobs, and 7 that ended one after another
    engine = make_engine(settings.model_copy(update={"job_retention_max": 3}))
    ids = [run_noop(engine, steps=1).id for _ in range(7)]
    live = engine.submit({"kind": "noop"})  # queued: not finished, never counted
    # when
    housekeeping(engine)
    # then: the 3 that ended last are kept, whole; the 4 others are gone without a trace
    assert engine.run(engine.redis.zrange(keys.JOBS_ENDED, 0, -1)) == ids[4:]
    listed, _ = engine.run(engine.jobs.list())
    assert [j.id for j in listed] == [live.id, *reversed(ids[4:])]
    assert traces(engine, ids[:4]) == {}
    assert engine.get(live.id).state == JobState.QUEUED


def test_retention_deletes_in_bounded_batches(make_engine: MakeEngine, settings: Settings) -> None:
    engine = make_engine(settings)
    ids = [run_noop(engine, steps=1).id for _ in range(13)]
    store = retention.JobRetention(engine.redis, retention.RetentionPolicy(86400, 1), batch=5)
    # at most 2 batches of 5: the oldest 10 go, the next call takes the rest
    assert engine.run(store.purge(max_batches=2)) == 10
    assert engine.run(engine.redis.zrange(keys.JOBS_ENDED, 0, -1)) == ids[10:]
    assert engine.run(store.purge(max_batches=2)) == 2
    assert engine.run(engine.redis.zrange(keys.JOBS_ENDED, 0, -1)) == ids[12:]
    assert engine.run(store.purge(max_batches=2)) == 0


def test_a_job_purged_twice_is_deleted_once(make_engine: MakeEngine, settings: Settings) -> None:
    # two routers may pick the same batch: the second one finds the jobs gone
    engine = make_engine(settings.model_copy(update={"job_retention_max": 1}))
    ids = [run_noop(engine, steps=1).id for _ in range(3)]
    store = engine.services.retention
    batch = engine.run(store.expired())
    assert batch == ids[:2]
    assert engine.run(store.purge_batch()) == 2
    assert engine.run(store._purge(keys=[keys.JOBS_ALL, keys.JOBS_ENDED], args=[0, 0, *batch])) == 0
    assert engine.get(ids[2]).state == JobState.SUCCEEDED


def test_a_stale_message_for_a_deleted_job_leaves_no_lease_or_fence(
    make_engine: MakeEngine, settings: Settings
) -> None:
    engine = make_engine(settings.model_copy(update={"job_retention_max": 1}))
    gone, kept = run_noop(engine, steps=1).id, run_noop(engine, steps=1).id
    housekeeping(engine)
    assert traces(engine, [gone]) == {}
    # a duplicate message of the deleted job, still in a queue, is dropped by a worker
    engine.broker.push(gone)
    assert engine.drain() == ["missing"]
    assert traces(engine, [gone]) == {}
    assert engine.get(kept).state == JobState.SUCCEEDED
