"""The event-driven core on real parts: agents, routers, hooks, HA, webhooks."""

from __future__ import annotations

import json
from collections.abc import Iterator

import libvirt
import pytest
import redis

from orchestrator.lab.lab import Lab
from orchestrator.router.actions.webhook import verify
from orchestrator.settings import Settings
from orchestrator.store import keys
from schemas.inventory import Inventory
from tests.integration.conftest import (
    Api,
    Proc,
    WebhookReceiver,
    events,
    find_domains,
    wait_until,
)

pytestmark = pytest.mark.integration

CREATE = {"kind": "vm.create_from_template", "pool": "pool-a", "template": "tmpl-a"}


def test_a_vm_destroyed_outside_vmorch_is_restarted_by_ha(
    api: Api, worker: Proc, agents: dict[str, Proc], redis_url: str, fleet: Inventory
) -> None:
    # given an HA VM that runs
    job = api.run({**CREATE, "name": "ha1", "ha": True})
    assert job["state"] == "succeeded", job
    vm_id = job["links"]["vm_id"]
    [(server, dom)] = find_domains(fleet, "ha1")
    # when it is destroyed behind vmorch's back
    dom.destroy()
    # then the agent reports it, unattributed, and the HA hook submits a restart job
    stopped = wait_until(
        lambda: events(redis_url, "vm.lifecycle.stopped", vm_id), 10, "the stopped event"
    )
    assert stopped[-1]["data"]["detail"] == "destroyed"
    assert "caused_by_job" not in stopped[-1]["data"]
    fired = wait_until(
        lambda: [r for r in api.hook_runs("builtin-ha") if r["outcome"] == "submitted"],
        10,
        "the HA hook to fire",
    )
    restart = api.wait(fired[0]["job_id"])
    assert restart["kind"] == "vm.ha_restart" and restart["state"] == "succeeded", restart
    assert restart["links"]["hook_id"] == "builtin-ha"
    assert restart["links"]["event_id"] == stopped[-1]["id"]
    # and the VM runs again, on its server
    [(again, dom)] = find_domains(fleet, "ha1")
    assert again == server and dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING


def test_a_restart_job_on_an_ha_vm_fires_no_ha(
    api: Api, worker: Proc, agents: dict[str, Proc], redis_url: str, fleet: Inventory
) -> None:
    job = api.run({**CREATE, "name": "ha2", "ha": True})
    vm_id = job["links"]["vm_id"]
    restart = api.run({"kind": "vm.restart", "vm": "ha2", "timeout_s": 5})
    assert restart["state"] == "succeeded"
    # its own STOPPED carries its id, and the HA hook records why it did nothing
    stopped = wait_until(lambda: events(redis_url, "vm.lifecycle.stopped", vm_id), 10)
    assert stopped[-1]["data"]["caused_by_job"] == restart["id"]
    skipped = wait_until(
        lambda: [r for r in api.hook_runs("builtin-ha") if r["subject"] == vm_id],
        10,
        "the HA hook's record",
    )
    assert {r["outcome"] for r in skipped} == {"skipped"}
    assert restart["id"] in skipped[0]["detail"]
    assert api.request("GET", "/v1/jobs?kind=vm.ha_restart")[1]["items"] == []


def test_a_destroy_right_after_a_restart_job_is_restarted_by_ha(
    api: Api, worker: Proc, agents: dict[str, Proc], redis_url: str, fleet: Inventory
) -> None:
    # given an HA VM whose restart job has just succeeded (its expectations are used up)
    job = api.run({**CREATE, "name": "ha4", "ha": True})
    vm_id = job["links"]["vm_id"]
    restart = api.run({"kind": "vm.restart", "vm": "ha4", "timeout_s": 0})
    assert restart["state"] == "succeeded", restart
    [(_, dom)] = find_domains(fleet, "ha4")
    # when it is destroyed outside vmorch within a second
    dom.destroy()
    # then that STOPPED is unexpected (not the restart's) and HA restarts the VM
    fired = wait_until(
        lambda: [
            r
            for r in api.hook_runs("builtin-ha")
            if r["subject"] == vm_id and r["outcome"] == "submitted"
        ],
        15,
        "the HA hook to submit a restart",
    )
    again = api.wait(fired[0]["job_id"])
    assert again["kind"] == "vm.ha_restart" and again["state"] == "succeeded", again
    destroyed = [e for e in events(redis_url, "vm.lifecycle.stopped", vm_id)][-1]
    assert "caused_by_job" not in destroyed["data"], destroyed


