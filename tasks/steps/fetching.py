"""Fetching a file from a URL into a repository volume, checked on the way: the one path
for every import (repository.import, template.import)."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import ImportFailed, NotFound
from orchestrator.targets import ImportAllowList, public_url, server_path
from schemas.inventory import ContentKind, RepositoryContent
from tasks.step import Outputs, Step, StepContext
from tasks.steps.placement import choose_server
from workers.assembly import file_chunks
from workers.fetch import Source, open_source

PROGRESS_S = 0.5
HEAD = 64 * 1024  # what the format checks read: an ISO's volume descriptor is at 32 KiB
ISO_MAGIC_AT, ISO_MAGIC = 0x8001, b"CD001"
QCOW2_MAGIC = b"QFI\xfb"
OTHER_IMAGES = {b"KDMV": "vmdk", b"conectix": "vhd", b"vhdxfile": "vhdx", b"<<< ": "vdi"}


def server_seeing(ctx: StepContext, repository: str) -> Outputs:
    """A reachable server, not in maintenance, of a pool the repository is presented to."""
    pools = [p for p in ctx.run(ctx.runtime.inventory.pools()) if p.presents(repository)]
    if not pools:
        raise NotFound(f"repository {repository} is not presented to any server pool")
    out = choose_server(ctx, pools[0].name, 0)
    return {"server": out["server"], "placement": out["placement"]}


def image_format(head: bytes, kind: ContentKind | None) -> str:
    """The file's format from its first bytes; ImportFailed when it is not what `kind`
    asks for, or is a disk image that could reach beyond itself. No `kind` (a kernel, an
    initrd): taken as it is, raw."""
    if kind is None:
        return "raw"
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


def _inspect(
    ctx: StepContext,
    chunks: Iterator[bytes],
    size: int,
    kind: ContentKind | None,
    sha256: str | None,
    out: Outputs,
) -> Iterator[bytes]:
    """`chunks`, checked as they pass (format from the head, SHA-256 at the end, progress,
    abort between chunks): a check that fails raises before the upload is committed."""
    sha = hashlib.sha256()
    head = bytearray()
    done, reported = 0, 0.0
    for chunk in chunks:
        ctx.check()
        sha.update(chunk)
        if "format" not in out:
            head += chunk[: HEAD - len(head)]
            if len(head) >= HEAD:
                out["format"] = image_format(bytes(head), kind)
        done += len(chunk)
        if time.monotonic() - reported >= PROGRESS_S:
            reported = time.monotonic()
            ctx.report(done / size if size else 0.0, {"bytes_done": done, "bytes_total": size})
        yield chunk
    if "format" not in out:
        out["format"] = image_format(bytes(head), kind)
    digest = sha.hexdigest()
    if sha256 and digest != sha256.lower():
        raise ImportFailed(
            f"SHA-256 mismatch: the request gave {sha256.lower()}, the file has {digest}"
        )
    out["sha256"] = digest
    ctx.report(1.0, {"bytes_done": done, "bytes_total": size})


def open_url(ctx: StepContext, url: str, max_bytes: int | None = None) -> Source:
    """`url` opened for reading with the settings' allow-list, limit and timeout."""
    s = ctx.runtime.settings
    if url.startswith("file:"):
        raise ImportFailed("only repository.import reads a file of a server")
    return open_source(
        url,
        ImportAllowList(s.import_allowed_hosts),
        ctx.run,
        max_bytes=s.import_max_bytes if max_bytes is None else max_bytes,
        timeout_s=s.import_read_timeout_s,
    )


UPLOAD_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def upload_path(ctx: StepContext, upload_id: str) -> Path:
    if not UPLOAD_ID.fullmatch(upload_id):
        raise ImportFailed(f"upload {upload_id[:60]!r} is not an upload id")
    return ctx.runtime.settings.upload_dir / upload_id


