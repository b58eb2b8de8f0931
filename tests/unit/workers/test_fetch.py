"""Import sources: real HTTP and FTP servers on loopback (tests/sources.py), the allow-list
checked on every address connected to, sizes declared and held to."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.errors import ImportFailed, SourceUnavailable
from orchestrator.loopthread import LoopThread
from orchestrator.targets import ImportAllowList, ImportRefused, file_name, public_url
from tests.sources import FileServer, ftp_server
from workers.fetch import Source, open_source

DATA = bytes(range(256)) * 12_000  # 3 MB: more than one chunk


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.stop()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "disk.img").write_bytes(DATA)
    return tmp_path


LOOPBACK = ImportAllowList(["127.0.0.1"])


def read(src: Source) -> bytes:
    try:
        return b"".join(src.chunks)
    finally:
        src.close()


def fetch(url: str, loop: LoopThread, allow: ImportAllowList = LOOPBACK, **kw: int) -> Source:
    opts = {"max_bytes": 1 << 30, "timeout_s": 10, **kw}
    return open_source(url, allow, loop.run, **opts)


def test_http_and_ftp_sources_give_the_file_with_its_declared_size(
    root: Path, loop: LoopThread
) -> None:
    with FileServer(root) as http, ftp_server(root) as ftp:
        for url in (http.url("disk.img"), f"{ftp}/disk.img"):
            src = fetch(url, loop)
            assert src.size == len(DATA)
            assert read(src) == DATA, url


def test_a_target_outside_the_allow_list_is_refused_before_any_connection(
    root: Path, loop: LoopThread
) -> None:
    with FileServer(root) as http:
        url = http.url("disk.img")
        with pytest.raises(ImportRefused, match=r"forbidden address \(loopback\)"):
            fetch(url, loop, ImportAllowList([]))
        with pytest.raises(ImportRefused, match="forbidden address"):
            fetch(url, loop, ImportAllowList(["127.0.0.1:1"]))  # another port
        with pytest.raises(ImportRefused, match="not in the operator's import allow-list"):
            fetch("http://8.8.8.8/disk.img", loop)  # refused statically: never connected to
        with pytest.raises(ImportRefused, match="not fetched"):
            fetch("file:///etc/passwd", loop)
        with pytest.raises(ImportRefused, match="credentials"):
            fetch(f"ftp://user:pw@127.0.0.1:{http.port}/disk.img", loop)


def test_a_host_name_resolving_to_a_forbidden_address_is_refused(
    root: Path, loop: LoopThread
) -> None:
    # "localhost" is allowed by name, but resolves to loopback, which no address entry covers
    allow = ImportAllowList(["localhost"])
    with FileServer(root) as http, ftp_server(root) as ftp:
        with pytest.raises(ImportRefused, match="resolves to a forbidden address"):
            read(fetch(f"http://localhost:{http.port}/disk.img", loop, allow))
        port = ftp.rsplit(":", 1)[1]
        with pytest.raises(ImportRefused, match="resolves to a forbidden address"):
            fetch(f"ftp://localhost:{port}/disk.img", loop, allow)


def test_a_redirect_is_checked_like_the_first_url(root: Path, loop: LoopThread) -> None:
    redirects = {"/ok": "/disk.img", "/away": "http://127.0.0.2:8080/disk.img"}
    with FileServer(root, redirects) as http:
        assert read(fetch(http.url("ok"), loop)) == DATA
        with pytest.raises(ImportRefused, match=r"127\.0\.0\.2:8080"):
            fetch(http.url("away"), loop)


def test_sources_that_refuse_or_are_too_large_fail_for_good(root: Path, loop: LoopThread) -> None:
    with FileServer(root) as http, ftp_server(root) as ftp:
        with pytest.raises(ImportFailed, match="HTTP 404"):
            fetch(http.url("missing.img"), loop)
        with pytest.raises(ImportFailed, match=r"missing\.img"):
            fetch(f"{ftp}/missing.img", loop)
        with pytest.raises(ImportFailed, match="more than the limit of 1000"):
            fetch(http.url("disk.img"), loop, max_bytes=1000)
        with pytest.raises(ImportFailed, match="more than the limit of 1000"):
            fetch(f"{ftp}/disk.img", loop, max_bytes=1000)


class _Lying(http.server.BaseHTTPRequestHandler):
    """Declares 1000 bytes; sends fewer (/short), more (/long), or no size (/nosize)."""

    def do_GET(self) -> None:
        body = {"/short": b"x" * 10, "/long": b"x" * 5000, "/nosize": b"x" * 10}[self.path]
        self.send_response(200)
        if self.path != "/nosize":
            self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_a_source_is_held_to_the_size_it_declared(loop: LoopThread) -> None:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Lying)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        with pytest.raises(SourceUnavailable, match="10 of 1000 bytes"):
            read(fetch(f"{base}/short", loop))
        # never more than declared: aiohttp stops at the declared length, and refuses the
        # response when the extra bytes came with it (the error quotes at most 200 of them)
        try:
            assert read(fetch(f"{base}/long", loop)) == b"x" * 1000
        except SourceUnavailable as e:
            assert "Data after" in e.message and e.message.count("x") <= 200
        with pytest.raises(ImportFailed, match="did not say how large"):
            fetch(f"{base}/nosize", loop)
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_source_that_cannot_be_reached_may_be_tried_again(loop: LoopThread) -> None:
    with pytest.raises(SourceUnavailable):
        fetch("http://127.0.0.1:1/disk.img", loop, ImportAllowList(["127.0.0.1"]))


def test_urls_are_shown_without_credentials_or_query_and_named_by_their_file() -> None:
    assert public_url("https://u:p@h.example/a/b.iso?token=s3cret#x") == "https://h.example/a/b.iso"
    assert file_name("https://h.example/isos/debian%2012.iso?x=1") == "debian 12.iso"
    assert file_name("https://h.example/") == ""


def test_a_server_file_is_read_only_from_under_an_allowed_directory() -> None:
    from orchestrator.targets import server_path

    allowed = ["/mnt/nfs/isos"]
    assert server_path("file:///mnt/nfs/isos/ol9.iso", allowed) == "/mnt/nfs/isos/ol9.iso"
    assert server_path("file:///mnt/nfs/isos/a%20b.iso", allowed) == "/mnt/nfs/isos/a b.iso"
    for url, why in (
        ("file:///mnt/nfs/isos/../../../etc/shadow", "not a plain absolute path"),
        ("file:///mnt/nfs/isos//x.iso", "not a plain absolute path"),
        ("file:///mnt/nfs/isos/", "not a plain absolute path"),
        ("file:///mnt/nfs/isosx/y.iso", "not under a directory"),
        ("file:///etc/shadow", "not under a directory"),
        ("file://otherhost/mnt/nfs/isos/x.iso", "not a file:///path URL"),
        ("file:///mnt/nfs/isos/x.iso?y=1", "not a file:///path URL"),
    ):
        with pytest.raises(ImportRefused, match=why):
            server_path(url, allowed)
    # no directory allowed: no file at all, and the allow-list says so too
    with pytest.raises(ImportRefused, match="not under"):
        ImportAllowList([]).check("file:///mnt/nfs/isos/ol9.iso")
    assert ImportAllowList([], ["/mnt/nfs/isos/"]).check("file:///mnt/nfs/isos/ol9.iso")
