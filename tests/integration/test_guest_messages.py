"""Messages to guests on the test-driver lab: the agents serve each running domain's
channel, and the harness runs vmorch's guest program behind the socket (QEMU's place).
The qemu tier runs the same program in a real guest kernel (test_qemu_guest.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from orchestrator.store import jobdoc
from schemas.inventory import Inventory
from tests.guestharness import HarnessGuest
from tests.integration.conftest import Api, Proc, events, hv, wait_until

pytestmark = pytest.mark.integration
SECRET = "pw-Zq8vT3-never-stored"


@pytest.fixture
def guests(tmp_path: Path) -> Iterator[list[HarnessGuest]]:
    made: list[HarnessGuest] = []
    yield made
    for g in made:
        g.stop()


def create(api: Api, name: str, server: str = "srv-a1", **extra: Any) -> str:
    job = api.run(
        {"kind": "vm.create_from_template", "pool": "pool-a", "template": "tmpl-a",
         "name": name, "server": server, **extra}
    )  # fmt: skip
    assert job["state"] == "succeeded", job
    return str(job["links"]["vm_id"])


def harness(
    fleet: Inventory, guests: list[HarnessGuest], vm_id: str, tmp: Path, server: str = "srv-a1"
) -> HarnessGuest:
    g = HarnessGuest(hv(fleet, server), vm_id, Path("/tmp"))
    g.handler("default")
    guests.append(g)
    return g


def guest_view(api: Api, vm: str) -> dict[str, Any]:
    status, body = api.request("GET", f"/v1/vms/{vm}/guest")
    assert status == 200, body
    return dict(body)


def test_a_message_is_acknowledged_after_the_handler_ran_and_a_secret_is_kept_out(
    api: Api,
    worker: Proc,
    agents: dict[str, Proc],
    fleet: Inventory,
    guests: list[HarnessGuest],
    tmp_path: Path,
    redis_url: str,
    workdir: Path,
) -> None:
    vm_id = create(api, "gm1")
    g = harness(fleet, guests, vm_id, tmp_path).start()
    # the agent connects to the channel and the guest says it is ready
    wait_until(lambda: guest_view(api, "gm1")["connected"], 30, "the guest to connect")
    view = guest_view(api, "gm1")
    assert view["version"] == "1.0.0" and view["server"] == "srv-a1"
    assert events(redis_url, "guest.ready", vm_id)
    # when: two key/values, one secret
    status, job = api.request(
        "POST",
        "/v1/vms/gm1/messages",
        {"messages": [{"key": "hostname", "value": "web1"},
                      {"key": "root_password", "value": SECRET, "secret": True}]},
    )  # fmt: skip
    assert status == 202, job
    assert job["request"]["messages"][1]["value"] == "********"
    done = api.wait(job["id"])
    # then: succeeded only once the guest's handler ran for each, in order
    assert done["state"] == "succeeded", done
    assert g.applied == ["hostname=web1", f"root_password={SECRET}"]
    status_of = done["steps"][2]["outputs"]["vms"]["gm1"]
    assert status_of["state"] == "acknowledged"
    assert [(m["key"], m["status"]) for m in status_of["messages"]] == [
        ("hostname", "acknowledged"), ("root_password", "acknowledged")
    ]  # fmt: skip
    assert status_of["messages"][0]["result"] == {"output": "ok hostname"}
    assert "result" not in status_of["messages"][1]  # a secret's answer is not kept
    # the secret is nowhere but in the guest: not in Redis (job records inflated), events,
    # API answers or the logs of the api, worker and agents
    assert SECRET not in json.dumps(api.job(job["id"]))
    assert not _in_redis(redis_url, SECRET)
    assert f"vmorch:job:{job['id']}" in _in_redis(redis_url, "web1")  # (the look sees in)
    for log in workdir.glob("*.log"):
        assert SECRET not in log.read_text(errors="replace"), log.name
    # the same to a VM without the secret key on its side is refused up front: 422
    status, body = api.request(
        "POST", "/v1/vms/gm1/messages", {"messages": [{"key": "bad key", "value": "x"}]}
    )
    assert status == 422 and body["error"]["details"][0]["loc"][:3] == ["body", "messages", 0]


def _in_redis(url: str, needle: str) -> list[str]:
    """Keys of our private Redis whose value holds `needle` (job documents inflated)."""
    r = redis.Redis.from_url(url, decode_responses=True)
    found = []
    for key in r.scan_iter(count=1000):
        t = r.type(key)
        vals: list[str] = []
        if t == "string":
            vals = [r.get(key) or ""]
        elif t == "hash":
            vals = [f"{k}={v}" for k, v in r.hgetall(key).items()]
            vals += [jobdoc.decode_json(v) for v in r.hvals(key) if v.startswith(jobdoc.PREFIX)]
        elif t == "list":
            vals = r.lrange(key, 0, -1)
        elif t == "set":
            vals = list(r.smembers(key))
        elif t == "zset":
            vals = list(r.zrange(key, 0, -1))
        elif t == "stream":
            vals = [json.dumps(f) for _, f in r.xrange(key)]
        if any(needle in v for v in vals):
            found.append(key)
    r.close()
    return found
