"""Server bookkeeping: maintenance marks and migration slots, on fakeredis and redis-server."""

from __future__ import annotations

import json

from orchestrator.store import keys
from schemas.events import Event
from tasks.testing import Engine


def _set_state(engine: Engine, job_id: str, state: str) -> None:
    engine.run(engine.redis.hset(keys.job(job_id), mapping={"state": state}))


def test_slots_hold_the_pool_and_the_server_limits(store_engine: Engine) -> None:
    servers = store_engine.services.servers

    def take(job: str, source: str) -> tuple[bool, str]:
        a = store_engine.run(
            servers.take_migration_slot("p", job, source, per_pool=3, per_server=2)
        )
        return a.taken, a.limit

    for j in ("j1", "j2", "j3", "j4"):
        _set_state(store_engine, j, "running")
    assert take("j1", "s1") == (True, "")
    assert take("j1", "s1") == (True, "")  # again: its own slot
    assert take("j2", "s1") == (True, "")
    assert take("j3", "s1") == (False, "server")  # two leave s1 already
    assert take("j3", "s2") == (True, "")
    assert take("j4", "s3") == (False, "pool")  # three run in the pool
    answer = store_engine.run(
        servers.take_migration_slot("p", "j4", "s3", per_pool=3, per_server=2)
    )
    assert answer.holders == {"j1": "s1", "j2": "s1", "j3": "s2"}
    # a holder whose job ended (its worker died before releasing) frees its slot
    _set_state(store_engine, "j1", "failed")
    assert take("j4", "s3") == (True, "")
    store_engine.run(servers.release_migration_slot("p", "j2"))
    assert store_engine.run(servers.migrations("p")) == {"j3": "s2", "j4": "s3"}


def test_maintenance_is_marked_once_and_announced(store_engine: Engine) -> None:
    servers = store_engine.services.servers
    store_engine.run(servers.enter_maintenance("s1", {"job": "a"}, "vmorch://t"))
    store_engine.run(servers.enter_maintenance("s1", {"job": "b"}, "vmorch://t"))
    assert store_engine.run(servers.maintenance("s1"))["job"] == "a"  # the first mark stays
    assert store_engine.run(servers.in_maintenance(["s0", "s1", "s2"])) == {"s1"}
    assert store_engine.run(servers.leave_maintenance("s1", {"job": "c"}, "vmorch://t"))
    assert not store_engine.run(servers.leave_maintenance("s1", {"job": "c"}, "vmorch://t"))
    assert store_engine.run(servers.in_maintenance(["s1"])) == set()
    entries = store_engine.run(store_engine.redis.xrange(keys.EVENTS))
    events = [Event.model_validate(json.loads(f["e"])) for _id, f in entries]
    assert [(e.type, e.subject) for e in events] == [
        ("server.maintenance", "s1"),
        ("server.maintenance", "s1"),
        ("server.activated", "s1"),
    ]


def test_placements_hold_memory_and_outlive_their_job_by_the_grace(store_engine: Engine) -> None:
    from orchestrator.clock import now_ms

    servers, run, r = store_engine.services.servers, store_engine.run, store_engine.redis
    for j in ("j1", "j2", "j3"):
        _set_state(store_engine, j, "running")
    # 1000 MiB free: two 400 MiB VMs fit, a third does not; a running one is not counted
    assert run(servers.place("s", "vm1", "j1", 400, 1000, set())) == (True, 0, None)
    assert run(servers.place("s", "vm2", "j2", 400, 1000, set())) == (True, 400, None)
    assert run(servers.place("s", "vm3", "j3", 400, 1000, set())) == (False, 800, None)
    assert run(servers.place("s", "vm3", "j3", 400, 1000, {"vm1"})) == (True, 400, None)
    assert run(servers.placed("s", set())) == 1200
    # jobs that ended just now keep their holds; long ago, or gone, they go
    _set_state(store_engine, "j1", "succeeded")
    _set_state(store_engine, "j2", "succeeded")
    run(r.zadd(keys.JOBS_ENDED, {"j1": now_ms(), "j2": now_ms() - 120_000}))
    run(r.delete(keys.job("j3")))
    run(servers.sweep(["s"], []))
    assert run(servers.placed("s", set())) == 400  # vm1's only


def test_a_placement_is_refused_where_an_anti_affinity_partner_is(store_engine: Engine) -> None:
    """In the same script as the memory check: a partner placed on the server (not yet
    defined) or defined there keeps the VM off it; elsewhere it fits."""
    servers, run, r = store_engine.services.servers, store_engine.run, store_engine.redis
    _set_state(store_engine, "j1", "running")
    _set_state(store_engine, "j2", "running")
    assert run(servers.place("s", "a", "j1", 100, 1000, set())) == (True, 0, None)
    assert run(servers.place("s", "b", "j2", 100, 1000, set(), {"a", "x"})) == (False, 0, "a")
    assert run(servers.vms_there("s", {"a", "x"})) == {"a"}
    run(r.sadd(keys.vms_on("t"), "x"))  # x is defined on t
    assert run(servers.place("t", "b", "j2", 100, 1000, set(), {"a", "x"})) == (False, 0, "x")
    assert run(servers.place("u", "b", "j2", 100, 1000, set(), {"a", "x"})) == (True, 0, None)
