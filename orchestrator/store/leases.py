"""Job leases with fencing tokens: at most one worker acts for a job at a time.

A worker takes the lease before running a step and renews it while the step runs. If the
worker dies, the lease expires after `lease_ms` and the router dispatches the job again.
Each new lease gets a higher fencing token; the job store refuses writes that carry an
older one, so a worker that was merely slow cannot record over its successor.
"""

from __future__ import annotations

from typing import NamedTuple

from redis.asyncio import Redis

from orchestrator.store import keys, lua


class Taken(NamedTuple):
    """What a worker's lease and read brought: the job's doc and version, the fencing token
    and which queues are paused or rate-limited right now (read for a queued job only)."""

    token: int
    doc: str
    version: str
    controlled: frozenset[str]


class Leases:
    def __init__(self, redis: Redis, lease_ms: int):
        self.redis = redis
        self.lease_ms = lease_ms
        self._renew = redis.register_script(lua.RENEW_LEASE)
        self._release = redis.register_script(lua.RELEASE_LEASE)
        self._acquire_read = redis.register_script(lua.ACQUIRE_AND_READ)
        self._release_push = redis.register_script(lua.RELEASE_AND_PUSH)

    async def acquire_and_read(self, job_id: str) -> Taken | None:
        """(token, job doc, version, queues under a pause or rate limit: for a queued job
        only), or None if another worker holds the job; for a job that is gone,
        (0, "", "", ()), and no lease was taken."""
        res = await self._acquire_read(
            keys=[keys.lease(job_id), keys.fence(job_id), keys.job(job_id), keys.QUEUE_CONTROLS],
            args=[self.lease_ms],
        )
        if res is None:
            return None
        controlled = frozenset(str(q) for q in res[3]) if len(res) > 3 else frozenset()
        return Taken(int(res[0]), res[1], res[2], controlled)

    async def release_and_push(
        self, job_id: str, token: int, messages: list[tuple[str, str]]
    ) -> None:
        """Release the lease, then LPUSH each (queue, message): the next worker to take one
        of them finds the lease free."""
        await self._release_push(
            keys=[keys.lease(job_id), *(q for q, _ in messages)],
            args=[token, *(m for _, m in messages)],
        )

    async def renew(self, job_id: str, token: int) -> bool:
        return bool(await self._renew(keys=[keys.lease(job_id)], args=[token, self.lease_ms]))

    async def release(self, job_id: str, token: int) -> None:
        await self._release(keys=[keys.lease(job_id)], args=[token])

    async def revoke(self, job_id: str) -> None:
        """Take the lease from whoever holds it: that worker's next fenced write is refused
        (an operator ended the job by hand)."""
        await self.redis.delete(keys.lease(job_id))

    async def held(self, job_id: str) -> bool:
        return bool(await self.redis.exists(keys.lease(job_id)))

    async def remaining_ms(self, job_id: str) -> int:
        """How long the job's lease still runs (0: nobody holds it)."""
        return max(0, int(await self.redis.pttl(keys.lease(job_id))))

    async def holds(self, job_id: str, token: int) -> bool:
        """Whether `token` is the job's current lease (checked before acting on a server)."""
        return bool(await self.redis.get(keys.lease(job_id)) == str(token))
