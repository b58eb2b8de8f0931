"""Migration deadlines, vCPU pinning and maintenance on the in-process test driver."""

from __future__ import annotations

from typing import Any

import libvirt
import pytest

from orchestrator.errors import NoCapacity, ValidationFailed
from orchestrator.jobs.checks import pinning_problem
from orchestrator.settings import Settings
from schemas.jobs import JobState
from tasks.steps.migration import Deadlines, MigrationTimedOut
from tasks.testing import Engine
from tests.unit.conftest import FLEET


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _deadlines(action: str, **kw: Any) -> tuple[Deadlines, Clock, list[str]]:
    clock, calls = Clock(), []
    d = Deadlines(
        completion_s=kw.get("completion_s", 100.0),
        progress_s=kw.get("progress_s", 10.0),
        action=action,  # type: ignore[arg-type]
        pause=lambda: calls.append("pause"),
        postcopy=kw.get("postcopy", lambda: calls.append("postcopy")),
        clock=clock,
    )
    return d, clock, calls


def test_no_progress_aborts_and_progress_keeps_it_going() -> None:
    d, clock, _ = _deadlines("abort")
    for t, remaining in [(0, 900), (5, 800), (14, 700), (23, 600)]:  # shrinking: fine
        clock.t = t
        d.watch({"data_remaining": remaining})
    clock.t = 30
    d.watch({"data_remaining": 650})  # more than the lowest: no progress, but not 10 s yet
    clock.t = 34
    with pytest.raises(MigrationTimedOut, match="no progress for 10 s"):
        d.watch({"data_remaining": 610})
    assert d.fired == [{"deadline": "progress", "action": "abort", "at_s": 34.0}]


def test_pause_runs_once_then_the_other_deadline_aborts() -> None:
    d, clock, calls = _deadlines("pause", completion_s=50.0)
    clock.t = 11
    d.watch({"data_remaining": 500})
    clock.t = 22
    d.watch({"data_remaining": 500})  # no progress for 11 s: paused
    assert calls == ["pause"]
    clock.t = 40
    d.watch({"data_remaining": 500})  # the progress deadline's action has run
    assert calls == ["pause"]
    clock.t = 51
    with pytest.raises(MigrationTimedOut, match="not done within 50 s"):
        d.watch({"data_remaining": 400})
    assert [f["action"] for f in d.fired] == ["pause", "abort"]


def test_postcopy_that_libvirt_refuses_falls_back_to_abort() -> None:
    def refuse() -> None:
        raise RuntimeError("post-copy is not supported")

    d, clock, _ = _deadlines("postcopy", postcopy=refuse, completion_s=5.0)
    clock.t = 6
    with pytest.raises(MigrationTimedOut, match="not done within 5 s"):
        d.watch({"data_remaining": 1})
    assert d.fired[0]["action"] == "abort" and "not supported" in d.fired[0]["postcopy_error"]


def test_pinning_problems_name_the_vcpu_or_the_cpu() -> None:
    assert pinning_problem({"0": [1]}, 1, 4) is None
    assert "vCPU 2 does not exist" in str(pinning_problem({"2": [1]}, 2, 4))
    assert "physical CPU 4 does not exist there" in str(pinning_problem({"0": [4]}, 1, 4))


# -- on the hand-driven engine and the in-process test driver --------------------------------


@pytest.fixture
def fleet(settings: Settings, conn: libvirt.virConnect) -> Any:
    import fakeredis

    quick = settings.model_copy(update={"wait_recheck_s": 0.05})
    e = Engine(quick, lambda: fakeredis.FakeAsyncRedis(decode_responses=True))
    e.run(e.inventory.load(FLEET))
    yield e
    e.close()


def _create(e: Engine, name: str, *, start: bool = True, vcpus: int = 1) -> str:
    job = e.submit(
        {
            "kind": "vm.create_from_template",
            "pool": "pool-u",
            "template": "t1",
            "name": name,
            "vcpus": vcpus,
            "start": start,
        }
    )
    e.drain()
    assert e.get(job.id).state == JobState.SUCCEEDED, e.get(job.id).error
    return str(job.links.vm_id)


def _run(e: Engine, request: dict[str, Any]) -> Any:
    job = e.submit(request)
    e.drain()
    return e.get(job.id)


def test_pinning_is_applied_live_and_persistent_and_removed(
    fleet: Engine, conn: libvirt.virConnect
) -> None:
    vm_id = _create(fleet, "pin1", vcpus=2)
    job = _run(fleet, {"kind": "vm.pin_vcpus", "vm": "pin1", "pinning": {"1": [3, 2], "0": [5]}})
    assert job.state == JobState.SUCCEEDED, job.error
    dom = conn.lookupByUUIDString(vm_id)
    # read back through libvirt: the running domain and its persistent definition
    live = dom.vcpuPinInfo(0)
    assert [i for i, on in enumerate(live[0]) if on] == [5]
    assert [i for i, on in enumerate(live[1]) if on] == [2, 3]
    inactive = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert "<vcpupin vcpu='0' cpuset='5'/>" in inactive
    assert "<vcpupin vcpu='1' cpuset='2-3'/>" in inactive
    assert fleet.run(fleet.inventory.vm(vm_id)).pinning == {"0": [5], "1": [2, 3]}
    # removed: every vCPU may run anywhere again
    job = _run(fleet, {"kind": "vm.pin_vcpus", "vm": "pin1", "pinning": None})
    assert job.state == JobState.SUCCEEDED, job.error
    assert all(all(m) for m in dom.vcpuPinInfo(0))
    assert "vcpupin" not in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert fleet.run(fleet.inventory.vm(vm_id)).pinning is None


