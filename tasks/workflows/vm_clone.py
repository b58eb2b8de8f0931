"""`vm.clone`: a new VM from a stopped one, in its pool.

The clone's record was reserved at submission (new name, UUID and MACs; the source's
shape unless overridden; its vNICs on the source's networks or as `network_map` says).
Its disks are copies of the source's in the pool's repository; it keeps the source's
CD-ROM drive and boot order. The source is never changed. The job holds the source's
operation queue as well as the clone's (`JobLinks.source_vm_id`) until its copy is done
(`release_source`): a job of the source submitted before it runs first, one submitted
after it waits for the copy (not for the clone's start or first boot). And
libvirt must say the source is stopped when the copy starts and still when it ends (a VM
started outside vmorch could have written to a disk half copied), or the clone is undone.
"""

from __future__ import annotations

from typing import Any, cast

from orchestrator.errors import HypervisorError
from schemas.inventory import Vm, VmState
from schemas.requests import CloneVm
from tasks.step import Outputs, Step, StepContext
from tasks.steps.disks import clone_disks, delete_disks, repository_of
from tasks.steps.vm import START
from tasks.workflows.vm_create import DEFINE, PLACE, RESERVE, vm_disks, volume_name
from tasks.workflows.vm_message import first_boot_steps


def _req(ctx: StepContext) -> CloneVm:
    return cast(CloneVm, ctx.request)


def _source(ctx: StepContext) -> Vm:
    return ctx.run(ctx.runtime.inventory.vm(_req(ctx).vm))


def stopped(ctx: StepContext, vm: Vm, when: str) -> None:
    """Refuse to go on unless `vm` is stopped on its server, as libvirt says now."""
    if not vm.server:
        raise HypervisorError(f"vm {vm.name} is not placed on a server")
    state = ctx.hypervisor(vm.server).domain_state(vm.id)
    if state not in (VmState.STOPPED, VmState.CRASHED):
        was = f"{state or 'not defined'} {when}".strip()
        raise HypervisorError(f"vm {vm.name} is {was}: stop it first")


def _repository(ctx: StepContext, vm: Vm) -> str:
    return ctx.run(ctx.runtime.inventory.pool(vm.pool)).repository.name


def clone_run(ctx: StepContext) -> Outputs:
    """Copy the stopped source's disks as `<clone>-<id8>-disk<i>` on the chosen server."""
    src = _source(ctx)
    stopped(ctx, src, "before the copy")
    pool = ctx.run(ctx.runtime.inventory.pool(src.pool))
    hv = ctx.hypervisor(ctx.outputs["server"])
    copies = [(d.volume, volume_name(ctx, i)) for i, d in enumerate(src.disks)]
    froms = [repository_of(pool, d) for d in src.disks]
    formats = [d.format for d in src.disks]
    copied = clone_disks(
        ctx, hv, pool.repository.name, copies, _req(ctx).disks, froms, formats=formats
    )
    stopped(ctx, _source(ctx), "after the copy (it was started meanwhile)")
    out: dict[str, Any] = {"disks": vm_disks(copied), "has_cdrom": src.has_cdrom, "boot": src.boot}
    if src.cdrom is not None:
        out["cdrom"] = src.cdrom.model_dump()
    return out


def clone_undo(ctx: StepContext) -> None:
    server = ctx.outputs.get("server")
    if server is None:
        return
    src = _source(ctx)
    names = [volume_name(ctx, i) for i in range(len(src.disks))]
    delete_disks(ctx.hypervisor(server), _repository(ctx, src), names, _req(ctx).disks)


def release_source(ctx: StepContext) -> Outputs:
    """The copy is done (and the source was stopped throughout): the source's next job
    may run, while this one goes on with the clone (define, start, first boot)."""
    src_id = ctx.job.links.source_vm_id
    if not src_id:
        return {}
    head = ctx.run(ctx.runtime.jobs.leave_vm_queue(ctx.job.id, src_id))
    if head:
        nxt = ctx.run(ctx.runtime.jobs.get(head))
        ctx.run(ctx.runtime.services.dispatcher.dispatch(head, nxt.queue))
    return {"source_released": True}


def steps(req: CloneVm) -> list[Step]:
    out = [
        RESERVE,
        PLACE,
        Step("clone_disks", clone_run, clone_undo, "copy the stopped source's disks"),
        Step("release_source", release_source, None, "let the source's next job run"),
        DEFINE,
    ]
    if req.start:
        out.append(START)
    return out + first_boot_steps(req)
