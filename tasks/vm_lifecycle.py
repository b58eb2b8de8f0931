"""Lifecycle workflows on an existing VM: start, stop, kill, restart, suspend, resume, delete."""

from __future__ import annotations

from typing import cast

from orchestrator.errors import HypervisorError
from schemas.inventory import VmState
from schemas.requests import DeleteVm, RestartVm, StopVm
from tasks.engine import Outputs, Step, StepContext, WorkflowBuilder
from tasks.vm_steps import START, hv_of, observe, stop_run, vm_of


def _stop(ctx: StepContext) -> Outputs:
    req = cast(StopVm | RestartVm, ctx.request)
    return stop_run(ctx, req.timeout_s)


def _kill(ctx: StepContext) -> Outputs:
    """Ensure the VM is powered off at once; a stopped VM stays stopped."""
    vm = vm_of(ctx)
    hv = hv_of(ctx, vm)
    hv.destroy(vm.id)
    observe(ctx, vm, hv)
    return {"state": VmState.STOPPED.value}


def _suspend(ctx: StepContext) -> Outputs:
    """Ensure the VM is paused; a paused VM stays paused."""
    vm = vm_of(ctx)
    hv = hv_of(ctx, vm)
    hv.suspend(vm.id)
    observe(ctx, vm, hv)
    return {"state": VmState.SUSPENDED.value}


def _resume(ctx: StepContext) -> Outputs:
    """Ensure a paused VM runs again; a running VM is left alone."""
    vm = vm_of(ctx)
    hv = hv_of(ctx, vm)
    hv.resume(vm.id)
    observe(ctx, vm, hv)
    return {"state": VmState.RUNNING.value}


def _ensure_off(ctx: StepContext) -> Outputs:
    """Before delete: a running VM needs `force`, which powers it off; stopped stays stopped."""
    req = cast(DeleteVm, ctx.request)
    vm = vm_of(ctx)
    hv = hv_of(ctx, vm)
    state = hv.domain_state(vm.id)
    if state not in (None, VmState.STOPPED, VmState.CRASHED):
        if not req.force:
            raise HypervisorError(f"vm {vm.name} is {state}: stop it first or pass force=true")
        hv.destroy(vm.id)
    return {}


def _undefine(ctx: StepContext) -> Outputs:
    """Ensure the domain is undefined (already gone is fine)."""
    vm = vm_of(ctx)
    hv_of(ctx, vm).undefine(vm.id)
    return {}


def _delete_disks(ctx: StepContext) -> Outputs:
    """Ensure the VM's volumes are deleted from the pool's repository."""
    vm = vm_of(ctx)
    hv = hv_of(ctx, vm)
    pool = ctx.run(ctx.runtime.inventory.pool(vm.pool))
    for d in vm.disks:
        hv.delete_volume(pool.repository.name, d.volume)
    return {"deleted_volumes": [d.volume for d in vm.disks]}


def _forget(ctx: StepContext) -> Outputs:
    """Ensure the VM record is gone from the inventory."""
    vm = vm_of(ctx)
    ctx.run(ctx.runtime.inventory.delete_vm(vm.id))
    return {"state": VmState.DELETED.value}


STOP = Step("stop", _stop, None, "shut the VM down, forced off after the timeout")


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
    "vm.kill": lambda req: [Step("kill", _kill, None, "power the VM off at once")],
    "vm.restart": lambda req: [STOP, START],
    "vm.suspend": lambda req: [Step("suspend", _suspend, None, "pause the VM")],
    "vm.resume": lambda req: [Step("resume", _resume, None, "resume the paused VM")],
    "vm.delete": _delete,
}
