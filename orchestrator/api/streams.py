"""The event stream over HTTP: a filtered listing, Server-Sent Events, and one job followed live.

Blocking reads (XREAD BLOCK) run on a dedicated Redis connection per SSE stream: a pool of one,
cloned from the app's client settings with a socket timeout longer than the block, and closed
when the stream ends. The shared client is not used for them because redis-py's pool holds at
most 100 connections (every blocked stream would hold one, and other requests would fail once
they are taken) and times reads out after 5 s by default. A stream ends when the client goes
(checked every POLL_S while blocked) or when the app shuts down (`setup_streams`).
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
from pydantic import Field
from redis.exceptions import RedisError

from orchestrator import keys
from orchestrator.api.handlers import JOBS, _query_int, respond
from orchestrator.api.routing import Query, Route
from orchestrator.errors import ValidationFailed
from schemas.api import Role
from schemas.base import Frozen
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
_POOL_OWNED = {"maint_notifications_pool_handler", "oss_cluster_maint_notifications_handler"}
_TERMINAL = {f"job.{s.value}" for s in JobState if s.terminal}


class StreamEvent(Event):
    stream_id: str = Field(description="Redis stream entry id: pass it as `after` or Last-Event-ID")


class EventPage(Frozen):
    items: list[StreamEvent]
    next_after: str | None = Field(
        default=None, description="`after` of the next page; null at the end of the stream"
    )


def setup_streams(app: web.Application) -> None:
    """Make open streams end cleanly on shutdown instead of at aiohttp's shutdown timeout."""
    stop = asyncio.Event()

    async def stopping(_: web.Application) -> None:
        stop.set()

    app[STOPPING] = stop
    app.on_shutdown.append(stopping)


# --- input --------------------------------------------------------------------------------
def _stream_id(raw: str, loc: list[str | int]) -> tuple[int, int]:
    m = _ID.match(raw)
    if m is None or max(int(m[1]), int(m[2] or 0)) > _U64:
        raise ValidationFailed(
            f"{loc[-1]} is not a stream entry id",
            details=[(loc, "must be <ms>-<seq> as in stream_id (a bare <ms> means <ms>-0)")],
        )
    return int(m[1]), int(m[2] or 0)


def _start(request: web.Request) -> str | None:
    """The entry id to read after: Last-Event-ID, else ?after=, else None."""
    header, after = request.headers.get("Last-Event-ID"), request.query.get("after")
    if header:
        ms, seq = _stream_id(header, ["header", "Last-Event-ID"])
    elif after:
        ms, seq = _stream_id(after, ["query", "after"])
    else:
        return None
    return f"{ms}-{seq}"


def _matcher(request: web.Request) -> Callable[[Event], bool]:
    q = request.query
    glob, subject, source = q.get("type") or None, q.get("subject") or None, q.get("source") or None

    def match(ev: Event) -> bool:
        return (
            (glob is None or fnmatch.fnmatchcase(ev.type, glob))
            and (subject is None or ev.subject == subject)
            and (source is None or ev.source == source)
        )

    return match


def _decode(eid: str, fields: dict[str, str]) -> StreamEvent | None:
    try:
        return StreamEvent.model_validate({**json.loads(fields["e"]), "stream_id": eid})
    except (KeyError, TypeError, ValueError) as e:  # pydantic's ValidationError is a ValueError
        log.warning("skipping unreadable event %s: %s", eid, e)
        return None


# --- listing ------------------------------------------------------------------------------
async def list_events(request: web.Request) -> web.Response:
    match = _matcher(request)
    limit = _query_int(request, "limit", 100, 1, 1000)
    after = request.query.get("after")
    if after:
        ms, seq = _stream_id(after, ["query", "after"])
        if (ms, seq) == (_U64, _U64):  # the largest id: Redis refuses an interval after it
            return respond(EventPage(items=[]))
        start = f"({ms}-{seq}"
    else:
        start = "-"
    redis = request.app[JOBS].redis
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


