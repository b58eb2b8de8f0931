"""Steps shared by VM workflows: each converges on a target state of one VM.

Before acting, a step records the events its action will cause (`ctx.expect`), so that the
router attributes them to this job and they fire no hooks meant for unexpected changes.
Steps that must see the VM reach a state return a `Wait` rather than polling.
"""

from __future__ import annotations

from collections.abc import Callable

from orchestrator.errors import HypervisorError, NotFound
from schemas import event_types as et
from schemas.inventory import Vm, VmState
from tasks.step import Outputs, Step, StepContext, Wait
from workers.hypervisor.adapter import Hypervisor
from workers.hypervisor.xml import CdromSpec, DiskSpec, DomainSpec, NicSpec

STARTED = [et.VM_STARTED, et.VM_RESUMED]  # a start shows as either, once
STOPPED = [et.VM_STOPPED]
SHUTDOWN = [et.VM_SHUTDOWN]  # a graceful stop shows as `shutdown`, then `stopped`
START_TIMEOUT_S = 120.0


def vm_of(ctx: StepContext) -> Vm:
    vm_id = ctx.job.links.vm_id
    if vm_id is None:
        raise NotFound("job has no VM")
    return ctx.run(ctx.runtime.inventory.vm(vm_id))


def hv_server(ctx: StepContext, vm: Vm) -> str:
    """The server a step on `vm` acts on: the one an earlier step chose, or the VM's."""
    server = ctx.outputs.get("server") or vm.server
    if not server:
        raise HypervisorError(f"vm {vm.name} is not placed on a server")
    return str(server)


def hv_of(ctx: StepContext, vm: Vm) -> Hypervisor:
    return ctx.hypervisor(hv_server(ctx, vm))


def observe(ctx: StepContext, vm: Vm, hv: Hypervisor) -> VmState | None:
    state = hv.domain_state(vm.id)
    ctx.run(ctx.runtime.inventory.set_vm_state(vm.id, state or VmState.DELETED))
    return state


def domain_spec_of(vm: Vm, metadata: dict[str, str]) -> DomainSpec:
    """The domain a VM record describes (the same record gives the same XML)."""
    return DomainSpec(
        uuid=vm.id,
        name=vm.name,
        vcpus=vm.vcpus,
        memory_mib=vm.memory_mib,
        disks=[DiskSpec(d.path, d.target, d.format) for d in vm.disks],
        nics=[NicSpec(n.network, n.mac) for n in vm.nics],
        metadata=metadata,
        pinning={int(k): list(v) for k, v in (vm.pinning or {}).items()},
        cdrom=CdromSpec(vm.cdrom.path if vm.cdrom else None) if vm.cdrom or vm.has_cdrom else None,
        boot=list(vm.boot),
        direct_boot=(
            (vm.direct_boot.kernel, vm.direct_boot.initrd, vm.direct_boot.cmdline)
            if vm.direct_boot
            else None
        ),
        installer=vm.direct_boot.installer if vm.direct_boot else True,
    )


def redefine(ctx: StepContext, hv: Hypervisor, record: Vm, **metadata: str) -> None:
    """Make the VM's domain (same UUID) what `record` describes, then save the record:
    the record and the definition change together. Converges."""
    ctx.expect(record.id, [et.VM_DEFINED])
    hv.define(domain_spec_of(record, {"job": ctx.job.id, "pool": record.pool, **metadata}))
    ctx.run(ctx.runtime.inventory.save_vm(record, fence=ctx.fence))


def _settled_in(wanted: VmState, out: Outputs) -> Callable[[StepContext], Outputs | None]:
    def settled(ctx: StepContext) -> Outputs | None:
        """The target state holds (the event may have been missed): the wait is over."""
        vm = vm_of(ctx)
        hv = hv_of(ctx, vm)
        return dict(out) if observe(ctx, vm, hv) == wanted else None

    return settled


