"""Hooks over HTTP: admins write them; viewers read them and their runs."""

from __future__ import annotations

from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, HttpUrl, ValidationError

from orchestrator.api.http import invalid, json_body, params, respond, respond_list, services
from orchestrator.api.middleware import caller
from orchestrator.errors import ValidationFailed
from schemas.api import HookCreated, Role
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