def test_a_guest_shutdown_is_not_a_failure(
    api: Api, worker: Proc, agents: dict[str, Proc], redis_url: str, fleet: Inventory
) -> None:
    job = api.run({**CREATE, "name": "ha3", "ha": True})
    [(_, dom)] = find_domains(fleet, "ha3")
    dom.shutdown()  # as if the user powered off from inside the guest
    wait_until(lambda: events(redis_url, "vm.lifecycle.stopped", job["links"]["vm_id"]), 10)
    # the router has handled it once the stream's entries are all acknowledged
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    wait_until(lambda: r.xpending(keys.EVENTS, Settings().router_group)["pending"] == 0, 10)
    r.close()
    ha_runs = api.hook_runs("builtin-ha")
    assert [x["outcome"] for x in ha_runs] == ["skipped"], (
        ha_runs,
        events(redis_url, subject=job["links"]["vm_id"]),
    )
    assert "shutdown" in ha_runs[0]["detail"]


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    yield WebhookReceiver()


def test_a_webhook_is_signed_and_a_disallowed_target_refused(
    api: Api, receiver: WebhookReceiver, redis_url: str, fleet: Inventory
) -> None:
    # given a hook posting test.* events to an allowed local receiver, and one to a host the
    # operator did not allow
    status, created = api.request(
        "POST",
        "/v1/hooks",
        {
            "name": "to-receiver",
            "match": {"types": ["test.*"]},
            "action": {
                "kind": "webhook",
                "url": f"http://127.0.0.1:{receiver.port}/hook",
                "retries": 1,
            },
        },
    )
    assert status == 201, created
    secret = created["secret"]
    assert secret and "secret" not in api.request("GET", f"/v1/hooks/{created['hook']['id']}")[1]
    status, refused = api.request(
        "POST",
        "/v1/hooks",
        {
            "name": "elsewhere",
            "match": {"types": ["test.*"]},
            "action": {"kind": "webhook", "url": "http://hooks.example.invalid/x"},
        },
    )
    assert status == 201
    # when an event matches
    from orchestrator.store.events import make_event

    event = make_event("test.hello", "vmorch://test", "subject-1", {"x": 1})
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    r.xadd(keys.EVENTS, {"e": event.model_dump_json()})
    r.close()
    # then the receiver gets it once, signed with the hook's secret
    wait_until(lambda: receiver.got, 10, "the delivery")
    headers, body = receiver.got[0]
    assert json.loads(body)["id"] == event.id
    assert verify(
        secret.encode(), int(headers["X-Vmorch-Timestamp"]), body, headers["X-Vmorch-Signature"]
    )
    assert not verify(
        b"another secret", int(headers["X-Vmorch-Timestamp"]), body, headers["X-Vmorch-Signature"]
    )
    delivered = wait_until(lambda: api.hook_runs(created["hook"]["id"]), 10)
    assert delivered[0]["outcome"] == "delivered" and delivered[0]["event_id"] == event.id
    # and the disallowed target was refused, and recorded
    refusal = wait_until(lambda: api.hook_runs(refused["hook"]["id"]), 10)
    assert refusal[0]["outcome"] == "refused"


def test_flood_control_counts_suppressed_firings(
    api: Api, redis_url: str, fleet: Inventory
) -> None:
    status, created = api.request(
        "POST",
        "/v1/hooks",
        {
            "name": "noisy",
            "match": {"types": ["test.flood"]},
            "window_s": 60,
            "action": {"kind": "submit_job", "request": {"kind": "noop", "steps": 1}},
        },
    )
    assert status == 201
    hook_id = created["hook"]["id"]
    from orchestrator.store.events import make_event

    r = redis.Redis.from_url(redis_url, decode_responses=True)
    for _ in range(3):
        r.xadd(keys.EVENTS, {"e": make_event("test.flood", "t://", "s1", {}).model_dump_json()})
    r.close()
    got = wait_until(lambda: len(api.hook_runs(hook_id)) == 3 and api.hook_runs(hook_id), 10)
    assert sorted(x["outcome"] for x in got) == ["submitted", "suppressed", "suppressed"]
    assert api.request("GET", f"/v1/hooks/{hook_id}")[1]["suppressed"] == 2
    job_id = next(x["job_id"] for x in got if x["outcome"] == "submitted")
    assert api.job(job_id)["links"]["hook_id"] == hook_id


