"""`GET /metrics`: the api's own counters and the fleet's state, for Prometheus (no token:
numbers only, no ids or names but queues', kinds' and states')."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from orchestrator.api.http import services
from orchestrator.api.queue import queue_names
from orchestrator.metrics import FleetState, exposition
from orchestrator.store import keys
from schemas.jobs import JobState


async def metrics(request: web.Request) -> web.Response:
    svc = services(request)
    names = await queue_names(request)
    status = await svc.fleet.status(names)
    views = await svc.queues.views(status.queues, pending=False)
    pipe = svc.redis.pipeline(transaction=False)
    for s in JobState:
        pipe.zcard(keys.jobs_state(s))
    pipe.zcard(keys.ALERTS_OPEN)
    pipe.xlen(keys.EVENTS)
    *by_state, alerts_open, stream_len = await pipe.execute()
    state = FleetState(
        jobs_by_state={s.value: n for s, n in zip(JobState, by_state, strict=True)},
        queue_depth={q.queue: q.depth for q in status.queues},
        queue_oldest_age_s={q.queue: q.oldest_job_age_s or 0.0 for q in status.queues},
        queue_held={v.queue: v.held for v in views},
        queue_mode={v.queue: v.mode.value for v in views},
        workers_seen=len(status.workers),
        alerts_open=alerts_open,
        events_stream_length=stream_len,
    )
    return web.Response(body=exposition(state), headers={"Content-Type": CONTENT_TYPE_LATEST})
