"""Durable waits: a step waits for an event without holding a worker.

A wait is stored in Redis with its filter, its deadline and the stream position taken
before the step acted. The router resumes the job when a matching event arrives; the
job's dispatch timer (`jobs:due`) fires at the deadline. An event that arrived between the
action and the registration still counts: registering scans the stream from that position.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from orchestrator.store import keys, lua
from orchestrator.store.events import EventReader, stream_after
from orchestrator.store.fence import Fence, transaction
from schemas.events import Event
from schemas.jobs import JobState, WaitInfo

SCAN_LIMIT = 5000  # stream entries a registration reads at most to find an early event


def _matches(info: WaitInfo, event: Event) -> bool:
    return event.subject == info.subject and any(
        fnmatch.fnmatchcase(event.type, t) for t in info.types
    )


class Waits:
    def __init__(self, redis: Redis):
        self.redis = redis
        self.reader = EventReader(redis)
        self._claim = redis.register_script(lua.CLAIM_WAIT)

    async def position(self) -> str:
        """Where the stream stands now: take it before acting, register the wait with it."""
        return await self.reader.position()

    async def register(
        self, job_id: str, info: WaitInfo, *, fence: Fence | None = None
    ) -> Event | None:
        """Store the wait; returns a matching event already on the stream, if any."""

        def write(pipe: Pipeline) -> None:
            pipe.set(keys.wait(job_id), info.model_dump_json())
            pipe.sadd(keys.waits_on(info.subject), job_id)

        await transaction(self.redis, fence, write)
        start = info.since
        read = 0
        while read < SCAN_LIMIT:
            batch = await self.reader.after(start, 500)
            if not batch:
                return None
            for sid, fields in batch:
                event = self.reader.decode(sid, fields)
                if event is not None and _matches(info, event):
                    await self._claim(
                        keys=[keys.wait(job_id), keys.waits_on(info.subject)],
                        args=[job_id, event.model_dump_json()],
                    )
                    return event
            start = batch[-1][0]
            read += len(batch)
        return None

    async def get(self, job_id: str) -> WaitInfo | None:
        raw = await self.redis.get(keys.wait(job_id))
        return None if raw is None else WaitInfo.model_validate_json(raw)

    async def clear(self, job_id: str, subject: str, *, fence: Fence | None = None) -> None:
        def write(pipe: Pipeline) -> None:
            pipe.delete(keys.wait(job_id))
            pipe.srem(keys.waits_on(subject), job_id)

        await transaction(self.redis, fence, write)

    async def subjects_waited_on(self, subjects: list[str | None]) -> set[str]:
        """Which of `subjects` some job waits on (one round trip for a batch of events)."""
        if not any(subjects):
            return set()
        pipe = self.redis.pipeline(transaction=False)
        waited_on = self.queue_waited_on(pipe, subjects)
        return waited_on(await pipe.execute())

    @staticmethod
    def queue_any_waiting(pipe: Pipeline) -> None:
        """Queue the count of jobs in state `waiting` on `pipe`. A job enters that state
        before it registers its wait (`tasks.runner.waiting.begin`), so a count of 0 read
        after an event was appended means no wait can be missed by skipping that event."""
        pipe.zcard(keys.jobs_state(JobState.WAITING))

    @staticmethod
    def queue_waited_on(
        pipe: Pipeline, subjects: list[str | None]
    ) -> Callable[[list[Any]], set[str]]:
        """Queue `subjects_waited_on` on `pipe`; the function returned reads the answer from
        the replies of those commands (the pipeline's replies from there on)."""
        wanted = sorted({s for s in subjects if s})
        for s in wanted:
            pipe.exists(keys.waits_on(s))

        def answer(replies: list[Any]) -> set[str]:
            return {s for s, n in zip(wanted, replies[: len(wanted)], strict=True) if n}

        return answer

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
                    args=[job_id, event.model_dump_json()],
                )
                if claimed:
                    resumed.append(job_id)
        return resumed
