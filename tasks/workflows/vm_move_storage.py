"""`vm.move`: a stopped VM's disks to another repository of its pool.

1. `plan`: the VM must be stopped; which disks move (those not there already).
2. `copy_disks`: each copied into the target repository under the same name (libvirt
   copies between storage pools of the VM's server; holes stay holes). The VM must still
   be stopped afterwards. Undo: the copies go.
3. `switch`, the point of no return: the record and the domain name the copies.
4. `delete_sources`: only now do the old volumes go.
"""

from __future__ import annotations

from typing import cast

from schemas.requests import MoveVm
from tasks.step import Outputs, Step, StepContext
from tasks.steps.disks import repository_of
from tasks.steps.vm import hv_of, redefine, vm_of
from tasks.workflows.vm_clone import stopped


def _req(ctx: StepContext) -> MoveVm:
    return cast(MoveVm, ctx.request)


def plan_run(ctx: StepContext) -> Outputs:
    req = _req(ctx)
    vm = vm_of(ctx)
    stopped(ctx, vm, "")
    pool = ctx.run(ctx.runtime.inventory.pool(vm.pool))
    wanted = set(range(len(vm.disks))) if req.disks is None else set(req.disks)
    moves = [
        {"index": i, "volume": d.volume, "from": repository_of(pool, d)}
        for i, d in enumerate(vm.disks)
        if i in wanted and repository_of(pool, d) != req.repository
    ]
    return {"moves": moves, "server": vm.server}


def _switched(ctx: StepContext) -> bool:
    vm = vm_of(ctx)
    pool = ctx.run(ctx.runtime.inventory.pool(vm.pool))
    target = _req(ctx).repository
    return all(repository_of(pool, vm.disks[m["index"]]) == target for m in ctx.outputs["moves"])


def copy_run(ctx: StepContext) -> Outputs:
    """Copy each disk that moves into the target repository (a re-run copies again)."""
    vm = vm_of(ctx)
    hv = hv_of(ctx, vm)
    target = _req(ctx).repository
    paths = {}
    moves = ctx.outputs["moves"]
    for n, m in enumerate(moves):
        hv.delete_volume(target, m["volume"])  # an earlier attempt's, maybe half made
        path, _fmt = hv.clone_volume(
            m["from"], m["volume"], m["volume"], "sparse", into=target,
            expect_format=vm.disks[m["index"]].format,
        )  # fmt: skip
        paths[str(m["index"])] = path
        ctx.report((n + 1) / len(moves), {"disks_done": n + 1, "disks": len(moves)})
    stopped(ctx, vm_of(ctx), "after the copy (it was started meanwhile)")
    return {"paths": paths}


def copy_undo(ctx: StepContext) -> None:
    if _switched(ctx):
        return
    vm = vm_of(ctx)
    hv = hv_of(ctx, vm)
    for m in ctx.outputs.get("moves", []):
        hv.delete_volume(_req(ctx).repository, m["volume"])


def switch_run(ctx: StepContext) -> Outputs:
    """The record and the domain name the copies (converges: a re-run redefines the same)."""
    vm = vm_of(ctx)
    target = _req(ctx).repository
    pool = ctx.run(ctx.runtime.inventory.pool(vm.pool))
    disks = list(vm.disks)
    for m in ctx.outputs["moves"]:
        i = m["index"]
        disks[i] = disks[i].model_copy(
            update={
                "path": ctx.outputs["paths"][str(i)],
                "repository": None if target == pool.repository.name else target,
            }
        )
    redefine(ctx, hv_of(ctx, vm), vm.model_copy(update={"disks": disks}))
    return {"repository": target}


def delete_sources_run(ctx: StepContext) -> Outputs:
    hv = hv_of(ctx, vm_of(ctx))
    for m in ctx.outputs["moves"]:
        hv.delete_volume(m["from"], m["volume"])
    return {"deleted": [f"{m['from']}/{m['volume']}" for m in ctx.outputs["moves"]]}


def steps(_req: MoveVm) -> list[Step]:
    return [
        Step("plan", plan_run, None, "check the VM is stopped; which disks move"),
        Step("copy_disks", copy_run, copy_undo, "copy the disks into the target repository"),
        Step(
            "switch",
            switch_run,
            None,
            "the record and the domain name the copies",
            undo_on_failure=False,
            no_return=True,
        ),
        Step("delete_sources", delete_sources_run, None, "delete the old volumes"),
    ]
