"""The aiohttp app factory: services, middlewares, the route table, the OpenAPI document."""

from __future__ import annotations

from collections.abc import AsyncIterator
from importlib.metadata import version

from aiohttp import web
from redis.asyncio import Redis

from orchestrator.api.audit import audit_middleware
from orchestrator.api.dashboard import setup_dashboard
from orchestrator.api.events import setup_streams
from orchestrator.api.http import SERVICES
from orchestrator.api.metrics import metrics
from orchestrator.api.middleware import (
    MAX_BODY,
    ROUTE_ROLES,
    ROUTE_TABLE,
    auth_middleware,
    errors_middleware,
    params_middleware,
)
from orchestrator.api.openapi import build_openapi
from orchestrator.api.routes import routes
from orchestrator.services import Services, connect
from orchestrator.settings import Settings


def make_app(settings: Settings, *, redis: Redis | None = None) -> web.Application:
    """Build the API. Connections open on startup and close on cleanup, not at import."""
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[audit_middleware, errors_middleware, auth_middleware, params_middleware],
    )
    table = routes()
    spec = build_openapi(table, version("vmorch"))
    app[ROUTE_ROLES] = {(r.method, r.path): r.role for r in table}
    app[ROUTE_TABLE] = {(r.method, r.path): r for r in table}
    app[MAX_BODY] = settings.max_body_bytes

    async def openapi(_: web.Request) -> web.Response:
        return web.json_response(spec)

    for r in table:
        app.router.add_route(r.method, r.path, r.handler)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/metrics", metrics)  # Prometheus: public, numbers only

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        client = redis or connect(settings)
        app[SERVICES] = Services.build(settings, client)
        yield
        if redis is None:
            await client.aclose()

    app.cleanup_ctx.append(lifecycle)
    setup_streams(app)  # open SSE streams end at shutdown instead of holding it up
    setup_dashboard(app)  # the web dashboard at / (static files, outside the route table)
    return app
