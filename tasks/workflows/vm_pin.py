"""`vm.pin_vcpus`: hard partitioning, each vCPU pinned to physical CPUs of the VM's server.

One step: the pinning is checked against the server's CPUs (as libvirt reports them),
written into the persistent definition and applied live when the VM runs, read back
through libvirt, and recorded on the VM (`GET /v1/vms/{id}` shows it; migration,
relocation and maintenance respect it). `pinning: null` removes it. Converges.
"""

from __future__ import annotations

from typing import cast

from orchestrator.errors import HypervisorError, Permanent
from orchestrator.jobs.checks import as_pinning, pinning_problem
from schemas.inventory import VmState
from schemas.requests import PinVcpus
from tasks.step import Outputs, Step, StepContext
from tasks.steps.vm import hv_of, vm_of


class InvalidPinning(Permanent):
    code = "invalid_pinning"


def _pin(ctx: StepContext) -> Outputs:
    req = cast(PinVcpus, ctx.request)
    vm = vm_of(ctx)
    hv = hv_of(ctx, vm)
    wanted = as_pinning(req.pinning)
    if req.pinning:
        problem = pinning_problem(req.pinning, vm.vcpus, hv.host_cpus())
        if problem:
            raise InvalidPinning(f"pinning for vm {vm.name} on {vm.server}: {problem}")
    hv.pin_vcpus(vm.id, wanted, vm.vcpus)
    got = hv.vcpu_pinning(vm.id)
    if got != wanted:
        raise HypervisorError(f"libvirt reports pinning {got} after pinning {wanted}")
    if hv.domain_state(vm.id) in (VmState.RUNNING, VmState.SUSPENDED):
        live = hv.vcpu_pinning(vm.id, live=True)
        if live != wanted:
            raise HypervisorError(f"the running VM is pinned {live} after pinning {wanted}")
    ctx.run(
        ctx.runtime.inventory.save_vm(
            vm.model_copy(update={"pinning": req.pinning or None}), fence=ctx.fence
        )
    )
    return {"pinning": req.pinning, "server": vm.server}


def steps(_req: PinVcpus) -> list[Step]:
    return [Step("pin_vcpus", _pin, None, "pin the vCPUs to physical CPUs (live and persistent)")]
