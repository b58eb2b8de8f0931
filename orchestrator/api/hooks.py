"""Hooks over HTTP: admins write them; viewers read them and their runs."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import HttpUrl, ValidationError

from orchestrator.api.http import invalid, json_body, query_int, respond, respond_list, services
from orchestrator.api.middleware import caller
from orchestrator.errors import Conflict, ValidationFailed
from schemas.api import HookCreated, Role
from schemas.hooks import Hook, HookSpec, WebhookAction


def _spec(body: Any, base: dict[str, Any] | None = None) -> HookSpec:
    if not isinstance(body, dict):
        raise ValidationFailed("a JSON object is required", details=[(["body"], "not an object")])
    try:
        return HookSpec.model_validate({**(base or {}), **body})
    except ValidationError as e:
        raise invalid("hook", e) from None


async def create_hook(request: web.Request) -> web.Response:
    hook, secret = await services(request).hooks.create(_spec(await json_body(request)))
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
    store = services(request).hooks
    hook_id = request.match_info["hook_id"]
    old = await store.get(hook_id)
    body = await json_body(request)
    if old.builtin and isinstance(body, dict) and set(body) - {"enabled", "window_s"}:
        raise Conflict("a built-in hook can only be enabled, disabled or given a window")
    base = old.model_dump(include=set(HookSpec.model_fields))
    hook, secret = await store.replace(hook_id, _spec(body, base))
    return respond(HookCreated(hook=hook, secret=secret))


async def delete_hook(request: web.Request) -> web.Response:
    store = services(request).hooks
    hook_id = request.match_info["hook_id"]
    if (await store.get(hook_id)).builtin:
        raise Conflict("a built-in hook cannot be deleted; disable it instead")
    await store.delete(hook_id)
    return web.Response(status=204)


async def hook_runs(request: web.Request) -> web.Response:
    runs = await services(request).hooks.runs(
        request.match_info["hook_id"], query_int(request, "limit", 100, 1, 1000)
    )
    return respond_list(runs)
