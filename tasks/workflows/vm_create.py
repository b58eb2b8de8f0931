"""vm.create_from_template: clone template disks, define the VM where there is room, start it.

Its reserve, place and define steps serve every create (`vm_create_iso` too): they work
from the VM record reserved at submission and the outputs of the steps before them."""

from __future__ import annotations

import contextlib
import hashlib
from typing import cast

from orchestrator.errors import NotFound
from schemas.inventory import DirectBoot, Template, VmCdrom, VmDisk, VmNic, VmState
from schemas.requests import (
    CloneVm,
    CreateFromInstallTree,
    CreateFromTemplate,
    CreateRequest,
    NewVm,
)
from tasks.step import Outputs, Step, StepContext
from tasks.steps.disks import clone_disks, delete_disks
from tasks.steps.placement import choose_server
from tasks.steps.seed import SEED
from tasks.steps.vm import START, domain_spec_of, observe, vm_of
from tasks.workflows.vm_message import first_boot_steps
from workers.hypervisor.xml import disk_target


def _req(ctx: StepContext) -> CreateFromTemplate:
    return cast(CreateFromTemplate, ctx.request)  # the registry maps this kind here


def _create(ctx: StepContext) -> CreateRequest:
    return cast(CreateRequest, ctx.request)


def _template(ctx: StepContext) -> Template:
    return ctx.run(ctx.runtime.inventory.template(_req(ctx).template))


def volume_name(ctx: StepContext, index: int) -> str:
    """Unique to this VM (name and the start of its UUID), so a disk kept from a deleted VM
    of the same name is never picked up, nor deleted by this VM's undo."""
    vm_id = ctx.job.links.vm_id or ""
    return f"{_create(ctx).name}-{vm_id[:8]}-disk{index}"


def mac_for(vm_id: str, index: int) -> str:
    """A MAC per VM and NIC for a reservation made before MACs were claimed at submission
    (stable, so defining the domain twice gives the same XML)."""
    h = hashlib.sha256(f"{vm_id}/{index}".encode()).digest()
    return f"52:54:00:{h[0]:02x}:{h[1]:02x}:{h[2]:02x}"


def reserve_run(ctx: StepContext) -> Outputs:
    """The VM record was reserved at submission; check it is still ours."""
    vm = vm_of(ctx)
    return {"vm_id": vm.id, "vm_name": vm.name}


def reserve_undo(ctx: StepContext) -> None:
    """Forget the VM record, unless the VM exists (then a delete job owns it)."""
    vm_id = ctx.job.links.vm_id
    if vm_id:
        ctx.run(ctx.runtime.inventory.delete_vm(vm_id, fence=ctx.fence))


def place_run(ctx: StepContext) -> Outputs:
    """Choose the server of the pool with the most free memory that fits the VM, and
    place the VM there (its memory held for it until this job ends or it runs). The
    pool and shape are the reservation's (the request's, the template's or the source
    VM's)."""
    req = _create(ctx)
    vm = vm_of(ctx)
    return choose_server(
        ctx,
        vm.pool,
        vm.memory_mib,
        candidates=[req.server] if req.server else None,
        vcpus=vm.vcpus,
        place_vm=vm.id,
    )


def place_undo(ctx: StepContext) -> None:
    """The memory held for the VM goes (it would go at the job's end anyway)."""
    server, vm_id = ctx.outputs.get("server"), ctx.job.links.vm_id
    if server and vm_id:
        ctx.run(ctx.runtime.servers.unplace(str(server), vm_id))


def vm_disks(copied: list[dict[str, object]]) -> list[dict[str, object]]:
    """Clones as the VM's disks: vda, vdb... in order."""
    return [
        {"volume": c["volume"], "path": c["path"], "format": c["format"],
         "backing": c["backing"], "repository": c.get("repository"), "target": disk_target(i)}
        for i, c in enumerate(copied)
    ]  # fmt: skip


def clone_run(ctx: StepContext) -> Outputs:
    """Ensure each template disk has a clone `<vm>-<id8>-disk<i>` of the type asked for
    (the name is this VM's alone: a repeated attempt copies again)."""
    tmpl = _template(ctx)
    hv = ctx.hypervisor(ctx.outputs["server"])
    copies = [(d.volume, volume_name(ctx, i)) for i, d in enumerate(tmpl.disks)]
    formats = [d.format for d in tmpl.disks]
    copied = clone_disks(ctx, hv, tmpl.repository, copies, _req(ctx).disks, formats=formats)
    out: Outputs = {"disks": vm_disks(copied)}
    if tmpl.boot is not None:  # a template that boots a kernel directly (no installer)
        out["direct_boot"] = tmpl.boot.model_dump()
    return out
    # (the template is in the pool's repository: a disk goes there unless the request
    # names another repository of the pool for it)


