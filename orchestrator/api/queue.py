"""The queue at a glance, queue controls (accept, pause, drain, rate limit), liveness."""

from __future__ import annotations

from aiohttp import web
from pydantic import ValidationError

from orchestrator.api.http import invalid, json_body, respond, respond_list, services
from orchestrator.api.middleware import caller
from orchestrator.errors import NotFound
from orchestrator.store import keys
from schemas.api import QueueControl, QueueControlSpec
from schemas.base import utcnow


async def queue_names(request: web.Request) -> list[str]:
    pools = await services(request).inventory.pools()
    return [keys.DEFAULT_QUEUE, keys.NOOP_QUEUE] + [keys.pool_queue(p.name) for p in pools]


async def queue_status(request: web.Request) -> web.Response:
    return respond(await services(request).fleet.status(await queue_names(request)))


async def list_queues(request: web.Request) -> web.Response:
    svc = services(request)
    status = await svc.fleet.status(await queue_names(request))
    return respond_list(await svc.queues.views(status.queues))


async def put_queue(request: web.Request) -> web.Response:
    svc = services(request)
    queue = request.match_info["queue"]
    if queue not in await queue_names(request):
        raise NotFound(
            f"no queue {queue!r} (vmorch.default, vmorch.noop, vmorch.pool.<pool>)",
            details=[(["path", "queue"], "not a queue of this vmorch")],
        )
    try:
        spec = QueueControlSpec.model_validate(await json_body(request), strict=True)
    except ValidationError as e:
        raise invalid("queue control", e) from None
    control = QueueControl(
        **spec.model_dump(), changed_by=caller(request).name, changed_at=utcnow()
    )
    for job_id in await svc.queues.set(queue, control):  # what the pause held goes now
        await svc.dispatcher.dispatch(job_id, queue)
    status = await svc.fleet.status([queue])
    [view] = await svc.queues.views(status.queues)
    return respond(view)


async def health(request: web.Request) -> web.Response:
    await services(request).redis.ping()
    return web.json_response({"status": "ok"})
