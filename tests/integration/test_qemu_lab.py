"""The qemu tier: `vmorch up --kind qemu` as a user runs it, with real QEMU guests (TCG) on
unprivileged libvirtd servers, driven through the API by the same workflows as the
test-driver lab."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import libvirt
import pytest
import redis

from orchestrator.store import keys
from tests.integration.conftest import wait_until
from tests.integration.upkit import Up

pytestmark = [pytest.mark.integration, pytest.mark.qemu, pytest.mark.timeout(240)]


def qemu_guests() -> list[tuple[str, int]]:
    """(VM uuid, PID) of every running qemu-system process (from its `-uuid` argument)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"qemu-system-x86_64") and b"-uuid" in argv:
            found.append((argv[argv.index(b"-uuid") + 1].decode(), int(entry.name)))
    return found


def qemu_processes() -> dict[str, int]:
    """VM uuid -> PID of its qemu-system process."""
    return dict(qemu_guests())


def qemu_pids(vm_id: str) -> set[int]:
    """The PIDs of every qemu-system process of the VM (two while it migrates)."""
    return {pid for uuid, pid in qemu_guests() if uuid == vm_id}


def server_uri(up: Up, name: str) -> str:
    [server] = [s for s in up.api.call("GET", "/v1/servers") if s["name"] == name]
    return str(server["uri"])


def test_a_vm_made_from_a_template_runs_as_a_real_qemu_guest(start_up: Any) -> None:
    # given: the qemu lab, one pool of two servers
    up: Up = start_up("--servers-per-pool", "2", "--kind", "qemu")
    assert "(qemu lab: 1 pools of 2 servers)" in up.stdout()
    # when: a VM is made from the pool's template, with a vNIC on the pool's network
    t0 = time.monotonic()
    job = up.api.run(
        {
            "kind": "vm.create_from_template",
            "name": "q1",
            "pool": "pool-a",
            "template": "tmpl-a",
            "vnics": [{"network": "net-a"}],
        },
        timeout_s=120,
    )
    created_s = time.monotonic() - t0
    assert job["state"] == "succeeded", job
    vm = up.api.call("GET", f"/v1/vms/{job['links']['vm_id']}")
    # then: it runs, a QEMU process is its guest, and libvirt on its server says so
    assert vm["state"] == "running" and vm["server"], vm
    assert vm["id"] in qemu_processes()
    uri = server_uri(up, vm["server"])
    assert urlsplit(uri).scheme == "qemu+unix" and "socket" in parse_qs(urlsplit(uri).query)
    conn = libvirt.open(uri)
    try:
        dom = conn.lookupByUUIDString(vm["id"])
        assert dom.isActive() and conn.getType() == "QEMU"
        xml = dom.XMLDesc()
        assert "type='qemu'" in xml and "<interface type='user'>" in xml, xml
        [disk] = [d for d in vm["disks"]]
        assert Path(disk["path"]).is_file()  # a real volume file in the pool's repository
    finally:
        conn.close()
    # when: it is killed, then started and deleted by jobs
    assert up.api.run({"kind": "vm.kill", "vm": "q1"})["state"] == "succeeded"
    assert vm["id"] not in qemu_processes()
    assert up.api.run({"kind": "vm.start", "vm": "q1"}, timeout_s=120)["state"] == "succeeded"
    pid = qemu_processes()[vm["id"]]
    deleted = up.api.run({"kind": "vm.delete", "vm": "q1", "force": True}, timeout_s=120)
    assert deleted["state"] == "succeeded", (deleted["error"], deleted["steps"])
    # then: its guest is gone and so are its volumes
    wait_until(lambda: vm["id"] not in qemu_processes(), 10, "the guest to end")
    assert not Path(f"/proc/{pid}").exists() or pid not in qemu_processes().values()
    assert not Path(disk["path"]).exists()
    print(f"create from template to running on QEMU: {created_s:.2f}s")
    # and `vmorch down` leaves no QEMU process of the lab behind
    assert up.down().returncode == 0
    assert not [u for u in qemu_processes() if u == vm["id"]]


def libvirtd_pid(up: Up, name: str) -> int:
    """The PID of the server's libvirtd (its pid file sits beside its socket)."""
    sock = Path(parse_qs(urlsplit(server_uri(up, name)).query)["socket"][0])
    return int((sock.parent / "libvirtd.pid").read_text())