def clone_undo(ctx: StepContext) -> None:
    """Ensure the clones are gone. Names are derived, so this works after a partial clone."""
    tmpl = _template(ctx)
    server = ctx.outputs.get("server")
    if server is None:
        return
    names = [volume_name(ctx, i) for i in range(len(tmpl.disks))]
    delete_disks(ctx.hypervisor(server), tmpl.repository, names, _req(ctx).disks)


def define_run(ctx: StepContext) -> Outputs:
    """Ensure the domain is defined; redefining with the same UUID and XML changes nothing."""
    req = _create(ctx)
    vm = vm_of(ctx)
    server = ctx.outputs["server"]
    hv = ctx.hypervisor(server)
    cdrom = ctx.outputs.get("cdrom")
    direct = ctx.outputs.get("direct_boot")  # an install from a tree: its installer
    # the MACs were claimed with the reservation (a record of an older version has none)
    asked = req.vnics if isinstance(req, NewVm) else []
    nics = vm.nics or [
        VmNic(network=n.network, mac=n.mac or mac_for(vm.id, i)) for i, n in enumerate(asked)
    ]
    # the reservation made at submission holds the shape (vcpus, memory, ha, labels)
    record = vm.model_copy(
        update={
            "server": server,
            "state": VmState.STOPPED,
            "disks": [VmDisk(**d) for d in ctx.outputs.get("disks", [])],
            "nics": nics,
            "cdrom": VmCdrom(**cdrom) if cdrom else None,
            # a clone keeps its source's drive (empty or not) and boot order
            "has_cdrom": ctx.outputs.get("has_cdrom", cdrom is not None),
            "boot": ctx.outputs.get("boot") or (["cdrom", "hd"] if cdrom else ["hd"]),
            "direct_boot": DirectBoot(**direct) if direct else None,
            "desired_state": None,  # kept apart (vmdesired), as is the observed state
            "observed_at": None,
        }
    )
    ctx.expect(vm.id, ["vm.lifecycle.defined"])
    hv.define(domain_spec_of(record, {"job": ctx.job.id, "pool": vm.pool, **_made_from(req)}))
    ctx.run(ctx.runtime.inventory.save_vm(record, fence=ctx.fence))
    observe(ctx, vm, hv)
    if not req.start and not direct:
        # it stays stopped: it holds no memory there (and never will run from this job,
        # so no placement can be counting on it as running); an installer runs, though
        ctx.run(ctx.runtime.servers.unplace(server, vm.id))
    return {"server": server}


def _made_from(req: CreateRequest) -> dict[str, str]:
    """What the VM was made from, for its domain's metadata."""
    if isinstance(req, CreateFromTemplate):
        return {"template": req.template}
    if isinstance(req, CloneVm):
        return {"clone_of": req.vm}
    if isinstance(req, CreateFromInstallTree):
        return {"tree": req.url}
    return {"iso": req.iso}


def define_undo(ctx: StepContext) -> None:
    """Ensure the domain is undefined on the server it was defined on."""
    vm_id = ctx.job.links.vm_id
    server = ctx.outputs.get("server")
    if vm_id is None or server is None:
        return
    ctx.expect(vm_id, ["vm.lifecycle.undefined"])
    with contextlib.suppress(NotFound):
        ctx.hypervisor(server).undefine(vm_id)


RESERVE = Step("reserve", reserve_run, reserve_undo, "check the VM record reserved at submission")
PLACE = Step("place", place_run, place_undo, "choose a server of the pool with room, hold it")
DEFINE = Step("define", define_run, define_undo, "define the domain on the chosen server")


def steps(req: CreateFromTemplate) -> list[Step]:
    out = [
        RESERVE,
        PLACE,
        Step("clone_disks", clone_run, clone_undo, "clone the template's disks in the repository"),
    ]
    if req.cloud_init is not None or req.config_via == "cloud-init":
        out.append(SEED)
    out.append(DEFINE)
    if req.start:
        out.append(START)
    return out + first_boot_steps(req)
