"""One reader of the event stream per api process, fanned out to its open SSE streams.

Before, every SSE stream blocked in XREAD on a Redis connection of its own and decoded every
entry: N viewers cost N Redis connections (up to Redis' maxclients, starving workers and
routers) and N pydantic decodes per event (review H3). Here one task blocks in XREAD on one
dedicated connection, decodes each entry once, and appends it to the bounded queue of each
stream whose filter it matches. Streams read history from Redis only to resume.

A stream whose queue is full does not grow: its queue is emptied and it is marked behind,
and it reads from Redis again from the last entry it handled, in batches, before taking
queued entries again (skipping those it has sent). A slow client therefore costs at most
`sse_queue_max` queued references (to entries shared by all streams) and one history read of
HISTORY_BATCH entries, and misses nothing; a client that stops reading altogether is left to
the stream's write timeout.

The hub also keeps the caps on open streams (per token and per process), and ends the streams
of revoked tokens (one lookup per distinct token every TOKEN_RECHECK_S) and of gone clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import Counter, deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aredis
from aiohttp import web
from redis.exceptions import RedisError

from orchestrator.api.eventfilter import EventFilter, read_matching
from orchestrator.errors import TooManyStreams
from orchestrator.services import Services
from orchestrator.store import keys
from orchestrator.store.events import EventReader, stream_after
from schemas.api import EventGap
from schemas.events import Event

log = logging.getLogger("vmorch.api.hub")

BATCH = 500  # entries per XREAD of the hub
# entries per history read of one stream: a stream whose client stalls in the middle of one
# holds it (not shared), so this bounds a stalled stream's memory with sse_queue_max
HISTORY_BATCH = 100
BLOCK_MAX_MS = 1000  # one XREAD BLOCK (less when the socket timeout is short)
READ_RETRY_S = 1.0  # after a failed read
GONE_POLL_S = 0.5  # how often the hub looks for streams whose client has gone
TOKEN_RECHECK_S = 2.0  # how often the tokens of open streams are looked up again
RETRY_AFTER_S = 5  # the Retry-After of a 429 past a cap
_POOL_OWNED = {  # redis-py 8 puts objects bound to the shared pool among the kwargs
    "maint_notifications_pool_handler",
    "oss_cluster_maint_notifications_handler",
    "orig_socket_timeout",
}


@dataclass(frozen=True)
class Delivered:
    """A stream entry decoded once, shared by every stream it goes to."""

    sid: str
    event: Event
    raw: str  # the envelope as stored, sent as the SSE data without encoding it again


class Subscriber:
    """One open stream as the hub sees it: its token, its filter, its queue of live entries."""

    def __init__(self, token_id: str, flt: EventFilter, gone: Callable[[], bool], queue_max: int):
        self.token_id = token_id
        self.filter = flt
        self.gone = gone
        self.queue_max = queue_max
        self.queue: deque[Delivered] = deque()
        self.behind = False  # must read from Redis before taking queued entries
        self.ended: str | None = None  # why the hub ended the stream: revoked, gone, shutdown
        self.overflows = 0
        self._wake = asyncio.Event()

    def offer(self, d: Delivered) -> None:
        if self.behind or self.ended is not None:
            return  # its next read from Redis covers this entry
        if len(self.queue) >= self.queue_max:
            self.overflows += 1
            log.info(
                "an event stream of token %s fell behind; it catches up from Redis", self.token_id
            )
            self.fall_behind()
            return
        self.queue.append(d)
        self._wake.set()

    def fall_behind(self) -> None:
        self.queue.clear()
        self.behind = True
        self._wake.set()

    def end(self, reason: str) -> None:
        if self.ended is None:
            self.ended = reason
            self.queue.clear()
            self._wake.set()

    async def next(self, timeout_s: float) -> Delivered | None:
        """The next queued entry; None after `timeout_s` without one, or when the stream
        has fallen behind or been ended meanwhile."""
        if not self.queue and not self.behind and self.ended is None:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await self._wake.wait()
        if self.behind or self.ended is not None or not self.queue:
            return None
        return self.queue.popleft()


class EventHub:
    """The api process's one reader of the event stream and its open streams."""

    def __init__(self, services: Services):
        self._services = services
        self._reader = EventReader(services.redis)  # history reads, on the shared pool
        self._client = _dedicated(services.redis)
        timeout_s = self._client.connection_pool.connection_kwargs.get("socket_timeout")
        self._block_ms = int(min(BLOCK_MAX_MS, timeout_s * 500)) if timeout_s else BLOCK_MAX_MS
        self._subs: set[Subscriber] = set()
        self._per_token: Counter[str] = Counter()
        self._tasks: list[asyncio.Task[None]] = []
        self.position: str | None = None  # entries after it reach the subscribers
        self._wanted = asyncio.Event()  # set while some stream is open

    # --- the streams' side ------------------------------------------------------------------
    async def open(
        self, token_id: str, flt: EventFilter, gone: Callable[[], bool], after: str | None
    ) -> tuple[Subscriber, str]:
        """Register a stream (TooManyStreams past a cap) and return it with the position it
        starts after: `after`, read from Redis first, or the stream's newest entry now.

        The stream is registered before anything is read, so every entry newer than what it
        reads from Redis reaches its queue; `entries` drops what it has already sent."""
        settings = self._services.settings
        if len(self._subs) >= settings.sse_max_total:
            raise TooManyStreams(
                f"this api has {len(self._subs)} open event streams, the most it allows",
                RETRY_AFTER_S,
                details=[([], f"at most {settings.sse_max_total} per api process")],
            )
        if self._per_token[token_id] >= settings.sse_max_per_token:
            raise TooManyStreams(
                f"this token has {self._per_token[token_id]} open event streams, the most allowed",
                RETRY_AFTER_S,
                details=[(["header", "Authorization"], f"at most {settings.sse_max_per_token}")],
            )
        sub = Subscriber(token_id, flt, gone, settings.sse_queue_max)
        self._subs.add(sub)
        self._per_token[token_id] += 1
        try:
            start = None
            if self.position is None:
                # the hub idles: it goes on from the newest entry now, and so does this
                # stream (unless it resumes), so every entry after its start reaches it
                start = await self._reader.position()
                if self.position is None:
                    self.position = start
            self._wanted.set()
            if after is not None:
                sub.behind = True
                return sub, after
            return sub, start or await self._reader.position()
        except BaseException:
            self.close(sub)
            raise

    def close(self, sub: Subscriber) -> None:
        if sub in self._subs:
            self._subs.remove(sub)
            self._per_token[sub.token_id] -= 1
            if self._per_token[sub.token_id] <= 0:
                del self._per_token[sub.token_id]
        if not self._subs:
            self._wanted.clear()

    async def entries(
        self, sub: Subscriber, after: str, idle_s: float
    ) -> AsyncGenerator[Delivered | EventGap | None]:
        """What `sub` sends after `after`, in stream order and once each: entries read from
        Redis while it is behind (an EventGap first where entries were trimmed), then queued
        ones; None when nothing came for `idle_s`. Ends when the hub ends the stream."""
        pos = after  # the newest entry handled (sent or filtered out)
        while sub.ended is None:
            if sub.behind:
                sub.behind = False  # from here on new entries are queued again
                while sub.ended is None:
                    info, batch = await self._reader.after_checked(pos, HISTORY_BATCH)
                    if info.lost_after(pos):
                        yield EventGap(after=pos, first_id=info.first_id)
                    for sid, fields in batch:
                        pos = sid
                        ev = read_matching(sid, fields, sub.filter, Event)
                        if ev is not None:
                            yield Delivered(sid, ev, fields["e"])
                    if len(batch) < HISTORY_BATCH:
                        break
                continue
            d = await sub.next(idle_s)
            if d is None:
                if not sub.behind and sub.ended is None:
                    yield None
            elif stream_after(d.sid, pos):
                pos = d.sid
                yield d

    def stats(self) -> dict[str, int]:
        """Open streams, entries queued (in all, and for the stream with the most), streams
        behind (reading from Redis, or not yet back to it), and overflows of open streams."""
        return {
            "streams": len(self._subs),
            "queued": sum(len(s.queue) for s in self._subs),
            "max_queued": max((len(s.queue) for s in self._subs), default=0),
            "behind": sum(s.behind for s in self._subs),
            "overflows": sum(s.overflows for s in self._subs),
        }

    # --- the hub's tasks --------------------------------------------------------------------
    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._sweep())]

    def end_all(self, reason: str) -> None:
        for sub in list(self._subs):
            sub.end(reason)

    async def stop(self) -> None:
        self.end_all("shutdown")
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self._client.aclose()

    def _lag_all(self) -> None:
        for sub in self._subs:
            sub.fall_behind()

    async def _read(self) -> None:
        """Read the stream for ever on the dedicated connection and fan each entry out.
        After a failed read, entries trimmed meanwhile put every stream behind, so each reads
        from Redis and reports its gap; nothing is skipped silently. With no stream open it
        reads nothing; the stream that opens then sets where it goes on from."""
        reader, failed = EventReader(self._client), False
        while True:
            if not self._subs:
                # nobody to fan out to: read nothing (every entry would be parsed for no
                # one); the next stream to open takes the newest position (`open`)
                self.position = None
                await self._wanted.wait()
                continue
            try:
                if self.position is None:
                    self.position = await reader.position()
                    self._lag_all()  # streams opened before the position was known
                elif failed and (await reader.info()).lost_after(self.position):
                    self._lag_all()
                failed = False
                reply = await self._client.xread(
                    {keys.EVENTS: self.position}, count=BATCH, block=self._block_ms
                )
            except RedisError as e:
                if not failed:
                    log.warning("event hub: reading the stream failed (%s); retrying", e)
                failed = True
                await asyncio.sleep(READ_RETRY_S)
                continue
            batch = _entries(reply) if reply else []
            if batch:
                self.position = batch[-1][0]
                self._fan_out(batch)

    def _fan_out(self, batch: list[tuple[str, dict[str, str]]]) -> None:
        if not self._subs:
            return
        for sid, fields in batch:
            ev = self._reader.decode(sid, fields)
            if ev is None:
                continue
            d = Delivered(sid, ev, fields["e"])
            for sub in self._subs:
                if sub.filter(ev):
                    sub.offer(d)

    async def _sweep(self) -> None:
        """End the streams of gone clients (every GONE_POLL_S) and of revoked tokens (every
        TOKEN_RECHECK_S, one round trip for all distinct tokens)."""
        next_check = time.monotonic() + TOKEN_RECHECK_S
        while True:
            await asyncio.sleep(GONE_POLL_S)
            for sub in list(self._subs):
                if sub.gone():
                    sub.end("gone")
            if time.monotonic() < next_check or not self._per_token:
                continue
            next_check = time.monotonic() + TOKEN_RECHECK_S
            ids = set(self._per_token)
            try:
                alive = await self._services.tokens.existing(ids)
            except RedisError as e:
                log.warning("event hub: re-checking tokens failed (%s); next try soon", e)
                continue
            revoked = Counter(
                s.token_id for s in self._subs if s.ended is None and s.token_id not in alive
            )
            for sub in list(self._subs):
                if sub.token_id in revoked:
                    sub.end("revoked")
            for token_id, n in revoked.items():
                log.info("token %s is revoked: ending its %d event streams", token_id, n)


HUB = web.AppKey("vmorch_event_hub", EventHub)


def _dedicated(shared: aredis.Redis) -> aredis.Redis:
    """A client of its own (one connection) for the blocking XREAD, so it never holds one of
    the shared pool's connections; named so it can be told apart in CLIENT LIST."""
    pool = shared.connection_pool
    kw = {k: v for k, v in pool.connection_kwargs.items() if k not in _POOL_OWNED}
    kw.update(decode_responses=True, client_name=f"vmorch-events-{os.getpid()}")
    own = aredis.ConnectionPool(connection_class=pool.connection_class, max_connections=1, **kw)
    return aredis.Redis.from_pool(own)


def _entries(reply: Any) -> list[tuple[str, dict[str, str]]]:  # XREAD's reply, RESP2 or RESP3
    return list(next(iter(reply.values()))[0] if isinstance(reply, dict) else reply[0][1])