def router_caught_up(up: Up) -> bool:
    """The routers' consumer group has read every entry and acknowledged all it read."""
    r = redis.Redis.from_url(up.state()["redis_url"], decode_responses=True)
    try:
        [group] = r.xinfo_groups(keys.EVENTS)
        return bool(group["lag"] == 0 and group["pending"] == 0)
    finally:
        r.close()


def domains(uri: str) -> dict[str, bool]:
    """uuid -> active, of every domain on the server at `uri`."""
    conn = libvirt.open(uri)
    out = {}
    try:
        for d in conn.listAllDomains():
            try:
                out[d.UUIDString()] = bool(d.isActive())
            except libvirt.libvirtError:  # gone since the listing (an ended incoming one)
                continue
        return out
    finally:
        conn.close()


def test_live_migration_moves_a_running_ha_vm_with_no_ha_restart(start_up: Any) -> None:
    # given: a running HA VM on the qemu lab's pool of two servers
    up: Up = start_up("--servers-per-pool", "2", "--kind", "qemu")
    job = up.api.run(
        {"kind": "vm.create_from_template", "name": "m1", "pool": "pool-a",
         "template": "tmpl-a", "ha": True},
        timeout_s=120,
    )  # fmt: skip
    assert job["state"] == "succeeded", job
    vm_id = job["links"]["vm_id"]
    source = up.api.call("GET", f"/v1/vms/{vm_id}")["server"]
    [target] = [s for s in ("srv-a1", "srv-a2") if s != source]
    pid = qemu_processes()[vm_id]
    # when: it is migrated without naming a target
    t0 = time.monotonic()
    mig = up.api.run({"kind": "vm.migrate", "vm": "m1"}, timeout_s=120)
    took_s = time.monotonic() - t0
    assert mig["state"] == "succeeded", (mig["error"], mig["steps"])
    # then: placement chose the other server, said why for each, and the VM runs there
    plan = mig["steps"][0]["outputs"]
    assert (plan["source"], plan["target"], plan["mode"]) == (source, target, "live")
    assert "already" in plan["placement"][source], plan
    assert "MiB free" in plan["placement"][target], plan
    vm = up.api.call("GET", f"/v1/vms/{vm_id}")
    assert vm["server"] == target and vm["state"] == "running", vm
    assert domains(server_uri(up, target)) == {vm_id: True}
    assert vm_id not in domains(server_uri(up, source))  # undefined on the source
    assert qemu_processes()[vm_id] != pid  # a new QEMU process: the guest moved

    # and once the router has handled the migration's events (the source's `stopped
    # (migrated)` among them), no HA restart was submitted
    wait_until(lambda: router_caught_up(up), 10, "the router to handle every event")
    assert up.api.call("GET", "/v1/jobs?kind=vm.ha_restart")["items"] == []
    # when: it is migrated back to a named target, then to the server it is on
    back = up.api.run({"kind": "vm.migrate", "vm": "m1", "target_server": source}, timeout_s=120)
    assert back["state"] == "succeeded", back["error"]
    same = up.api.run({"kind": "vm.migrate", "vm": "m1", "target_server": source}, timeout_s=60)
    # then: the second is refused with its reason, and the VM stays where it is
    assert same["state"] == "failed" and same["error"]["code"] == "migration_refused"
    assert "already" in same["error"]["message"], same["error"]
    assert up.api.call("GET", f"/v1/vms/{vm_id}")["server"] == source
    # and a target outside the VM's pool is refused at submission, naming the field
    status, body = up.api.request(
        "POST", "/v1/jobs", {"kind": "vm.migrate", "vm": "m1", "target_server": "srv-x9"}
    )
    assert status == 422 and body["error"]["details"][0]["loc"] == ["body", "target_server"]
    # when: it is stopped and migrated cold
    assert up.api.run({"kind": "vm.kill", "vm": "m1"})["state"] == "succeeded"
    cold = up.api.run({"kind": "vm.migrate", "vm": "m1"}, timeout_s=60)
    assert cold["state"] == "succeeded", cold["error"]
    assert cold["steps"][0]["outputs"]["mode"] == "cold"
    assert domains(server_uri(up, target)) == {vm_id: False}
    assert vm_id not in domains(server_uri(up, source))
    # and it starts on its new server, its disk still there (shared repository)
    assert up.api.run({"kind": "vm.start", "vm": "m1"}, timeout_s=60)["state"] == "succeeded"
    assert domains(server_uri(up, target)) == {vm_id: True}
    print(f"live migration job, submit to succeeded: {took_s:.2f}s")
    assert up.down().returncode == 0


