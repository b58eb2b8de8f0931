"""Housekeeping beside job retention: alerts, workers, router consumers and expectations
are each bounded (M7)."""

from __future__ import annotations

import json

import pytest

from orchestrator.clock import now_ms
from orchestrator.router.timers import Timers
from orchestrator.store import alerts as alert_store
from orchestrator.store import keys
from orchestrator.store.expectations import FORGET_AFTER_S
from tasks.testing import Engine

DAY_MS = 86_400_000


def test_alerts_are_listed_newest_first_up_to_a_limit(store_engine: Engine) -> None:
    store = store_engine.services.alerts
    raised = [
        store_engine.run(store.raise_alert("vm.ha.exhausted", f"vm{i}", "m")) for i in range(5)
    ]
    store_engine.run(store.acknowledge(raised[4].id, "ops"))
    newest = store_engine.run(store.all(include_acknowledged=True, limit=3))
    assert [a.id for a in newest] == [a.id for a in reversed(raised)][:3]
    still_open = store_engine.run(store.all(limit=2))
    assert [a.id for a in still_open] == [raised[3].id, raised[2].id]


def test_acknowledged_alerts_past_the_retention_go_open_ones_stay(
    store_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given: three alerts, two of them acknowledged
    store = store_engine.services.alerts
    a, b, c = (store_engine.run(store.raise_alert("vm.ha.exhausted", s, "m")) for s in "abc")
    store_engine.run(store.acknowledge(a.id, "ops"))
    store_engine.run(store.acknowledge(b.id, "ops"))
    week_s = store_engine.services.settings.job_retention_s
    # when: pruned within the retention, nothing goes
    assert store_engine.run(store.prune_acknowledged(week_s)) == 0
    # ...and after it, the acknowledged ones go, from every structure
    later = now_ms() + int(week_s * 1000) + 1000
    monkeypatch.setattr(alert_store, "now_ms", lambda: later)
    assert store_engine.run(store.prune_acknowledged(week_s)) == 2
    # then
    assert [x.id for x in store_engine.run(store.all(include_acknowledged=True))] == [c.id]
    r = store_engine.redis
    assert store_engine.run(r.hkeys(keys.ALERTS)) == [c.id]
    for index in (keys.ALERTS_RAISED, keys.ALERTS_OPEN):
        assert store_engine.run(r.zrange(index, 0, -1)) == [c.id]
    assert store_engine.run(r.exists(keys.ALERTS_ACKED)) == 0


def test_housekeeping_forgets_workers_not_seen_for_a_day(store_engine: Engine) -> None:
    fleet = store_engine.services.fleet
    store_engine.run(fleet.beat("worker-old", ["vmorch.default"]))
    store_engine.run(fleet.beat("worker-new", ["vmorch.default"]))
    store_engine.run(store_engine.redis.zadd(keys.WORKERS, {"worker-old": now_ms() - 2 * DAY_MS}))
    store_engine.run(Timers(store_engine.services).housekeeping())
    assert store_engine.run(store_engine.redis.zrange(keys.WORKERS, 0, -1)) == ["worker-new"]


def test_idle_consumers_leave_the_group_unless_they_own_pending_entries(
    store_engine: Engine,
) -> None:
    # given: the routers' group, one consumer holding an unacknowledged entry, one not
    r, events = store_engine.redis, store_engine.services.events
    group = store_engine.services.settings.router_group
    store_engine.run(r.xgroup_create(keys.EVENTS, group, id="$", mkstream=True))
    store_engine.run(r.xadd(keys.EVENTS, {"e": "{}"}))
    store_engine.run(r.xreadgroup(group, "router-busy", {keys.EVENTS: ">"}, count=1))
    store_engine.run(r.xgroup_createconsumer(keys.EVENTS, group, "router-done"))

    def names() -> list[str]:
        return sorted(c["name"] for c in store_engine.run(r.xinfo_consumers(keys.EVENTS, group)))

    # when: neither has been idle for long: both stay
    assert store_engine.run(events.forget_idle_consumers(group, DAY_MS)) == []
    assert names() == ["router-busy", "router-done"]
    # ...past any idle time, only the one with nothing pending goes
    assert store_engine.run(events.forget_idle_consumers(group, -1)) == ["router-done"]
    assert names() == ["router-busy"]
    assert store_engine.run(r.xpending(keys.EVENTS, group))["pending"] == 1


def test_an_expectation_drops_the_entries_of_jobs_ended_long_ago(store_engine: Engine) -> None:
    # given: a VM's expectations from a job that ended long ago, one that just ended and
    # one still running (not on jobs:ended)
    r, exp = store_engine.redis, store_engine.services.expectations
    key = keys.expectations("vm-1")
    for job in ("long-over", "just-over", "running"):
        store_engine.run(exp.expect("vm-1", job, ["vm.lifecycle.stopped"]))
    now = now_ms()
    ended = {"long-over": now - int(FORGET_AFTER_S * 1000) - 1000, "just-over": now}
    store_engine.run(r.zadd(keys.JOBS_ENDED, ended))
    # when: another job declares what it will cause on the VM
    store_engine.run(exp.expect("vm-1", "next", ["vm.lifecycle.started"]))
    store_engine.run(exp.expect("vm-1", "running", ["vm.lifecycle.started"]))
    # then
    entries = store_engine.run(r.hgetall(key))
    assert sorted(json.loads(doc)["job"] for doc in entries.values()) == [
        "just-over",
        "next",
        "running",
        "running",  # one expectation per event it will cause
    ]
    assert store_engine.run(r.ttl(key)) > 0
