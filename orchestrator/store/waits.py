"""Durable waits: a step waits for an event without holding a worker.

A wait is stored in Redis with its filter, its deadline and the stream position taken
before the step acted. The router resumes the job when a matching event arrives; the
job's dispatch timer (`jobs:due`) fires at the deadline. An event that arrived between the
action and the registration still counts: registering scans the stream from that position.
"""

from __future__ import annotations

import fnmatch

from redis.asyncio import Redis

from orchestrator.store import keys
from schemas.events import Event
from schemas.jobs import WaitInfo

SCAN_LIMIT = 5000  # stream entries a registration reads at most to find an early event


def _matches(info: WaitInfo, event: Event) -> bool:
    return event.subject == info.subject and any(
        fnmatch.fnmatchcase(event.type, t) for t in info.types
    )


def stream_after(a: str, b: str) -> bool:
    """True when stream entry id `a` comes after `b`."""

    def parts(x: str) -> tuple[int, int]:
        ms, _, seq = x.partition("-")
        return int(ms), int(seq or 0)

    return parts(a) > parts(b)


class Waits:
    def __init__(self, redis: Redis):
        self.redis = redis
        self._claim = redis.register_script(_CLAIM)

    async def position(self) -> str:
        """The id of the newest stream entry ("0-0" for an empty stream)."""
        last = await self.redis.xrevrange(keys.EVENTS, count=1)
        return str(last[0][0]) if last else "0-0"

    async def register(self, job_id: str, info: WaitInfo) -> Event | None:
        """Store the wait; returns a matching event already on the stream, if any."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(keys.wait(job_id), info.model_dump_json())
        pipe.sadd(keys.waits_on(info.subject), job_id)
        await pipe.execute()
        start = info.since
        read = 0
        while read < SCAN_LIMIT:
            batch = await self.redis.xrange(keys.EVENTS, min=f"({start}", count=500)
            if not batch:
                return None
            for sid, fields in batch:
                event = Event.model_validate_json(fields["e"])
                if _matches(info, event):
                    await self._claim(
                        keys=[keys.wait(job_id), keys.waits_on(info.subject)],
                        args=[job_id, sid, event.model_dump_json()],
                    )
                    return event
            start = batch[-1][0]
            read += len(batch)
        return None

    async def get(self, job_id: str) -> WaitInfo | None:
        raw = await self.redis.get(keys.wait(job_id))
        return None if raw is None else WaitInfo.model_validate_json(raw)

    async def clear(self, job_id: str, subject: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(keys.wait(job_id))
        pipe.srem(keys.waits_on(subject), job_id)
        await pipe.execute()

    async def subjects_waited_on(self, subjects: list[str | None]) -> set[str]:
        """Which of `subjects` some job waits on (one round trip for a batch of events)."""
        wanted = sorted({s for s in subjects if s})
        if not wanted:
            return set()
        pipe = self.redis.pipeline(transaction=False)
        for s in wanted:
            pipe.exists(keys.waits_on(s))
        return {s for s, n in zip(wanted, await pipe.execute(), strict=True) if n}

    async def on_event(self, stream_id: str, event: Event) -> list[str]:
        """Mark the waits `event` satisfies; returns the ids of the jobs to resume."""
        if not event.subject:
            return []
        resumed = []
        for job_id in await self.redis.smembers(keys.waits_on(event.subject)):
            info = await self.get(job_id)
            if info is None:
                await self.redis.srem(keys.waits_on(event.subject), job_id)
                continue
            if (
                info.matched is None
                and _matches(info, event)
                and stream_after(stream_id, info.since)
            ):
                claimed = await self._claim(
                    keys=[keys.wait(job_id), keys.waits_on(info.subject)],
                    args=[job_id, stream_id, event.model_dump_json()],
                )
                if claimed:
                    resumed.append(job_id)
        return resumed


# Records the matching event in the wait, once (the first match wins).
_CLAIM = """
-- KEYS: wait waits_on   ARGV: job_id stream_id event_json
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local w = cjson.decode(raw)
if w['matched'] ~= nil and w['matched'] ~= cjson.null then return 0 end
w['matched'] = cjson.decode(ARGV[3])
w['matched_stream_id'] = ARGV[2]
redis.call('SET', KEYS[1], cjson.encode(w))
redis.call('SREM', KEYS[2], ARGV[1])
return 1
"""