# --- Server-Sent Events -------------------------------------------------------------------
def _sse(eid: str | None, type_: str, data: str) -> bytes:
    lines = [f"id: {eid}"] if eid else []
    lines.append("event: " + " ".join(type_.splitlines()))
    lines += [f"data: {line}" for line in data.splitlines() or [""]]
    return ("\n".join(lines) + "\n\n").encode()


async def _open(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    resp.content_type = "text/event-stream"
    await resp.prepare(request)
    await resp.write(b": connected\n\n")  # sends the headers now, not with the first event
    return resp


async def _last_id(redis: aredis.Redis) -> str:
    newest = await redis.xrevrange(keys.EVENTS, count=1)
    return str(newest[0][0]) if newest else "0-0"


def _dedicated(shared: aredis.Redis) -> aredis.Redis:
    pool = shared.connection_pool
    kw = {
        k: v
        for k, v in pool.connection_kwargs.items()
        if k not in _POOL_OWNED and not k.startswith("orig_")
    }
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


def _entries(reply: Any) -> list[Entry]:
    if not reply:
        return []
    if isinstance(reply, dict):  # RESP3
        return list(next(iter(reply.values()))[0])
    return list(reply[0][1])


async def _tail(request: web.Request, after: str) -> AsyncGenerator[list[Entry]]:
    """Batches of entries after `after`; an empty batch when a block timed out. Ends when the
    client is gone or the app stops; closing it releases the connection and the tasks."""
    client = _dedicated(request.app[JOBS].redis)
    gone = asyncio.ensure_future(_gone(request, request.app.get(STOPPING) or asyncio.Event()))
    read: asyncio.Future[Any] | None = None
    try:
        while not gone.done():
            xread = client.xread({keys.EVENTS: after}, count=BATCH, block=BLOCK_MS)
            read = asyncio.ensure_future(xread)
            await asyncio.wait({read, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not read.done():
                return
            batch = _entries(read.result())
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
    resp: web.StreamResponse,
    after: str,
    match: Callable[[Event], bool],
    until: Callable[[Event], bool] = lambda _: False,
) -> None:
    """Write matching events after `after` until `until(event)`, the client goes or the app
    stops."""
    written = time.monotonic()
    try:
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
                        return
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


async def stream_events(request: web.Request) -> web.StreamResponse:
    match = _matcher(request)
    after = _start(request) or await _last_id(request.app[JOBS].redis)
    resp = await _open(request)
    await _follow(request, resp, after, match)
    return resp


async def stream_job(request: web.Request) -> web.StreamResponse:
    store, job_id = request.app[JOBS], request.match_info["job_id"]
    after = await _last_id(store.redis)  # before the snapshot: no transition falls in between
    job = await store.get(job_id)  # NotFound: 404
    resp = await _open(request)
    try:
        await resp.write(_sse(None, "job.snapshot", job.model_dump_json()))
        if job.state.terminal:
            await resp.write_eof()
            return resp
    except ConnectionResetError:
        return resp

    def until(ev: Event) -> bool:
        return ev.type in _TERMINAL

    await _follow(request, resp, after, lambda ev: ev.subject == job_id, until)
    return resp


def stream_routes() -> list[Route]:
    viewer = Role.VIEWER
    filters = (
        Query("type", "event type, an fnmatch glob (vm.lifecycle.*)"),
        Query("subject", "exact subject (a job or VM id)"),
        Query("source", "exact source (libvirt://server-1)"),
    )
    after = Query("after", "stream_id to start after (exclusive)")
    return [
        Route(
            "GET",
            "/v1/events",
            list_events,
            "Events oldest first, filtered; paged by next_after",
            viewer,
            response=EventPage,
            query=(*filters, after, Query("limit", "page size (1-1000)", {"type": "integer"})),
        ),
        Route(
            "GET",
            "/v1/events/stream",
            stream_events,
            "Follow events as text/event-stream (SSE id: stream_id; new events only unless "
            "Last-Event-ID or after is given)",
            viewer,
            query=(*filters, after),
            headers=(Query("Last-Event-ID", "resume after this stream_id"),),
        ),
        Route(
            "GET",
            "/v1/jobs/{job_id}/stream",
            stream_job,
            "Follow one job as text/event-stream: job.snapshot, then its events until it ends",
            viewer,
        ),
    ]
