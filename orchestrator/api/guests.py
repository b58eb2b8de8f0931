"""Messages to guests and what their guest programs report: `POST /v1/vms/{vm}/messages`
and `POST /v1/messages` (a selector) submit a `vm.message` job; `GET /v1/vms/{vm}/guest`
shows the guest as its server's agent last saw it."""

from __future__ import annotations

from aiohttp import web
from pydantic import ValidationError

from orchestrator.api.http import invalid, json_body, params, respond, services
from orchestrator.api.middleware import caller
from schemas.api import MessagesRequest, MessagesToMany
from schemas.requests import SendMessages


async def _submit(request: web.Request, req: SendMessages) -> web.Response:
    who = caller(request)
    job, replayed = await services(request).submitter.submit(
        req,
        submitted_by=who.name,
        idem_key=params(request)["Idempotency-Key"],
        idem_scope=who.id,
    )
    headers = {"Location": f"/v1/jobs/{job.id}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return respond(job, 202, **headers)


async def send_to_vm(request: web.Request) -> web.Response:
    body = await json_body(request)
    try:
        spec = MessagesRequest.model_validate(body, strict=True)
    except ValidationError as e:
        raise invalid("messages", e) from None
    vm = await services(request).inventory.vm(request.match_info["vm"])
    req = SendMessages(
        kind="vm.message", vms=[vm.id], messages=spec.messages, timeout_s=spec.timeout_s
    )
    return await _submit(request, req)


async def send_to_many(request: web.Request) -> web.Response:
    body = await json_body(request)
    try:
        spec = MessagesToMany.model_validate(body, strict=True)
    except ValidationError as e:
        raise invalid("messages", e) from None
    req = SendMessages(kind="vm.message", **spec.model_dump(context={"sealed": True}))
    return await _submit(request, req)


async def get_guest(request: web.Request) -> web.Response:
    svc = services(request)
    vm = await svc.inventory.vm(request.match_info["vm"])
    return respond(await svc.guests.state(vm.id))
