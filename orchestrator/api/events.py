"""The event stream over HTTP: a filtered listing, Server-Sent Events, and one job followed live.

Streams take their entries from the process's one EventHub (`orchestrator.api.hub`), not from
a Redis connection each; they read from Redis themselves only to resume. The hub refuses a
stream past `sse_max_per_token` or `sse_max_total` (429, Retry-After), and ends streams whose
token is revoked or whose client has gone; a stream also ends when its client has taken no
data for WRITE_STALL_S, and when the app shuts down.

A reader resuming after an entry that has since been trimmed is told so, before anything
else: SSE sends an `events.gap` event (no id; its data is an envelope whose `data` is an
EventGap), and a listing page carries `gap`. Without it a client could not tell a quiet
stream from lost events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from redis.exceptions import RedisError

from orchestrator.api.eventfilter import EventFilter, read_matching
from orchestrator.api.http import SERVICES, query_int, respond, services
from orchestrator.api.hub import HUB, EventHub, Subscriber
from orchestrator.api.middleware import caller
from orchestrator.errors import ValidationFailed
from orchestrator.store.events import EventReader, make_event
from schemas.api import EventGap, EventPage, StreamEvent
from schemas.event_types import EVENTS_GAP, SOURCE_API
from schemas.events import Event
from schemas.jobs import JobState

log = logging.getLogger("vmorch.api.streams")

KEEPALIVE_S = 15.0  # a comment after this long without anything to send
WRITE_STALL_S = 30.0  # a client that takes no data for this long is disconnected
SCAN_MAX = 5000  # stream entries one listing call reads at most
BATCH = 500
_ID = re.compile(r"^(\d{1,20})(?:-(\d{1,20}))?$")
_U64 = 2**64 - 1
_TERMINAL = {f"job.{s.value}" for s in JobState if s.terminal}


def setup_streams(app: web.Application) -> None:
    """Call after the services' cleanup context: the hub starts after them and stops before.
    Open streams end on shutdown at once, not after aiohttp's shutdown timeout (60 s in
    run_app) has run out and cancelled them."""

    async def hub(app: web.Application) -> AsyncIterator[None]:
        app[HUB] = EventHub(app[SERVICES])
        await app[HUB].start()
        yield
        await app[HUB].stop()

    async def stopping(app: web.Application) -> None:
        if HUB in app:
            app[HUB].end_all("shutdown")

    app.cleanup_ctx.append(hub)
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


async def list_events(request: web.Request) -> web.Response:
    """Matching events after `after`, oldest first. Entries are matched on their raw
    attributes and only matching ones are validated; a call reads at most SCAN_MAX."""
    flt = EventFilter.from_query(request)
    limit = query_int(request, "limit", 100, 1, 1000)
    after = _start(request, header=False)
    reader = EventReader(services(request).redis)
    pos, gap = after or "0-0", None  # no entry has id 0-0
    items: list[StreamEvent] = []
    scanned = 0
    while scanned < SCAN_MAX:
        count = min(BATCH, SCAN_MAX - scanned)
        if after is not None and scanned == 0:
            info, entries = await reader.after_checked(pos, count)
            if info.lost_after(pos):
                gap = EventGap(after=pos, first_id=info.first_id)
        else:
            entries = await reader.after(pos, count)
        for sid, fields in entries:
            scanned, pos = scanned + 1, sid
            ev = read_matching(sid, fields, flt, StreamEvent, stream_id=sid)
            if ev is not None:
                items.append(ev)
                if len(items) == limit:
                    return respond(EventPage(items=items, next_after=sid, gap=gap))
        if len(entries) < count:
            return respond(EventPage(items=items, gap=gap))
    return respond(EventPage(items=items, next_after=pos, gap=gap))


def _sse(eid: str | None, type_: str, data: str) -> bytes:
    lines = [f"id: {eid}"] if eid else []
    lines.append("event: " + " ".join(type_.splitlines()))
    lines += [f"data: {line}" for line in data.splitlines() or [""]]
    return ("\n".join(lines) + "\n\n").encode()


def _gap(gap: EventGap) -> bytes:
    """No id: the client's Last-Event-ID stays the last real entry it got."""
    event = make_event(EVENTS_GAP, SOURCE_API, None, gap.model_dump())
    return _sse(None, event.type, event.model_dump_json())


def _gone(request: web.Request) -> Callable[[], bool]:
    def gone() -> bool:
        transport = request.transport
        return transport is None or transport.is_closing()

    return gone


async def _write(request: web.Request, resp: web.StreamResponse, data: bytes) -> None:
    """Write, or raise ConnectionResetError once the client has taken nothing for
    WRITE_STALL_S (its connection is then dropped: it would hold a stream slot for ever)."""
    try:
        async with asyncio.timeout(WRITE_STALL_S):
            await resp.write(data)
    except TimeoutError:
        log.info("closing an event stream whose client took no data for %.0f s", WRITE_STALL_S)
        if request.transport is not None:
            request.transport.abort()
        raise ConnectionResetError("client stalled") from None


async def _follow(
    request: web.Request,
    sub: Subscriber,
    after: str,
    until: Callable[[Event], bool] = lambda _: False,
    first: bytes = b": connected\n\n",
    follow: bool = True,
) -> web.StreamResponse:
    """Answer with SSE: `first`, then what the hub gives `sub` after `after` until
    `until(event)`, or the hub ends the stream."""
    resp = web.StreamResponse(headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    resp.content_type = "text/event-stream"
    await resp.prepare(request)
    try:
        await _write(request, resp, first)  # sends the headers now, not with the first event
        if follow:
            items = request.app[HUB].entries(sub, after, KEEPALIVE_S)
            async with contextlib.aclosing(items):
                async for item in items:
                    if item is None:
                        await _write(request, resp, b": keep-alive\n\n")
                    elif isinstance(item, EventGap):
                        await _write(request, resp, _gap(item))
                    else:
                        await _write(request, resp, _sse(item.sid, item.event.type, item.raw))
                        if until(item.event):
                            break
        if sub.ended == "gone":
            return resp
        if sub.ended == "revoked":
            await _write(request, resp, b": token revoked\n\n")
        await resp.write_eof()
    except ConnectionResetError:
        pass  # the client went away while we wrote
    except RedisError:
        log.exception("event stream read failed; ending the stream (clients resume)")
        with contextlib.suppress(ConnectionResetError):
            await resp.write_eof()
    return resp


async def stream_events(request: web.Request) -> web.StreamResponse:
    flt, after = EventFilter.from_query(request), _start(request)
    hub = request.app[HUB]
    sub, after = await hub.open(caller(request).id, flt, _gone(request), after)
    try:
        return await _follow(request, sub, after)
    finally:
        hub.close(sub)


async def stream_job(request: web.Request) -> web.StreamResponse:
    """Duplicates: events after `after` that the snapshot already shows are sent as well."""
    store, job_id, hub = services(request).jobs, request.match_info["job_id"], request.app[HUB]
    # registered and positioned before the snapshot: no transition falls in between
    sub, after = await hub.open(
        caller(request).id, EventFilter(subject=job_id), _gone(request), None
    )
    try:
        job = await store.get(job_id)  # NotFound: 404
        return await _follow(
            request,
            sub,
            after,
            lambda ev: ev.type in _TERMINAL,
            first=_sse(None, "job.snapshot", job.model_dump_json()),
            follow=not job.state.terminal,
        )
    finally:
        hub.close(sub)
