"""Building event envelopes and reading the event stream."""

from __future__ import annotations

import uuid
from typing import Any

from redis.asyncio import Redis

from orchestrator.store import keys
from schemas.base import utcnow
from schemas.events import Event


def make_event(type_: str, source: str, subject: str | None, data: dict[str, Any]) -> Event:
    return Event(
        id=str(uuid.uuid4()), source=source, type=type_, subject=subject, time=utcnow(), data=data
    )


class EventLog:
    """Appends events to the stream, bounded to about `maxlen` entries."""

    def __init__(self, redis: Redis, maxlen: int):
        self.redis = redis
        self.maxlen = maxlen

    async def publish(self, event: Event) -> str:
        entry_id: str = await self.redis.xadd(
            keys.EVENTS, {"e": event.model_dump_json()}, maxlen=self.maxlen, approximate=True
        )
        return entry_id
