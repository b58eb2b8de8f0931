"""`vm.create_from_iso`: a hardware-virtualized VM that boots an installer ISO.

Like a create from a template (the same reserve, place, define and start steps), but its
disks are made empty in the pool's repository, and its CD-ROM drive holds the ISO, which
it boots first (boot order: cdrom, then disk). The ISO is the repository's: it is never
copied, and never deleted with the VM.
"""

from __future__ import annotations

from typing import cast

from schemas.requests import CreateFromInstallTree, CreateFromIso
from tasks.step import Outputs, Step, StepContext
from tasks.steps.seed import SEED
from tasks.steps.vm import START
from tasks.workflows.vm_create import DEFINE, PLACE, RESERVE, volume_name
from tasks.workflows.vm_message import first_boot_steps
from workers.hypervisor.xml import disk_target

MIB = 1024 * 1024


def _req(ctx: StepContext) -> CreateFromIso:
    return cast(CreateFromIso, ctx.request)


def _with_disks(ctx: StepContext) -> CreateFromIso | CreateFromInstallTree:
    return cast(CreateFromIso | CreateFromInstallTree, ctx.request)


def _repository(ctx: StepContext) -> str:
    return ctx.run(ctx.runtime.inventory.pool(_with_disks(ctx).pool)).repository.name


def make_empty_disks(ctx: StepContext) -> list[dict[str, str]]:
    """Ensure each empty disk `<vm>-<id8>-disk<i>` of the request exists in the pool's
    repository (one from an earlier attempt is empty too: it is kept)."""
    repo = _repository(ctx)
    hv = ctx.hypervisor(ctx.outputs["server"])
    disks = []
    for i, d in enumerate(_with_disks(ctx).disks):
        name = volume_name(ctx, i)
        path = hv.create_volume(repo, name, d.size_mib * MIB)
        disks.append({"volume": name, "path": path, "target": disk_target(i)})
        ctx.check()
    return disks


def empty_disks_undo(ctx: StepContext) -> None:
    """Ensure the disks are gone (names are derived: this works after a partial step)."""
    server = ctx.outputs.get("server")
    if server is None:
        return
    repo = _repository(ctx)
    hv = ctx.hypervisor(server)
    for i in range(len(_with_disks(ctx).disks)):
        hv.delete_volume(repo, volume_name(ctx, i))


def disks_run(ctx: StepContext) -> Outputs:
    """The empty disks, and the ISO's path on the chosen server."""
    disks = make_empty_disks(ctx)
    repo, iso = _repository(ctx), _req(ctx).iso
    hv = ctx.hypervisor(ctx.outputs["server"])
    return {
        "disks": disks,
        "cdrom": {"repository": repo, "volume": iso, "path": hv.volume_path(repo, iso)},
    }


def steps(req: CreateFromIso) -> list[Step]:
    out = [
        RESERVE,
        PLACE,
        Step("create_disks", disks_run, empty_disks_undo, "make the empty disks, find the ISO"),
    ]
    if req.cloud_init is not None or req.config_via == "cloud-init":
        out.append(SEED)
    out.append(DEFINE)
    if req.start:
        out.append(START)
    return out + first_boot_steps(req)
