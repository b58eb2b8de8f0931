"""Import sources the tests make and serve themselves, on loopback: ISO images built with
the real `xorriso`, an HTTP file server (the standard library's) and an FTP server
(pyftpdlib), each in a thread of the test process and stopped with it."""

from __future__ import annotations

import hashlib
import http.server
import logging
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer

# A no-emulation El Torito boot image: SeaBIOS loads it at 0x7c00 and runs it. It writes
# "VISOBOOT" at physical address 0x600 (which only running it puts there), then halts:
#       cli; xor %ax,%ax; mov %ax,%ds
#       movl $0x4f534956, 0x600; movl $0x544f4f42, 0x604
# hang: hlt; jmp hang
BOOT_CODE = bytes.fromhex("fa31c08ed866c70600065649534f66c7060406424f4f54f4ebfd")
BOOT_MARK_AT, BOOT_MARK = 0x600, b"VISOBOOT"


def make_iso(
    path: Path, *, label: str = "VMORCHTEST", files: dict[str, bytes] | None = None
) -> str:
    """An ISO 9660 image at `path` that boots BOOT_CODE (and holds `files`); its SHA-256."""
    tree = path.parent / f"{path.name}.tree"
    tree.mkdir(parents=True, exist_ok=True)
    (tree / "boot.bin").write_bytes(BOOT_CODE + bytes(2048 - len(BOOT_CODE)))
    for name, data in (files or {}).items():
        (tree / name).write_bytes(data)
    subprocess.run(
        ["xorriso", "-as", "mkisofs", "-quiet", "-o", str(path), "-V", label,
         "-b", "boot.bin", "-no-emul-boot", "-boot-load-size", "4", str(tree)],
        check=True, capture_output=True,
    )  # fmt: skip
    return sha256_of(path)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class _Handler(http.server.SimpleHTTPRequestHandler):
    redirects: dict[str, str] = {}

    def do_GET(self) -> None:
        to = self.redirects.get(self.path)
        if to is not None:
            self.send_response(302)
            self.send_header("Location", to)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


class FileServer:
    """`root` over HTTP on 127.0.0.1; `redirects` maps a path to a Location."""

    def __init__(self, root: Path, redirects: dict[str, str] | None = None):
        handler = type("Handler", (_Handler,), {"redirects": dict(redirects or {})})
        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), partial(handler, directory=str(root))
        )
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@contextmanager
def ftp_server(root: Path) -> Iterator[str]:
    """`root` over anonymous, read-only FTP on 127.0.0.1; yields its base URL."""
    logging.getLogger("pyftpdlib").setLevel(logging.WARNING)
    auth = DummyAuthorizer()
    auth.add_anonymous(str(root))
    handler = type("Handler", (FTPHandler,), {"authorizer": auth, "banner": "vmorch test"})
    server = FTPServer(("127.0.0.1", 0), handler)
    port = server.socket.getsockname()[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"timeout": 0.2}, daemon=True)
    thread.start()
    try:
        yield f"ftp://127.0.0.1:{port}"
    finally:
        server.close_all()
        thread.join(5)


def boot_disk(path: Path, size_mib: int = 8) -> None:
    """A raw disk whose first sector boots BOOT_CODE (it leaves BOOT_MARK in memory)."""
    with path.open("wb") as f:
        f.write(BOOT_CODE + bytes(510 - len(BOOT_CODE)) + b"\x55\xaa")
        f.truncate(size_mib << 20)


def to_vmdk(raw: Path, out: Path) -> None:
    """`raw` as a streamOptimized vmdk (what OVAs carry), by the real qemu-img."""
    subprocess.run(
        ["qemu-img", "convert", "-q", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized",
         str(raw), str(out)],
        check=True,
    )  # fmt: skip


OVF_HEAD = """<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"
 xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
 xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData">
"""
VMDK_FORMAT = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"


