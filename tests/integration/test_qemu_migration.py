"""The qemu tier, migration policy: aborts in flight, deadlines and their actions, vCPU
pinning, maintenance. Guests that keep dirtying memory (`guests.make_dirtying`) make a
throttled migration last as long as a test needs, deterministically."""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path
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
    # 96 MiB), action postcopy
    wait_until(lambda: vm["id"] not in domains(server_uri(up, target)), 60, "target clean")
    post = up.api.run(
        {"kind": "vm.migrate", "vm": "busy1", "bandwidth_mib_s": BANDWIDTH,
         "completion_timeout_per_gib_s": 40, "on_timeout": "postcopy"},
        timeout_s=120,
    )  # fmt: skip
    # then: where QEMU may use post-copy the VM runs on the target; here its unprivileged
    # guests get no userfaultfd, so the migration ran without it and the deadline aborted
    # it, saying why, with the VM on the source
    if post["state"] == "succeeded":
        [fired] = step(post, "migrate")["outputs"]["deadlines"]
        assert fired["action"] == "postcopy", fired
        print("post-copy was used")
        back = up.api.run({"kind": "vm.migrate", "vm": "busy1", "target_server": source,
                           "on_timeout": "pause", "completion_timeout_per_gib_s": 40,
                           "bandwidth_mib_s": BANDWIDTH}, timeout_s=120)  # fmt: skip
        assert back["state"] == "succeeded", back["error"]
    else:
        assert post["error"]["code"] == "migration_timed_out", post["error"]
        assert "post-copy could not be used" in post["error"]["message"], post["error"]
        print(f"post-copy: {post['error']['message']}")
        assert up.api.call("GET", f"/v1/vms/{vm['id']}")["server"] == source
        wait_until(lambda: qemu_pids(vm["id"]) == {guest}, 60, "the target's QEMU to end")

    # when: it is migrated with a completion deadline of about 2 s (20 s per GiB: inside
    # its first pass over memory), action pause
    wait_until(lambda: vm["id"] not in domains(server_uri(up, target)), 60, "target clean")
    paused = up.api.run(
        {"kind": "vm.migrate", "vm": "busy1", "bandwidth_mib_s": BANDWIDTH,
         "completion_timeout_per_gib_s": 20, "on_timeout": "pause"},
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


def pins(uri: str, vm_id: str) -> tuple[list[list[int]], str]:
    """A domain's live pinning (each vCPU's CPUs) and its persistent `<cputune>`, read
    through libvirt."""
    conn = libvirt.open(uri)
    try:
        dom = conn.lookupByUUIDString(vm_id)
        live = [[i for i, on in enumerate(m) if on] for m in dom.vcpuPinInfo(0)]
        xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        return live, xml[
            xml.find("<cputune>") : xml.find("</cputune>") + 11
        ] if "<cputune>" in xml else ""
    finally:
        conn.close()


def test_a_pinned_vm_moves_live_only_with_a_pinning_for_the_target_or_without_one(
    start_up: Any,
) -> None:
    # given: a running VM on the qemu lab, its vCPU pinned to physical CPU 1
    up: Up = start_up("--servers-per-pool", "2", "--kind", "qemu")
    job = up.api.run(
        {"kind": "vm.create_from_template", "name": "p1", "pool": "pool-a", "template": "tmpl-a"},
        timeout_s=120,
    )
    assert job["state"] == "succeeded", job
    vm_id = job["links"]["vm_id"]
    pinned = up.api.run({"kind": "vm.pin_vcpus", "vm": "p1", "pinning": {"0": [1]}})
    assert pinned["state"] == "succeeded", pinned["error"]
    vm = up.api.call("GET", f"/v1/vms/{vm_id}")
    source = vm["server"]
    [target] = [s for s in ("srv-a1", "srv-a2") if s != source]
    # then: the API shows it, and libvirt has it live and in the persistent definition
    assert vm["pinning"] == {"0": [1]}
    live, tune = pins(server_uri(up, source), vm_id)
    assert live == [[1]] and "<vcpupin vcpu='0' cpuset='1'/>" in tune, tune
    # when: it is migrated live without a word about its pinning, or with a pinning the
    # target's CPUs cannot hold
    refused = up.api.run({"kind": "vm.migrate", "vm": "p1"})
    bad = up.api.run({"kind": "vm.migrate", "vm": "p1", "pinning": {"0": [64]}})
    # then: both are refused, each saying why; the VM stays, pinned
    assert refused["state"] == "failed" and refused["error"]["code"] == "migration_refused"
    assert "pinned to physical CPUs" in refused["error"]["message"], refused["error"]
    assert bad["state"] == "failed" and "physical CPU 64 does not exist" in bad["error"]["message"]
    assert up.api.call("GET", f"/v1/vms/{vm_id}")["server"] == source
    # when: the target is in maintenance
    enter = up.api.run({"kind": "server.maintenance", "server": target}, timeout_s=60)
    assert enter["state"] == "succeeded", enter["error"]  # nothing on it to move
    held = up.api.run({"kind": "vm.migrate", "vm": "p1", "pinning": {"0": [0]}})
    # then: refused, saying so
    assert held["state"] == "failed" and f"{target}: in maintenance" in held["error"]["message"]
    assert up.api.run({"kind": "server.activate", "server": target})["state"] == "succeeded"
    # when: it is migrated with a pinning for the target
    moved = up.api.run({"kind": "vm.migrate", "vm": "p1", "pinning": {"0": [0]}}, timeout_s=120)
    # then: it runs there, pinned as asked, live and persistent
    assert moved["state"] == "succeeded", (moved["error"], moved["steps"])
    vm = up.api.call("GET", f"/v1/vms/{vm_id}")
    assert vm["server"] == target and vm["pinning"] == {"0": [0]}
    live, tune = pins(server_uri(up, target), vm_id)
    assert live == [[0]] and "<vcpupin vcpu='0' cpuset='0'/>" in tune, tune
    # when: it is migrated back, its pinning dropped
    back = up.api.run({"kind": "vm.migrate", "vm": "p1", "drop_pinning": True}, timeout_s=120)
    assert back["state"] == "succeeded", (back["error"], back["steps"])
    vm = up.api.call("GET", f"/v1/vms/{vm_id}")
    assert vm["server"] == source and vm["pinning"] is None
    live, tune = pins(server_uri(up, source), vm_id)
    assert tune == "" and all(len(cpus) > 1 for cpus in live), (live, tune)
    assert up.down().returncode == 0


def test_maintenance_moves_every_vm_away_within_the_limits(start_up: Any) -> None:
    # given: a pool of three QEMU servers where one migration at a time may leave a
    # server; on srv-a1 three running VMs, a stopped one and a pinned one
    up: Up = start_up(
        "--servers-per-pool", "3", "--kind", "qemu", env={"VMORCH_MIGRATIONS_PER_SERVER": "1"}
    )
    names = ["e1", "e2", "e3", "e4", "e5"]
    for n in names:
        made = up.api.run(
            {"kind": "vm.create_from_template", "name": n, "pool": "pool-a", "template": "tmpl-a",
             "server": "srv-a1", "start": n != "e4"},
            timeout_s=120,
        )  # fmt: skip
        assert made["state"] == "succeeded", made
    assert up.api.run({"kind": "vm.pin_vcpus", "vm": "e5", "pinning": {"0": [1]}})["state"] == (
        "succeeded"
    )
    ids = {n: up.api.call("GET", f"/v1/vms/{n}")["id"] for n in names}
    # when: a dry run asks for the plan
    dry = up.api.run({"kind": "server.maintenance", "server": "srv-a1", "dry_run": True})
    # then: each VM has its move and target, the pinned one none (and why); nothing changed
    assert dry["state"] == "succeeded", dry["error"]
    plan = step(dry, "maintenance_plan")["outputs"]["plan"]
    assert {plan[ids[n]]["action"] for n in ("e1", "e2", "e3", "e5")} == {"live"}
    assert plan[ids["e4"]]["action"] == "cold"
    assert all(plan[ids[n]]["target"] in ("srv-a2", "srv-a3") for n in ("e1", "e2", "e3", "e4"))
    assert plan[ids["e5"]]["target"] is None and "pinned" in plan[ids["e5"]]["reason"]
    assert up.api.call("GET", "/v1/servers/srv-a1")["maintenance"] is None
    # when: maintenance starts, three moves at once, pinned VMs keeping their pinning
    job = up.api.submit(
        {"kind": "server.maintenance", "server": "srv-a1", "parallel": 3, "pinned_vms": "keep"}
    )
    seen_waiting: set[str] = set()

    def watch() -> dict[str, Any] | None:
        j = up.api.job(job["id"])
        for child in up.api.call("GET", "/v1/jobs?kind=vm.migrate&state=waiting")["items"]:
            why = [s["outputs"].get("waiting_for_slot") for s in child["steps"]]
            seen_waiting.update(str(w) for w in why if w)
        return j if j["state"] in ("succeeded", "failed", "aborted") else None

    done = wait_until(watch, 240, "the evacuation")
    # then: every VM left, the running ones still running, the pinned one pinned
    assert done["state"] == "succeeded", (done["error"], done["steps"])
    status = step(done, "evacuate")["outputs"]["vms"]
    assert {status[ids[n]]["state"] for n in names} == {"succeeded"}
    for n in names:
        vm = up.api.call("GET", f"/v1/vms/{n}")
        assert vm["server"] in ("srv-a2", "srv-a3"), vm
        assert domains(server_uri(up, vm["server"]))[vm["id"]] is (n != "e4")
    assert up.api.call("GET", "/v1/vms/e5")["pinning"] == {"0": [1]}
    assert domains(server_uri(up, "srv-a1")) == {}
    # and the limit held: the moves out of srv-a1 never overlapped, and the ones that had
    # to wait said why
    spans = []
    for n in names:
        child = up.api.job(status[ids[n]]["job"])
        assert child["links"]["parent_job"] == job["id"]
        m = step(child, "migrate")
        spans.append((m["started_at"], m["ended_at"]))
    spans.sort()
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), spans
    assert any("leave srv-a1 already (limit 1)" in w for w in seen_waiting), seen_waiting
    # and the server is in maintenance: placement skips it until it is activated
    assert up.api.call("GET", "/v1/servers/srv-a1")["maintenance"]["job"] == job["id"]
    new = up.api.run(
        {"kind": "vm.create_from_template", "name": "e6", "pool": "pool-a", "template": "tmpl-a",
         "server": "srv-a1"},
        timeout_s=60,
    )  # fmt: skip
    assert new["state"] == "failed" and "srv-a1: in maintenance" in new["error"]["message"]
    assert up.api.run({"kind": "server.activate", "server": "srv-a1"})["state"] == "succeeded"
    assert up.api.call("GET", "/v1/servers/srv-a1")["maintenance"] is None
    assert up.down().returncode == 0


