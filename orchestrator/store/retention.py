"""Retention of finished jobs: a finished job is deleted once it is older than the retention,
or once more finished jobs are kept than the cap (the oldest go first).

The terminal commit puts every finished job on `jobs:ended` (score: the ms it ended), so
the candidates are always the head of one sorted set: finding them costs nothing however
many jobs are kept. Each batch is deleted by one Lua call (`lua.PURGE_JOBS`), which removes
the record (its step journal is inside) with every entry that names the job: each index, the
dispatch timer, its fence and lease, its wait and its expectations. A batch is bounded, as
Redis serves nothing else while a script runs. Idempotency keys are left to their own TTL.
Several routers may purge at once: a job already gone is skipped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from redis.asyncio import Redis

from orchestrator.clock import now_ms
from orchestrator.store import jobdoc, keys, lua
from schemas.jobs import JobState, WaitInfo

log = logging.getLogger("vmorch.retention")

PURGE_BATCH = 200  # jobs one script call deletes at most (a few ms of Redis time)


@dataclass(frozen=True)
class RetentionPolicy:
    retention_s: float  # a finished job is kept this long after it ended...
    max_kept: int  # ...and only while it is among the newest max_kept finished jobs


class JobRetention:
    def __init__(self, redis: Redis, policy: RetentionPolicy, *, batch: int = PURGE_BATCH):
        self.redis = redis
        self.policy = policy
        self.batch = batch
        self._purge = redis.register_script(lua.PURGE_JOBS)
        self._states = [keys.jobs_state(s) for s in JobState]

    async def expired(self) -> list[str]:
        """The oldest finished jobs that are past the retention or beyond the cap, at most
        one batch of them, oldest first."""
        limit = self.batch
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcard(keys.JOBS_ENDED)
        pipe.zrange(keys.JOBS_ENDED, 0, limit - 1, withscores=True)
        kept, oldest = await pipe.execute()
        over = kept - self.policy.max_kept
        cutoff = now_ms() - self.policy.retention_s * 1000
        out = []
        for i, (job_id, ended_ms) in enumerate(oldest):
            if i >= over and ended_ms > cutoff:
                break  # sorted by end time: every later job is newer still
            out.append(str(job_id))
        return out

    async def purge_batch(self) -> int:
        """Delete one batch of expired jobs; returns how many were deleted."""
        job_ids = await self.expired()
        if not job_ids:
            return 0
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(keys.job(job_id), "doc")
            pipe.get(keys.wait(job_id))
        replies = await pipe.execute()
        job_keys: list[str] = []
        for i, job_id in enumerate(job_ids):
            job_keys += self._keys_of(job_id, replies[2 * i], replies[2 * i + 1])
        deleted = int(
            await self._purge(
                keys=[keys.JOBS_ALL, keys.JOBS_ENDED, keys.JOBS_DUE, *self._states, *job_keys],
                args=[len(self._states), lua.PURGE_STRIDE, *job_ids],
            )
        )
        return deleted

    async def purge(self, max_batches: int) -> int:
        """Delete expired jobs, batch after batch, until none is left or `max_batches`
        batches ran (the rest waits for the next call). Returns how many were deleted."""
        total = 0
        for _ in range(max_batches):
            n = await self.purge_batch()
            total += n
            if n < self.batch:
                break
        return total

    @staticmethod
    def _keys_of(job_id: str, doc: str | None, wait: str | None) -> list[str]:
        """The keys PURGE_JOBS needs for one job (lua.PURGE_STRIDE of them, in its order).

        An unreadable record still goes, with what does not depend on its contents (its
        kind and VM indexes then keep the id: logged, and harmless to a listing, which
        skips ids without a record)."""
        none = lua.NONE_KEY
        kind = vm_jobs = queued = expect = waits_on_doc = waits_on = none
        if doc is not None:
            try:
                job = jobdoc.decode(doc)
            except ValueError:
                log.warning("job=%s unreadable record deleted; its kind/vm indexes keep it", job_id)
            else:
                kind, queued = keys.jobs_kind(job.kind), keys.jobs_queued(job.queue)
                if job.links.vm_id:
                    vm_jobs = keys.jobs_vm(job.links.vm_id)
                    expect = keys.expectations(job.links.vm_id)
                if job.wait is not None:
                    waits_on_doc = keys.waits_on(job.wait.subject)
        if wait is not None:
            try:
                waits_on = keys.waits_on(WaitInfo.model_validate_json(wait).subject)
            except ValueError:
                log.warning("job=%s unreadable wait deleted", job_id)
        return [
            keys.job(job_id),
            kind,
            vm_jobs,
            queued,
            keys.fence(job_id),
            keys.lease(job_id),
            keys.wait(job_id),
            waits_on,
            waits_on_doc,
            expect,
        ]
