"""`repository.import`: fetch an ISO or a virtual disk into a repository.

The name is reserved in the repository first (no two imports write one file), a server
that sees the repository is chosen, and the file is streamed from its source into a new
volume there (libvirt's volume upload: the same code reaches a remote `qemu+ssh://`
server), its SHA-256 and format checked on the way, before the upload is committed. Only
then is it listed `ready`. A failure deletes the volume and the reservation.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from typing import cast

from orchestrator.errors import ImportFailed, NotFound
from orchestrator.targets import ImportAllowList, file_name, public_url
from schemas.base import utcnow
from schemas.inventory import ContentKind, RepositoryContent
from schemas.requests import RepositoryImport
from tasks.step import Outputs, Step, StepContext
from tasks.steps.placement import choose_server
from workers.fetch import open_source

PROGRESS_S = 0.5
HEAD = 64 * 1024  # what the format checks read: an ISO's volume descriptor is at 32 KiB
ISO_MAGIC_AT, ISO_MAGIC = 0x8001, b"CD001"
QCOW2_MAGIC = b"QFI\xfb"
OTHER_IMAGES = {b"KDMV": "vmdk", b"conectix": "vhd", b"vhdxfile": "vhdx", b"<<< ": "vdi"}


def _req(ctx: StepContext) -> RepositoryImport:
    return cast(RepositoryImport, ctx.request)


def content_name(req: RepositoryImport) -> str:
    """The name the import gives the file: the request's, or the URL's file name."""
    return req.name or file_name(req.url)


def _record(ctx: StepContext, **update: object) -> RepositoryContent:
    req = _req(ctx)
    fields: dict[str, object] = {
        "repository": req.repository,
        "name": content_name(req),
        "kind": req.content,
        "source": public_url(req.url),
        "job_id": ctx.job.id,
        "created_at": ctx.job.created_at,
    }
    return RepositoryContent.model_validate({**fields, **update})


def reserve_run(ctx: StepContext) -> Outputs:
    """Claim the file's name in the repository for this job."""
    ctx.run(ctx.runtime.content.reserve(_record(ctx), fence=ctx.fence))
    return {"name": content_name(_req(ctx))}


def reserve_undo(ctx: StepContext) -> None:
    req = _req(ctx)
    ctx.run(
        ctx.runtime.content.release(req.repository, content_name(req), ctx.job.id, fence=ctx.fence)
    )


def place_run(ctx: StepContext) -> Outputs:
    """A reachable server, not in maintenance, of a pool the repository is presented to."""
    req = _req(ctx)
    pools = [
        p for p in ctx.run(ctx.runtime.inventory.pools()) if p.repository.name == req.repository
    ]
    if not pools:
        raise NotFound(f"repository {req.repository} is not presented to any server pool")
    out = choose_server(ctx, pools[0].name, 0)
    return {"server": out["server"], "placement": out["placement"]}


def image_format(head: bytes, kind: ContentKind) -> str:
    """The file's format from its first bytes; ImportFailed when it is not what `kind`
    asks for, or is a disk image that could reach beyond itself."""
    if kind == "iso":
        if head[ISO_MAGIC_AT : ISO_MAGIC_AT + len(ISO_MAGIC)] != ISO_MAGIC:
            raise ImportFailed("not an ISO 9660 image (no CD001 volume descriptor at 32 KiB)")
        return "iso"
    if head.startswith(QCOW2_MAGIC):
        if len(head) < 104:
            raise ImportFailed("qcow2 image shorter than its header")
        version = int.from_bytes(head[4:8], "big")
        if int.from_bytes(head[8:16], "big"):
            raise ImportFailed(
                "qcow2 image with a backing file: refused (it could name any host file)"
            )
        if version >= 3 and int.from_bytes(head[72:80], "big") & 0b100:
            raise ImportFailed("qcow2 image with an external data file: refused")
        return "qcow2"
    for magic, fmt in OTHER_IMAGES.items():
        if head.startswith(magic):
            raise ImportFailed(
                f"a {fmt} image: virtual disks are imported as raw or qcow2 "
                "(convert it with qemu-img, or import it as an assembly)"
            )
    return "raw"


def _inspect(ctx: StepContext, chunks: Iterator[bytes], size: int, out: Outputs) -> Iterator[bytes]:
    """`chunks`, checked as they pass (format from the head, SHA-256 at the end, progress,
    abort between chunks): a check that fails raises before the upload is committed."""
    req = _req(ctx)
    sha = hashlib.sha256()
    head = bytearray()
    done, reported = 0, 0.0
    for chunk in chunks:
        ctx.check()
        sha.update(chunk)
        if "format" not in out:
            head += chunk[: HEAD - len(head)]
            if len(head) >= HEAD:
                out["format"] = image_format(bytes(head), req.content)
        done += len(chunk)
        if time.monotonic() - reported >= PROGRESS_S:
            reported = time.monotonic()
            ctx.report(done / size if size else 0.0, {"bytes_done": done, "bytes_total": size})
        yield chunk
    if "format" not in out:
        out["format"] = image_format(bytes(head), req.content)
    digest = sha.hexdigest()
    if req.sha256 and digest != req.sha256.lower():
        raise ImportFailed(
            f"SHA-256 mismatch: the request gave {req.sha256.lower()}, the file has {digest}"
        )
    out["sha256"] = digest
    ctx.report(1.0, {"bytes_done": done, "bytes_total": size})


def fetch_run(ctx: StepContext) -> Outputs:
    """Stream the source into a new volume on the chosen server (one left by an earlier
    attempt is replaced: the name is this job's)."""
    req = _req(ctx)
    settings = ctx.runtime.settings
    hv = ctx.hypervisor(ctx.outputs["server"])
    source = open_source(
        req.url,
        ImportAllowList(settings.import_allowed_hosts),
        ctx.run,
        max_bytes=settings.import_max_bytes,
        timeout_s=settings.import_read_timeout_s,
    )
    out: Outputs = {}
    try:
        path, stored = hv.upload_volume(
            req.repository,
            content_name(req),
            source.size,
            _inspect(ctx, source.chunks, source.size, out),
        )
    finally:
        source.close()
    return {**out, "size_bytes": source.size, "path": path, "stored": stored}


def fetch_undo(ctx: StepContext) -> None:
    """Ensure the volume is gone (also after an upload cut short)."""
    server = ctx.outputs.get("server")
    if server:
        req = _req(ctx)
        ctx.hypervisor(server).delete_volume(req.repository, content_name(req))


def record_run(ctx: StepContext) -> Outputs:
    """List the file as ready, with what was measured."""
    o = ctx.outputs
    ctx.run(
        ctx.runtime.content.save(
            _record(
                ctx,
                state="ready",
                size_bytes=int(o["size_bytes"]),
                format=o["format"],
                sha256=o["sha256"],
                created_at=utcnow(),
            ),
            fence=ctx.fence,
        )
    )
    return {"repository": _req(ctx).repository, "name": content_name(_req(ctx))}


def steps(_req: RepositoryImport) -> list[Step]:
    return [
        Step("reserve", reserve_run, reserve_undo, "reserve the file's name in the repository"),
        Step("place", place_run, None, "choose a server that sees the repository"),
        Step("fetch", fetch_run, fetch_undo, "stream the file into the repository, checked"),
        Step("record", record_run, None, "list the file in the repository"),
    ]
