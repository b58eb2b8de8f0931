"""Staging an assembly (OVF with its files, or an OVA archive) on the worker, checked.

An OVA is read as a stream (tarfile's `r|` mode: no seeking, nothing held in memory): every
member must be a regular file with a plain name (no directory, link, device, path or
'..'), each name once, the whole within the byte limit; it is written under the staging
directory with O_EXCL. An OVF URL's referenced files are fetched from beside it, each
through the import allow-list like the descriptor. Then the manifest, when there is one,
is checked for every file, and every file's size against its declaration. Disk images are
inspected and converted by the real `qemu-img`, with an explicit input format (never
probed) and under resource limits (`prlimit`: address space and CPU time), since a
crafted image is untrusted input to it too.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import subprocess
import tarfile
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import IO, Any

from orchestrator.errors import ImportFailed
from workers.ovf import FILE_NAME, Descriptor, parse_manifest

QEMU_IMG_LIMITS = ["prlimit", "--as=1073741824", "--cpu=600"]  # 1 GiB, 10 min of CPU
CHUNK = 1024 * 1024


class _ChunkReader(io.RawIOBase):
    """A read-only stream over an iterator of chunks (for tarfile's stream mode)."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks = chunks
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            try:
                self._buf = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def _plain(name: str, what: str) -> str:
    if not FILE_NAME.fullmatch(name) or ".." in name:
        raise ImportFailed(
            f"{what}: member {name[:120]!r} is not a plain file name (no paths or '..')"
        )
    return name


def _write(dest: Path, name: str, data: Iterator[bytes], budget: list[int]) -> int:
    """Write `data` to dest/name (never over an existing file), within `budget` bytes."""
    fd = os.open(dest / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    n = 0
    with os.fdopen(fd, "wb") as f:
        for chunk in data:
            n += len(chunk)
            budget[0] -= len(chunk)
            if budget[0] < 0:
                raise ImportFailed("the assembly is larger than the limit (import_max_bytes)")
            f.write(chunk)
    return n


def _read_all(f: IO[bytes]) -> Iterator[bytes]:
    while chunk := f.read(CHUNK):
        yield chunk


MAX_HEADER_BYTES = 64 * 1024


_EXTENDED = (
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
)


class _BoundedTarInfo(tarfile.TarInfo):
    """A tar member whose extended headers (pax, GNU long names) are refused over
    MAX_HEADER_BYTES: tarfile reads those whole into memory before any check of ours."""

    def _proc_member(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _EXTENDED and self.size > MAX_HEADER_BYTES:
            raise ImportFailed(f"OVA: an extended tar header of {self.size} bytes is refused")
        return super()._proc_member(tar)  # type: ignore[misc,no-any-return]


def stage_ova(chunks: Iterator[bytes], dest: Path, max_bytes: int) -> str:
    """Unpack an OVA stream into `dest`; the descriptor's name (its one .ovf member)."""
    budget = [max_bytes]
    seen: set[str] = set()
    try:
        reader = _ChunkReader(chunks)
        with tarfile.open(fileobj=reader, mode="r|", tarinfo=_BoundedTarInfo) as tar:
            for m in tar:
                if not m.isfile():
                    kind = (
                        "link"
                        if m.issym() or m.islnk()
                        else "directory"
                        if m.isdir()
                        else "special file"
                    )
                    raise ImportFailed(
                        f"OVA: member {m.name[:120]!r} is a {kind}: only plain files are allowed"
                    )
                name = _plain(m.name, "OVA")
                if name in seen:
                    raise ImportFailed(f"OVA: member {name!r} appears twice")
                if m.size > budget[0]:
                    raise ImportFailed(
                        f"OVA: member {name!r} declares {m.size} bytes, over the limit "
                        "(import_max_bytes)"
                    )
                seen.add(name)
                src = tar.extractfile(m)
                assert src is not None  # a regular file
                _write(dest, name, _read_all(src), budget)
    except tarfile.TarError as e:
        raise ImportFailed(f"OVA: not a readable tar archive ({e})") from e
    ovfs = sorted(n for n in seen if n.lower().endswith(".ovf"))
    if len(ovfs) != 1:
        raise ImportFailed(f"OVA: {len(ovfs)} .ovf descriptors inside, one expected")
    return ovfs[0]


def stage_file(chunks: Iterator[bytes], dest: Path, name: str, budget: list[int]) -> None:
    """One file of an OVF (fetched from beside its descriptor) into `dest`."""
    _write(dest, _plain(name, "OVF"), chunks, budget)


def manifest_name(descriptor_name: str) -> str:
    return descriptor_name.rsplit(".", 1)[0] + ".mf"


def verify(dest: Path, desc: Descriptor, descriptor_name: str) -> bool:
    """Each referenced file is there with its declared size; with a manifest (`<name>.mf`),
    every file it lists (the descriptor too) has its digest, and every referenced file is
    listed. Whether there was a manifest."""
    for f in desc.files.values():
        path = dest / f.href
        if not path.is_file():
            raise ImportFailed(f"OVF: referenced file {f.href!r} is missing")
        if f.size is not None and path.stat().st_size != f.size:
            raise ImportFailed(
                f"OVF: {f.href!r} has {path.stat().st_size} bytes, the descriptor says {f.size}"
            )
    mf = dest / manifest_name(descriptor_name)
    if not mf.is_file():
        return False
    if mf.stat().st_size > 1_000_000:
        raise ImportFailed(f"OVF manifest {mf.name} is over 1 MB")
    listed = parse_manifest(mf.read_text(errors="replace"))
    for f in desc.files.values():
        if f.href not in listed:
            raise ImportFailed(f"OVF manifest: {f.href!r} is not listed")
    for name, (algo, digest) in listed.items():
        path = dest / _plain(name, "OVF manifest")
        if not path.is_file():
            raise ImportFailed(f"OVF manifest: lists {name!r}, which the assembly does not hold")
        h = hashlib.new(algo)
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(CHUNK), b""):
                h.update(chunk)
        if h.hexdigest() != digest:
            raise ImportFailed(f"OVF manifest: {algo.upper()} of {name!r} does not match")
    return True


def _qemu_img(*args: str, timeout_s: float) -> str:
    try:
        out = subprocess.run(
            [*QEMU_IMG_LIMITS, "qemu-img", *args],
            check=True, capture_output=True, text=True, timeout=timeout_s,
        )  # fmt: skip
    except subprocess.CalledProcessError as e:
        raise ImportFailed(f"qemu-img {args[0]}: {(e.stderr or '').strip()[:300]}") from e
    except subprocess.TimeoutExpired as e:
        raise ImportFailed(f"qemu-img {args[0]}: no result within {timeout_s:g} s") from e
    return out.stdout


def inspect_image(path: Path, fmt: str) -> dict[str, Any]:
    """`qemu-img info` of `path` read as `fmt` (refused when it is not one, or reaches
    beyond itself: a backing file or an external data file)."""
    info = json.loads(_qemu_img("info", "--output=json", "-f", fmt, str(path), timeout_s=60))
    if not isinstance(info, dict):
        raise ImportFailed(f"qemu-img info: unexpected output for {path.name}")
    if info.get("backing-filename") or info.get("full-backing-filename"):
        raise ImportFailed(f"{path.name}: a disk image with a backing file is refused")
    specific = (info.get("format-specific") or {}).get("data") or {}
    extents = specific.get("extents") or []
    if specific.get("data-file") or any(
        e.get("filename") not in (None, str(path)) for e in extents
    ):
        raise ImportFailed(f"{path.name}: a disk image with external data or extents is refused")
    return info


MAGIC = {"vmdk": b"KDMV", "qcow2": b"QFI\xfb"}


def convert(path: Path, fmt: str, out: Path, max_bytes: int, timeout_s: float = 3600) -> int:
    """Convert `path` (read as `fmt`) to a qcow2 image `out`; its virtual size. A vmdk must
    be a binary sparse one (a text descriptor names its extents: any file of this host)."""
    with path.open("rb") as f:
        head = f.read(4)
    if fmt in MAGIC and head != MAGIC[fmt]:
        raise ImportFailed(f"{path.name}: not a {fmt} image (the descriptor says {fmt})")
    virtual = int(inspect_image(path, fmt).get("virtual-size") or 0)
    if virtual > max_bytes:  # a small compressed image could fill the staging directory
        raise ImportFailed(f"{path.name}: a disk of {virtual} bytes, over the limit of {max_bytes}")
    _qemu_img("convert", "-f", fmt, "-O", "qcow2", str(path), str(out), timeout_s=timeout_s)
    return int(inspect_image(out, "qcow2")["virtual-size"])


def file_chunks(path: Path, check: Callable[[], None]) -> Generator[bytes, None, None]:
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            check()
            yield chunk


@contextlib.contextmanager
def staging(root: Path, job_id: str) -> Iterator[Path]:
    """A private directory for one job's assembly, removed afterwards."""
    import shutil

    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    dest = root / job_id
    shutil.rmtree(dest, ignore_errors=True)  # an earlier attempt's leftovers
    dest.mkdir(mode=0o700)
    try:
        yield dest
    finally:
        shutil.rmtree(dest, ignore_errors=True)
