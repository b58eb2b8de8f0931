"""`assembly.import`: an OVA, or an OVF with its files, into templates of a repository.

1. reserve: the assembly's name in the repository (listed `importing`);
2. place: a server that sees the repository;
3. import, on the worker: the OVA streamed and unpacked into a private staging directory
   (or the OVF fetched, then each file it references from beside it), every member and
   reference checked (`workers/assembly.py`), the descriptor parsed (`workers/ovf.py`),
   the manifest checked; then a template per virtual system is reserved (`creating`,
   naming the volumes it will have), and each disk is converted to qcow2 by qemu-img and
   uploaded into the repository. The staging directory goes when the step ends;
4. record: the templates and the assembly are listed ready.
A failure at any point deletes the volumes made, the reserved templates and the listing.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import cast

from yarl import URL

from orchestrator.errors import ImportFailed
from orchestrator.targets import file_name
from schemas.base import is_name, utcnow
from schemas.inventory import AssemblySystem, Template, TemplateDisk
from schemas.requests import AssemblyImport
from tasks.step import Outputs, Step, StepContext
from tasks.steps.disks import names_free
from tasks.steps.fetching import Listing, open_upload, open_url, upload_path
from workers import ovf
from workers.assembly import (
    convert,
    file_chunks,
    manifest_name,
    stage_file,
    stage_ova,
    staging,
    verify,
)

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def _req(ctx: StepContext) -> AssemblyImport:
    return cast(AssemblyImport, ctx.request)


def assembly_name(req: AssemblyImport) -> str:
    """The request's name, or the URL's file name without its extension."""
    return req.name or file_name(req.url or "").rsplit(".", 1)[0]


def template_name(assembly: str, system_id: str) -> str:
    """`<assembly>-<system id>`, made a valid name that leaves room for `-disk<i>`."""
    vs = _UNSAFE.sub("-", system_id).strip("-.") or "vs"
    return f"{assembly}-{vs}"[:57].rstrip("-.")


LISTING = Listing(
    lambda ctx: (
        _req(ctx).repository,
        assembly_name(_req(ctx)),
        "assembly",
        _req(ctx).url or f"upload:{_req(ctx).upload}",
    ),
    cleanup=lambda ctx: _drop_upload(ctx),  # an upload whose import failed
)


def _descriptor_bytes(path: Path) -> bytes:
    if path.stat().st_size > ovf.MAX_DESCRIPTOR_BYTES:
        raise ImportFailed(f"OVF: descriptor larger than {ovf.MAX_DESCRIPTOR_BYTES} bytes")
    return path.read_bytes()


def _hashed(chunks: Iterator[bytes], want: str | None, what: str) -> Iterator[bytes]:
    """`chunks`, refused at their end when their SHA-256 is not `want`."""
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
        yield chunk
    if want and h.hexdigest() != want.lower():
        raise ImportFailed(
            f"SHA-256 mismatch: {what} has {h.hexdigest()}, the request gave {want.lower()}"
        )


def _stage(ctx: StepContext, dest: Path) -> str:
    """Bring the assembly into `dest`; the descriptor's file name."""
    req = _req(ctx)
    budget = [ctx.runtime.settings.import_max_bytes]
    if req.upload:  # an uploaded OVA
        src = open_upload(ctx, req.upload)
        try:
            return stage_ova(_hashed(src.chunks, req.sha256, "the upload"), dest, budget[0])
        finally:
            src.close()
    url = req.url or ""
    src = open_url(ctx, url)
    try:
        chunks = _hashed(src.chunks, req.sha256, file_name(url) or "the file")
        if file_name(url).lower().endswith(".ova"):
            return stage_ova(chunks, dest, budget[0])
        name = file_name(url)
        if not name.lower().endswith(".ovf"):
            raise ImportFailed("the URL names neither an .ova nor an .ovf file")
        stage_file(chunks, dest, name, budget)
    finally:
        src.close()
    desc = ovf.parse(_descriptor_bytes(dest / name), budget[0])
    base = URL(url)
    wanted = [f.href for f in desc.files.values()]
    for href in [*wanted, manifest_name(name)]:
        try:
            part = open_url(ctx, str(base.join(URL(href))))
        except ImportFailed:
            if href == manifest_name(name):
                continue  # no manifest beside it: nothing more to check
            raise
        try:
            stage_file(part.chunks, dest, href, budget)
        finally:
            part.close()
        ctx.check()
    return name


