"""`vmorch up` and `vmorch down` as a user runs them: real processes in a temporary lab
directory, on a free port. Each test starts its own lab (one pool of one server)."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.integration.conftest import wait_until
from tests.integration.upkit import Up, alive, descendants, group_members, running

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def new_worker(up: Up, old: set[int]) -> int:
    """Wait until vmorch.json names a worker PID other than the `old` ones; return it."""

    def published() -> int | None:
        pid = int(up.state()["processes"]["worker"])
        return None if pid in old else pid

    return int(wait_until(published, 30, "a new worker in vmorch.json"))


def modes_under(root: Path) -> dict[Path, int]:
    found = {root: stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[path] = stat.S_IMODE(path.lstat().st_mode)
    return found


def redis_reply(port: int, command: bytes) -> bytes:
    """One raw RESP exchange, as any local user could do it (no credentials)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(command)
        return sock.recv(4096)


def test_up_keeps_its_secrets_to_its_owner(start_up: Any) -> None:
    # given: a lab started with a permissive umask, holding a job
    up = start_up(umask=0)
    job = up.api.run({"kind": "noop", "steps": 1})
    assert job["state"] == "succeeded", job
    # then: every directory of the lab is 0700 and every file 0600, the AOF included
    modes = modes_under(up.lab_dir)
    names = {p.name for p in modes}
    assert {"vmorch.json", "logs", "worker.log", "api.log", "redis", "appendonlydir"} <= names
    assert any(name.endswith(".aof") for name in names), names
    for path, mode in modes.items():
        want = 0o700 if path.is_dir() else 0o600
        assert mode == want, f"{path}: {oct(mode)} (want {oct(want)})"
    # and its Redis answers nobody without the password, which only vmorch.json holds
    url = urlsplit(up.state()["redis_url"])
    assert url.password and len(url.password) >= 32 and url.port is not None
    reply = redis_reply(url.port, b"*2\r\n$4\r\nKEYS\r\n$1\r\n*\r\n")
    assert reply.startswith(b"-NOAUTH"), reply
    assert up.down().returncode == 0


def test_a_killed_worker_is_restarted_and_down_stops_everything(start_up: Any) -> None:
    up = start_up()
    first = up.state()["processes"]["worker"]
    # when: the worker and its pool are SIGKILLed
    os.killpg(first, signal.SIGKILL)
    # then: a new worker is started and published in vmorch.json
    second = new_worker(up, {first})
    assert "vmorch: worker exited with -9 (SIGKILL)" in up.stderr()
    assert "restarting in 0.5 s" in up.stderr()
    assert stat.S_IMODE(up.state_path.stat().st_mode) == 0o600
    # when: it is killed again at once, but only its main process this time
    wait_until(lambda: len(group_members(second)) > 1, 60, "the new worker's pool")
    pool = group_members(second) - {second}
    os.kill(second, signal.SIGKILL)
    # then: it comes back later than the first time, and its orphaned pool is gone
    third = new_worker(up, {first, second})
    assert "restarting in 1 s" in up.stderr(), up.stderr()
    assert not group_members(second), f"left of the killed worker: {group_members(second)}"
    assert pool and not any(running(pid) for pid in pool)
    # and the lab still does work: the restarted worker runs a job
    job = up.api.run({"kind": "noop", "steps": 2})
    assert job["state"] == "succeeded", job
    assert up.state()["processes"]["worker"] == third
    # when: `vmorch down`
    children = descendants(up.p.pid)
    assert len(children) >= 6, children  # redis, libvirtd, api, router, worker (+pool), agent
    down = up.down()
    # then: everything `vmorch up` started is gone, and so is its state file
    assert down.returncode == 0, down
    assert up.p.returncode == 0, up.output()
    assert "vmorch stopped" in up.stdout()
    assert not [c for c in children if alive(c)]
    assert not up.state_path.exists()


def test_up_starts_fresh_unless_asked_to_keep_the_state(start_up: Any) -> None:
    # given: a run that holds a job, and its admin token
    first = start_up()
    assert "vmorch: starting fresh" in first.stdout()
    job = first.api.run({"kind": "noop", "steps": 1})
    old_token = first.api.token
    # a second `vmorch up` meanwhile is refused, and removes nothing
    second = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "up", "--pools", "1", "--servers-per-pool", "1"],
        env=first.env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert second.returncode == 1, second
    assert "vmorch is already running" in second.stderr
    assert first.api.job(job["id"])["state"] == "succeeded"
    assert first.down().returncode == 0

    # when: started again with --keep-state
    kept = start_up("--keep-state")
    # then: the old job is still there, and the old token still works
    assert "vmorch: keeping the state of the last run" in kept.stdout()
    status, page = kept.api.request("GET", "/v1/jobs", token=old_token)
    assert status == 200, page
    assert [j["id"] for j in page["items"]] == [job["id"]]
    assert kept.down().returncode == 0

    # when: started again without it
    fresh = start_up()
    # then: nothing of the old runs is left, not even the admin token
    assert "vmorch: starting fresh (previous state removed)" in fresh.stdout()
    status, body = fresh.api.request("GET", "/v1/jobs", token=old_token)
    assert status == 401, body
    status, page = fresh.api.request("GET", "/v1/jobs")
    assert status == 200, page
    assert page["items"] == []
    assert fresh.down().returncode == 0


def test_the_mac_registry_survives_a_restart_of_vmorch(start_up: Any) -> None:
    # given: a VM with a vNIC, made before vmorch is stopped
    first = start_up()
    made = first.api.run({"kind": "vm.create_from_template", "pool": "pool-a",
                          "template": "tmpl-a", "name": "keepmac", "start": False,
                          "vnics": [{"network": "net-a"}]})  # fmt: skip
    assert made["state"] == "succeeded", made["error"]
    [nic] = first.api.call("GET", "/v1/vms/keepmac")["nics"]
    assert first.down().returncode == 0
    # when: vmorch is started again, keeping its state (Redis' AOF)
    kept = start_up("--keep-state")
    # then: the MAC is still held: asked for again, it is refused; a new VM gets another
    status, body = kept.api.request(
        "POST", "/v1/jobs",
        {"kind": "vm.create_from_template", "pool": "pool-a", "template": "tmpl-a",
         "name": "other", "start": False, "vnics": [{"network": "net-a", "mac": nic["mac"]}]},
    )  # fmt: skip
    assert status == 409 and body["error"]["details"][0]["loc"] == ["body", "vnics", 0, "mac"]
    again = kept.api.run({"kind": "vm.create_from_template", "pool": "pool-a",
                          "template": "tmpl-a", "name": "other", "start": False,
                          "vnics": [{"network": "net-a"}]})  # fmt: skip
    assert again["state"] == "succeeded", again["error"]
    assert kept.api.call("GET", "/v1/vms/other")["nics"][0]["mac"] != nic["mac"]
    assert kept.down().returncode == 0
