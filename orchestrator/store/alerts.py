"""Alerts in Redis, raised by workflows, acknowledged over the API.

Each alert's JSON is in the hash `alerts`; sorted sets keep the order: every alert by when
it was raised, the open ones likewise, the acknowledged ones by when they were. A listing
reads the newest `limit` ids of one set and only those records, however many alerts are
kept; the router deletes acknowledged alerts past the retention (open ones are kept until
an operator has seen them).
"""

from __future__ import annotations

import uuid

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from orchestrator.clock import now_ms
from orchestrator.errors import NotFound
from orchestrator.store import keys
from orchestrator.store.events import EventLog, entry_fields, make_event
from orchestrator.store.fence import Fence, transaction
from schemas.alerts import Alert
from schemas.base import utcnow
from schemas.event_types import SOURCE_ENGINE

LISTED_MAX = 1000  # alerts one listing returns at most (the newest)
PRUNE_BATCH = 500  # acknowledged alerts one prune call deletes at most per round trip


def _raised_us(alert: Alert) -> int:
    """The listing order: when the alert was raised, in µs (alerts raised by one workflow
    within a millisecond keep their order)."""
    return int(alert.at.timestamp() * 1_000_000)


class AlertStore:
    def __init__(self, redis: Redis, events: EventLog):
        self.redis = redis
        self.events = events

    async def raise_alert(
        self,
        type_: str,
        subject: str,
        message: str,
        job_id: str | None = None,
        *,
        fence: Fence | None = None,
    ) -> Alert:
        """Store the alert and publish it as an event of the same type."""
        alert = Alert(
            id=uuid.uuid4().hex[:12],
            type=type_,
            subject=subject,
            message=message,
            at=utcnow(),
            job_id=job_id,
        )
        event = make_event(
            type_,
            SOURCE_ENGINE,
            subject,
            {"alert_id": alert.id, "message": message, **({"job_id": job_id} if job_id else {})},
        )

        def write(pipe: Pipeline) -> None:
            pipe.hset(keys.ALERTS, alert.id, alert.model_dump_json())
            pipe.zadd(keys.ALERTS_RAISED, {alert.id: _raised_us(alert)})
            pipe.zadd(keys.ALERTS_OPEN, {alert.id: _raised_us(alert)})
            pipe.xadd(keys.EVENTS, entry_fields(event))

        await transaction(self.redis, fence, write)
        return alert

    async def all(self, include_acknowledged: bool = False, limit: int = LISTED_MAX) -> list[Alert]:
        """The newest `limit` alerts (open ones only, unless `include_acknowledged`)."""
        index = keys.ALERTS_RAISED if include_acknowledged else keys.ALERTS_OPEN
        ids = await self.redis.zrevrange(index, 0, limit - 1)
        if not ids:
            return []
        docs = await self.redis.hmget(keys.ALERTS, ids)
        return [Alert.model_validate_json(d) for d in docs if d is not None]

    async def acknowledge(self, alert_id: str, by: str) -> Alert:
        doc = await self.redis.hget(keys.ALERTS, alert_id)
        if doc is None:
            raise NotFound(f"alert {alert_id!r} not found")
        alert = Alert.model_validate_json(doc)
        if alert.acknowledged_at is None:
            alert = alert.model_copy(update={"acknowledged_by": by, "acknowledged_at": utcnow()})
            pipe = self.redis.pipeline(transaction=True)
            pipe.hset(keys.ALERTS, alert_id, alert.model_dump_json())
            pipe.zrem(keys.ALERTS_OPEN, alert_id)
            pipe.zadd(keys.ALERTS_ACKED, {alert_id: now_ms()})
            await pipe.execute()
        return alert

    async def prune_acknowledged(self, older_than_s: float) -> int:
        """Delete alerts acknowledged more than `older_than_s` ago; returns how many."""
        cutoff = now_ms() - int(older_than_s * 1000)
        total = 0
        while True:
            ids = await self.redis.zrangebyscore(
                keys.ALERTS_ACKED, "-inf", cutoff, start=0, num=PRUNE_BATCH
            )
            if not ids:
                return total
            pipe = self.redis.pipeline(transaction=True)
            pipe.hdel(keys.ALERTS, *ids)
            pipe.zrem(keys.ALERTS_RAISED, *ids)
            pipe.zrem(keys.ALERTS_OPEN, *ids)
            pipe.zrem(keys.ALERTS_ACKED, *ids)
            await pipe.execute()
            total += len(ids)
            if len(ids) < PRUNE_BATCH:
                return total
