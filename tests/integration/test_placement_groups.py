"""Anti-affinity in placement and the pool group API, on the test-driver lab (pool-a: two
servers): members are kept apart also when created at once, the impossible case fails and
says why, and the API refuses what does not fit the pool."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from schemas.api import Role
from schemas.inventory import Inventory
from tests.integration.conftest import Api, Proc, make_token

pytestmark = pytest.mark.integration


def create(api: Api, name: str) -> dict[str, Any]:
    return api.submit(
        {"kind": "vm.create_from_template", "pool": "pool-a", "template": "tmpl-a", "name": name,
         "start": False}
    )  # fmt: skip


def test_members_of_an_anti_affinity_group_never_share_a_server(
    api: Api, worker: Proc, fleet: Inventory
) -> None:
    # given: a group of three VMs in a pool of two servers (one of them made already)
    assert api.run(
        {"kind": "vm.create_from_template", "pool": "pool-a", "template": "tmpl-a",
         "name": "db0", "start": False, "server": "srv-a1"}
    )["state"] == "succeeded"  # fmt: skip
    status, body = api.request(
        "PUT", "/v1/pools/pool-a/anti-affinity-groups/db", {"vms": ["db0", "db1", "db2"]}
    )
    assert status == 200, body
    assert body["pool"]["anti_affinity_groups"] == [{"name": "db", "vms": ["db0", "db1", "db2"]}]
    assert body["conflicts"] == []
    # when: the other two are created at once
    with ThreadPoolExecutor(2) as ex:
        jobs = list(ex.map(lambda n: create(api, n), ["db1", "db2"]))
    ended = [api.wait(j["id"], timeout_s=60) for j in jobs]
    # then: one lands on the free server, the other fails, saying why for each server
    assert sorted(j["state"] for j in ended) == ["failed", "succeeded"], ended
    [ok] = [j for j in ended if j["state"] == "succeeded"]
    [no] = [j for j in ended if j["state"] == "failed"]
    ok_vm = api.call("GET", f"/v1/vms/{ok['links']['vm_id']}")
    assert ok_vm["server"] == "srv-a2"
    assert no["error"]["code"] == "no_capacity"
    assert "anti-affinity group db: db0 is there" in no["error"]["message"]
    assert "anti-affinity group db: " + ok_vm["name"] in no["error"]["message"]
    # and a VM outside the group still goes anywhere
    assert api.run(
        {"kind": "vm.create_from_template", "pool": "pool-a", "template": "tmpl-a",
         "name": "web", "start": False}
    )["state"] == "succeeded"  # fmt: skip


def test_pool_groups_are_checked_and_report_what_already_breaks_them(
    api: Api, worker: Proc, fleet: Inventory, redis_url: str
) -> None:
    for name in ("x1", "x2"):
        job = api.run(
            {"kind": "vm.create_from_template", "pool": "pool-a", "template": "tmpl-a",
             "name": name, "start": False, "server": "srv-a1"}
        )  # fmt: skip
        assert job["state"] == "succeeded", job
    status, body = api.request(
        "PUT", "/v1/pools/pool-a/anti-affinity-groups/g", {"vms": ["x1", "x2"]}
    )
    assert status == 200 and body["conflicts"] == ["anti-affinity group g: x1, x2 on srv-a1"]
    # CPU groups: only the pool's servers, each in one group
    status, body = api.request("PUT", "/v1/pools/pool-a/cpu-groups/c1", {"servers": ["srv-a1"]})
    assert status == 200 and body["pool"]["cpu_groups"] == [{"name": "c1", "servers": ["srv-a1"]}]
    status, body = api.request(
        "PUT", "/v1/pools/pool-a/cpu-groups/c2", {"servers": ["srv-a1", "srv-b1"]}
    )
    assert status == 422
    assert {tuple(d["loc"]) for d in body["error"]["details"]} == {
        ("body", "servers", 0), ("body", "servers", 1)
    }  # fmt: skip
    status, body = api.request("PUT", "/v1/pools/pool-a/anti-affinity-groups/g", {"vms": ["x1"]})
    assert status == 422  # a group of one keeps nothing apart
    status, body = api.request("PUT", "/v1/pools/pool-a/anti-affinity-groups/b%20d", {"vms": []})
    assert status == 422 and body["error"]["details"][0]["loc"] == ["path", "group"]
    status, _ = api.request("PUT", "/v1/pools/nope/anti-affinity-groups/g", {"vms": ["a", "b"]})
    assert status == 404
    # removed: gone from the pool
    status, body = api.request("DELETE", "/v1/pools/pool-a/anti-affinity-groups/g")
    assert status == 200 and body["pool"]["anti_affinity_groups"] == []
    assert api.request("DELETE", "/v1/pools/pool-a/anti-affinity-groups/g")[0] == 404
    # a viewer may not change them
    viewer = Api(api.url, make_token(redis_url, Role.VIEWER))
    assert viewer.request("DELETE", "/v1/pools/pool-a/cpu-groups/c1")[0] == 403


def test_migrations_of_two_members_at_once_never_land_together(
    api: Api, worker: Proc, fleet: Inventory
) -> None:
    # given: two members of a group on one server (put there before the group was made)
    for name in ("p1", "p2"):
        assert api.run(
            {"kind": "vm.create_from_template", "pool": "pool-a", "template": "tmpl-a",
             "name": name, "start": False, "server": "srv-a1"}
        )["state"] == "succeeded"  # fmt: skip
    status, body = api.request(
        "PUT", "/v1/pools/pool-a/anti-affinity-groups/pg", {"vms": ["p1", "p2"]}
    )
    assert status == 200 and body["conflicts"] == ["anti-affinity group pg: p1, p2 on srv-a1"]
    # when: both are moved (cold) to the other server at once
    with ThreadPoolExecutor(2) as ex:
        jobs = list(
            ex.map(
                lambda n: api.submit({"kind": "vm.migrate", "vm": n, "target_server": "srv-a2"}),
                ["p1", "p2"],
            )
        )
    ended = [api.wait(j["id"], timeout_s=60) for j in jobs]
    # then: one moves, the other is refused naming the member that is (or holds) there
    assert sorted(j["state"] for j in ended) == ["failed", "succeeded"], ended
    [ok] = [j for j in ended if j["state"] == "succeeded"]
    [no] = [j for j in ended if j["state"] == "failed"]
    assert no["error"]["code"] == "migration_refused", no["error"]
    assert f"anti-affinity group pg: {ok['links']['vm_name']}" in no["error"]["message"]
    servers = {api.call("GET", f"/v1/vms/{n}")["server"] for n in ("p1", "p2")}
    assert servers == {"srv-a1", "srv-a2"}
