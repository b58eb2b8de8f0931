"""Workers seen and queue depths: what `GET /v1/queue` reports about the fleet's capacity."""

from __future__ import annotations

import time

from redis.asyncio import Redis

from orchestrator.clock import now_ms
from orchestrator.store import keys
from schemas.api import QueueDepth, QueueStatus, WorkerSeen
from schemas.jobs import JobState

WORKER_TTL_S = 60  # a worker that has not beaten for this long no longer counts as seen
LISTED_MAX = 1000  # running and waiting job ids reported at most


class FleetStore:
    def __init__(self, redis: Redis):
        self.redis = redis

    async def beat(self, name: str, queues: list[str]) -> None:
        """A worker's heartbeat: seen now, consuming `queues`."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(keys.WORKERS, {name: now_ms()})
        pipe.set(keys.worker(name), ",".join(queues), ex=WORKER_TTL_S)
        await pipe.execute()

    async def forget_stale(self, older_than_s: float) -> int:
        """Drop workers not seen for `older_than_s` (each worker start adds a new name)."""
        cutoff = now_ms() - int(older_than_s * 1000)
        return int(await self.redis.zremrangebyscore(keys.WORKERS, "-inf", cutoff))

    async def status(self, queue_names: list[str]) -> QueueStatus:
        """Depth and oldest-job age per queue, running and waiting jobs, workers seen lately
        (one pipelined round trip for the counts, one for the workers' queues)."""
        now_s = time.time()
        pipe = self.redis.pipeline(transaction=False)
        for name in queue_names:
            pipe.zcard(keys.jobs_queued(name))
            pipe.zrange(keys.jobs_queued(name), 0, 0, withscores=True)
        pipe.zrevrange(keys.jobs_state(JobState.RUNNING), 0, LISTED_MAX - 1)
        pipe.zrevrange(keys.jobs_state(JobState.ABORTING), 0, LISTED_MAX - 1)
        pipe.zrevrange(keys.jobs_state(JobState.WAITING), 0, LISTED_MAX - 1)
        pipe.zrangebyscore(keys.WORKERS, (now_s - WORKER_TTL_S) * 1000, "+inf", withscores=True)
        replies = await pipe.execute()
        depths = []
        for i, name in enumerate(queue_names):
            depth, oldest = replies[2 * i], replies[2 * i + 1]
            age = round(now_s - oldest[0][1] / 1_000_000, 3) if oldest else None
            depths.append(QueueDepth(queue=name, depth=depth, oldest_job_age_s=age))
        running, aborting, waiting, seen = replies[2 * len(queue_names) :]
        qpipe = self.redis.pipeline(transaction=False)
        for name, _ in seen:
            qpipe.get(keys.worker(name))
        queues = await qpipe.execute() if seen else []
        workers = [
            WorkerSeen(
                name=name,
                last_seen_s_ago=round(now_s - ms / 1000, 3),
                queues=qs.split(",") if qs else [],
            )
            for (name, ms), qs in zip(seen, queues, strict=True)
        ]
        return QueueStatus(
            queues=depths, running=running + aborting, waiting=waiting, workers=workers
        )