def open_upload(ctx: StepContext, upload_id: str) -> Source:
    """A file uploaded through the api (`PUT /v1/repositories/{r}/content/{name}`), as the
    api staged it in the upload directory it shares with the workers."""
    path = upload_path(ctx, upload_id)
    if not path.is_file():
        raise ImportFailed(f"upload {upload_id} is not in {path.parent} (shared with the api?)")
    chunks = file_chunks(path, ctx.check)
    return Source(path.stat().st_size, chunks, chunks.close)


def fetch_into(
    ctx: StepContext,
    source: Source,
    sha256: str | None,
    repository: str,
    volume: str,
    kind: ContentKind | None,
) -> Outputs:
    """Stream `source` into a new volume `volume` of `repository` on the server an earlier
    step chose (`outputs["server"]`; one of that name is replaced: the caller owns it),
    checked: its format for `kind`, `sha256` when given. Its size, path, format, SHA-256
    and whether the server stored the data (the test driver does not). Closes `source`."""
    hv = ctx.hypervisor(ctx.outputs["server"])
    out: Outputs = {}
    try:
        checked = _inspect(ctx, source.chunks, source.size, kind, sha256, out)
        path, stored = hv.upload_volume(repository, volume, source.size, checked)
    finally:
        source.close()
    return {**out, "size_bytes": source.size, "path": path, "stored": stored}


def fetch_server_file(
    ctx: StepContext,
    url: str,
    sha256: str | None,
    repository: str,
    volume: str,
    kind: ContentKind | None,
) -> Outputs:
    """A file of the chosen server (`file:///path`, under `import_allowed_paths`: checked
    again here) into a new volume, with the same checks as a fetched one."""
    s = ctx.runtime.settings
    path = server_path(url, s.import_allowed_paths)
    hv = ctx.hypervisor(ctx.outputs["server"])
    out: Outputs = {}

    def inspect(chunks: Iterator[bytes], size: int) -> Iterator[bytes]:
        return _inspect(ctx, chunks, size, kind, sha256, out)

    made, size = hv.import_file(path, repository, volume, s.import_max_bytes, inspect)
    return {**out, "size_bytes": size, "path": made, "stored": True}


@dataclass(frozen=True)
class Listing:
    """How an import lists what it brings in its repository: `of(ctx)` gives (repository,
    name, kind, source URL). Its `reserve` step claims the name for the job (`importing`;
    released when the job fails), `record` the entry as it ends, and `place` chooses a
    server that sees the repository."""

    of: Callable[[StepContext], tuple[str, str, ContentKind, str]]
    # what else its failure leaves to clean (an uploaded file staged for it)
    cleanup: Callable[[StepContext], None] | None = None

    def record(self, ctx: StepContext, **update: object) -> RepositoryContent:
        repository, name, kind, url = self.of(ctx)
        fields: dict[str, object] = {
            "repository": repository,
            "name": name,
            "kind": kind,
            "source": public_url(url),
            "job_id": ctx.job.id,
            "created_at": ctx.job.created_at,
        }
        return RepositoryContent.model_validate({**fields, **update})

    def _reserve(self, ctx: StepContext) -> Outputs:
        ctx.run(ctx.runtime.content.reserve(self.record(ctx), fence=ctx.fence))
        return {"name": self.of(ctx)[1]}

    def _release(self, ctx: StepContext) -> None:
        repository, name, _, _ = self.of(ctx)
        ctx.run(ctx.runtime.content.release(repository, name, ctx.job.id, fence=ctx.fence))
        if self.cleanup is not None:
            self.cleanup(ctx)

    def _place(self, ctx: StepContext) -> Outputs:
        return server_seeing(ctx, self.of(ctx)[0])

    @property
    def reserve(self) -> Step:
        return Step("reserve", self._reserve, self._release, "reserve the name in the repository")

    @property
    def place(self) -> Step:
        return Step("place", self._place, None, "choose a server that sees the repository")
