"""Hooks and alerts over HTTP: admin writes hooks, viewers read them and their runs."""

from __future__ import annotations

from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, HttpUrl, ValidationError

from orchestrator.api.handlers import _json_body, _query_int, respond, respond_list
from orchestrator.api.middleware import caller, validation_details
from orchestrator.api.routing import Route
from orchestrator.errors import Conflict, ValidationFailed
from orchestrator.store.alerts import AlertStore
from orchestrator.store.hooks import HookStore
from schemas.alerts import Alert
from schemas.api import Role
from schemas.hooks import Hook, HookPatch, HookRun, HookSpec, WebhookAction

HOOKS = web.AppKey("vmorch_hooks", HookStore)
ALERTS = web.AppKey("vmorch_alerts", AlertStore)
M = TypeVar("M", bound=BaseModel)


class HookCreated(BaseModel):
    """A new or changed hook; `secret` (webhook hooks only, after a PATCH only when a new one
    was made) is shown this once: keep it to verify the `X-Vmorch-Signature` header of
    deliveries."""

    hook: Hook
    secret: str | None = None


def _parse(model: type[M], body: Any) -> M:
    if not isinstance(body, dict):
        raise ValidationFailed("a JSON object is required", details=[(["body"], "not an object")])
    try:
        return model.model_validate(body)
    except ValidationError as e:
        raise ValidationFailed(
            "the hook is not valid", details=[(d.loc, d.msg) for d in validation_details(e)]
        ) from None


async def create_hook(request: web.Request) -> web.Response:
    hook, secret = await request.app[HOOKS].create(_parse(HookSpec, await _json_body(request)))
    return respond(HookCreated(hook=hook, secret=secret), 201, Location=f"/v1/hooks/{hook.id}")


def _shown(request: web.Request, hook: Hook) -> Hook:
    """Webhook URLs often carry a credential (chat webhooks): only admins see them whole."""
    if not isinstance(hook.action, WebhookAction) or caller(request).role == Role.ADMIN:
        return hook
    url = hook.action.url
    hidden = hook.action.model_copy(update={"url": HttpUrl(f"{url.scheme}://{url.host}/(hidden)")})
    return hook.model_copy(update={"action": hidden})


async def list_hooks(request: web.Request) -> web.Response:
    return respond_list([_shown(request, h) for h in await request.app[HOOKS].all()])


async def get_hook(request: web.Request) -> web.Response:
    return respond(_shown(request, await request.app[HOOKS].get(request.match_info["hook_id"])))


async def patch_hook(request: web.Request) -> web.Response:
    patch = _parse(HookPatch, await _json_body(request))
    hook, secret = await request.app[HOOKS].update(request.match_info["hook_id"], patch)
    return respond(HookCreated(hook=hook, secret=secret))


async def delete_hook(request: web.Request) -> web.Response:
    store = request.app[HOOKS]
    hook_id = request.match_info["hook_id"]
    if (await store.get(hook_id)).builtin:
        raise Conflict("a built-in hook cannot be deleted; disable it instead")
    await store.delete(hook_id)
    return web.Response(status=204)


async def hook_runs(request: web.Request) -> web.Response:
    runs = await request.app[HOOKS].runs(
        request.match_info["hook_id"], _query_int(request, "limit", 100, 1, 1000)
    )
    return respond_list(runs)


async def list_alerts(request: web.Request) -> web.Response:
    everything = request.query.get("all", "") in ("1", "true")
    return respond_list(await request.app[ALERTS].all(include_acknowledged=everything))


async def ack_alert(request: web.Request) -> web.Response:
    alert = await request.app[ALERTS].acknowledge(
        request.match_info["alert_id"], caller(request).name
    )
    return respond(alert)


def hook_routes() -> list[Route]:
    viewer, operator, admin = Role.VIEWER, Role.OPERATOR, Role.ADMIN
    return [
        Route(
            "POST",
            "/v1/hooks",
            create_hook,
            "Create a hook",
            admin,
            body=HookSpec,
            response=HookCreated,
            status=201,
        ),
        Route("GET", "/v1/hooks", list_hooks, "List hooks", viewer, response=list[Hook]),
        Route("GET", "/v1/hooks/{hook_id}", get_hook, "A hook", viewer, response=Hook),
        Route(
            "PATCH",
            "/v1/hooks/{hook_id}",
            patch_hook,
            "Change a hook (fields given); a new webhook secret, shown once, when rotate_secret "
            "is true or the URL changes",
            admin,
            body=HookPatch,
            response=HookCreated,
        ),
        Route("DELETE", "/v1/hooks/{hook_id}", delete_hook, "Delete a hook", admin, status=204),
        Route(
            "GET",
            "/v1/hooks/{hook_id}/runs",
            hook_runs,
            "A hook's firings, newest first: event, action, outcome",
            viewer,
            response=list[HookRun],
        ),
        Route(
            "GET",
            "/v1/alerts",
            list_alerts,
            "Alerts not yet acknowledged (all=1: every alert)",
            viewer,
            response=list[Alert],
        ),
        Route(
            "POST",
            "/v1/alerts/{alert_id}/ack",
            ack_alert,
            "Acknowledge an alert",
            operator,
            response=Alert,
            status=200,
        ),
    ]
