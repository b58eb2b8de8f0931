"""The qemu tier, migration policy: aborts in flight, deadlines and their actions, vCPU
pinning, maintenance. Guests that keep dirtying memory (`guests.make_dirtying`) make a
throttled migration last as long as a test needs, deterministically."""

from __future__ import annotations

import time
from typing import Any

import libvirt
import pytest

from tests.integration.conftest import wait_until
from tests.integration.guests import make_dirtying
from tests.integration.test_qemu_lab import domains, qemu_pids, server_uri
from tests.integration.upkit import Up

pytestmark = [pytest.mark.integration, pytest.mark.qemu, pytest.mark.timeout(300)]


def step(job: dict[str, Any], name: str) -> dict[str, Any]:
    [s] = [s for s in job["steps"] if s["name"] == name]
    return s


def busy_vm(up: Up, name: str, **extra: Any) -> dict[str, Any]:
    """A running VM of pool-a whose guest keeps dirtying 576 KiB of memory."""
    job = up.api.run(
        {"kind": "vm.create_from_template", "name": name, "pool": "pool-a",
         "template": "tmpl-a", "start": False, **extra},
        timeout_s=120,
    )  # fmt: skip
    assert job["state"] == "succeeded", job
    vm = up.api.call("GET", f"/v1/vms/{job['links']['vm_id']}")
    make_dirtying(vm["disks"][0]["path"])
    assert up.api.run({"kind": "vm.start", "vm": name}, timeout_s=60)["state"] == "succeeded"
    return dict(up.api.call("GET", f"/v1/vms/{vm['id']}"))


BANDWIDTH = 50  # MiB/s: far below the busy guest's dirty rate


def iterating(up: Up, job_id: str, iteration: int = 3) -> dict[str, Any] | None:
    """The migrate step, once libvirt reports it at `iteration` over memory."""
    job = up.api.job(job_id)
    if "migrate" not in [s["name"] for s in job["steps"]]:
        return None
    s = step(job, "migrate")
    return s if s["detail"].get("memory_iteration", 0) >= iteration else None


def test_a_migration_that_cannot_converge_is_aborted_in_flight_and_by_its_deadline(
    start_up: Any,
) -> None:
    # given: a running VM whose guest dirties memory faster than 50 MiB/s
    up: Up = start_up("--servers-per-pool", "2", "--kind", "qemu")
    vm = busy_vm(up, "busy1")
    source = vm["server"]
    [target] = [s for s in ("srv-a1", "srv-a2") if s != source]
    [guest] = qemu_pids(vm["id"])
    # when: it is migrated at 50 MiB/s, and the job is aborted while libvirt iterates
    mig = up.api.submit({"kind": "vm.migrate", "vm": "busy1", "bandwidth_mib_s": BANDWIDTH})
    s = wait_until(lambda: iterating(up, mig["id"]), 60, "the migration to iterate")
    assert s["state"] == "running" and s["detail"]["data_total_bytes"] >= 96 * 2**20
    assert s["detail"]["memory_dirty_rate_pages_s"] > 1000, s["detail"]  # progress shown
    time.sleep(2)
    assert up.api.job(mig["id"])["state"] == "running"  # it does not converge by itself
    up.api.call("POST", f"/v1/jobs/{mig['id']}/abort", {"reason": "test"})
    ended = up.api.wait(mig["id"], timeout_s=90)
    # then: aborted in flight, the same guest runs on on the source, nothing on the target
    assert ended["state"] == "aborted", (ended["error"], ended["steps"])
    assert up.api.call("GET", f"/v1/vms/{vm['id']}")["server"] == source
    assert domains(server_uri(up, source)) == {vm["id"]: True}
    assert guest in qemu_pids(vm["id"])
    # (the target's incoming QEMU goes once libvirt has ended the migration there)
    wait_until(lambda: qemu_pids(vm["id"]) == {guest}, 60, "the target's QEMU to end")
    wait_until(lambda: vm["id"] not in domains(server_uri(up, target)), 60, "target clean")

    # when: it is migrated with a no-progress deadline of 3 s, action abort
    t0 = time.monotonic()
    late = up.api.run(
        {"kind": "vm.migrate", "vm": "busy1", "bandwidth_mib_s": BANDWIDTH, "progress_timeout_s": 3,
         "on_timeout": "abort"},
        timeout_s=120,
    )  # fmt: skip
    took = time.monotonic() - t0
    # then: it failed at the deadline with its reason; the VM runs on on the source
    assert late["state"] == "failed", late["steps"]
    assert late["error"]["code"] == "migration_timed_out", late["error"]
    assert "no progress for 3 s" in late["error"]["message"]
    assert "the VM runs on the source" in late["error"]["message"]
    assert took < 60, took
    wait_until(lambda: qemu_pids(vm["id"]) == {guest}, 60, "the target's QEMU to end")
    assert up.api.call("GET", f"/v1/vms/{vm['id']}")["server"] == source

    # when: it is migrated with a completion deadline of about 4 s (40 s per GiB of its
    # 96 MiB), action pause
    wait_until(lambda: vm["id"] not in domains(server_uri(up, target)), 60, "target clean")
    paused = up.api.run(
        {"kind": "vm.migrate", "vm": "busy1", "bandwidth_mib_s": BANDWIDTH,
         "completion_timeout_per_gib_s": 40, "on_timeout": "pause"},
        timeout_s=120,
    )  # fmt: skip
    # then: the paused guest converged, and runs (resumed) on the target
    assert paused["state"] == "succeeded", (paused["error"], paused["steps"])
    [fired] = step(paused, "migrate")["outputs"]["deadlines"]
    assert (fired["deadline"], fired["action"]) == ("completion", "pause"), fired
    vm = up.api.call("GET", f"/v1/vms/{vm['id']}")
    assert vm["server"] == target
    wait_until(lambda: domains(server_uri(up, target)) == {vm["id"]: True}, 30, "running there")
    conn = libvirt.open(server_uri(up, target))
    try:
        assert conn.lookupByUUIDString(vm["id"]).state()[0] == libvirt.VIR_DOMAIN_RUNNING
    finally:
        conn.close()
    assert up.down().returncode == 0
