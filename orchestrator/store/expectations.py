"""Attribution: which vmorch job caused an event on a VM.

A step records, before it acts, the event types its action will cause on the VM (a restart
expects `vm.lifecycle.stopped` and `.started`). The router attributes a matching event to
that job while the job runs, or shortly after it ended (events can be processed after the
job that caused them finished). Attributed events never fire hooks meant for unexpected
changes. Recording the expectation first, rather than guessing from timing, means the
attribution does not depend on how fast the event travels.
"""

from __future__ import annotations

import fnmatch
import json
from datetime import timedelta

from redis.asyncio import Redis

from orchestrator.store import keys
from orchestrator.store.jobs import JobStore
from schemas.base import utcnow
from schemas.events import Event

GRACE_S = 5.0  # an event up to this long after its job ended is still the job's
FORGET_AFTER_S = GRACE_S * 4  # an entry of a job ended this long ago is removed
TTL_S = 24 * 3600


class Expectations:
    def __init__(self, redis: Redis):
        self.redis = redis

    async def expect(self, vm_id: str, job_id: str, types: list[str]) -> None:
        """Record that `job_id` is about to cause events of `types` on the VM."""
        key = keys.expectations(vm_id)
        entries: dict[str, str] = await self.redis.hgetall(key)
        # merged with what the job expected before (a restart expects the stop's events too,
        # which may arrive after it has declared the start's)
        before = entries.pop(job_id, None)
        merged = sorted(set(json.loads(before) if before else []) | set(types))
        stale = await self._long_ended(list(entries))
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(key, job_id, json.dumps(merged))
        if stale:
            pipe.hdel(key, *stale)
        pipe.expire(key, TTL_S)
        await pipe.execute()

    async def _long_ended(self, job_ids: list[str]) -> list[str]:
        """Those of `job_ids` that ended so long ago no event can be theirs any more.

        Without this, a VM that keeps getting jobs (its key's TTL refreshed each time) would
        keep an entry for every job it ever had, each looked at for every event about it."""
        if not job_ids:
            return []
        cutoff_ms = (utcnow().timestamp() - FORGET_AFTER_S) * 1000
        ended = await self.redis.zmscore(keys.JOBS_ENDED, job_ids)
        return [
            j for j, ms in zip(job_ids, ended, strict=True) if ms is not None and ms < cutoff_ms
        ]

    async def attribute(self, event: Event, jobs: JobStore) -> str | None:
        """The id of the job that caused `event`, or None when nothing vmorch did explains it."""
        if not event.subject or not event.type.startswith("vm."):
            return None
        key = keys.expectations(event.subject)
        entries: dict[str, str] = await self.redis.hgetall(key)
        for job_id, raw in entries.items():
            if not any(fnmatch.fnmatchcase(event.type, t) for t in json.loads(raw)):
                continue
            v = await jobs.get_versioned(job_id)
            if v is None:
                await self.redis.hdel(key, job_id)
                continue
            job = v.job
            if not job.state.terminal:
                return job_id
            if job.ended_at and event.time <= job.ended_at + timedelta(seconds=GRACE_S):
                return job_id
            if job.ended_at and utcnow() - job.ended_at > timedelta(seconds=FORGET_AFTER_S):
                await self.redis.hdel(key, job_id)  # long over: forget it
        return None
