"""HA bookkeeping: each VM's restart budget, since when a server has been unreachable, and
the proof that an unreachable server's guests are off (fencing)."""

from __future__ import annotations

import json
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from orchestrator.clock import now_ms
from orchestrator.store import keys
from orchestrator.store.events import entry_fields, make_event
from orchestrator.store.fence import Fence, transaction
from schemas import event_types as et


class HaStore:
    def __init__(self, redis: Redis, *, max_restarts: int, window_s: float):
        self.redis = redis
        self.max_restarts = max_restarts
        self.window_ms = int(window_s * 1000)

    async def count_restart(self, vm_id: str, attempt: str, *, fence: Fence | None = None) -> int:
        """Count restart `attempt` (a job id: counted once however often it runs) in the VM's
        sliding window; returns how many restarts the window holds now."""
        key = keys.ha_restarts(vm_id)
        now = now_ms()

        def write(pipe: Pipeline) -> None:
            pipe.zremrangebyscore(key, "-inf", now - self.window_ms)
            pipe.zadd(key, {attempt: now}, nx=True)
            pipe.zcard(key)
            pipe.pexpire(key, self.window_ms + 60_000)

        return int((await transaction(self.redis, fence, write))[2])

    async def mark_server_down(self, server: str) -> None:
        """Record since when the server is unreachable (kept from the first report)."""
        await self.redis.set(keys.server_down(server), now_ms(), nx=True)

    async def mark_server_up(self, server: str) -> None:
        """The server answers again: it is not down, and an old fencing proof no longer
        says anything about its guests."""
        await self.redis.delete(keys.server_down(server), keys.server_fenced(server))

    async def mark_fenced(
        self, server: str, proof: dict[str, Any], source: str, *, fence: Fence | None = None
    ) -> None:
        """Record proof that the server's guests are off (HA may then start them elsewhere),
        and publish it as a `server.fenced` event (waiting HA jobs resume on it)."""
        event = make_event(et.SERVER_FENCED, source, server, {"server": server, **proof})

        def write(pipe: Pipeline) -> None:
            pipe.set(keys.server_fenced(server), json.dumps({**proof, "at": now_ms()}))
            pipe.xadd(keys.EVENTS, entry_fields(event))

        await transaction(self.redis, fence, write)

    async def fenced(self, server: str) -> dict[str, Any] | None:
        """The proof that the server's guests are off, if any was recorded since it was
        last seen up."""
        raw = await self.redis.get(keys.server_fenced(server))
        return None if raw is None else dict(json.loads(raw))

    async def server_down_for_s(self, server: str) -> float:
        """How long the server's agent has found it unreachable (0: it is not down)."""
        since = await self.redis.get(keys.server_down(server))
        return (now_ms() - int(since)) / 1000 if since else 0.0
