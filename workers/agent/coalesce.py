"""A Redis client that sends the reads issued together as one pipeline.

The agent attributes each event of a batch on its own (`Expectations.attribute`), all at
once. Each attribution starts with a read, and on this machine a round trip costs more CPU
than everything else an event needs. With this client those reads go to Redis as one
pipelined round trip, so a batch of reads costs about what one read costs. Commands other
than the plain reads below are not changed: writes, scripts and pipelines go as usual.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis

# Reads without side effects: sending them in one non-transactional pipeline gives each the
# same reply as sending it alone.
COALESCED = frozenset({"GET", "MGET", "HGET", "HGETALL", "HMGET", "EXISTS", "SMEMBERS"})


class CoalescingRedis(Redis):  # type: ignore[misc]  # redis-py is typed as Any here
    """`redis`'s connections; reads issued in the same loop iteration share a round trip."""

    def __init__(self, redis: Redis):
        super().__init__(connection_pool=redis.connection_pool)
        self._pending: list[tuple[tuple[Any, ...], dict[str, Any], asyncio.Future[Any]]] = []

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        if str(args[0]).upper() not in COALESCED:
            return await super().execute_command(*args, **options)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        if not self._pending:
            loop.call_soon(lambda: loop.create_task(self._flush()))
        self._pending.append((args, options, fut))
        return await fut

    async def _flush(self) -> None:
        batch, self._pending = self._pending, []
        try:
            pipe = self.pipeline(transaction=False)
            for args, options, _ in batch:
                pipe.execute_command(*args, **options)
            replies = await pipe.execute(raise_on_error=False)
        except Exception as e:
            replies = [e] * len(batch)
        for (_, _, fut), reply in zip(batch, replies, strict=True):
            if fut.done():  # its caller was cancelled
                continue
            if isinstance(reply, Exception):
                fut.set_exception(reply)
            else:
                fut.set_result(reply)
