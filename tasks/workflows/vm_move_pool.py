"""`vm.migrate` to another pool (`target_pool`): the steps of a cold move whose disks are
copied, between `migration_slot` (and the stop) and the start on the target.

1. `copy_disks`: each disk streamed to the target pool's repository (undo: the copies go).
2. `define_target`: the VM defined on the target server (undo: undefined there).
3. `switch`, the point of no return: the record names the target, the source's definition
   goes. Compensation never goes back past it.
4. `delete_source_disks`: only now do the source pool's volumes go.
"""

from __future__ import annotations

from typing import cast

from orchestrator.errors import MigrationRefused
from schemas import event_types as et
from schemas.inventory import ServerPool, Vm, VmDisk
from schemas.requests import MigrateVm
from tasks.step import Outputs, Step, StepContext
from tasks.steps.disks import repository_of
from tasks.steps.migration import free_slot, mapped
from tasks.steps.vm import domain_spec_of, observe, vm_of


def _pools(ctx: StepContext) -> tuple[ServerPool, str]:
    """The source pool (its disks may be in any repository of it) and the target pool's
    repository (the copies go there)."""
    inv = ctx.runtime.inventory
    src = ctx.run(inv.pool(str(ctx.outputs["source_pool"])))
    dst = ctx.run(inv.pool(str(ctx.outputs["target_pool"]))).repository.name
    return src, dst


def _copy_disks(ctx: StepContext) -> Outputs:
    """Copy each disk to the target pool's repository, from the source server to the
    target server (libvirt streams). Converges: a re-run copies again."""
    vm = vm_of(ctx)
    src_repo, dst_repo = _pools(ctx)
    source, target = str(ctx.outputs["source"]), str(ctx.outputs["target"])
    dest = ctx.run(ctx.runtime.inventory.server(target))
    src = ctx.hypervisor(source)
    thin = [d.volume for d in vm.disks if d.backing]
    if thin:
        raise MigrationRefused(
            f"{', '.join(thin)}: a thin clone needs its template's volume, in this pool: "
            "clone the VM (full) first"
        )
    total = len(vm.disks) or 1
    disks = []
    for i, d in enumerate(vm.disks):

        def progress(done: int, size: int, i: int = i, name: str = d.volume) -> None:
            share = done / size if size else 1.0
            ctx.report((i + share) / total, {"volume": name, "bytes_done": done, "bytes": size})

        path = src.copy_volume_to(
            repository_of(src_repo, d), d.volume, dest.uri, dst_repo, d.volume, progress
        )
        disks.append({"volume": d.volume, "path": path, "target": d.target, "format": d.format})
    # where each source volume is: deleted from there once the VM is switched
    sources = {d.volume: repository_of(src_repo, d) for d in vm.disks}
    return {"disks": disks, "target_repository": dst_repo, "source_repositories": sources}


def _switched(ctx: StepContext, vm: Vm) -> bool:
    """The record names the target pool: the copies and the definition there are the VM's
    only ones, never to be undone."""
    return vm.pool == ctx.outputs.get("target_pool")


def _remove_copies(ctx: StepContext) -> None:
    """Undo: the copies (whole or half made) go from the target pool's repository."""
    vm = vm_of(ctx)
    if _switched(ctx, vm):
        return
    _src_repo, dst_repo = _pools(ctx)
    dst = ctx.hypervisor(str(ctx.outputs["target"]))
    for d in vm.disks:
        dst.delete_volume(dst_repo, d.volume)


def _moved(ctx: StepContext, vm: Vm) -> Vm:
    """The VM as it is to be on the target: its pool, server, disks and networks there."""
    req = cast(MigrateVm, ctx.request)
    disks = [VmDisk(**d) for d in ctx.outputs["disks"]]
    return mapped(vm, req).model_copy(
        update={
            "pool": ctx.outputs["target_pool"],
            "server": ctx.outputs["target"],
            "disks": disks,
            "pinning": ctx.outputs.get("pinning") or None,
            "cdrom": None,  # its ISO is in the old pool's repository: the drive is empty there
        }
    )


def _define_target(ctx: StepContext) -> Outputs:
    vm = vm_of(ctx)
    if _switched(ctx, vm):  # a re-run
        return {}
    moved = _moved(ctx, vm)
    ctx.expect(vm.id, [et.VM_DEFINED])
    ctx.hypervisor(moved.server or "").define(
        domain_spec_of(moved, {"job": ctx.job.id, "pool": moved.pool})
    )
    return {}


def _undefine_target(ctx: StepContext) -> None:
    vm = vm_of(ctx)
    if _switched(ctx, vm):
        return
    ctx.expect(vm.id, [et.VM_UNDEFINED])
    ctx.hypervisor(str(ctx.outputs["target"])).undefine(vm.id)


def _switch(ctx: StepContext) -> Outputs:
    """The point of no return: the record names the target (where the VM is defined),
    then the source's definition goes. Converges: a re-run finds the record switched
    and makes sure the source's definition is gone."""
    vm = vm_of(ctx)
    if vm.pool != ctx.outputs["target_pool"]:
        ctx.run(ctx.runtime.inventory.save_vm(_moved(ctx, vm), fence=ctx.fence))
    ctx.expect(vm.id, [et.VM_UNDEFINED])
    ctx.hypervisor(str(ctx.outputs["source"])).undefine(vm.id)
    dst = ctx.hypervisor(str(ctx.outputs["target"]))
    state = observe(ctx, vm_of(ctx), dst)
    return {"server": ctx.outputs["target"], "state": state.value if state else None}


def _delete_sources(ctx: StepContext) -> Outputs:
    """Only now, with the VM defined on the target and its record there: the source
    pool's copies of its disks go."""
    src_pool, _dst_repo = _pools(ctx)
    src = ctx.hypervisor(str(ctx.outputs["source"]))
    where = dict(ctx.outputs.get("source_repositories") or {})
    names = [str(d["volume"]) for d in ctx.outputs["disks"]]
    for name in names:
        src.delete_volume(str(where.get(name) or src_pool.repository.name), name)
    free_slot(ctx)
    return {"deleted_source_volumes": names}


COPY = Step(
    "copy_disks",
    _copy_disks,
    _remove_copies,
    "copy the disks to the target pool's repository",
)
DEFINE_TARGET = Step(
    "define_target", _define_target, _undefine_target, "define the VM on the target server"
)
SWITCH = Step(
    "switch",
    _switch,
    None,
    "the record names the target; undefine it on the source",
    undo_on_failure=False,
    no_return=True,  # a failure after it (the start there) leaves the VM where it went
)
DELETE_SOURCES = Step(
    "delete_source_disks", _delete_sources, None, "delete the disks left in the source pool"
)

MOVE_TO_POOL = [COPY, DEFINE_TARGET, SWITCH, DELETE_SOURCES]