def ovf_descriptor(
    files: dict[str, int],
    systems: list[dict[str, object]],
    *,
    capacity_mib: int = 8,
    doctype: str = "",
) -> str:
    """An OVF 1.0 descriptor: `files` (href -> size) each one disk `d<i>` of
    `capacity_mib`; `systems` each {id, vcpus, memory_mib, disks: [file index], networks}."""
    refs = "".join(
        f'<File ovf:id="f{i}" ovf:href="{href}" ovf:size="{size}"/>'
        for i, (href, size) in enumerate(files.items())
    )
    disks = "".join(
        f'<Disk ovf:diskId="d{i}" ovf:fileRef="f{i}" ovf:capacity="{capacity_mib}" '
        f'ovf:capacityAllocationUnits="byte * 2^20" ovf:format="{VMDK_FORMAT}"/>'
        for i in range(len(files))
    )
    vss = []
    for s in systems:
        items = [
            f"<Item><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType>"
            f"<rasd:VirtualQuantity>{s.get('vcpus', 1)}</rasd:VirtualQuantity></Item>",
            f"<Item><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>"
            f"<rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType>"
            f"<rasd:VirtualQuantity>{s.get('memory_mib', 96)}</rasd:VirtualQuantity></Item>",
        ]
        for d in s.get("disks", []):  # type: ignore[attr-defined]
            items.append(
                f"<Item><rasd:HostResource>ovf:/disk/d{d}</rasd:HostResource>"
                f"<rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceType>17</rasd:ResourceType></Item>"
            )
        for n in s.get("networks", []):  # type: ignore[attr-defined]
            items.append(
                f"<Item><rasd:Connection>{n}</rasd:Connection><rasd:InstanceID>4</rasd:InstanceID>"
                f"<rasd:ResourceType>10</rasd:ResourceType></Item>"
            )
        vss.append(
            f'<VirtualSystem ovf:id="{s["id"]}"><Info>a VM</Info><Name>{s["id"]}</Name>'
            f"<VirtualHardwareSection><Info>its hardware</Info>{''.join(items)}"
            f"</VirtualHardwareSection></VirtualSystem>"
        )
    body = vss[0] if len(vss) == 1 else (
        '<VirtualSystemCollection ovf:id="all"><Info>systems</Info>' + "".join(vss)
        + "</VirtualSystemCollection>"
    )  # fmt: skip
    head = OVF_HEAD if not doctype else OVF_HEAD.replace("<Envelope", doctype + "\n<Envelope", 1)
    return (
        f"{head}<References>{refs}</References>"
        f"<DiskSection><Info>disks</Info>{disks}</DiskSection>{body}</Envelope>\n"
    )


def manifest(root: Path, names: list[str]) -> str:
    return "".join(f"SHA256({n})= {sha256_of(root / n)}\n" for n in names)


def make_assembly(
    root: Path, name: str, systems: list[dict[str, object]], n_disks: int = 1
) -> list[str]:
    """`<name>.ovf`, its vmdk disks (bootable) and `<name>.mf` in `root`; their names,
    the descriptor first."""
    disks = []
    for i in range(n_disks):
        raw = root / f"{name}-{i}.raw"
        boot_disk(raw)
        to_vmdk(raw, root / f"{name}-disk{i}.vmdk")
        raw.unlink()
        disks.append(f"{name}-disk{i}.vmdk")
    sizes = {d: (root / d).stat().st_size for d in disks}
    (root / f"{name}.ovf").write_text(ovf_descriptor(sizes, systems))
    (root / f"{name}.mf").write_text(manifest(root, [f"{name}.ovf", *disks]))
    return [f"{name}.ovf", *disks, f"{name}.mf"]


def make_ova(root: Path, name: str, members: list[str], out: Path) -> None:
    """An OVA (ustar, the descriptor first) of `members` of `root`."""
    import tarfile

    with tarfile.open(out, "w", format=tarfile.USTAR_FORMAT) as tar:
        for m in members:
            tar.add(root / m, arcname=m)
