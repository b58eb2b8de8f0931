"""`repository.import`: fetch an ISO or a virtual disk into a repository.

The name is reserved in the repository first (no two imports write one file), a server
that sees the repository is chosen, and the file is streamed from its source into a new
volume there (libvirt's volume upload: the same code reaches a remote `qemu+ssh://`
server), its SHA-256 and format checked on the way, before the upload is committed. Only
then is it listed `ready`. A failure deletes the volume and the reservation.
"""

from __future__ import annotations

from typing import cast

from orchestrator.targets import file_name
from schemas.base import utcnow
from schemas.requests import RepositoryImport
from tasks.step import Outputs, Step, StepContext
from tasks.steps.disks import names_free
from tasks.steps.fetching import (
    Listing,
    fetch_into,
    fetch_server_file,
    open_upload,
    open_url,
    upload_path,
)


def _req(ctx: StepContext) -> RepositoryImport:
    return cast(RepositoryImport, ctx.request)


def content_name(req: RepositoryImport) -> str:
    """The name the import gives the file: the request's, or the URL's file name."""
    return req.name or file_name(req.url or "")


def _source(req: RepositoryImport) -> str:
    """Where it came from, as listed: its URL, or the upload."""
    return req.url or f"upload:{req.upload}"


LISTING = Listing(
    lambda ctx: (
        _req(ctx).repository,
        content_name(_req(ctx)),
        _req(ctx).content,
        _source(_req(ctx)),
    ),
    cleanup=lambda ctx: _drop_upload(ctx),  # an upload whose import failed
)


def check_name_run(ctx: StepContext) -> Outputs:
    """The file's name is free among the repository's volumes (a VM's disk, a template's)."""
    req = _req(ctx)
    names_free(ctx.hypervisor(ctx.outputs["server"]), req.repository, [content_name(req)])
    return {}


def fetch_run(ctx: StepContext) -> Outputs:
    """Stream the source into a new volume on the chosen server (one left by an earlier
    attempt is replaced: the name is this job's)."""
    req = _req(ctx)
    name = content_name(req)
    if req.url and req.url.startswith("file:"):
        return fetch_server_file(ctx, req.url, req.sha256, req.repository, name, req.content)
    source = open_upload(ctx, req.upload) if req.upload else open_url(ctx, req.url or "")
    return fetch_into(ctx, source, req.sha256, req.repository, name, req.content)


def _drop_upload(ctx: StepContext) -> None:
    """An uploaded file has served once its import has ended, either way."""
    req = _req(ctx)
    if req.upload:
        upload_path(ctx, req.upload).unlink(missing_ok=True)


def fetch_undo(ctx: StepContext) -> None:
    """Ensure the volume is gone (also after an upload cut short)."""
    server = ctx.outputs.get("server")
    if server:
        req = _req(ctx)
        ctx.hypervisor(server).delete_volume(req.repository, content_name(req))
    _drop_upload(ctx)


def record_run(ctx: StepContext) -> Outputs:
    """List the file as ready, with what was measured."""
    o = ctx.outputs
    ctx.run(
        ctx.runtime.content.save(
            LISTING.record(
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
    _drop_upload(ctx)
    return {"repository": _req(ctx).repository, "name": content_name(_req(ctx))}


def steps(_req: RepositoryImport) -> list[Step]:
    return [
        LISTING.reserve,
        LISTING.place,
        Step("check_name", check_name_run, None, "no volume of that name in the repository"),
        Step("fetch", fetch_run, fetch_undo, "stream the file into the repository, checked"),
        Step("record", record_run, None, "list the file in the repository"),
    ]
