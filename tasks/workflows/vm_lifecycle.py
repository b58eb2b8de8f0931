"""Lifecycle workflows on an existing VM: start, stop, kill, restart, suspend, resume, delete."""

from __future__ import annotations

from typing import cast

from orchestrator.errors import HypervisorError
from schemas.inventory import VmState
from schemas.requests import DeleteVm, RestartVm, StopVm
from tasks.step import Outputs, Step, StepContext, WorkflowBuilder
from tasks.steps.disks import repository_of
from tasks.steps.vm import START, STOPPED, hv_of, stop_step, vm_action, vm_of
from workers.hypervisor.adapter import Hypervisor


def _ensure_off(ctx: StepContext) -> Outputs:
    """Before delete: a running VM needs `force`, which powers it off; stopped stays stopped."""
    req = cast(DeleteVm, ctx.request)
    vm = vm_of(ctx)
    hv = hv_of(ctx, vm)
    state = hv.domain_state(vm.id)
    if state not in (None, VmState.STOPPED, VmState.CRASHED):
        if not req.force:
            raise HypervisorError(f"vm {vm.name} is {state}: stop it first or pass force=true")
        ctx.run(ctx.runtime.inventory.set_desired(vm.id, VmState.STOPPED, fence=ctx.fence))
        ctx.expect(vm.id, STOPPED)
        hv.destroy(vm.id)
    return {}


def _undefine(ctx: StepContext) -> Outputs:
    """Ensure the domain is undefined (already gone is fine)."""
    vm = vm_of(ctx)
    hv = hv_of(ctx, vm)
    ctx.expect(vm.id, ["vm.lifecycle.undefined"])
    hv.undefine(vm.id)
    return {}


def _delete_disks(ctx: StepContext) -> Outputs:
    """Ensure the VM's volumes are deleted from the pool's repository."""
    vm = vm_of(ctx)
    hv = hv_of(ctx, vm)
    pool = ctx.run(ctx.runtime.inventory.pool(vm.pool))
    for d in vm.disks:
        hv.delete_volume(repository_of(pool, d), d.volume)
    return {"deleted_volumes": [d.volume for d in vm.disks]}


def _forget(ctx: StepContext) -> Outputs:
    """Ensure the VM record is gone from the inventory (already gone is fine), and the
    memory its create held on its server with it: a placement kept after its create ended
    would count the deleted VM for up to a minute (a concurrent placement that still sees
    it running counts it through libvirt anyway)."""
    vm_id = ctx.job.links.vm_id
    if vm_id:
        vm = ctx.run(ctx.runtime.inventory.find_vm(vm_id))
        if vm is not None and vm.server:
            ctx.run(ctx.runtime.servers.unplace(vm.server, vm_id))
        ctx.run(ctx.runtime.inventory.delete_vm(vm_id, fence=ctx.fence))
    return {"state": VmState.DELETED.value}


STOP = stop_step(lambda ctx: cast(StopVm | RestartVm, ctx.request).timeout_s)
# Each converges: killing a stopped VM, pausing a paused one, resuming a running one is a no-op.
KILL = Step(
    "kill",
    vm_action(Hypervisor.destroy, VmState.STOPPED, STOPPED, VmState.STOPPED),
    None,
    "power the VM off at once",
)
SUSPEND = Step(
    "suspend",
    vm_action(Hypervisor.suspend, VmState.SUSPENDED, ["vm.lifecycle.suspended"]),
    None,
    "pause the VM",
)
RESUME = Step(
    "resume",
    vm_action(Hypervisor.resume, VmState.RUNNING, ["vm.lifecycle.resumed"]),
    None,
    "resume the paused VM",
)


def _delete(req: DeleteVm) -> list[Step]:
    out = [
        Step("ensure_off", _ensure_off, None, "check the VM is off (force powers it off)"),
        Step("undefine", _undefine, None, "undefine the domain"),
    ]
    if req.delete_disks:
        out.append(Step("delete_disks", _delete_disks, None, "delete the VM's volumes"))
    out.append(Step("forget", _forget, None, "remove the VM from the inventory"))
    return out


WORKFLOWS: dict[str, WorkflowBuilder] = {
    "vm.start": lambda req: [START],
    "vm.stop": lambda req: [STOP],
    "vm.kill": lambda req: [KILL],
    "vm.restart": lambda req: [STOP, START],
    "vm.suspend": lambda req: [SUSPEND],
    "vm.resume": lambda req: [RESUME],
    "vm.delete": _delete,
}
