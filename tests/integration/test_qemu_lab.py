"""The qemu tier: `vmorch up --kind qemu` as a user runs it, with real QEMU guests (TCG) on
unprivileged libvirtd servers, driven through the API by the same workflows as the
test-driver lab."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import libvirt
import pytest

from tests.integration.conftest import wait_until
from tests.integration.upkit import Up

pytestmark = [pytest.mark.integration, pytest.mark.qemu, pytest.mark.timeout(240)]


def qemu_processes() -> dict[str, int]:
    """VM uuid -> PID of each running qemu-system process (from its `-uuid` argument)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"qemu-system-x86_64") and b"-uuid" in argv:
            found[argv[argv.index(b"-uuid") + 1].decode()] = int(entry.name)
    return found


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