def test_a_vm_moves_to_another_pool_with_its_disk_copied_holes_and_all(start_up: Any) -> None:
    # given: the qemu lab's two pools of one server each (repositories neither sees of the
    # other), and a running VM of pool-a with data at 1 MiB into its disk
    up: Up = start_up("--pools", "2", "--kind", "qemu")
    job = up.api.run(
        {"kind": "vm.create_from_template", "name": "c1", "pool": "pool-a",
         "template": "tmpl-a", "vnics": [{"network": "net-a"}]},
        timeout_s=120,
    )  # fmt: skip
    assert job["state"] == "succeeded", job
    vm = up.api.call("GET", "/v1/vms/c1")
    old_path = vm["disks"][0]["path"]
    marker = b"vmorch: moved across pools"
    with open(old_path, "r+b") as f:
        f.seek(2**20)
        f.write(marker)
    move = {"kind": "vm.migrate", "vm": "c1", "target_pool": "pool-b",
            "network_map": {"net-a": "net-b"}}  # fmt: skip
    # when: it is moved without shutdown=true, then with it
    refused = up.api.run(move)
    moved = up.api.run({**move, "shutdown": True, "shutdown_timeout_s": 1}, timeout_s=120)
    # then: the first is refused (it runs); the second stopped it (forced: no guest OS
    # answers the shutdown request), copied its disk, and it
    # runs on srv-b1 from pool-b's repository, its old disk gone
    assert refused["state"] == "failed" and "shutdown=true" in refused["error"]["message"]
    assert moved["state"] == "succeeded", (moved["error"], moved["steps"])
    assert [s["name"] for s in moved["steps"]] == [
        "migration_plan", "migration_slot", "stop", "copy_disks", "define_target", "switch",
        "delete_source_disks", "start",
    ]  # fmt: skip
    after = up.api.call("GET", "/v1/vms/c1")
    assert (after["pool"], after["server"], after["state"]) == ("pool-b", "srv-b1", "running")
    new_path = after["disks"][0]["path"]
    assert new_path != old_path and "repo-b" in new_path
    assert not os.path.exists(old_path)
    with open(new_path, "rb") as f:
        f.seek(2**20)
        assert f.read(len(marker)) == marker
    st = os.stat(new_path)
    assert st.st_size == 16 * 2**20 and st.st_blocks * 512 < 2**20, st  # holes stayed holes
    assert domains(server_uri(up, "srv-b1")) == {after["id"]: True}
    assert domains(server_uri(up, "srv-a1")) == {}
    assert len(qemu_pids(after["id"])) == 1
    assert up.down().returncode == 0


