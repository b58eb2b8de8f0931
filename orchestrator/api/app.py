"""The aiohttp app factory."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aredis
from aiohttp import web

from orchestrator.api import handlers as h
from orchestrator.api.hooks_api import ALERTS, HOOKS, hook_routes
from orchestrator.api.middleware import (
    MAX_BODY,
    ROUTE_ROLES,
    TOKENS_KEY,
    auth_middleware,
    errors_middleware,
)
from orchestrator.api.openapi import build_openapi
from orchestrator.api.routing import Query, Route
from orchestrator.api.streams import setup_streams, stream_routes
from orchestrator.jobs.dispatch import Dispatcher
from orchestrator.jobs.messages import TaskMessages
from orchestrator.jobs.submit import Submitter
from orchestrator.settings import Settings
from orchestrator.store.alerts import AlertStore
from orchestrator.store.hooks import HookStore
from orchestrator.store.inventory import InventoryStore
from orchestrator.store.jobs import JobStore
from orchestrator.store.tokens import TokenStore
from schemas.api import AbortRequest, Page, QueueStatus, Role
from schemas.inventory import Server, ServerPool, Template, Vm
from schemas.jobs import Job
from schemas.requests import JobRequest
from workers.celery_app import make_celery

VERSION = "0.1.0"
_VM_REF = Query("vm", "VM id or name")


def routes() -> list[Route]:
    viewer, operator = Role.VIEWER, Role.OPERATOR
    return [
        Route(
            "POST",
            "/v1/jobs",
            h.submit_job,
            "Submit a job",
            operator,
            body=JobRequest,
            response=Job,
            status=202,
            headers=(Query("Idempotency-Key", "same key and body return the same job"),),
        ),
        Route(
            "GET",
            "/v1/jobs",
            h.list_jobs,
            "List jobs, newest first",
            viewer,
            response=Page[Job],
            query=(
                Query("state", "filter by state"),
                Query("kind", "filter by kind"),
                _VM_REF,
                Query("limit", "page size (1-500)", {"type": "integer"}),
                Query("cursor", "next_cursor of the previous page"),
            ),
        ),
        Route("GET", "/v1/jobs/{job_id}", h.get_job, "A job with its steps", viewer, response=Job),
        Route(
            "POST",
            "/v1/jobs/{job_id}/abort",
            h.abort_job,
            "Abort a job",
            operator,
            body=AbortRequest,
            response=Job,
            status=202,
        ),
        Route("GET", "/v1/vms", h.list_vms, "List VMs", viewer, response=list[Vm]),
        Route(
            "GET",
            "/v1/vms/{vm}",
            h.get_vm,
            "A VM (by id or name) and its operation queue",
            viewer,
            response=h.VmView,
        ),
        Route(
            "GET", "/v1/pools", h.list_pools, "List server pools", viewer, response=list[ServerPool]
        ),
        Route("GET", "/v1/servers", h.list_servers, "List servers", viewer, response=list[Server]),
        Route(
            "GET",
            "/v1/templates",
            h.list_templates,
            "List templates",
            viewer,
            response=list[Template],
        ),
        Route(
            "GET",
            "/v1/queue",
            h.queue_status,
            "Queues, running and waiting jobs, workers",
            viewer,
            response=QueueStatus,
        ),
        Route("GET", "/healthz", h.health, "Liveness (Redis reachable)", None),
    ]


def make_app(
    settings: Settings, *, redis: aredis.Redis | None = None, dispatcher: Dispatcher | None = None
) -> web.Application:
    """Build the API. Connections open on startup and close on cleanup, not at import."""
    app = web.Application(
        client_max_size=settings.max_body_bytes, middlewares=[errors_middleware, auth_middleware]
    )
    table = routes() + hook_routes() + stream_routes()
    spec = build_openapi(table, VERSION)
    app[ROUTE_ROLES] = {(r.method, r.path): r.role for r in table}
    app[MAX_BODY] = settings.max_body_bytes

    async def openapi(_: web.Request) -> web.Response:
        return web.json_response(spec)

    for r in table:
        app.router.add_route(r.method, r.path, r.handler)
    app.router.add_get("/openapi.json", openapi)

    async def lifecycle(app: web.Application) -> Any:
        r = redis or aredis.Redis.from_url(settings.redis_url, decode_responses=True)
        disp = dispatcher or Dispatcher(r, TaskMessages(make_celery(settings)))
        jobs = JobStore(
            r,
            event_maxlen=settings.event_stream_maxlen,
            idem_ttl_s=settings.idempotency_ttl_s,
            redispatch_after_s=settings.redispatch_after_s,
        )
        inv = InventoryStore(r)
        app[h.JOBS] = jobs
        app[h.INVENTORY] = inv
        app[TOKENS_KEY] = TokenStore(r)
        app[h.SUBMITTER] = Submitter(jobs, inv, disp)
        app[HOOKS] = HookStore(r)
        app[ALERTS] = AlertStore(r, settings.event_stream_maxlen)
        yield
        if redis is None:
            await r.aclose()

    app.cleanup_ctx.append(lifecycle)
    setup_streams(app)  # open SSE streams end at shutdown instead of holding it up
    return app
