"""Reading a file from a remote source for a repository import, chunk by chunk.

The source is untrusted, and so is the URL a client gave: every address connected to is
checked against the import allow-list (`orchestrator.targets.ImportAllowList`), redirects
included, a size must be declared up front and is held to (no more, no less), and nothing
is held in memory beyond one chunk.

- http, https: aiohttp on the worker's event loop, its resolver checking the very addresses
  it connects to; no content decoding (the bytes counted are the bytes stored).
- ftp: the standard library's ftplib, anonymous, connected to an address checked here;
  the passive data connection goes to that same address, whatever the server says.
"""

from __future__ import annotations

import contextlib
import ftplib
import socket
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote

import aiohttp
from aiohttp.abc import ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from orchestrator.errors import ImportFailed, SourceUnavailable
from orchestrator.targets import CheckingResolver, ImportAllowList, ImportRefused

T = TypeVar("T")
Run = Callable[[Coroutine[Any, Any, T]], T]
CHUNK = 1024 * 1024
MAX_REDIRECTS = 5
USER_AGENT = "vmorch-import/1"


@dataclass
class Source:
    """An open source: its declared size and its bytes, which end when the source has
    sent exactly `size` (more or fewer is an error). `close` may be called at any time."""

    size: int
    chunks: Iterator[bytes]
    close: Callable[[], None]


def open_source(
    url: str,
    allow: ImportAllowList,
    run: Run[Any],
    *,
    max_bytes: int,
    timeout_s: float,
) -> Source:
    """Open `url` for reading. ImportRefused when a target is not allowed, ImportFailed
    when the source refuses for good (not found, no size, larger than `max_bytes`),
    SourceUnavailable when it may work later."""
    if url.startswith("file:"):
        raise ImportRefused("a file: URL names a file of a server: it is not fetched")
    parsed = allow.check(url)
    if parsed.scheme == "ftp":
        return _open_ftp(parsed, allow, max_bytes=max_bytes, timeout_s=timeout_s)
    return _open_http(parsed, allow, run, max_bytes=max_bytes, timeout_s=timeout_s)


def _said(e: object) -> str:
    """An error's text as it may be recorded: a source's words are untrusted (an error can
    quote what it sent), so at most 200 printable characters."""
    text = "".join(c if c.isprintable() else " " for c in str(e))
    return text[:200] + ("..." if len(text) > 200 else "")


def _declared(size: int | None, max_bytes: int, where: str) -> int:
    if size is None:
        raise ImportFailed(f"{where} did not say how large the file is: not imported")
    if size > max_bytes:
        raise ImportFailed(
            f"{where} has {size} bytes, more than the limit of {max_bytes} (import_max_bytes)"
        )
    return size


def _held_to(size: int, chunks: Iterator[bytes], where: str) -> Iterator[bytes]:
    """`chunks`, refused once they exceed `size`, and at the end if they fall short."""
    done = 0
    for chunk in chunks:
        done += len(chunk)
        if done > size:
            raise ImportFailed(f"{where} sent more than the {size} bytes it declared")
        yield chunk
    if done < size:
        raise SourceUnavailable(f"{where} ended after {done} of {size} bytes")


