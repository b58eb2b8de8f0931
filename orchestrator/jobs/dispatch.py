"""Publishing `vmorch.advance` messages from asyncio code: one LPUSH on our own connection.

A publish that is lost (the process dies first) is not a lost job: the job is already in
Redis with a dispatch timer, and the router publishes it again when the timer passes.
"""

from __future__ import annotations

from redis.asyncio import Redis

from orchestrator.jobs.messages import TaskMessages


class Dispatcher:
    def __init__(self, redis: Redis, messages: TaskMessages):
        self.redis = redis
        self.messages = messages

    def message(self, job_id: str, queue: str) -> str:
        return self.messages.advance(job_id, queue)

    async def dispatch(self, job_id: str, queue: str) -> None:
        await self.redis.lpush(queue, self.message(job_id, queue))
