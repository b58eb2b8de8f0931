"""The inventory over HTTP: VMs (with their operation queues), pools, servers, templates."""

from __future__ import annotations

from aiohttp import web
from pydantic import ValidationError

from orchestrator.api.http import invalid, json_body, params, respond, respond_list, services
from orchestrator.api.middleware import caller
from orchestrator.errors import Conflict, NotFound, ValidationFailed
from schemas.api import FenceAck, FenceRecord, Page, VmView
from schemas.event_types import SOURCE_API
from schemas.inventory import Vm


async def list_vms(request: web.Request) -> web.Response:
    q = params(request)
    try:
        vms, nxt = await services(request).inventory.vms(
            limit=q["limit"], after=q["cursor"] or None
        )
    except NotFound as e:
        raise ValidationFailed(e.message, details=[(["query", "cursor"], e.message)]) from None
    return respond(Page[Vm](items=vms, next_cursor=nxt))


async def get_vm(request: web.Request) -> web.Response:
    svc = services(request)
    vm = await svc.inventory.vm(request.match_info["vm"])
    ops = await svc.jobs.vm_queue(vm.id)
    return respond(VmView(**vm.model_dump(), operations=ops))


async def list_pools(request: web.Request) -> web.Response:
    return respond_list(await services(request).inventory.pools())


async def list_servers(request: web.Request) -> web.Response:
    return respond_list(await services(request).inventory.servers())


async def fence_server(request: web.Request) -> web.Response:
    """An operator acknowledges that a down server's guests are off. Refused (409) while
    the server is not down: a proof kept from then would let HA start copies elsewhere
    the next time the server stops answering, with its guests still running."""
    svc = services(request)
    name = request.match_info["server"]
    await svc.inventory.server(name)  # 404 for an unknown server
    body = await json_body(request)
    try:
        ack = FenceAck.model_validate(body, strict=True)
    except ValidationError as e:
        raise invalid("fence acknowledgement", e) from None
    if await svc.ha.server_down_for_s(name) <= 0:
        raise Conflict(f"server {name} is not down (its agent reaches it): nothing to fence")
    by = f"operator:{caller(request).name}"
    await svc.ha.mark_fenced(name, {"by": by, "reason": ack.reason}, SOURCE_API)
    return respond(FenceRecord(server=name, by=by, reason=ack.reason), 202)


async def list_templates(request: web.Request) -> web.Response:
    return respond_list(await services(request).inventory.templates())
