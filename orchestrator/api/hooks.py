"""Hooks over HTTP: admins write them; viewers read them and their runs."""

from __future__ import annotations

from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, HttpUrl, ValidationError

from orchestrator.api.http import invalid, json_body, params, respond, respond_list, services
from orchestrator.api.middleware import caller
from orchestrator.errors import Conflict, NotFound, ValidationFailed
from orchestrator.store.events import make_event
from schemas import event_types as et
from schemas.api import HookCreated, HookRetryAccepted, Role
from schemas.hooks import Hook, HookPatch, HookSpec, WebhookAction

M = TypeVar("M", bound=BaseModel)


def _parse(model: type[M], body: Any) -> M:
    if not isinstance(body, dict):
        raise ValidationFailed("a JSON object is required", details=[(["body"], "not an object")])
    try:
        return model.model_validate(body, strict=True)  # the document's types, no coercion
    except ValidationError as e:
        raise invalid("hook", e) from None


async def create_hook(request: web.Request) -> web.Response:
    hook, secret = await services(request).hooks.create(_parse(HookSpec, await json_body(request)))
    return respond(HookCreated(hook=hook, secret=secret), 201, Location=f"/v1/hooks/{hook.id}")


def _shown(request: web.Request, hook: Hook) -> Hook:
    """Webhook URLs often carry a credential (chat webhooks): only admins see them whole."""
    if not isinstance(hook.action, WebhookAction) or caller(request).role == Role.ADMIN:
        return hook
    url = hook.action.url
    hidden = hook.action.model_copy(update={"url": HttpUrl(f"{url.scheme}://{url.host}/(hidden)")})
    return hook.model_copy(update={"action": hidden})


async def list_hooks(request: web.Request) -> web.Response:
    return respond_list([_shown(request, h) for h in await services(request).hooks.all()])


async def get_hook(request: web.Request) -> web.Response:
    return respond(
        _shown(request, await services(request).hooks.get(request.match_info["hook_id"]))
    )


async def patch_hook(request: web.Request) -> web.Response:
    patch = _parse(HookPatch, await json_body(request))
    hook, secret = await services(request).hooks.update(request.match_info["hook_id"], patch)
    return respond(HookCreated(hook=hook, secret=secret))


async def delete_hook(request: web.Request) -> web.Response:
    await services(request).hooks.delete(request.match_info["hook_id"])
    return web.Response(status=204)


async def hook_runs(request: web.Request) -> web.Response:
    runs = await services(request).hooks.runs(
        request.match_info["hook_id"], params(request)["limit"]
    )
    return respond_list(runs)


async def retry_run(request: web.Request) -> web.Response:
    """Ask the routers for the run again, on its own event; the new run (retry_of this
    one) appears in the hook's runs once a router has acted."""
    svc = services(request)
    hook_id, run_id = request.match_info["hook_id"], request.match_info["run_id"]
    await svc.hooks.get(hook_id)  # 404 for an unknown hook
    run = await svc.hooks.run(hook_id, run_id)
    if run is None:
        raise NotFound(f"hook {hook_id} has no run {run_id!r} (kept: the newest 1000)")
    if run.event is None:
        raise Conflict(f"run {run_id} was recorded without its event: it cannot be retried")
    event = make_event(
        et.HOOK_RETRY_REQUESTED,
        et.SOURCE_API,
        hook_id,
        {"hook_id": hook_id, "run_id": run_id, "by": caller(request).name},
    )
    await svc.events.publish(event)
    accepted = HookRetryAccepted(hook_id=hook_id, run_id=run_id, request_event_id=event.id)
    return respond(accepted, 202)
