"""Repositories over HTTP: what each holds, and uploads into them."""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid

from aiohttp import web

from orchestrator.api.http import (
    params,
    path_name,
    respond,
    respond_list,
    services,
)
from orchestrator.api.middleware import caller
from orchestrator.errors import (
    BadRequest,
    Conflict,
    LengthRequired,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
)
from schemas.api import (
    RepositoryView,
    TemplateView,
)
from schemas.requests import AssemblyImport, RepositoryImport


async def _repository_views(request: web.Request, only: str | None = None) -> list[RepositoryView]:
    svc = services(request)
    pools = await svc.inventory.pools()
    templates = await svc.inventory.templates()
    names = sorted({r.name for p in pools for r in p.presented()})
    if only is not None:
        if only not in names:
            raise NotFound(f"repository {only!r} not found")
        names = [only]
    views = []
    for name in names:
        content = await svc.content.list(name)
        views.append(
            RepositoryView(
                name=name,
                path=next((r.path for p in pools for r in p.presented() if r.name == name), ""),
                pools=[p.name for p in pools if p.presents(name)],
                templates=[
                    TemplateView(
                        **t.model_dump(), size_bytes=sum(d.capacity_bytes for d in t.disks)
                    )
                    for t in templates
                    if t.repository == name
                ],
                isos=[c for c in content if c.kind == "iso"],
                virtual_disks=[c for c in content if c.kind == "virtual_disk"],
                assemblies=[c for c in content if c.kind == "assembly"],
            )
        )
    return views


async def list_repositories(request: web.Request) -> web.Response:
    return respond_list(await _repository_views(request))


async def get_repository(request: web.Request) -> web.Response:
    [view] = await _repository_views(request, request.match_info["repository"])
    return respond(view)


UPLOAD_CHUNK = 1024 * 1024


async def upload_content(request: web.Request) -> web.Response:
    """A file into a repository, uploaded as the request's body: streamed to the upload
    directory the api shares with the workers (never held in memory, at most
    `import_max_bytes`, its Content-Length required and held to), its SHA-256 checked when
    the query gives one, then imported by a `repository.import` job (202: the job), which
    checks its format like any import and deletes the staged file when it ends."""
    svc = services(request)
    q = params(request)
    repository = request.match_info["repository"]
    name = path_name(request, "name", "file name")
    if not any(p.presents(repository) for p in await svc.inventory.pools()):
        raise NotFound(f"repository {repository!r} not found")
    if q["content"] == "assembly" and not name.lower().endswith(".ova"):
        msg = "an assembly is uploaded as an .ova file"
        raise ValidationFailed(msg, details=[(["path", "name"], msg)])
    if request.content_type != "application/octet-stream":
        raise UnsupportedMediaType(
            "an upload is sent as application/octet-stream",
            details=[(["header", "Content-Type"], "application/octet-stream")],
        )
    length, limit = request.content_length, svc.settings.import_max_bytes
    if length is None:
        raise LengthRequired(
            "an upload needs a Content-Length", details=[(["header", "Content-Length"], "required")]
        )
    if length > limit:
        raise PayloadTooLarge(
            f"{length} bytes is over the import limit of {limit}",
            details=[(["body"], f"at most {limit} bytes")],
        )
    if await svc.content.get(repository, name) is not None:
        raise Conflict(
            f"repository {repository} already holds {name!r}",
            details=[(["path", "name"], "a file of this name exists in the repository")],
        )
    upload_id = str(uuid.uuid4())
    folder = svc.settings.upload_dir
    await asyncio.to_thread(folder.mkdir, 0o700, True, True)
    part, done = folder / f"{upload_id}.part", folder / upload_id
    sha = hashlib.sha256()
    size = 0
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            async for chunk in request.content.iter_chunked(UPLOAD_CHUNK):
                size += len(chunk)
                if size > length:
                    raise BadRequest("the body is longer than its Content-Length")
                sha.update(chunk)
                await asyncio.to_thread(f.write, chunk)
        if size != length:
            raise BadRequest(f"the body ended after {size} of {length} bytes")
        digest = sha.hexdigest()
        if q["sha256"] and q["sha256"].lower() != digest:
            msg = f"the file's SHA-256 is {digest}"
            raise ValidationFailed("SHA-256 mismatch", details=[(["query", "sha256"], msg)])
        part.rename(done)
        req: RepositoryImport | AssemblyImport = (
            AssemblyImport(
                kind="assembly.import", repository=repository, upload=upload_id,
                name=name.rsplit(".", 1)[0][:40], sha256=digest,
            )
            if q["content"] == "assembly"
            else RepositoryImport(
                kind="repository.import", repository=repository, content=q["content"],
                upload=upload_id, name=name, sha256=digest,
            )
        )  # fmt: skip
        job, _ = await svc.submitter.submit(req, submitted_by=caller(request).name)
    except BaseException:
        part.unlink(missing_ok=True)
        done.unlink(missing_ok=True)
        raise
    return respond(job, 202, Location=f"/v1/jobs/{job.id}")