def start_run(ctx: StepContext) -> Outputs | Wait:
    """Ensure the VM runs: starting a running VM does nothing, so running this twice is
    harmless. libvirt's start returns once the domain runs, so the step usually ends
    here, seen running; otherwise it waits for the event (or the state, at a recheck)."""
    vm = vm_of(ctx)
    hv = hv_of(ctx, vm)
    ctx.run(ctx.runtime.inventory.set_desired(vm.id, VmState.RUNNING, fence=ctx.fence))
    ctx.expect(vm.id, STARTED)
    since = ctx.stream_position()
    hv.start(vm.id)
    if observe(ctx, vm, hv) == VmState.RUNNING:
        return {"state": VmState.RUNNING.value}
    return Wait(types=STARTED, subject=vm.id, since=since, timeout_s=START_TIMEOUT_S)


def start_undo(ctx: StepContext) -> None:
    """Ensure the VM is off again (power off: this job started it; a failed start is not
    undone, as the VM may have been running before)."""
    vm = vm_of(ctx)
    hv = hv_of(ctx, vm)
    ctx.expect(vm.id, STOPPED)
    hv.destroy(vm.id)
    observe(ctx, vm, hv)


def vm_action(
    act: Callable[[Hypervisor, str], None],
    result: VmState,
    expects: list[str],
    desired: VmState | None = None,
) -> Callable[[StepContext], Outputs]:
    """A step that converges the VM with one adapter call (destroy, suspend, resume...),
    then records the state observed on the hypervisor (and `desired`, when it changes what
    the VM is meant to be)."""

    def run(ctx: StepContext) -> Outputs:
        vm = vm_of(ctx)
        hv = hv_of(ctx, vm)
        if desired is not None:
            ctx.run(ctx.runtime.inventory.set_desired(vm.id, desired, fence=ctx.fence))
        ctx.expect(vm.id, expects)
        act(hv, vm.id)
        observe(ctx, vm, hv)
        return {"state": result.value}

    return run


def stop_run(ctx: StepContext, timeout_s: float) -> Outputs | Wait:
    """Ensure the VM is stopped: ask the guest (ACPI), wait for it to stop; at the deadline
    the step escalates to a forced power-off. A stopped VM stays as it is."""
    vm = vm_of(ctx)
    hv = hv_of(ctx, vm)
    ctx.run(ctx.runtime.inventory.set_desired(vm.id, VmState.STOPPED, fence=ctx.fence))
    if hv.domain_state(vm.id) == VmState.STOPPED:
        observe(ctx, vm, hv)
        return {"state": VmState.STOPPED.value, "forced": False}
    ctx.expect(vm.id, SHUTDOWN)
    ctx.expect(vm.id, STOPPED)
    since = ctx.stream_position()
    hv.request_shutdown(vm.id)
    return Wait(
        types=["vm.lifecycle.stopped"],
        subject=vm.id,
        since=since,
        timeout_s=timeout_s,
        on_timeout="escalate",
    )


def stop_escalate(ctx: StepContext) -> Outputs:
    """The guest did not stop in time: power it off."""
    vm = vm_of(ctx)
    hv = hv_of(ctx, vm)
    hv.destroy(vm.id)
    observe(ctx, vm, hv)
    return {"state": VmState.STOPPED.value, "forced": True}


START = Step(
    "start",
    start_run,
    start_undo,
    "start the VM and wait until it runs",
    undo_on_failure=False,
    settled=_settled_in(VmState.RUNNING, {"state": VmState.RUNNING.value}),
)


def stop_step(timeout_of: Callable[[StepContext], float]) -> Step:
    return Step(
        "stop",
        lambda ctx: stop_run(ctx, timeout_of(ctx)),
        None,
        "shut the VM down, forced off after the timeout",
        settled=_settled_in(VmState.STOPPED, {"state": VmState.STOPPED.value, "forced": False}),
        escalate=stop_escalate,
    )
