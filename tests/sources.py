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
