"""The inventory over HTTP: VMs (with their operation queues), pools, servers, templates."""

from __future__ import annotations

from aiohttp import web

from orchestrator.api.http import params, respond, respond_list, services
from orchestrator.errors import NotFound, ValidationFailed
from schemas.api import Page, VmView
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


async def list_templates(request: web.Request) -> web.Response:
    return respond_list(await services(request).inventory.templates())
