"""Templates made by jobs: `template.create_from_vm`, `template.clone`, `template.import`.

Each reserves the template's name first (listed `creating`, so no create uses it yet and
no other job takes the name), makes its disks `<template>-disk<i>` in the repository,
and only then lists it `ready` with its disks and shape. A failure deletes the disks and
the reservation. A source VM must be stopped when its disks are copied and still be
stopped when the copy ends; a source template is never changed.
"""

from __future__ import annotations

from typing import cast

from orchestrator.errors import NotFound
from schemas.inventory import Template, TemplateDisk
from schemas.requests import (
    CloneTemplate,
    ImportTemplate,
    TemplateFromVm,
    TemplateRequest,
)
from tasks.step import Outputs, Step, StepContext
from tasks.steps.disks import clone_disks, delete_disks, names_free, repository_of
from tasks.steps.fetching import fetch_into, open_url, server_seeing
from tasks.workflows.vm_clone import stopped


def _req(ctx: StepContext) -> TemplateRequest:
    return cast(TemplateRequest, ctx.request)


def disk_name(template: str, index: int) -> str:
    return f"{template}-disk{index}"


def _source_shape(ctx: StepContext) -> tuple[str, int, int, list[tuple[str, int]]]:
    """(repository, vcpus, memory_mib, [(source volume, capacity)]) of what is copied."""
    req = _req(ctx)
    if isinstance(req, TemplateFromVm):
        vm = ctx.run(ctx.runtime.inventory.vm(req.vm))
        repo = ctx.run(ctx.runtime.inventory.pool(vm.pool)).repository.name
        return repo, vm.vcpus, vm.memory_mib, [(d.volume, 0) for d in vm.disks]
    # (a template's disks are all in its repository: the pool's)
    if isinstance(req, CloneTemplate):
        t = ctx.run(ctx.runtime.inventory.template(req.template))
        return t.repository, t.vcpus, t.memory_mib, [(d.volume, d.capacity_bytes) for d in t.disks]
    return req.repository, req.vcpus, req.memory_mib, [("", 0)]  # one disk, fetched


def _template(ctx: StepContext, **update: object) -> Template:
    repo, vcpus, memory_mib, _ = _source_shape(ctx)
    fields: dict[str, object] = {
        "name": _req(ctx).name,
        "repository": repo,
        "vcpus": vcpus,
        "memory_mib": memory_mib,
        "state": "creating",
        "created_by_job": ctx.job.id,
    }
    return Template.model_validate({**fields, **update})


def reserve_run(ctx: StepContext) -> Outputs:
    """Claim the template's name (listed `creating`)."""
    tmpl = _template(ctx)
    ctx.run(ctx.runtime.inventory.reserve_template(tmpl, fence=ctx.fence))
    return {"template": tmpl.name, "repository": tmpl.repository}


def reserve_undo(ctx: StepContext) -> None:
    ctx.run(ctx.runtime.inventory.release_template(_req(ctx).name, ctx.job.id, fence=ctx.fence))


def place_run(ctx: StepContext) -> Outputs:
    """The server that copies: a source VM's own (its disks are in its pool's repository,
    which that server sees), else a reachable server that sees the repository."""
    req = _req(ctx)
    if isinstance(req, TemplateFromVm):
        vm = ctx.run(ctx.runtime.inventory.vm(req.vm))
        if not vm.server:
            raise NotFound(f"vm {vm.name} is not placed on a server")
        return {"server": vm.server}
    return server_seeing(ctx, _source_shape(ctx)[0])


def check_names_run(ctx: StepContext) -> Outputs:
    """The template's disk names are free in the repository (never a VM's or another's)."""
    repo, _, _, sources = _source_shape(ctx)
    names = [disk_name(_req(ctx).name, i) for i in range(len(sources))]
    names_free(ctx.hypervisor(ctx.outputs["server"]), repo, names)
    return {}


def copy_run(ctx: StepContext) -> Outputs:
    """Copy the source's disks as the template's (sparse or full)."""
    req = _req(ctx)
    assert isinstance(req, TemplateFromVm | CloneTemplate)
    repo, _, _, sources = _source_shape(ctx)
    hv = ctx.hypervisor(ctx.outputs["server"])
    vm = ctx.run(ctx.runtime.inventory.vm(req.vm)) if isinstance(req, TemplateFromVm) else None
    if vm is not None:
        stopped(ctx, vm, "before the copy")
    copies = [(src, disk_name(req.name, i)) for i, (src, _cap) in enumerate(sources)]
    froms = None
    if vm is not None:  # a VM's disks may be in other repositories of its pool
        pool = ctx.run(ctx.runtime.inventory.pool(vm.pool))
        froms = [repository_of(pool, d) for d in vm.disks]
        formats = [d.format for d in vm.disks]
    else:
        src_t = ctx.run(ctx.runtime.inventory.template(cast(CloneTemplate, req).template))
        formats = [d.format for d in src_t.disks]
    copied = clone_disks(ctx, hv, repo, copies, req.disks, froms, formats=formats)
    if vm is not None:
        stopped(ctx, ctx.run(ctx.runtime.inventory.vm(vm.id)), "after the copy")
    disks = [
        {"volume": c["volume"], "format": c["format"],
         "capacity_bytes": hv.volume_capacity(repo, str(c["volume"]))}
        for c in copied
    ]  # fmt: skip
    return {"disks": disks}


def fetch_run(ctx: StepContext) -> Outputs:
    """Fetch the disk image into the repository, checked (raw or qcow2, SHA-256)."""
    req = cast(ImportTemplate, ctx.request)
    out = fetch_into(
        ctx, open_url(ctx, req.url), req.sha256, req.repository, disk_name(req.name, 0),
        "virtual_disk",
    )  # fmt: skip
    hv = ctx.hypervisor(ctx.outputs["server"])
    capacity = hv.volume_capacity(req.repository, disk_name(req.name, 0))
    disk = {"volume": disk_name(req.name, 0), "format": out["format"], "capacity_bytes": capacity}
    return {**out, "disks": [disk]}


def disks_undo(ctx: StepContext) -> None:
    """Ensure the template's disks are gone (names are derived: after a partial copy too)."""
    server = ctx.outputs.get("server")
    if server is None:
        return
    repo, _, _, sources = _source_shape(ctx)
    names = [disk_name(_req(ctx).name, i) for i in range(len(sources))]
    delete_disks(ctx.hypervisor(server), repo, names)


def record_run(ctx: StepContext) -> Outputs:
    """List the template as ready, with its disks."""
    disks = [TemplateDisk(**d) for d in ctx.outputs["disks"]]
    tmpl = _template(ctx, disks=disks, state="ready")
    ctx.run(ctx.runtime.inventory.save_template(tmpl, fence=ctx.fence))
    return {"template": tmpl.name}


def steps(req: TemplateRequest) -> list[Step]:
    make = (
        Step("fetch", fetch_run, disks_undo, "fetch the disk image into the repository")
        if isinstance(req, ImportTemplate)
        else Step("copy_disks", copy_run, disks_undo, "copy the source's disks")
    )
    return [
        Step("reserve", reserve_run, reserve_undo, "reserve the template's name"),
        Step("place", place_run, None, "choose the server that makes the disks"),
        Step("check_names", check_names_run, None, "no volumes of its disks' names yet"),
        make,
        Step("record", record_run, None, "list the template as ready"),
    ]
