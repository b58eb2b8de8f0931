"""VM workflows on the in-process libvirt test driver: per-VM order and compensation."""

from __future__ import annotations

from typing import Any

import libvirt
import pytest

from schemas.jobs import JobState
from tasks.testing import Engine
from tests.unit.conftest import FLEET


@pytest.fixture
def fleet(engine: Engine, conn: libvirt.virConnect) -> Engine:
    engine.run(engine.inventory.load(FLEET))
    return engine


def create(engine: Engine, name: str, template: str = "t1") -> Any:
    job = engine.submit(
        {
            "kind": "vm.create_from_template",
            "pool": "pool-u",
            "template": template,
            "name": name,
            "vnics": [{"network": "default"}],
        }
    )
    engine.drain()
    return engine.get(job.id)


def test_create_defines_and_starts_the_domain(fleet: Engine, conn: libvirt.virConnect) -> None:
    job = create(fleet, "vm1")
    assert job.state == JobState.SUCCEEDED, job.error
    dom = conn.lookupByName("vm1")
    assert dom.isActive()
    assert dom.UUIDString() == job.links.vm_id
    vol = f"vm1-{job.links.vm_id[:8]}-disk0"
    assert vol in conn.storagePoolLookupByName("repo-u").listVolumes()


def test_jobs_on_one_vm_run_one_at_a_time_in_order(fleet: Engine) -> None:
    vm_id = create(fleet, "vm2").links.vm_id
    stop = fleet.submit({"kind": "vm.stop", "vm": "vm2"})
    start = fleet.submit({"kind": "vm.start", "vm": "vm2"})
    # only the head of the VM's queue was dispatched; the other waits for it
    assert fleet.broker.pending() == [stop.id]
    assert fleet.run(fleet.jobs.vm_queue(vm_id)) == [stop.id, start.id]
    fleet.drain()
    a, b = fleet.get(stop.id), fleet.get(start.id)
    assert a.state == b.state == JobState.SUCCEEDED
    assert a.ended_at <= b.started_at
    assert fleet.run(fleet.jobs.vm_queue(vm_id)) == []


def test_a_failed_clone_leaves_no_volume_domain_or_record(
    fleet: Engine, conn: libvirt.virConnect
) -> None:
    job = create(fleet, "vm3", template="broken")
    assert job.state == JobState.FAILED
    # the placement held memory for it: undone too
    assert [s.state.value for s in job.steps] == [
        "undone",
        "undone",
        "failed",
        "skipped",
        "skipped",
    ]
    assert job.undone_steps == ["reserve", "place"]
    assert conn.storagePoolLookupByName("repo-u").listVolumes() == ["base.img"]
    assert "vm3" not in [d.name() for d in conn.listAllDomains()]
    assert fleet.run(fleet.inventory.find_vm("vm3")) is None
    # and the name can be used again
    assert create(fleet, "vm3").state == JobState.SUCCEEDED


def test_delete_refuses_a_running_vm_without_force(fleet: Engine, conn: libvirt.virConnect) -> None:
    create(fleet, "vm4")
    refused = fleet.submit({"kind": "vm.delete", "vm": "vm4"})
    fleet.drain()
    assert fleet.get(refused.id).state == JobState.FAILED
    assert conn.lookupByName("vm4").isActive()
    forced = fleet.submit({"kind": "vm.delete", "vm": "vm4", "force": True})
    fleet.drain()
    assert fleet.get(forced.id).state == JobState.SUCCEEDED
    assert "vm4" not in [d.name() for d in conn.listAllDomains()]
    assert conn.storagePoolLookupByName("repo-u").listVolumes() == ["base.img"]