def test_a_pinning_the_server_cannot_hold_fails_and_changes_nothing(
    fleet: Engine, conn: libvirt.virConnect
) -> None:
    vm_id = _create(fleet, "pin2", vcpus=2)
    job = _run(fleet, {"kind": "vm.pin_vcpus", "vm": "pin2", "pinning": {"0": [99]}})
    assert job.state == JobState.FAILED
    assert job.error.code == "invalid_pinning"
    assert "physical CPU 99 does not exist there (the server has 8" in job.error.message
    assert all(all(m) for m in conn.lookupByUUIDString(vm_id).vcpuPinInfo(0))
    # a vCPU the VM does not have is refused at submission, naming the field
    with pytest.raises(ValidationFailed) as e:
        fleet.submit({"kind": "vm.pin_vcpus", "vm": "pin2", "pinning": {"2": [1]}})
    assert e.value.details[0][0] == ["body", "pinning", "2"]


def test_maintenance_of_the_only_server_stops_what_it_may_and_keeps_placement_off(
    fleet: Engine, conn: libvirt.virConnect
) -> None:
    running = _create(fleet, "m1")
    _create(fleet, "m2", start=False)
    # a dry run plans (nowhere to go) and marks nothing
    dry = _run(fleet, {"kind": "server.maintenance", "server": "srv-u", "dry_run": True})
    assert dry.state == JobState.SUCCEEDED, dry.error
    plan = dry.steps[0].outputs["plan"]
    assert plan[running]["action"] == "live" and plan[running]["target"] is None
    assert dry.steps[0].outputs["without_target"] == ["m1", "m2"]
    assert fleet.run(fleet.services.servers.in_maintenance(["srv-u"])) == set()
    # m1 is to be stopped (a child vm.stop job), m2 to move: it cannot, so the job fails,
    # and the server stays in maintenance
    job = _run(
        fleet,
        {"kind": "server.maintenance", "server": "srv-u", "vms": {"m1": "stop"}},
    )
    assert job.state == JobState.FAILED
    assert job.error.code == "evacuation_incomplete"
    assert "m2 (no target" in job.error.message and "m1" not in job.error.message
    vms = job.steps[2].outputs["vms"]
    child = fleet.get(vms[running]["job"])
    assert child.kind == "vm.stop" and child.state == JobState.SUCCEEDED
    assert child.links.parent_job == job.id
    assert conn.lookupByUUIDString(running).state()[0] == libvirt.VIR_DOMAIN_SHUTOFF
    assert [s.state.value for s in job.steps] == ["done", "done", "failed"]
    assert fleet.run(fleet.services.servers.in_maintenance(["srv-u"])) == {"srv-u"}
    # placement skips it, and says why
    refused = _run(
        fleet, {"kind": "vm.create_from_template", "pool": "pool-u", "template": "t1", "name": "m3"}
    )
    assert refused.state == JobState.FAILED and "srv-u: in maintenance" in refused.error.message
    # activated, it takes VMs again
    assert _run(fleet, {"kind": "server.activate", "server": "srv-u"}).state == JobState.SUCCEEDED
    _create(fleet, "m4")


def test_placement_skips_a_server_whose_cpus_cannot_hold_the_pinning(fleet: Engine) -> None:
    from tasks.step import StepContext
    from tasks.steps.placement import choose_server

    job = fleet.submit({"kind": "noop", "steps": 1})
    ctx = StepContext(job=job, runtime=fleet.rt, attempt=1)
    # the test driver's server has 8 CPUs (0-7)
    assert choose_server(ctx, "pool-u", 64, pinning={"0": [7]})["server"] == "srv-u"
    with pytest.raises(NoCapacity, match="physical CPU 8 does not exist there"):
        choose_server(ctx, "pool-u", 64, pinning={"0": [8]})


def test_a_held_target_refuses_a_member_of_the_same_group(fleet: Engine) -> None:
    """A migration's hold on its target (`hold`) is a placement: a second member of an
    anti-affinity group cannot take the same server while the first holds it, before
    either has moved (two plans at once), and memory held counts against the next."""
    from tasks.step import StepContext
    from tasks.steps.placement import hold

    jobs = [fleet.submit({"kind": "noop", "steps": 1}) for _ in range(3)]
    ctxs = [StepContext(job=j, runtime=fleet.rt, attempt=1) for j in jobs]
    partners_of_a, partners_of_b = {"vm-b": "g: b"}, {"vm-a": "g: a"}
    assert hold(ctxs[0], "srv-u", "vm-a", 64, partners_of_a) is None
    assert hold(ctxs[0], "srv-u", "vm-a", 64, partners_of_a) is None  # a re-run holds again
    assert hold(ctxs[1], "srv-u", "vm-b", 64, partners_of_b) == "anti-affinity group g: a is there"
    # memory: what is held is not free for the next placement
    free, _ = fleet.rt.hypervisors.get("test:///default").memory_use()
    why = hold(ctxs[2], "srv-u", "vm-c", free, {})
    assert why is not None and why.endswith("MiB free once placements not yet running are counted")
    assert hold(ctxs[2], "srv-u", "vm-c", free - 64, {}) is None
