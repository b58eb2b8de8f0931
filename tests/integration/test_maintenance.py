"""Server maintenance, migration limits and migration targets on the test-driver lab
(cold moves: libvirt's test driver has no live migration; the qemu tier has those)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest

from schemas.inventory import Inventory
from tests.integration.conftest import Api, Proc, find_domains, wait_until

pytestmark = pytest.mark.integration


def step(job: dict[str, Any], name: str) -> dict[str, Any]:
    [s] = [s for s in job["steps"] if s["name"] == name]
    return s


def make(api: Api, name: str, *, start: bool, server: str = "srv-a1") -> str:
    job = api.run(
        {"kind": "vm.create_from_template", "pool": "pool-a", "template": "tmpl-a",
         "name": name, "start": start, "server": server}
    )  # fmt: skip
    assert job["state"] == "succeeded", job
    return str(job["links"]["vm_id"])


def targets(api: Api, vm: str, **q: str) -> dict[str, dict[str, Any]]:
    query = "&".join(f"{k}={v}" for k, v in q.items())
    status, body = api.request("GET", f"/v1/vms/{vm}/migration-targets?{query}")
    assert status == 200, body
    return {t["server"]: t for t in body["targets"]}


def test_maintenance_moves_the_vms_by_strategy_and_placement_skips_the_server(
    api: Api, worker: Proc, fleet: Inventory, agents: dict[str, Proc]
) -> None:
    # given: on srv-a1 two running VMs and a stopped one
    ids = {n: make(api, n, start=n != "s1") for n in ("r1", "r2", "s1")}
    # the API shows each server with what its agent read, and where a VM could go
    _, srv = api.request("GET", "/v1/servers/srv-a2")
    assert srv["maintenance"] is None and srv["down_for_s"] == 0
    assert "repo-a" in wait_until(lambda: api.request("GET", "/v1/servers/srv-a2")[1]["facts"],
                                  10, "srv-a2's facts")["storage_pools"]  # fmt: skip
    t = wait_until(lambda: (t := targets(api, "r1"))["srv-a2"]["ok"] and t, 10, "facts")
    assert "already" in t["srv-a1"]["reason"] and not t["srv-a1"]["ok"]
    assert "MiB free" in t["srv-a2"]["reason"] and t["srv-a2"]["facts_age_s"] < 10
    # when: srv-a1 goes into maintenance: running VMs restarted elsewhere, r2 only stopped
    job = api.run(
        {"kind": "server.maintenance", "server": "srv-a1", "strategy": "restart_elsewhere",
         "vms": {"r2": "stop"}, "reason": "firmware"},
        timeout_s=90,
    )  # fmt: skip
    # then: r1 runs on srv-a2, s1 is defined there (stopped), r2 is stopped on srv-a1
    assert job["state"] == "succeeded", (job["error"], job["steps"])
    plan = step(job, "maintenance_plan")["outputs"]["plan"]
    assert (plan[ids["r1"]]["action"], plan[ids["r1"]]["target"]) == ("shutdown_cold", "srv-a2")
    assert (plan[ids["s1"]]["action"], plan[ids["r2"]]["action"]) == ("cold", "stop")
    vms = step(job, "evacuate")["outputs"]["vms"]
    assert {vms[i]["state"] for i in ids.values()} == {"succeeded"}
    kinds = {n: api.job(vms[i]["job"])["kind"] for n, i in ids.items()}
    assert kinds == {"r1": "vm.migrate", "r2": "vm.stop", "s1": "vm.migrate"}
    [(where_r1, dom_r1)] = find_domains(fleet, "r1")
    [(where_s1, dom_s1)] = find_domains(fleet, "s1")
    [(where_r2, dom_r2)] = find_domains(fleet, "r2")
    assert (where_r1, bool(dom_r1.isActive())) == ("srv-a2", True)
    assert (where_s1, bool(dom_s1.isActive())) == ("srv-a2", False)
    assert (where_r2, bool(dom_r2.isActive())) == ("srv-a1", False)
    assert api.request("GET", "/v1/vms/r1")[1]["server"] == "srv-a2"
    # and: srv-a1 is in maintenance, which the API, the targets and placement respect
    _, srv = api.request("GET", "/v1/servers/srv-a1")
    assert srv["maintenance"]["job"] == job["id"] and srv["maintenance"]["reason"] == "firmware"
    assert targets(api, "s1")["srv-a1"]["reason"] == "in maintenance"
    placed = api.run({"kind": "vm.create_from_template", "pool": "pool-a", "template": "tmpl-a",
                      "name": "n1"})  # fmt: skip
    assert placed["state"] == "succeeded"
    assert step(placed, "place")["outputs"]["placement"]["srv-a1"] == "in maintenance"
    assert step(placed, "place")["outputs"]["server"] == "srv-a2"
    refused = api.run({"kind": "vm.migrate", "vm": "s1", "target_server": "srv-a1"})
    assert refused["state"] == "failed" and "srv-a1: in maintenance" in refused["error"]["message"]
    # when: it is activated, it takes VMs again
    assert api.run({"kind": "server.activate", "server": "srv-a1"})["state"] == "succeeded"
    assert api.request("GET", "/v1/servers/srv-a1")[1]["maintenance"] is None
    back = api.run({"kind": "vm.migrate", "vm": "s1", "target_server": "srv-a1"})
    assert back["state"] == "succeeded", back["error"]
    # and bad requests name the field
    status, body = api.request("POST", "/v1/jobs", {"kind": "server.maintenance", "server": "nope"})
    assert status == 404 and body["error"]["details"][0]["loc"] == ["body", "server"]
    status, body = api.request(
        "POST", "/v1/jobs", {"kind": "server.maintenance", "server": "srv-a1", "parallel": 0}
    )
    assert status == 422 and body["error"]["details"][0]["loc"][-1] == "parallel"
    assert api.request("GET", "/v1/vms/nope/migration-targets")[0] == 404


def test_an_aborted_evacuation_starts_no_more_moves_and_keeps_the_server_in_maintenance(
    api: Api, start_worker: Callable[..., Proc], fleet: Inventory
) -> None:
    # given: four stopped VMs on srv-a1, and a worker whose steps take 0.3 s each
    start_worker(chaos_step_delay_ms="300")
    for n in ("a1", "a2", "a3", "a4"):
        make(api, n, start=False)
    # when: an evacuation moving one at a time is aborted once its first move has ended
    job = api.submit({"kind": "server.maintenance", "server": "srv-a1", "parallel": 1})

    def first_done() -> bool:
        j = api.job(job["id"])
        if "evacuate" not in [s["name"] for s in j["steps"]]:
            return False
        vms = step(j, "evacuate")["outputs"].get("vms") or {}
        return any(v["state"] == "succeeded" for v in vms.values())

    wait_until(first_done, 60, "the first move to end")
    api.request("POST", f"/v1/jobs/{job['id']}/abort", {"reason": "stop here"})
    ended = api.wait(job["id"], timeout_s=60)
    # then: it is aborted; the moves it had started end, no other starts afterwards
    assert ended["state"] == "aborted", (ended["error"], ended["steps"])
    assert [s["state"] for s in ended["steps"]][:2] == ["done", "done"]  # the mark is kept
    children = api.request("GET", "/v1/jobs?kind=vm.migrate")[1]["items"]
    assert 1 <= len(children) <= 2, children
    for c in children:
        api.wait(c["id"])
    still = [n for n in ("a1", "a2", "a3", "a4") if find_domains(fleet, n)[0][0] == "srv-a1"]
    assert len(still) == 4 - len(children) >= 2
    assert len(api.request("GET", "/v1/jobs?kind=vm.migrate")[1]["items"]) == len(children)
    assert api.request("GET", "/v1/servers/srv-a1")[1]["maintenance"]["job"] == job["id"]


def test_migrations_beyond_the_pool_limit_wait_for_a_slot_and_say_why(
    api: Api, start_worker: Callable[..., Proc], fleet: Inventory
) -> None:
    # given: a pool where one migration may run at a time, steps of 0.3 s, two stopped VMs
    start_worker(migrations_per_pool="1", chaos_step_delay_ms="300")
    for n in ("l1", "l2"):
        make(api, n, start=False)
    # when: both are migrated at once
    jobs = [api.submit({"kind": "vm.migrate", "vm": n}) for n in ("l1", "l2")]

    def waiting_reason() -> str | None:
        for j in jobs:
            got = api.job(j["id"])
            if got["state"] == "waiting":
                return str(step(got, "migration_slot")["outputs"].get("waiting_for_slot"))
        return None

    # then: one waits (no worker held) and says for what, and both succeed one after the other
    why = wait_until(waiting_reason, 30, "a migration to wait for its slot")
    assert "1 migration(s) run in pool pool-a already (limit 1)" in why, why
    done = [api.wait(j["id"]) for j in jobs]
    assert [d["state"] for d in done] == ["succeeded", "succeeded"], [d["error"] for d in done]
    spans = sorted((step(d, "migrate")["started_at"], step(d, "migrate")["ended_at"]) for d in done)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), spans
    assert {find_domains(fleet, n)[0][0] for n in ("l1", "l2")} == {"srv-a2"}


def volumes(fleet: Inventory, server: str, repo: str) -> set[str]:
    from tests.integration.conftest import hv

    conn = hv(fleet, server)
    try:
        sp = conn.storagePoolLookupByName(repo)
        sp.refresh(0)
        return set(sp.listVolumes())
    finally:
        conn.close()


def test_a_cold_migration_to_another_pool_copies_the_disks_or_leaves_the_source_as_it_was(
    api: Api, start_worker: Callable[..., Proc], fleet: Inventory
) -> None:
    # given: a stopped VM with two disks and a vNIC on net-a, in pool-a
    worker = start_worker()
    job = api.run({"kind": "vm.create_from_template", "pool": "pool-a", "template": "tmpl-a-2disk",
                   "name": "x1", "start": False, "vnics": [{"network": "net-a"}]})  # fmt: skip
    assert job["state"] == "succeeded", job
    vm = api.request("GET", "/v1/vms/x1")[1]
    names = {d["volume"] for d in vm["disks"]}
    # a move to pool-b that does not say where net-a goes is refused, naming the field
    status, body = api.request("POST", "/v1/jobs", {"kind": "vm.migrate", "vm": "x1",
                                                     "target_pool": "pool-b"})  # fmt: skip
    assert status == 422 and body["error"]["details"][0]["loc"] == ["body", "network_map"]
    assert "map it to one of ['net-b']" in body["error"]["details"][0]["msg"]
    move = {"kind": "vm.migrate", "vm": "x1", "target_pool": "pool-b",
            "network_map": {"net-a": "net-b"}}  # fmt: skip
    # when: the move fails after the disks were copied (an injected failure)
    worker.stop()
    chaos = start_worker(chaos_fail_steps='["vm.migrate:define_target"]')
    failed = api.run(move)
    # then: the source is as it was, and pool-b's repository holds no copy
    assert failed["state"] == "failed", failed
    # (the plan is undone too: its hold on the target goes)
    assert [s["state"] for s in failed["steps"]] == ["undone", "undone", "undone", "failed",
                                                    "skipped", "skipped"]  # fmt: skip
    assert api.request("GET", "/v1/vms/x1")[1]["pool"] == "pool-a"
    [(source, _)] = find_domains(fleet, "x1")
    assert source == vm["server"]
    assert names <= volumes(fleet, source, "repo-a")
    assert not names & volumes(fleet, "srv-b1", "repo-b")
    assert not names & volumes(fleet, "srv-b2", "repo-b")
    # when: it is moved without a failure
    chaos.stop()
    start_worker()
    moved = api.run(move, timeout_s=90)
    # then: it is defined on a pool-b server on net-b, its disks in repo-b only
    assert moved["state"] == "succeeded", (moved["error"], moved["steps"])
    after = api.request("GET", "/v1/vms/x1")[1]
    [(target, dom)] = find_domains(fleet, "x1")
    assert after["pool"] == "pool-b" and after["server"] == target in ("srv-b1", "srv-b2")
    assert [n["network"] for n in after["nics"]] == ["net-b"]
    assert "<source network='net-b'" in dom.XMLDesc()
    assert all("/repo-b" in d["path"] or "repo-b" in d["path"] for d in after["disks"]), after
    assert names <= volumes(fleet, target, "repo-b")
    assert not names & volumes(fleet, source, "repo-a")
    # and it starts there
    assert api.run({"kind": "vm.start", "vm": "x1"})["state"] == "succeeded"


def test_anti_affinity_keeps_two_vms_apart_in_migration_and_its_targets(
    api: Api, worker: Proc, fleet: Inventory, redis_url: str, agents: dict[str, Proc]
) -> None:
    import asyncio

    import redis.asyncio as aredis

    from orchestrator.store.inventory import InventoryStore
    from schemas.inventory import AntiAffinityGroup

    # given: pool-a with an anti-affinity group of g1 and g2, g1 on srv-a1, g2 on srv-a2
    group = AntiAffinityGroup(name="ha", vms=["g1", "g2"])
    pools = [
        p.model_copy(update={"anti_affinity_groups": [group]}) if p.name == "pool-a" else p
        for p in fleet.pools
    ]

    async def load() -> None:
        r = aredis.Redis.from_url(redis_url, decode_responses=True)
        await InventoryStore(r).load(fleet.model_copy(update={"pools": pools}))
        await r.aclose()

    asyncio.run(load())
    make(api, "g1", start=False, server="srv-a1")
    make(api, "g2", start=False, server="srv-a2")
    # when: g1 is migrated to srv-a2
    refused = api.run({"kind": "vm.migrate", "vm": "g1", "target_server": "srv-a2"})
    # then: refused, saying why; the targets listing says the same
    assert refused["state"] == "failed", refused
    assert "anti-affinity group ha: g2 runs there" in refused["error"]["message"]
    t = wait_until(lambda: (t := targets(api, "g1"))["srv-a2"]["reason"] != "unreachable" and t,
                   10, "facts")  # fmt: skip
    assert t["srv-a2"]["reason"] == "anti-affinity group ha: g2 runs there"
    assert not t["srv-a2"]["ok"]


def test_a_failure_after_the_switch_to_another_pool_leaves_the_vm_there(
    api: Api, start_worker: Callable[..., Proc], fleet: Inventory
) -> None:
    # given: a stopped VM of pool-a, and a worker on which the start after a move fails
    start_worker(chaos_fail_steps='["vm.migrate:start"]')
    made = api.run({"kind": "vm.create_from_template", "pool": "pool-a", "template": "tmpl-a",
                    "name": "nr1", "start": False})  # fmt: skip
    assert made["state"] == "succeeded", made
    names = {d["volume"] for d in api.request("GET", "/v1/vms/nr1")[1]["disks"]}
    # when: it is moved to pool-b and started there, and the start fails
    job = api.run({"kind": "vm.migrate", "vm": "nr1", "target_pool": "pool-b", "shutdown": True})
    # then: the job failed, but nothing before the switch was undone: the VM is defined in
    # pool-b with its copied disks (its only ones now), not sent back to a source it left
    assert job["state"] == "failed" and "injected" in job["error"]["message"], job
    assert [s["state"] for s in job["steps"]] == ["done"] * 7 + ["failed"], job["steps"]
    vm = api.request("GET", "/v1/vms/nr1")[1]
    assert vm["pool"] == "pool-b"
    [(where, _dom)] = find_domains(fleet, "nr1")
    assert where == vm["server"]
    assert names <= volumes(fleet, where, "repo-b")
