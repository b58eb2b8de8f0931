"""Helpers for tests of the event streams: an SSE reader, writing events, the in-process
api with its Redis connections named, and waits on conditions (never fixed sleeps)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import redis.asyncio as aredis
from aiohttp.test_utils import TestServer

from orchestrator.api.app import make_app
from orchestrator.api.hub import HUB
from orchestrator.settings import Settings
from orchestrator.store import keys
from orchestrator.store.events import make_event

APP_CONNECTION = f"vmorch-test-app-{os.getpid()}"  # the in-process app's shared pool


class Lines(Protocol):
    async def readline(self) -> bytes: ...


@dataclass
class Sse:
    id: str | None
    event: str
    data: str


class SseReader:
    """Reads one text/event-stream response, event by event; comments are kept apart."""

    def __init__(self, lines: Lines):
        self.lines = lines
        self.comments: list[str] = []

    async def line(self) -> str | None:
        raw = await self.lines.readline()
        return raw.decode().rstrip("\r\n") if raw else None

    async def comment(self, timeout_s: float = 20) -> str:
        """The next comment line (events before it are dropped)."""
        async with asyncio.timeout(timeout_s):
            while not (line := await self.line() or "").startswith(":"):
                pass
        return line

    async def next(self, timeout_s: float = 20) -> Sse | None:
        """The next event, or None once the server ended the stream."""
        fields: dict[str, list[str]] = {}
        async with asyncio.timeout(timeout_s):
            while True:
                line = await self.line()
                if line is None:
                    return None
                if line.startswith(":"):
                    self.comments.append(line)
                elif line:
                    name, _, value = line.partition(":")
                    fields.setdefault(name, []).append(value.removeprefix(" "))
                elif fields:
                    ids, types = fields.get("id"), fields.get("event", ["message"])
                    data = "\n".join(fields.get("data", []))
                    return Sse(ids[-1] if ids else None, types[-1], data)

    async def until(self, stop_id: str, timeout_s: float = 20) -> list[Sse]:
        """Every event up to and including the one with id `stop_id`."""
        got: list[Sse] = []
        while not got or got[-1].id != stop_id:
            ev = await self.next(timeout_s)
            assert ev is not None, f"stream ended before {stop_id}; got {got}"
            got.append(ev)
        return got


async def until(pred: Callable[[], Awaitable[Any]], timeout_s: float = 20, what: str = "") -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := await pred()):
        assert time.monotonic() < deadline, f"timed out after {timeout_s}s waiting for {what}"
        await asyncio.sleep(0.02)
    return value


HUB_CONNECTION = f"vmorch-events-{os.getpid()}"  # the in-process app's hub names its own


async def blocked_reads(r: aredis.Redis, n: int) -> bool:
    """Exactly n connections of this process's app are in (or last ran) XREAD: the event
    hub's own (the api process of the session has one too, under its own pid)."""
    clients = await r.client_list()
    return len([c for c in clients if c["name"] == HUB_CONNECTION and c["cmd"] == "xread"]) == n


async def hub_idle(r: aredis.Redis, idle_s: int = 2) -> bool:
    """The hub's connection sent nothing for `idle_s` (longer than one blocking XREAD) and is
    not blocked: the hub has stopped reading."""
    hub = [c for c in await r.client_list() if c["name"] == HUB_CONNECTION]
    return bool(hub) and all(int(c["idle"]) >= idle_s and "b" not in c["flags"] for c in hub)


async def open_streams(server: TestServer, n: int) -> bool:
    return int(server.app[HUB].stats()["streams"]) == n


async def app_connections(r: aredis.Redis) -> dict[str, int]:
    """The in-process app's Redis connections by name: its shared pool and its hub's."""
    names = [c["name"] for c in await r.client_list()]
    return {n: names.count(n) for n in (APP_CONNECTION, HUB_CONNECTION)}


@contextlib.asynccontextmanager
async def app_server(redis_url: str, r: aredis.Redis, **settings: Any) -> AsyncIterator[TestServer]:
    """The api in this process, with `settings`, its pool's connections named APP_CONNECTION;
    on exit every stream task is gone and the hub's connection is closed."""
    url = f"{redis_url}?client_name={APP_CONNECTION}"
    srv = TestServer(make_app(Settings(redis_url=url, **settings)), host="127.0.0.1")
    await srv.start_server()
    try:
        yield srv
    finally:
        await srv.close()
        await until(lambda: blocked_reads(r, 0), 10, "the hub's connection to close")
        left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert not left, left


async def emit(
    r: aredis.Redis, type_: str, subject: str | None = None, source: str = "t://a", pad: int = 0
) -> str:
    """Append an event (with `pad` characters of data, to make it that much bigger)."""
    data: dict[str, Any] = {"n": time.monotonic_ns(), **({"pad": "x" * pad} if pad else {})}
    event = make_event(type_, source, subject, data)
    return str(await r.xadd(keys.EVENTS, {"e": event.model_dump_json()}))


async def emit_many(
    r: aredis.Redis, n: int, type_: str = "test.many", pad: int = 0, *, atomic: bool = False
) -> list[str]:
    """Append n events in one pipelined round trip; their ids, in order. `atomic`: in one
    MULTI, so that a blocked reader gets them all in one reply."""
    pipe = r.pipeline(transaction=atomic)
    for i in range(n):
        data: dict[str, Any] = {"i": i, **({"pad": "x" * pad} if pad else {})}
        pipe.xadd(keys.EVENTS, {"e": make_event(type_, "t://a", None, data).model_dump_json()})
    return [str(i) for i in await pipe.execute()]


@contextlib.asynccontextmanager
async def raw_stream(
    srv: TestServer, path: str, token: str, rcvbuf: int = 4096
) -> AsyncIterator[SseReader]:
    """An SSE request over a plain socket with a small receive buffer (HTTP/1.0: no chunked
    framing): a client that can stop reading, and make the server's writes block."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (str(srv.host), int(srv.port or 0)))
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
        await writer.drain()
        async with asyncio.timeout(10):
            status = await reader.readline()
            assert b" 200 " in status, status
            while (await reader.readline()).strip():
                pass  # the headers
        yield SseReader(reader)
    finally:
        writer.close()


async def sse(
    http: aiohttp.ClientSession, url: Any, headers: dict[str, str] | None = None
) -> tuple[aiohttp.ClientResponse, SseReader]:
    resp = await http.get(url, headers=headers, timeout=aiohttp.ClientTimeout(sock_read=30))
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"] == "text/event-stream"
    assert resp.headers["Cache-Control"] == "no-cache"
    assert resp.headers["X-Accel-Buffering"] == "no"
    return resp, SseReader(resp.content)