def test_stop_forces_the_vm_off_when_the_guest_ignores_the_shutdown(
    fleet: Engine, conn: libvirt.virConnect, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a running VM whose guest ignores ACPI shutdown requests
    from workers.hypervisor.adapter import Hypervisor

    create(fleet, "vm5")
    asked: list[str] = []
    monkeypatch.setattr(Hypervisor, "request_shutdown", lambda self, uuid: asked.append(uuid))
    # when it is stopped with a short timeout
    job = fleet.submit({"kind": "vm.stop", "vm": "vm5", "timeout_s": 0.3})
    fleet.drain()
    # then the guest was asked first, and powered off once the timeout passed
    done = fleet.get(job.id)
    assert done.state == JobState.SUCCEEDED
    assert asked == [done.links.vm_id]
    assert done.result == {"state": "stopped", "forced": True, "escalated": True}
    assert not conn.lookupByName("vm5").isActive()


def test_stop_of_a_cooperative_guest_is_not_forced(fleet: Engine, conn: libvirt.virConnect) -> None:
    create(fleet, "vm6")
    job = fleet.submit({"kind": "vm.stop", "vm": "vm6", "timeout_s": 5})
    fleet.drain()
    assert fleet.get(job.id).result == {"state": "stopped", "forced": False}
    assert not conn.lookupByName("vm6").isActive()


def test_abort_of_a_create_midway_removes_what_it_made(
    fleet: Engine, conn: libvirt.virConnect
) -> None:
    from tasks.runner.advance import advance

    # given a create job that has placed the VM, cloned its disk and defined the domain
    job = fleet.submit(
        {"kind": "vm.create_from_template", "pool": "pool-u", "template": "t1", "name": "vm7"}
    )
    for _ in range(4):
        job_id = fleet.broker.pop()
        advance(fleet.rt, job_id)
    assert "vm7" in [d.name() for d in conn.listAllDomains()]
    # when it is aborted before its last step
    assert fleet.run(fleet.submitter.abort(job.id)).state == JobState.ABORTING
    fleet.drain()
    # then it ends aborted with its steps undone in reverse, and nothing is left behind
    done = fleet.get(job.id)
    assert done.state == JobState.ABORTED
    assert [s.state.value for s in done.steps] == ["undone"] * 4 + ["skipped"]
    assert "vm7" not in [d.name() for d in conn.listAllDomains()]
    assert conn.storagePoolLookupByName("repo-u").listVolumes() == ["base.img"]
    assert fleet.run(fleet.inventory.find_vm("vm7")) is None


def test_a_failed_start_does_not_power_off_a_vm_it_did_not_start(
    fleet: Engine, conn: libvirt.virConnect, monkeypatch: pytest.MonkeyPatch
) -> None:
    create(fleet, "vm8")
    # the start step fails after finding the VM already running (e.g. Redis hiccup on report)
    import tasks.steps.vm as vs
    from orchestrator.errors import Permanent

    def broken_observe(*_a: object) -> None:
        raise Permanent("report failed")

    monkeypatch.setattr(vs, "observe", broken_observe)
    job = fleet.submit({"kind": "vm.start", "vm": "vm8"})
    fleet.drain()
    assert fleet.get(job.id).state == JobState.FAILED
    assert conn.lookupByName("vm8").isActive()


def test_aborting_a_queued_job_behind_others_does_not_redispatch_the_head(fleet: Engine) -> None:
    create(fleet, "vm9")
    first = fleet.submit({"kind": "vm.stop", "vm": "vm9"})
    fleet.submit({"kind": "vm.start", "vm": "vm9"})
    third = fleet.submit({"kind": "vm.suspend", "vm": "vm9"})
    assert fleet.broker.pending() == [first.id]
    fleet.run(fleet.submitter.abort(third.id))
    assert fleet.broker.pending() == [first.id]  # no duplicate for the head
    fleet.drain()
    assert fleet.get(third.id).state == JobState.ABORTED


def test_ha_restarts_past_the_budget_leave_the_vm_stopped_with_an_alert(
    fleet: Engine, conn: libvirt.virConnect
) -> None:

    created = create(fleet, "vm10")
    vm_id = created.links.vm_id
    outcomes = []
    for _ in range(4):  # the budget is 3 restarts per window by default
        conn.lookupByName("vm10").destroy()
        job = fleet.submit({"kind": "vm.ha_restart", "vm": "vm10", "reason": "test"})
        fleet.drain()
        outcomes.append(fleet.get(job.id).state)
    assert outcomes == [JobState.SUCCEEDED] * 3 + [JobState.FAILED]
    assert not conn.lookupByName("vm10").isActive()  # left stopped
    alerts = fleet.run(fleet.services.alerts.all())
    assert [a.type for a in alerts] == ["vm.ha.exhausted"] and alerts[0].subject == vm_id
    acked = fleet.run(fleet.services.alerts.acknowledge(alerts[0].id, "ops"))
    assert acked.acknowledged_by == "ops"
    assert fleet.run(fleet.services.alerts.all()) == []


def test_an_abort_interrupts_a_hung_hypervisor_call_and_the_undo_still_runs(
    fleet: Engine, conn: libvirt.virConnect, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading
    import time

    from tasks.runner.advance import advance
    from workers.hypervisor.adapter import Hypervisor

    # given a create job that has defined its domain, and a server that hangs on the start
    job = fleet.submit(
        {"kind": "vm.create_from_template", "pool": "pool-u", "template": "t1", "name": "vm10"}
    )
    for _ in range(4):
        advance(fleet.rt, fleet.broker.pop())
    release = threading.Event()
    monkeypatch.setattr(
        Hypervisor, "start", lambda hv, _uuid: hv._call("start", lambda c: release.wait(10))
    )
    # when the job is aborted while its start waits for the server
    threading.Timer(0.2, lambda: fleet.run(fleet.submitter.abort(job.id))).start()
    t0 = time.monotonic()
    try:
        fleet.drain()
    finally:
        release.set()
    # then the wait was cut short, and the steps before it were undone (the abort it saw
    # does not stop the undo: it is the abort's own work)
    assert time.monotonic() - t0 < 5
    done = fleet.get(job.id)
    assert done.state == JobState.ABORTED, done.error
    assert [s.state.value for s in done.steps] == ["undone"] * 4 + ["failed"]
    assert "vm10" not in [d.name() for d in conn.listAllDomains()]
    assert conn.storagePoolLookupByName("repo-u").listVolumes() == ["base.img"]


def test_macs_are_claimed_at_submission_and_released_when_the_vm_goes(
    fleet: Engine, conn: libvirt.virConnect
) -> None:
    from orchestrator.errors import Conflict

    macs = fleet.services.macs
    job = create(fleet, "mac1")
    vm = fleet.run(fleet.inventory.vm("mac1"))
    [nic] = vm.nics
    # the domain has the MAC the registry gave the VM
    assert nic.mac in conn.lookupByName("mac1").XMLDesc()
    assert fleet.run(macs.holder(nic.mac)) == job.links.vm_id
    # another VM asking for it is refused at submission, naming the field
    with pytest.raises(Conflict) as e:
        vnics = [{"network": "default", "mac": nic.mac}]
        fleet.submit({"kind": "vm.create_from_template", "pool": "pool-u", "template": "t1",
                      "name": "mac2", "vnics": vnics})  # fmt: skip
    assert e.value.details[0][0] == ["body", "vnics", 0, "mac"]
    assert fleet.run(fleet.inventory.find_vm("mac2")) is None
    # a create that fails gives its MAC back; a deleted VM gives its MAC back
    failed = create(fleet, "mac3", template="broken")
    assert failed.state == JobState.FAILED
    deleted = fleet.submit({"kind": "vm.delete", "vm": "mac1", "force": True})
    fleet.drain()
    assert fleet.get(deleted.id).state == JobState.SUCCEEDED
    assert fleet.run(macs.in_use()) == 0


def test_a_deleted_vm_holds_no_memory_on_its_server(fleet: Engine) -> None:
    """Its create's placement outlives the create by a grace; the delete ends it, so a
    server emptied by deletes takes new VMs at once."""
    job = create(fleet, "vm-del")
    assert job.state == JobState.SUCCEEDED
    held = fleet.run(fleet.redis.hgetall("vmorch:placements:srv-u"))
    assert job.links.vm_id in held
    assert fleet.get(fleet.submit({"kind": "vm.delete", "vm": "vm-del", "force": True}).id)
    fleet.drain()
    assert job.links.vm_id not in fleet.run(fleet.redis.hgetall("vmorch:placements:srv-u"))
