"""Alerts in Redis (hash `alerts`), raised by workflows, acknowledged over the API."""

from __future__ import annotations

import uuid

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from orchestrator.errors import NotFound
from orchestrator.store import keys
from orchestrator.store.events import EventLog, entry_fields, make_event
from orchestrator.store.fence import Fence, transaction
from schemas.alerts import Alert
from schemas.base import utcnow
from schemas.event_types import SOURCE_ENGINE


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
            pipe.xadd(keys.EVENTS, entry_fields(event))

        await transaction(self.redis, fence, write)
        return alert

    async def all(self, include_acknowledged: bool = False) -> list[Alert]:
        alerts = [Alert.model_validate_json(d) for d in await self.redis.hvals(keys.ALERTS)]
        alerts = [a for a in alerts if include_acknowledged or a.acknowledged_at is None]
        return sorted(alerts, key=lambda a: a.at, reverse=True)

    async def acknowledge(self, alert_id: str, by: str) -> Alert:
        doc = await self.redis.hget(keys.ALERTS, alert_id)
        if doc is None:
            raise NotFound(f"alert {alert_id!r} not found")
        alert = Alert.model_validate_json(doc)
        if alert.acknowledged_at is None:
            alert = alert.model_copy(update={"acknowledged_by": by, "acknowledged_at": utcnow()})
            await self.redis.hset(keys.ALERTS, alert_id, alert.model_dump_json())
        return alert