def test_ha_moves_a_vm_off_a_crashed_libvirtd_only_after_the_fence_killed_its_guest(
    start_up: Any,
) -> None:
    # given: an HA VM running on srv-a1 of the qemu lab (whose fence action is the lab's)
    up: Up = start_up(
        "--servers-per-pool", "2", "--kind", "qemu", env={"VMORCH_HA_RELOCATE_AFTER_S": "2"}
    )
    job = up.api.run(
        {"kind": "vm.create_from_template", "name": "h1", "pool": "pool-a",
         "template": "tmpl-a", "ha": True, "server": "srv-a1"},
        timeout_s=120,
    )  # fmt: skip
    assert job["state"] == "succeeded", job
    vm_id = job["links"]["vm_id"]
    [guest] = qemu_pids(vm_id)
    # when: srv-a1's libvirtd is SIGKILLed; its guest runs on, as on a real host
    libvirtd = libvirtd_pid(up, "srv-a1")
    os.kill(libvirtd, signal.SIGKILL)
    assert guest in qemu_pids(vm_id)

    # then: HA restarts the VM on srv-a2, after the fence command killed the old guest
    def ha_job() -> dict[str, Any] | None:
        items = up.api.call("GET", "/v1/jobs?kind=vm.ha_restart")["items"]
        return items[0] if items and items[0]["state"] in ("succeeded", "failed") else None

    ha = wait_until(ha_job, 90, "the HA restart to end")
    assert ha["state"] == "succeeded", (ha["error"], ha["steps"])
    steps = {s["name"]: s for s in ha["steps"]}
    proof = steps["ha_fence"]["outputs"]["fenced"]
    assert proof["by"] == "fence_command" and proof["exit_code"] == 0, proof
    assert f"guest {guest}" in proof["output"], proof
    assert steps["ha_place"]["outputs"]["server"] == "srv-a2"
    # and never were two copies running: the old guest is gone, one QEMU runs the VM
    assert guest not in qemu_pids(vm_id) and len(qemu_pids(vm_id)) == 1
    assert domains(server_uri(up, "srv-a2")) == {vm_id: True}
    assert up.api.call("GET", f"/v1/vms/{vm_id}")["server"] == "srv-a2"
    assert up.down().returncode == 0


def test_a_create_lands_on_another_server_while_one_libvirtd_hangs(start_up: Any) -> None:
    # given: the qemu lab's pool of two servers, srv-a2's libvirtd stopped (SIGSTOP: it
    # accepts connections and never answers)
    up: Up = start_up("--servers-per-pool", "2", "--kind", "qemu")
    libvirtd = libvirtd_pid(up, "srv-a2")
    os.kill(libvirtd, signal.SIGSTOP)
    try:
        # when: a VM is created in the pool, no server named
        t0 = time.monotonic()
        job = up.api.run(
            {"kind": "vm.create_from_template", "name": "hc1", "pool": "pool-a",
             "template": "tmpl-a"},
            timeout_s=120,
        )  # fmt: skip
        took_s = time.monotonic() - t0
        # then: it runs on srv-a1, placement says why not srv-a2, and it took one probe
        assert job["state"] == "succeeded", (job["error"], job["steps"])
        place = next(s for s in job["steps"] if s["name"] == "place")["outputs"]
        assert place["server"] == "srv-a1"
        assert place["placement"]["srv-a2"].startswith("unreachable"), place
        assert job["links"]["vm_id"] in qemu_processes()
        assert took_s < 30, took_s
        print(f"create with one hung server in the pool: {took_s:.1f}s")
        # and a migration to the hung server is refused, saying why
        mig = up.api.run({"kind": "vm.migrate", "vm": "hc1", "target_server": "srv-a2"})
        assert mig["state"] == "failed" and mig["error"]["code"] == "migration_refused", mig
        assert "srv-a2: unreachable" in mig["error"]["message"], mig["error"]
        assert up.api.call("GET", "/v1/vms/hc1")["server"] == "srv-a1"
    finally:
        os.kill(libvirtd, signal.SIGCONT)
    assert up.down().returncode == 0
