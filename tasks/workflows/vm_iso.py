"""`vm.insert_iso` and `vm.eject_iso`: change what a VM's CD-ROM drive holds.

Live when the VM runs (and in its definition, so the change outlasts a restart), read back
through libvirt, then recorded on the VM. Converges: inserting the ISO the drive holds, or
ejecting an empty drive, changes nothing.
"""

from __future__ import annotations

from typing import cast

from orchestrator.errors import HypervisorError
from schemas.inventory import VmCdrom
from schemas.requests import InsertIso
from tasks.step import Outputs, Step, StepContext
from tasks.steps.vm import hv_of, vm_of


def _change(ctx: StepContext, iso: str | None) -> Outputs:
    vm = vm_of(ctx)
    hv = hv_of(ctx, vm)
    repo = ctx.run(ctx.runtime.inventory.pool(vm.pool)).repository.name
    path = hv.volume_path(repo, iso) if iso else None
    live = hv.set_cdrom(vm.id, path)
    got = hv.cdrom_path(vm.id)
    if got != path:
        raise HypervisorError(f"libvirt reports {got!r} in the CD-ROM drive after setting {path!r}")
    cdrom = VmCdrom(repository=repo, volume=iso, path=path) if iso and path else None
    ctx.run(
        ctx.runtime.inventory.save_vm(
            vm.model_copy(update={"cdrom": cdrom, "has_cdrom": True}), fence=ctx.fence
        )
    )
    return {"iso": iso, "live": live}


def _insert(ctx: StepContext) -> Outputs:
    return _change(ctx, cast(InsertIso, ctx.request).iso)


def _eject(ctx: StepContext) -> Outputs:
    return _change(ctx, None)


def insert_steps(_req: InsertIso) -> list[Step]:
    return [Step("insert_iso", _insert, None, "put the ISO in the CD-ROM drive")]


def eject_steps(_req: object) -> list[Step]:
    return [Step("eject_iso", _eject, None, "empty the CD-ROM drive")]
