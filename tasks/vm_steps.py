"""Steps shared by VM workflows: each converges on a target state of one VM."""

from __future__ import annotations

import time
from collections.abc import Callable

from orchestrator.errors import HypervisorError, NotFound
from schemas.inventory import Vm, VmState
from tasks.engine import Outputs, Step, StepContext
from workers.hypervisor import Hypervisor


def vm_of(ctx: StepContext) -> Vm:
    vm_id = ctx.job.links.vm_id
    if vm_id is None:
        raise NotFound("job has no VM")
    return ctx.run(ctx.runtime.inventory.vm(vm_id))


def hv_of(ctx: StepContext, vm: Vm) -> Hypervisor:
    server = ctx.outputs.get("server") or vm.server
    if not server:
        raise HypervisorError(f"vm {vm.name} is not placed on a server")
    return ctx.hypervisor(server)


def observe(ctx: StepContext, vm: Vm, hv: Hypervisor) -> VmState | None:
    state = hv.domain_state(vm.id)
    ctx.run(ctx.runtime.inventory.set_vm_state(vm.id, state or VmState.DELETED))
    return state


def wait_for(
    ctx: StepContext, hv: Hypervisor, vm: Vm, wanted: set[VmState], timeout_s: float
) -> bool:
    """Poll the domain's state until it is one of `wanted`; False at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = hv.domain_state(vm.id)
        if state in wanted:
            return True
        if time.monotonic() >= deadline:
            return False
        ctx.sleep(ctx.runtime.settings.vm_poll_interval_s)


def start_run(ctx: StepContext) -> Outputs:
    """Ensure the VM runs: starting a running VM does nothing."""
    vm = vm_of(ctx)
    hv = hv_of(ctx, vm)
    hv.start(vm.id)
    if not wait_for(ctx, hv, vm, {VmState.RUNNING}, 60):
        raise HypervisorError(f"vm {vm.name} did not start")
    observe(ctx, vm, hv)
    return {"state": VmState.RUNNING.value}


def start_undo(ctx: StepContext) -> None:
    """Ensure the VM is off again (power off: this job started it; a failed start is not
    undone, as the VM may have been running before)."""
    vm = vm_of(ctx)
    hv = hv_of(ctx, vm)
    hv.destroy(vm.id)
    observe(ctx, vm, hv)


def vm_action(
    act: Callable[[Hypervisor, str], None], result: VmState
) -> Callable[[StepContext], Outputs]:
    """A step that converges the VM with one adapter call (destroy, suspend, resume...),
    then records the state observed on the hypervisor."""

    def run(ctx: StepContext) -> Outputs:
        vm = vm_of(ctx)
        hv = hv_of(ctx, vm)
        act(hv, vm.id)
        observe(ctx, vm, hv)
        return {"state": result.value}

    return run


def stop_run(ctx: StepContext, timeout_s: float) -> Outputs:
    """Ensure the VM is stopped: ACPI shutdown, then power off after `timeout_s`.

    Asking a stopped VM to stop does nothing, so running this twice is harmless.
    """
    vm = vm_of(ctx)
    hv = hv_of(ctx, vm)
    forced = False
    if hv.domain_state(vm.id) != VmState.STOPPED:
        hv.request_shutdown(vm.id)
        if not wait_for(ctx, hv, vm, {VmState.STOPPED}, timeout_s):
            hv.destroy(vm.id)
            forced = True
    observe(ctx, vm, hv)
    return {"state": VmState.STOPPED.value, "forced": forced}


START = Step(
    "start", start_run, start_undo, "start the VM and wait until it runs", undo_on_failure=False
)