def test_a_move_to_another_pool_that_fails_leaves_the_vm_running_where_it_was(
    start_up: Any,
) -> None:
    # given: the qemu lab's two pools, where the move's switch step fails (injected)
    up: Up = start_up(
        "--pools", "2", "--kind", "qemu", env={"VMORCH_CHAOS_FAIL_STEPS": '["vm.migrate:switch"]'}
    )
    job = up.api.run(
        {"kind": "vm.create_from_template", "name": "f1", "pool": "pool-a", "template": "tmpl-a"},
        timeout_s=120,
    )
    assert job["state"] == "succeeded", job
    vm = up.api.call("GET", "/v1/vms/f1")
    repo_b = Path(vm["disks"][0]["path"]).parent.parent / "repo-b"
    # when: it is moved to pool-b, shut down first
    failed = up.api.run(
        {"kind": "vm.migrate", "vm": "f1", "target_pool": "pool-b", "shutdown": True,
         "shutdown_timeout_s": 1},
        timeout_s=120,
    )  # fmt: skip
    # then: the copy and the definition there were undone, in reverse, and the VM was
    # started again on its own server, its disk where it was; pool-b holds nothing of it
    assert failed["state"] == "failed" and "injected" in failed["error"]["message"], failed
    states = {s["name"]: s["state"] for s in failed["steps"]}
    assert states == {
        "migration_plan": "undone", "migration_slot": "undone", "stop": "undone",
        "copy_disks": "undone", "define_target": "undone", "switch": "failed",
        "delete_source_disks": "skipped", "start": "skipped",
    }, states  # fmt: skip
    after = up.api.call("GET", "/v1/vms/f1")
    assert (after["pool"], after["server"]) == ("pool-a", "srv-a1")
    assert wait_until(lambda: domains(server_uri(up, "srv-a1")) == {vm["id"]: True}, 30, "runs")
    assert domains(server_uri(up, "srv-b1")) == {}
    assert os.path.exists(vm["disks"][0]["path"])
    assert repo_b.is_dir() and not list(repo_b.glob("f1-*")), list(repo_b.iterdir())
    assert up.down().returncode == 0