# --- http, https -----------------------------------------------------------------------------
def _open_http(
    url: URL, allow: ImportAllowList, run: Run[Any], *, max_bytes: int, timeout_s: float
) -> Source:
    async def session() -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(resolver=CheckingResolver(allow, DefaultResolver()))
        return aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout_s, sock_read=timeout_s),
            auto_decompress=False,
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
        )

    http: aiohttp.ClientSession = run(session())
    resp: aiohttp.ClientResponse | None = None

    def close() -> None:
        async def shut() -> None:
            if resp is not None:
                resp.release()
            await http.close()

        run(shut())

    try:
        for _ in range(MAX_REDIRECTS + 1):
            try:
                resp = run(http.get(url, allow_redirects=False))
            except aiohttp.ClientError as e:
                raise SourceUnavailable(f"{url.host}: {_said(e)}") from e
            except TimeoutError as e:
                raise SourceUnavailable(f"{url.host}: no answer within {timeout_s:g} s") from e
            if resp.status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                try:
                    nxt = url.join(URL(resp.headers["Location"]))
                except ValueError as e:
                    raise ImportFailed(f"{url.host}: redirect to an unreadable URL") from e
                resp.release()
                resp = None
                if nxt.scheme not in ("http", "https"):
                    raise ImportFailed(f"{url.host}: redirect to a {nxt.scheme!r} URL refused")
                url = allow.check(str(nxt))  # each hop is checked like the first
                continue
            break
        else:
            raise ImportFailed(f"more than {MAX_REDIRECTS} redirects from {url.host}")
        assert resp is not None
        where = _said(f"{url.host}{url.path}")
        if resp.status >= 500 or resp.status == 429:
            raise SourceUnavailable(f"{where}: HTTP {resp.status}")
        if resp.status != 200:
            raise ImportFailed(f"{where}: HTTP {resp.status}")
        if resp.headers.get("Content-Encoding", "identity") != "identity":
            raise ImportFailed(f"{where}: sent {_said(resp.headers['Content-Encoding'])}-encoded")
        size = _declared(resp.content_length, max_bytes, where)
    except BaseException:
        close()
        raise
    body = resp

    def chunks() -> Iterator[bytes]:
        while True:
            try:
                chunk: bytes = run(body.content.read(CHUNK))
            except aiohttp.ClientError as e:
                raise SourceUnavailable(f"{where}: {_said(e)}") from e
            except TimeoutError as e:
                raise SourceUnavailable(f"{where}: silent for {timeout_s:g} s") from e
            if not chunk:
                return
            yield chunk

    return Source(size, _held_to(size, chunks(), where), close)


# --- ftp ---------------------------------------------------------------------------------------
def _checked_address(url: URL, allow: ImportAllowList) -> tuple[str, int]:
    """An address of the URL's host that the allow-list lets through (names resolved here,
    every address they resolve to checked, as for http)."""
    host, port = url.raw_host or "", url.port or 21
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise SourceUnavailable(f"{host}: {_said(e)}") from e
    results = [
        ResolveResult(hostname=host, host=str(i[4][0]), port=port, family=i[0], proto=i[2], flags=0)
        for i in infos
    ]
    allow.check_resolved(host, results)
    return results[0]["host"], port


def _open_ftp(url: URL, allow: ImportAllowList, *, max_bytes: int, timeout_s: float) -> Source:
    path = unquote(url.raw_path).lstrip("/")
    if not path or any(c in path for c in "\r\n\0"):
        raise ImportFailed(f"ftp URL {url.host}{url.raw_path} names no file")
    address, port = _checked_address(url, allow)
    where = _said(f"{url.host}/{path}")
    ftp = ftplib.FTP(timeout=timeout_s)
    # ftplib's default: the passive data connection goes to the host checked above, never
    # to the address the server's PASV reply names (which could be anywhere)
    assert not getattr(ftp, "trust_server_pasv_ipv4_address", False)
    data: socket.socket | None = None

    def close() -> None:
        if data is not None:
            data.close()
        with contextlib.suppress(OSError):
            ftp.close()

    try:
        ftp.connect(address, port)
        ftp.login()  # anonymous: a URL with credentials is refused before this
        ftp.voidcmd("TYPE I")
        try:
            size = ftp.size(path)
        except ftplib.error_perm as e:
            raise ImportFailed(f"{where}: {_said(e)}") from e
        except ValueError as e:
            raise ImportFailed(f"{where}: the server's SIZE answer is not a number") from e
        if size is not None and size < 0:
            raise ImportFailed(f"{where}: the server says the file has {size} bytes")
        size = _declared(size, max_bytes, where)
        try:
            data = ftp.transfercmd(f"RETR {path}")
        except ftplib.error_perm as e:
            raise ImportFailed(f"{where}: {_said(e)}") from e
    except ImportFailed:
        close()
        raise
    except (OSError, EOFError, ftplib.Error) as e:
        close()
        raise SourceUnavailable(f"{where}: {_said(e)}") from e
    conn = data

    def chunks() -> Iterator[bytes]:
        while True:
            try:
                chunk = conn.recv(CHUNK)
            except OSError as e:
                raise SourceUnavailable(f"{where}: {_said(e)}") from e
            if not chunk:
                return
            yield chunk

    return Source(size, _held_to(size, chunks(), where), close)
