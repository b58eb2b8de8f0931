"""`vm.add_vnic` and `vm.remove_vnic`: a VM's vNICs, live when it runs and in its definition.

The VM record is the source of truth: the domain is redefined from it (so a vNIC on a
network an unprivileged server cannot start gets user-mode networking, as at create),
then the running domain is given or relieved of the same device, and both are read back.
An added vNIC's MAC was claimed at submission (the request carries it); a removed one's
goes back to the registry. Each converges: adding a vNIC the VM has, or removing one it
has not, changes nothing.
"""

from __future__ import annotations

import time
from typing import cast

from orchestrator.errors import HypervisorError, Permanent
from schemas.inventory import VmNic
from schemas.requests import AddVnic, RemoveVnic
from tasks.step import Outputs, Step, StepContext
from tasks.steps.vm import domain_spec_of, hv_of, vm_of


def _apply(ctx: StepContext, nics: list[VmNic], mac: str, present: bool) -> Outputs:
    vm = vm_of(ctx)
    hv = hv_of(ctx, vm)
    record = vm.model_copy(update={"nics": nics})
    hv.define(domain_spec_of(record, {"job": ctx.job.id, "pool": vm.pool}))
    live = hv.set_nic_live(vm.id, mac, present)
    if (mac in hv.nic_macs(vm.id)) != present:
        raise HypervisorError(f"libvirt's definition of vm {vm.name} does not show the change")
    ctx.run(ctx.runtime.inventory.save_vm(record, fence=ctx.fence))
    return {"mac": mac, "live": live}


def _add(ctx: StepContext) -> Outputs:
    req = cast(AddVnic, ctx.request)
    vm = vm_of(ctx)
    mac = (req.mac or "").lower()
    nics = list(vm.nics)
    if all(n.mac.lower() != mac for n in nics):
        nics.append(VmNic(network=req.network, mac=mac))
    return _apply(ctx, nics, mac, True)


def _add_undo(ctx: StepContext) -> None:
    """The vNIC goes again, from the record, the definition (rendered from the record
    without it, whatever the failed step left there) and the running domain, and its
    MAC back to the registry."""
    req = cast(AddVnic, ctx.request)
    mac = (req.mac or "").lower()
    vm = vm_of(ctx)
    _apply(ctx, [n for n in vm.nics if n.mac.lower() != mac], mac, False)
    ctx.run(ctx.runtime.services.macs.release(vm.id, [mac]))


UNPLUG_WAIT_S = 10.0


def _remove(ctx: StepContext) -> Outputs:
    """Out of the definition, then out of the running guest: a PCI hot-unplug is a request
    its OS completes. Only once the device is gone does the record drop it and its MAC go
    back to the registry (a MAC still on a live device must not be handed out again)."""
    req = cast(RemoveVnic, ctx.request)
    mac = req.mac.lower()
    vm = vm_of(ctx)
    hv = hv_of(ctx, vm)
    record = vm.model_copy(update={"nics": [n for n in vm.nics if n.mac.lower() != mac]})
    hv.define(domain_spec_of(record, {"job": ctx.job.id, "pool": vm.pool}))
    live = hv.set_nic_live(vm.id, mac, False)
    deadline = time.monotonic() + UNPLUG_WAIT_S
    while live and mac in hv.nic_macs(vm.id, live=True):
        if time.monotonic() > deadline:
            raise Permanent(
                f"the guest of vm {vm.name} has not let vNIC {mac} go within "
                f"{UNPLUG_WAIT_S:g} s: it is out of the definition (gone at the next stop); "
                "its MAC stays claimed: run vm.remove_vnic again once it is gone"
            )
        ctx.sleep(0.5)
    ctx.run(ctx.runtime.inventory.save_vm(record, fence=ctx.fence))
    ctx.run(ctx.runtime.services.macs.release(vm.id, [mac]))
    return {"mac": mac, "live": live}


def add_steps(_req: AddVnic) -> list[Step]:
    return [Step("add_vnic", _add, _add_undo, "add the vNIC (live and in the definition)")]


def remove_steps(_req: RemoveVnic) -> list[Step]:
    return [Step("remove_vnic", _remove, None, "remove the vNIC, release its MAC")]
