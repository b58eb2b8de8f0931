"""HA covers every VM of a server that went down, however many there are (M4)."""

from __future__ import annotations

import uuid

from orchestrator.router.policies import ha
from orchestrator.store.events import make_event
from schemas import event_types as et
from schemas.inventory import Vm, VmState
from tasks.testing import Engine


def test_server_down_targets_every_ha_vm_of_that_server_meant_to_run(engine: Engine) -> None:
    # given 1,200 HA VMs on s1 (more than any page), one not meant to run, and VMs elsewhere
    inv = engine.inventory
    ids = []
    for i in range(1200):
        vm = Vm(id=str(uuid.uuid4()), name=f"vm{i}", pool="p", server="s1", ha=True)
        engine.run(inv.save_vm(vm))
        engine.run(inv.set_desired(vm.id, VmState.STOPPED if i == 7 else VmState.RUNNING))
        ids.append(vm.id)
    other = Vm(id=str(uuid.uuid4()), name="elsewhere", pool="p", server="s2", ha=True)
    engine.run(inv.save_vm(other))
    engine.run(inv.set_desired(other.id, VmState.RUNNING))
    hook = engine.run(engine.services.hooks.create(ha.HA_SPEC, hook_id=ha.HA_HOOK_ID))[0]
    # when s1 goes down
    down = make_event(et.SERVER_DOWN, "libvirt://s1", "s1", {"server": "s1", "pool": "p"})
    targets = engine.run(ha.targets(engine.services, hook, down, None))
    # then every one of them is a target but the one stopped on purpose
    assert sorted(s for s, _ in targets) == sorted(ids[:7] + ids[8:])


def test_a_relocated_vm_leaves_its_old_servers_index(engine: Engine) -> None:
    inv = engine.inventory
    vm = Vm(id=str(uuid.uuid4()), name="mover", pool="p", server="s1", ha=True)
    engine.run(inv.save_vm(vm))
    engine.run(inv.save_vm(vm.model_copy(update={"server": "s2"})))
    assert [v.id for v in engine.run(inv.vms_on("s1"))] == []
    assert [v.id for v in engine.run(inv.vms_on("s2"))] == [vm.id]
    engine.run(inv.delete_vm(vm.id))
    assert engine.run(inv.vms_on("s2")) == []


def test_vms_are_listed_in_pages_without_gaps(engine: Engine) -> None:
    inv = engine.inventory
    made = set()
    for i in range(25):
        vm = Vm(id=str(uuid.uuid4()), name=f"p{i}", pool="p")
        engine.run(inv.save_vm(vm))
        made.add(vm.id)
    seen: list[str] = []
    cursor = None
    while True:
        page, cursor = engine.run(inv.vms(limit=10, after=cursor))
        seen += [v.id for v in page]
        if cursor is None:
            break
    assert sorted(seen) == sorted(made) and len(seen) == 25