def _undo_templates(ctx: StepContext) -> None:
    """Delete the volumes and reservations of the templates this job reserved."""
    server = ctx.outputs.get("server")
    mine = [
        t
        for t in ctx.run(ctx.runtime.inventory.templates())
        if t.created_by_job == ctx.job.id and t.state == "creating"
    ]
    if server:
        hv = ctx.hypervisor(server)
        for t in mine:
            for d in t.disks:
                hv.delete_volume(t.repository, d.volume)
    for t in mine:
        ctx.run(ctx.runtime.inventory.release_template(t.name, ctx.job.id, fence=ctx.fence))


def import_run(ctx: StepContext) -> Outputs:
    req = _req(ctx)
    assembly = assembly_name(req)
    hv = ctx.hypervisor(ctx.outputs["server"])
    if ctx.attempt > 1:
        _undo_templates(ctx)  # an earlier attempt's, cut short
    with staging(ctx.runtime.settings.staging_dir, ctx.job.id) as dest:
        descriptor = _stage(ctx, dest)
        desc = ovf.parse(
            _descriptor_bytes(dest / descriptor), ctx.runtime.settings.import_max_bytes
        )
        has_manifest = verify(dest, desc, descriptor)
        plans = []
        names = [template_name(assembly, vs.id) for vs in desc.systems]
        if len(set(names)) != len(names):
            raise ImportFailed(f"two virtual systems would make one template: {sorted(names)}")
        for name in names:
            if not is_name(name):
                raise ImportFailed(f"virtual system's template name {name!r} is not valid")
        names_free(
            hv, req.repository,
            [f"{n}-disk{i}" for n, vs in zip(names, desc.systems, strict=True)
             for i in range(len(vs.disks))],
        )  # fmt: skip
        for vs, name in zip(desc.systems, names, strict=True):
            disks = [
                TemplateDisk(volume=f"{name}-disk{i}", capacity_bytes=desc.disks[d].capacity_bytes,
                             format="qcow2")
                for i, d in enumerate(vs.disks)
            ]  # fmt: skip
            tmpl = Template(
                name=name, repository=req.repository, vcpus=vs.vcpus, memory_mib=vs.memory_mib,
                disks=disks, state="creating", created_by_job=ctx.job.id, assembly=assembly,
                networks=vs.networks,
            )  # fmt: skip
            ctx.run(ctx.runtime.inventory.reserve_template(tmpl, fence=ctx.fence))
            plans.append((vs, tmpl))
        total = sum(
            dest.joinpath(desc.file_of(d).href).stat().st_size
            for vs in desc.systems
            for d in vs.disks
        )
        done = 0
        made = []
        for vs, tmpl in plans:
            sized = []
            for disk_id, disk in zip(vs.disks, tmpl.disks, strict=True):
                src = dest / desc.file_of(disk_id).href
                out = dest / f"{disk.volume}.qcow2"
                virtual = convert(
                    src, desc.disks[disk_id].format, out, ctx.runtime.settings.import_max_bytes
                )
                hv.upload_volume(
                    req.repository, disk.volume, out.stat().st_size, file_chunks(out, ctx.check)
                )
                out.unlink()
                sized.append(disk.model_copy(update={"capacity_bytes": virtual}))
                done += src.stat().st_size
                ctx.report(
                    done / total if total else 1.0, {"bytes_done": done, "bytes_total": total}
                )
            made.append(tmpl.model_copy(update={"disks": sized}).model_dump(mode="json"))
    systems = [{"id": vs.id, "name": vs.name, "template": t.name} for vs, t in plans]
    return {"templates": made, "virtual_systems": systems, "manifest_checked": has_manifest}


def _drop_upload(ctx: StepContext) -> None:
    if _req(ctx).upload:
        upload_path(ctx, _req(ctx).upload or "").unlink(missing_ok=True)


def import_undo(ctx: StepContext) -> None:
    _undo_templates(ctx)
    _drop_upload(ctx)


def record_run(ctx: StepContext) -> Outputs:
    for doc in ctx.outputs["templates"]:
        tmpl = Template.model_validate(doc).model_copy(update={"state": "ready"})
        ctx.run(ctx.runtime.inventory.save_template(tmpl, fence=ctx.fence))
    systems = [AssemblySystem(**s) for s in ctx.outputs["virtual_systems"]]
    ctx.run(
        ctx.runtime.content.save(
            LISTING.record(ctx, state="ready", virtual_systems=systems, created_at=utcnow()),
            fence=ctx.fence,
        )
    )
    _drop_upload(ctx)
    return {"templates": [s.template for s in systems]}


def steps(_req: AssemblyImport) -> list[Step]:
    return [
        LISTING.reserve,
        LISTING.place,
        Step("import", import_run, import_undo, "fetch, check, convert and upload its disks"),
        Step("record", record_run, None, "list its templates and the assembly"),
    ]
