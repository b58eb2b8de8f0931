"""Messages to guests on the test-driver lab: the agents serve each running domain's
channel, and the harness runs vmorch's guest program behind the socket (QEMU's place).
The qemu tier runs the same program in a real guest kernel (test_qemu_guest.py)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from schemas.inventory import Inventory
from tests.guestharness import HarnessGuest
from tests.integration.conftest import Api, Proc, events, hv, redis_holding, wait_until

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
    assert not redis_holding(redis_url, SECRET)
    assert f"vmorch:job:{job['id']}" in redis_holding(redis_url, "web1")  # (the look sees in)
    for log in workdir.glob("*.log"):
        assert SECRET not in log.read_text(errors="replace"), log.name
    # the same to a VM without the secret key on its side is refused up front: 422
    status, body = api.request(
        "POST", "/v1/vms/gm1/messages", {"messages": [{"key": "bad key", "value": "x"}]}
    )
    assert status == 422 and body["error"]["details"][0]["loc"][:3] == ["body", "messages", 0]


def _step_vms(job: dict[str, Any]) -> dict[str, Any]:
    step = next(s for s in job["steps"] if s["name"] == "await_answers")
    return dict(step["outputs"].get("vms") or {})


def test_the_outbox_waits_for_a_guest_and_a_deadline_fails_only_the_silent_vm(
    api: Api,
    worker: Proc,
    agents: dict[str, Proc],
    fleet: Inventory,
    guests: list[HarnessGuest],
    tmp_path: Path,
) -> None:
    late = create(api, "gm2", labels={"app": "late"})
    create(api, "gm3", server="srv-a2", labels={"app": "late"})
    status, job = api.request(
        "POST",
        "/v1/messages",
        {"labels": {"app": "late"}, "messages": [{"key": "motd", "value": "hi"},
                                                 {"key": "ntp", "value": "pool.ntp.org"}],
         "timeout_s": 8},
    )  # fmt: skip
    assert status == 202, job
    # no guest program runs yet: the messages wait in the outboxes, the job without a worker
    waiting = api.wait(job["id"], {"waiting"}, timeout_s=30)
    assert {v["state"] for v in _step_vms(waiting).values()} == {"queued"}
    # when gm2's guest comes up, it gets its messages in order
    g = harness(fleet, guests, late, tmp_path).start()
    wait_until(lambda: g.applied == ["motd=hi", "ntp=pool.ntp.org"], 30, "gm2's messages")
    # then: at the deadline gm3 fails alone, saying its guest never answered
    done = api.wait(job["id"], timeout_s=30)
    assert done["state"] == "failed", done
    assert done["error"]["code"] == "guest_messages_failed"
    assert "1 of 2 VM(s) not configured: gm3: the guest never answered" in done["error"]["message"]
    vms = _step_vms(done)
    assert vms["gm2"]["state"] == "acknowledged" and vms["gm3"]["state"] == "failed"
    assert all(m["status"] == "failed" for m in vms["gm3"]["messages"])
    # a message queued for gm3 is not delivered later: it left the outbox
    assert guest_view(api, "gm3")["connected"] is False


class HostileGuest:
    """A 'guest' at a channel socket that sends what a hostile or broken guest would."""

    def __init__(self, path: Path):
        import socket as s
        import threading

        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        self.srv = s.socket(s.AF_UNIX, s.SOCK_STREAM)
        self.srv.bind(str(path))
        self.srv.listen(1)
        self.path = path
        self.got: list[bytes] = []
        self.conn: s.socket | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.srv.accept()
        self.conn = conn
        conn.recv(4096)  # the host's hello
        conn.sendall(b"x" * (200 * 1024) + b"\n")  # far past the line limit
        conn.sendall(b"not json at all\n")
        conn.sendall(bytes(range(256)) * 4 + b"\n")  # binary garbage
        conn.sendall(b'{"v": 1, "type": "ack", "id": "someone-elses-message"}\n')
        ready = {"v": 1, "type": "ready", "version": "evil"}
        conn.sendall((json.dumps(ready) + "\n").encode())
        report = json.dumps({"v": 1, "type": "report", "keys": {"k": "v"}}).encode() + b"\n"
        conn.sendall(report * 2000)  # a flood, far past the rate
        conn.settimeout(None)
        with contextlib.suppress(OSError):
            while chunk := conn.recv(65536):  # it never answers a message
                self.got.append(chunk)

    def stop(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.srv.close()
        self.thread.join(5)
        self.path.unlink(missing_ok=True)


def test_a_hostile_guest_is_contained_and_counted(
    api: Api,
    worker: Proc,
    agents: dict[str, Proc],
    fleet: Inventory,
    guests: list[HarnessGuest],
    tmp_path: Path,
) -> None:
    bad_id = create(api, "gm4")
    good_id = create(api, "gm5")
    bad = HostileGuest(HarnessGuest(hv(fleet, "srv-a1"), bad_id, Path("/tmp")).path)
    try:
        good = harness(fleet, guests, good_id, tmp_path).start()

        def counted() -> dict[str, int] | None:
            d = guest_view(api, "gm4")["dropped"]
            return d if d.get("rate", 0) > 0 and d.get("invalid", 0) >= 3 else None

        dropped = wait_until(counted, 30, "the hostile guest's lines to be counted")
        assert dropped["too_long"] == 1, dropped
        # the agent is up and the other guest's channel works meanwhile
        assert agents["srv-a1"].p.poll() is None
        job = api.run(
            {"kind": "vm.message", "vms": ["gm5"], "messages": [{"key": "a", "value": "1"}]}
        )
        assert job["state"] == "succeeded", job
        assert good.applied == ["a=1"]
        # a guest that never answers: the message was delivered, the job fails saying so
        job = api.run(
            {"kind": "vm.message", "vms": ["gm4"], "messages": [{"key": "b", "value": "2"}],
             "timeout_s": 3}
        )  # fmt: skip
        assert job["state"] == "failed"
        assert "had the message and did not answer within 3 s" in job["error"]["message"]
        assert any(b'"key":"b"' in c for c in bad.got)
        # reports it sent within its rate were taken (bounded)
        assert guest_view(api, "gm4")["keys"] == {"k": "v"}
    finally:
        bad.stop()


def test_a_guest_event_fires_a_hook_that_sends_a_message_back(
    api: Api,
    worker: Proc,
    agents: dict[str, Proc],
    router: Proc,
    fleet: Inventory,
    guests: list[HarnessGuest],
    tmp_path: Path,
    redis_url: str,
) -> None:
    vm_id = create(api, "gm6")
    g = harness(fleet, guests, vm_id, tmp_path).start()
    wait_until(lambda: guest_view(api, "gm6")["connected"], 30, "the guest to connect")
    status, hook = api.request(
        "POST",
        "/v1/hooks",
        {"name": "backup-seen", "match": {"types": ["guest.event.backup-done"], "vm_name": "gm6"},
         "action": {"kind": "guest_message", "key": "backup_ack", "value": "{event_type}"}},
    )  # fmt: skip
    assert status == 201, hook
    g.send_event("backup-done", "size=10G")
    [ev] = wait_until(lambda: events(redis_url, "guest.event.backup-done", vm_id), 30, "event")
    assert ev["data"]["data"] == {"size": "10G"} and ev["source"] == f"guest://{vm_id}"
    runs_url = f"/v1/hooks/{hook['hook']['id']}/runs"
    wait_until(lambda: g.applied == ["backup_ack=guest.event.backup-done"], 30, "the answer")
    status, runs = api.request("GET", runs_url)
    assert status == 200 and [r["outcome"] for r in runs] == ["submitted"], runs
    job = api.wait(runs[0]["job_id"])
    assert job["kind"] == "vm.message" and job["state"] == "succeeded", job
    assert job["links"]["hook_id"] == hook["hook"]["id"] and job["links"]["event_id"] == ev["id"]


def test_one_job_to_fifty_guests_reports_each(
    api: Api,
    worker: Proc,
    agents: dict[str, Proc],
    fleet: Inventory,
    guests: list[HarnessGuest],
    tmp_path: Path,
) -> None:
    servers = ["srv-a1", "srv-a2"]
    jobs = [
        api.submit(
            {
                "kind": "vm.create_from_template",
                "pool": "pool-a",
                "template": "tmpl-a",
                "name": f"fan{i:02d}",
                "server": servers[i % 2],
                "labels": {"tier": "fan"},
                "memory_mib": 32,
            }
        )
        for i in range(50)
    ]
    made = [api.wait(j["id"], timeout_s=120) for j in jobs]
    assert all(j["state"] == "succeeded" for j in made), [
        (j["state"], j["error"]) for j in made if j["state"] != "succeeded"
    ]
    silent = made[49]["links"]["vm_id"]  # one VM has no guest program
    for i, j in enumerate(made[:49]):
        harness(fleet, guests, j["links"]["vm_id"], tmp_path, servers[i % 2]).start()
    status, job = api.request(
        "POST",
        "/v1/messages",
        {"labels": {"tier": "fan"}, "pool": "pool-a", "timeout_s": 20,
         "messages": [{"key": "role", "value": "web"}, {"key": "dc", "value": "east"}]},
    )  # fmt: skip
    assert status == 202, job
    done = api.wait(job["id"], timeout_s=90)
    vms = _step_vms(done)
    assert len(vms) == 50
    assert {n for n, v in vms.items() if v["state"] == "acknowledged"} == {
        f"fan{i:02d}" for i in range(49)
    }
    assert vms["fan49"]["state"] == "failed" and vms["fan49"]["vm_id"] == silent
    assert (
        done["state"] == "failed"
        and "1 of 50 VM(s) not configured: fan49" in (done["error"]["message"])
    )
    assert all(g.applied == ["role=web", "dc=east"] for g in guests)


def test_first_boot_configuration_ends_the_create_only_when_acknowledged(
    api: Api,
    worker: Proc,
    agents: dict[str, Proc],
    fleet: Inventory,
    guests: list[HarnessGuest],
    tmp_path: Path,
    redis_url: str,
) -> None:
    config = [{"key": "hostname", "value": "db1"},
              {"key": "root_password", "value": SECRET, "secret": True}]  # fmt: skip
    job = api.submit(
        {"kind": "vm.create_from_template", "pool": "pool-a", "template": "tmpl-a",
         "name": "fb1", "server": "srv-a2", "config": config, "config_timeout_s": 30}
    )  # fmt: skip
    assert job["request"]["config"][1]["value"] == "********"
    # the guest program comes up with the VM (the harness in QEMU's place)
    g = harness(fleet, guests, job["links"]["vm_id"], tmp_path, "srv-a2").start()
    done = api.wait(job["id"], timeout_s=60)
    assert done["state"] == "succeeded", done
    assert [s["name"] for s in done["steps"]][-4:] == [
        "config_target", "queue_messages", "await_answers", "verdict"
    ]  # fmt: skip
    assert g.applied == ["hostname=db1", f"root_password={SECRET}"]
    assert not redis_holding(redis_url, SECRET)
    # a handler's error fails the create, with the guest's words, and undoes it
    job = api.submit(
        {"kind": "vm.create_from_template", "pool": "pool-a", "template": "tmpl-a",
         "name": "fb2", "server": "srv-a2", "config": [{"key": "net", "value": "bad"}]}
    )  # fmt: skip
    g2 = harness(fleet, guests, job["links"]["vm_id"], tmp_path, "srv-a2")
    g2.handler("net", '#!/bin/sh\necho "no interface eth9" >&2\nexit 2\n')
    g2.start()
    failed = api.wait(job["id"], timeout_s=60)
    assert failed["state"] == "failed", failed
    assert "fb2: handler of net exited 2: no interface eth9" in failed["error"]["message"]
    assert api.request("GET", "/v1/vms/fb2")[0] == 404  # undone
    # without start there is nobody to configure: refused up front
    status, body = api.request(
        "POST", "/v1/jobs",
        {"kind": "vm.create_from_template", "pool": "pool-a", "template": "tmpl-a",
         "name": "fb3", "start": False, "config": [{"key": "a", "value": "b"}]},
    )  # fmt: skip
    assert status == 422 and "needs start: true" in json.dumps(body)