def test_a_missed_transition_is_emitted_after_the_server_comes_back(
    api: Api,
    worker: Proc,
    agents: dict[str, Proc],
    redis_url: str,
    lab: tuple[Lab, Inventory],
    fleet: Inventory,
) -> None:
    # given a VM running on srv-b1
    job = api.run(
        {
            "kind": "vm.create_from_template",
            "pool": "pool-b",
            "template": "tmpl-b",
            "name": "rc1",
            "server": "srv-b1",
        }
    )
    assert job["state"] == "succeeded", job
    vm_id = job["links"]["vm_id"]
    # when the server's libvirtd is killed, and restarted (the test driver comes back empty:
    # the domain is gone, a transition the agent could not see as it happened)
    lab[0].kill_server("srv-b1")
    wait_until(
        lambda: [e for e in events(redis_url, "server.down") if e["subject"] == "srv-b1"],
        15,
        "server.down",
    )
    lab[0].restart_server("srv-b1")
    # then, after reconnecting, the agent emits what it missed, then server.up
    missed = wait_until(
        lambda: events(redis_url, "vm.lifecycle.undefined", vm_id), 20, "the missed transition"
    )
    assert missed[-1]["data"]["observed_after_reconnect"] is True
    ups = wait_until(
        lambda: [
            e
            for e in events(redis_url, "server.up")
            if e["subject"] == "srv-b1" and e["time"] >= missed[-1]["time"]
        ],
        10,
        "server.up after the missed transition",
    )
    assert ups


def test_ha_vms_of_a_server_that_went_down_are_relocated(
    api: Api,
    worker: Proc,
    agents: dict[str, Proc],
    redis_url: str,
    lab: tuple[Lab, Inventory],
    fleet: Inventory,
) -> None:
    # given an HA VM and a plain VM running on srv-a1
    ha = api.run({**CREATE, "name": "mover", "ha": True, "server": "srv-a1"})
    plain = api.run({**CREATE, "name": "stayer", "server": "srv-a1"})
    assert ha["state"] == plain["state"] == "succeeded"
    try:
        # when srv-a1's hypervisor dies
        lab[0].kill_server("srv-a1")
        # then the HA VM is defined and started on the pool's other server, the plain one not
        fired = wait_until(
            lambda: [r for r in api.hook_runs("builtin-ha") if r["outcome"] == "submitted"],
            20,
            "HA on server.down",
        )
        assert [r["subject"] for r in fired] == [ha["links"]["vm_id"]]
        assert fired[0]["event_type"] == "server.down"
        # ...but not before there is proof that its copy on srv-a1 is off: with no fence
        # command configured, the job waits and an alert asks an operator
        job_id = fired[0]["job_id"]
        waiting = api.wait(job_id, {"waiting"}, timeout_s=30)
        assert [s["state"] for s in waiting["steps"]][:2] == ["done", "waiting"], waiting
        alerts = wait_until(
            lambda: [
                a
                for a in api.request("GET", "/v1/alerts")[1]
                if a["type"] == "server.unfenced" and a["subject"] == "srv-a1"
            ],
            10,
            "the server.unfenced alert",
        )
        assert "no fence command" in alerts[0]["message"]
        others = Inventory(servers=[s for s in fleet.servers if s.name != "srv-a1"])
        assert find_domains(others, "mover") == []  # not started elsewhere meanwhile
        # an acknowledgement is refused for a server that is up, and needs a reason
        status, err = api.request("POST", "/v1/servers/srv-a2/fence", {"reason": "x"})
        assert status == 409, err
        status, err = api.request("POST", "/v1/servers/srv-a1/fence", {})
        assert status == 422 and err["error"]["details"][0]["loc"] == ["body", "reason"], err
        # when an operator acknowledges that srv-a1 is off
        status, ack = api.request(
            "POST", "/v1/servers/srv-a1/fence", {"reason": "powered off at the rack"}
        )
        assert status == 202 and ack["by"].startswith("operator:"), ack
        moved = api.wait(job_id, timeout_s=60)
        assert moved["state"] == "succeeded", moved
        fenced = next(s for s in moved["steps"] if s["name"] == "ha_fence")
        out = fenced["outputs"]  # resumed by the server.fenced event, or found the proof
        assert out.get("event", {}).get("type") == "server.fenced" or out["fenced"][
            "by"
        ].startswith("operator:"), out
        place = next(s for s in moved["steps"] if s["name"] == "ha_place")
        assert place["outputs"]["relocated"] is True and place["outputs"]["server"] == "srv-a2"
        [(server, dom)] = [
            x
            for x in find_domains(
                Inventory(servers=[s for s in fleet.servers if s.name != "srv-a1"]), "mover"
            )
        ]
        assert server == "srv-a2" and dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        assert api.request("GET", "/v1/vms/mover")[1]["server"] == "srv-a2"
    finally:
        lab[0].restart_server("srv-a1")
