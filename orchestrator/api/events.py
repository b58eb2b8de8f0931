"""The event stream over HTTP: a filtered listing, Server-Sent Events, and one job followed live.

Each SSE stream blocks in XREAD on its own Redis connection (a pool of one cloned from the app's
client, closed when the stream ends), not on the shared client: redis-py's pool holds at most 100
connections, which blocked streams would take from every other request, and times reads out
after 5 s. A stream ends when its client goes (looked at every POLL_S) or the app shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import logging
import re
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

import redis.asyncio as aredis
from aiohttp import web
from redis.exceptions import RedisError

from orchestrator.api.http import query_int, respond, services
from orchestrator.errors import ValidationFailed
from orchestrator.store import keys
from schemas.api import EventPage, StreamEvent
from schemas.events import Event
from schemas.jobs import JobState

log = logging.getLogger("vmorch.api.streams")

BLOCK_MS = 15_000  # one XREAD BLOCK; a keep-alive comment follows each one that times out
KEEPALIVE_S = 15.0  # also sent when only filtered-out events came for this long
POLL_S = 0.5  # how often a blocked stream looks for a gone client
SCAN_MAX = 5000  # stream entries one listing call reads at most
BATCH = 500
STOPPING = web.AppKey("vmorch_streams_stopping", asyncio.Event)
Entry = tuple[str, dict[str, str]]
_ID = re.compile(r"^(\d{1,20})(?:-(\d{1,20}))?$")
_U64 = 2**64 - 1
_POOL_OWNED = {  # redis-py 8 puts objects bound to the shared pool among the kwargs
    "maint_notifications_pool_handler",
    "oss_cluster_maint_notifications_handler",
    "orig_socket_timeout",
}
_TERMINAL = {f"job.{s.value}" for s in JobState if s.terminal}


def setup_streams(app: web.Application) -> None:
    """Call before startup: open streams then end at once on shutdown, not after aiohttp's
    shutdown timeout (60 s in run_app) has run out and cancelled them."""
    app[STOPPING] = stop = asyncio.Event()

    async def stopping(_: web.Application) -> None:
        stop.set()

    app.on_shutdown.append(stopping)


def _start(request: web.Request, header: bool = True) -> str | None:
    """The entry id to read after (Last-Event-ID, else ?after=), normalized, or None."""
    raw, loc = request.query.get("after"), ["query", "after"]
    if header and request.headers.get("Last-Event-ID"):
        raw, loc = request.headers["Last-Event-ID"], ["header", "Last-Event-ID"]
    if not raw:
        return None
    m = _ID.match(raw)
    if m is None or max(int(m[1]), int(m[2] or 0)) > _U64:
        raise ValidationFailed(
            f"{loc[1]} is not a stream entry id",
            details=[(list(loc), "must be <ms>-<seq> as in stream_id (<ms> means <ms>-0)")],
        )
    return f"{int(m[1])}-{int(m[2] or 0)}"


def _matcher(request: web.Request) -> Callable[[Event], bool]:
    glob, subject, source = (request.query.get(k) or None for k in ("type", "subject", "source"))
    return lambda ev: (
        (glob is None or fnmatch.fnmatchcase(ev.type, glob))
        and subject in (None, ev.subject)
        and source in (None, ev.source)
    )


def _decode(eid: str, fields: dict[str, str]) -> StreamEvent | None:
    try:
        return StreamEvent.model_validate({**json.loads(fields["e"]), "stream_id": eid})
    except (KeyError, TypeError, ValueError) as e:  # pydantic's ValidationError is a ValueError
        log.warning("skipping unreadable event %s: %s", eid, e)
        return None


async def list_events(request: web.Request) -> web.Response:
    match = _matcher(request)
    limit = query_int(request, "limit", 100, 1, 1000)
    after = _start(request, header=False)
    if after == f"{_U64}-{_U64}":  # the largest id: Redis refuses an interval after it
        return respond(EventPage(items=[]))
    start = f"({after}" if after else "-"
    redis = services(request).redis
    items: list[StreamEvent] = []
    scanned, last = 0, ""
    while scanned < SCAN_MAX:
        count = min(BATCH, SCAN_MAX - scanned)
        entries: list[Entry] = await redis.xrange(keys.EVENTS, min=start, max="+", count=count)
        for eid, fields in entries:
            scanned, last = scanned + 1, eid
            ev = _decode(eid, fields)
            if ev is not None and match(ev):
                items.append(ev)
                if len(items) == limit:
                    return respond(EventPage(items=items, next_after=eid))
        if len(entries) < count:
            return respond(EventPage(items=items))
        start = f"({last}"
    return respond(EventPage(items=items, next_after=last))


def _sse(eid: str | None, type_: str, data: str) -> bytes:
    lines = [f"id: {eid}"] if eid else []
    lines.append("event: " + " ".join(type_.splitlines()))
    lines += [f"data: {line}" for line in data.splitlines() or [""]]
    return ("\n".join(lines) + "\n\n").encode()


async def _last_id(redis: aredis.Redis) -> str:
    newest = await redis.xrevrange(keys.EVENTS, count=1)
    return str(newest[0][0]) if newest else "0-0"


def _dedicated(shared: aredis.Redis) -> aredis.Redis:
    pool = shared.connection_pool
    kw = {k: v for k, v in pool.connection_kwargs.items() if k not in _POOL_OWNED}
    kw.update(socket_timeout=BLOCK_MS / 1000 + 10, decode_responses=True)
    own = aredis.ConnectionPool(connection_class=pool.connection_class, max_connections=1, **kw)
    return aredis.Redis.from_pool(own)


async def _gone(request: web.Request, stop: asyncio.Event) -> None:
    """Return once the client has disconnected or the app is shutting down."""
    while not stop.is_set():
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), POLL_S)


def _entries(reply: Any) -> list[Entry]:  # XREAD's reply for one stream, RESP2 or RESP3
    return list(next(iter(reply.values()))[0] if isinstance(reply, dict) else reply[0][1])


async def _tail(request: web.Request, after: str) -> AsyncGenerator[list[Entry]]:
    """Batches of entries after `after`; an empty batch when a block timed out. Ends when the
    client is gone or the app stops; closing it releases the connection and the tasks."""
    client = _dedicated(services(request).redis)
    gone = asyncio.ensure_future(_gone(request, request.app.get(STOPPING) or asyncio.Event()))
    read: asyncio.Future[Any] | None = None
    try:
        while not gone.done():
            xread = client.xread({keys.EVENTS: after}, count=BATCH, block=BLOCK_MS)
            read = asyncio.ensure_future(xread)
            await asyncio.wait({read, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not read.done():
                return
            batch = _entries(read.result()) if read.result() else []
            if batch:
                after = batch[-1][0]
            yield batch
    finally:
        pending = [t for t in (gone, read) if t is not None and not t.done()]
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.wait(pending)
        await client.aclose()


async def _follow(
    request: web.Request,
    after: str,
    match: Callable[[Event], bool],
    until: Callable[[Event], bool] = lambda _: False,
    first: bytes = b": connected\n\n",
    follow: bool = True,
) -> web.StreamResponse:
    """Answer with SSE: `first`, then the matching events after `after` until `until(event)`,
    the client goes or the app stops."""
    resp = web.StreamResponse(headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    resp.content_type = "text/event-stream"
    await resp.prepare(request)
    try:
        await resp.write(first)  # sends the headers now, not with the first event
        written = time.monotonic()
        if follow:
            async with contextlib.aclosing(_tail(request, after)) as batches:
                async for batch in batches:
                    for eid, fields in batch:
                        ev = _decode(eid, fields)
                        if ev is None or not match(ev):
                            continue
                        await resp.write(_sse(eid, ev.type, fields["e"]))
                        written = time.monotonic()
                        if until(ev):
                            await resp.write_eof()
                            return resp
                    if not batch or time.monotonic() - written >= KEEPALIVE_S:
                        await resp.write(b": keep-alive\n\n")
                        written = time.monotonic()
        await resp.write_eof()
    except ConnectionResetError:
        pass  # the client went away while we wrote
    except RedisError:
        log.exception("event stream read failed; ending the stream (clients resume)")
        with contextlib.suppress(ConnectionResetError):
            await resp.write_eof()
    return resp


async def stream_events(request: web.Request) -> web.StreamResponse:
    match = _matcher(request)
    after = _start(request) or await _last_id(services(request).redis)
    return await _follow(request, after, match)


async def stream_job(request: web.Request) -> web.StreamResponse:
    """Duplicates: events after `after` that the snapshot already shows are sent as well."""
    store, job_id = services(request).jobs, request.match_info["job_id"]
    after = await _last_id(store.redis)  # before the snapshot: no transition falls in between
    job = await store.get(job_id)  # NotFound: 404
    return await _follow(
        request,
        after,
        lambda ev: ev.subject == job_id,
        lambda ev: ev.type in _TERMINAL,
        first=_sse(None, "job.snapshot", job.model_dump_json()),
        follow=not job.state.terminal,
    )
