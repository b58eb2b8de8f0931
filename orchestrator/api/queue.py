"""The queue at a glance, and liveness."""

from __future__ import annotations

from aiohttp import web

from orchestrator.api.http import respond, services
from orchestrator.store import keys


async def queue_status(request: web.Request) -> web.Response:
    svc = services(request)
    pools = await svc.inventory.pools()
    names = [keys.DEFAULT_QUEUE, keys.NOOP_QUEUE] + [keys.pool_queue(p.name) for p in pools]
    return respond(await svc.fleet.status(names))


async def health(request: web.Request) -> web.Response:
    await services(request).redis.ping()
    return web.json_response({"status": "ok"})
