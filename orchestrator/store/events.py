"""The event stream: building envelopes, appending them, and the one reader every consumer
uses (the router's consumer group, waits, the API's listing and SSE).

Appends never trim. The router trims on a timer (`EventLog.trim`), and only below what its
consumer group has handled, so no entry is dropped before a router has acted on it.
Entries that cannot be decoded are set aside in a dead-letter stream with their raw fields.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from orchestrator.store import keys, lua
from schemas.base import utcnow
from schemas.events import Event

log = logging.getLogger("vmorch.events")

Entry = tuple[str, dict[str, str]]
DEAD_LETTERS_KEPT = 10_000
TRIM_LIMIT = 10_000  # entries one trim call removes at most


def make_event(type_: str, source: str, subject: str | None, data: dict[str, Any]) -> Event:
    return Event(
        id=str(uuid.uuid4()), source=source, type=type_, subject=subject, time=utcnow(), data=data
    )


def entry_fields(event: Event) -> dict[str, str]:
    """A stream entry: the envelope, and its type and subject so that readers can skip
    entries without decoding them."""
    return {"e": event.model_dump_json(), "t": event.type, "s": event.subject or ""}


def stream_after(a: str, b: str) -> bool:
    """True when stream entry id `a` comes after `b`."""
    return _parts(a) > _parts(b)


def _parts(x: str) -> tuple[int, int]:
    ms, _, seq = x.partition("-")
    return int(ms), int(seq or 0)


@dataclass(frozen=True)
class StreamInfo:
    first_id: str | None  # the oldest entry still in the stream
    max_deleted_id: str  # the newest entry deleted by XDEL ("0-0": none); trims do not set it
    length: int
    entries_added: int = 0  # entries ever appended; more than `length`: some were removed
    last_id: str = "0-0"  # the newest id ever appended (the entry may have been removed)

    def lost_after(self, after: str) -> bool:
        """True when entries after `after` were removed: a reader resuming there has a gap.

        Redis records the newest XDEL'd id, but a trim only moves the first entry (it does
        not touch max_deleted_id, by design: redis/redis#13473). So a trim shows as: entries
        were removed, and `after` is older than the first entry kept (or, in a stream
        trimmed empty, than the newest id). In one case this says "gap" although nothing
        after `after` was lost: when `after` is itself the newest entry trimmed."""
        if stream_after(self.max_deleted_id, after) and (
            self.first_id is None or stream_after(self.first_id, after)
        ):
            return True
        if self.entries_added <= self.length:
            return False  # nothing was ever removed
        return stream_after(self.first_id or self.last_id, after)


MAX_ID = f"{2**64 - 1}-{2**64 - 1}"  # the largest entry id: nothing can come after it


class EventLog:
    """Appends events to the stream and keeps it bounded without losing unhandled entries."""

    def __init__(self, redis: Redis):
        self.redis = redis
        self._forget_consumer = redis.register_script(lua.FORGET_CONSUMER)
        self._publish_unexpected = redis.register_script(lua.PUBLISH_UNEXPECTED)

    async def publish(self, event: Event) -> str:
        entry_id: str = await self.redis.xadd(keys.EVENTS, entry_fields(event))
        return entry_id

    async def publish_many(self, events: Sequence[Event]) -> list[str]:
        """Append a batch in one pipelined round trip, in order."""
        if not events:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for event in events:
            pipe.xadd(keys.EVENTS, entry_fields(event))
        return [str(i) for i in await pipe.execute()]

    async def publish_unexpected(self, events: Sequence[Event]) -> int:
        """Append the leading events of a batch that no job can have caused, in order, in
        one round trip: up to the first VM event whose VM has an expectation recorded
        (`orchestrator.store.expectations`). Returns how many were appended; the caller
        attributes the rest and appends them after (`publish_many`)."""
        if not events:
            return 0
        expect = [
            keys.expectations(e.subject) if e.subject and e.type.startswith("vm.") else lua.NONE_KEY
            for e in events
        ]
        args = [x for e in events for x in entry_fields(e).values()]
        return int(await self._publish_unexpected(keys=[keys.EVENTS, *expect], args=args))

    async def trim(self, group: str, maxlen: int) -> int:
        """Trim to about `maxlen` entries, but never past the oldest entry the consumer
        group has not acknowledged or not yet read. Returns how many entries were removed.

        Cheap enough to run every second: XTRIM with `~` removes whole macro nodes, and
        LIMIT caps the work of one call."""
        length = int(await self.redis.xlen(keys.EVENTS))
        excess = length - maxlen
        if excess <= 0:
            return 0
        safe = await self._oldest_unhandled(group)
        if safe is None:  # the routers have handled everything: a plain length trim
            return int(await self.redis.xtrim(keys.EVENTS, maxlen=maxlen, approximate=True))
        # entries older than `safe` only, and no more than would leave `maxlen`
        return int(
            await self.redis.xtrim(
                keys.EVENTS, minid=safe, approximate=True, limit=min(excess, TRIM_LIMIT)
            )
        )

    async def forget_idle_consumers(self, group: str, idle_ms: int) -> list[str]:
        """Remove the group's consumers that have owned no entry and made no call for
        `idle_ms` (each router start adds a consumer name). A consumer with pending entries
        is kept: deleting it would drop them from the pending list unhandled. Removing a
        live but idle router is harmless: its next read makes its consumer again."""
        try:
            consumers = await self.redis.xinfo_consumers(keys.EVENTS, group)
        except ResponseError:  # no stream or no group yet
            return []
        gone = []
        for c in consumers:
            if int(c["pending"]) or int(c["idle"]) <= idle_ms:
                continue
            # checked again in the script: it may have read an entry since XINFO
            if await self._forget_consumer(keys=[keys.EVENTS], args=[group, c["name"]]):
                gone.append(str(c["name"]))
        return gone

    async def _oldest_unhandled(self, group: str) -> str | None:
        """The oldest entry `group` still owes an action: its oldest pending entry, or the
        first entry after its last-delivered id. None when the group does not exist (no
        router has ever run: nothing to protect)."""
        try:
            groups = await self.redis.xinfo_groups(keys.EVENTS)
        except ResponseError:
            return None
        info = next((g for g in groups if g["name"] == group), None)
        if info is None:
            return None
        candidates = []
        if int(info["pending"]):
            summary = await self.redis.xpending(keys.EVENTS, group)
            if summary and summary.get("min"):
                candidates.append(str(summary["min"]))
        nxt = await self.redis.xrange(keys.EVENTS, f"({info['last-delivered-id']}", "+", count=1)
        if nxt:
            candidates.append(str(nxt[0][0]))
        return min(candidates, key=_parts) if candidates else None


class EventReader:
    """Decodes stream entries: an unreadable one is recorded as a dead letter, never raised."""

    def __init__(self, redis: Redis):
        self.redis = redis

    async def position(self) -> str:
        """The id of the newest stream entry ("0-0" for an empty stream)."""
        last = await self.redis.xrevrange(keys.EVENTS, count=1)
        return str(last[0][0]) if last else "0-0"

    async def info(self) -> StreamInfo:
        try:
            raw = await self.redis.xinfo_stream(keys.EVENTS)
        except ResponseError:  # no stream yet
            return StreamInfo(None, "0-0", 0)
        return _info(raw)

    async def after(self, start: str, count: int) -> list[Entry]:
        """Raw entries after `start` (exclusive), oldest first."""
        if start == MAX_ID:  # Redis refuses an interval after the largest id
            return []
        return list(await self.redis.xrange(keys.EVENTS, f"({start}", "+", count=count))

    async def after_checked(self, start: str, count: int) -> tuple[StreamInfo, list[Entry]]:
        """`after` with the stream's info read in the same MULTI, so `info.lost_after(start)`
        tells whether entries between `start` and these were trimmed (a trim between two
        separate calls could otherwise go unnoticed)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.xinfo_stream(keys.EVENTS)
        if start != MAX_ID:
            pipe.xrange(keys.EVENTS, f"({start}", "+", count=count)
        raw, *entries = await pipe.execute(raise_on_error=False)
        if entries and isinstance(entries[0], Exception):
            raise entries[0]
        if isinstance(raw, ResponseError):  # no stream yet
            info = StreamInfo(None, "0-0", 0)
        elif isinstance(raw, Exception):
            raise raw
        else:
            info = _info(raw)
        return info, list(entries[0]) if entries else []

    def decode(self, sid: str, fields: dict[str, str]) -> Event | None:
        """The event of an entry, or None for an entry that is not one (see `dead_letter`)."""
        try:
            return Event.read(fields["e"])
        except (KeyError, TypeError, ValueError) as e:  # pydantic's ValidationError too
            log.warning("unreadable stream entry %s: %s", sid, str(e)[:200])
            return None

    async def dead_letter(self, sid: str, fields: dict[str, str], reason: str) -> None:
        """Keep an unreadable entry's raw fields (bounded), so it can be looked at later."""
        await self.redis.xadd(
            keys.EVENTS_DEAD,
            {"stream_id": sid, "reason": reason[:500], **{f"f.{k}": v for k, v in fields.items()}},
            maxlen=DEAD_LETTERS_KEPT,
            approximate=True,
        )


def _info(raw: dict[str, Any]) -> StreamInfo:
    first = raw.get("first-entry")
    return StreamInfo(
        first_id=str(first[0]) if first else None,
        max_deleted_id=str(raw.get("max-deleted-entry-id") or "0-0"),
        length=int(raw.get("length", 0)),
        entries_added=int(raw.get("entries-added", 0)),  # Redis 7.0 and later
        last_id=str(raw.get("last-generated-id") or "0-0"),
    )
