"""Tokens over HTTP (admins): who am I, create, list and revoke. `vmorch tokens` does the
same on Redis directly for the first token, before any exists."""

from __future__ import annotations

from datetime import timedelta

from aiohttp import web
from pydantic import ValidationError

from orchestrator.api.http import invalid, json_body, respond, respond_list, services
from orchestrator.api.middleware import caller
from schemas.api import Role, TokenCreated, TokenRequest


async def whoami(request: web.Request) -> web.Response:
    return respond(caller(request))


async def create_token(request: web.Request) -> web.Response:
    try:
        req = TokenRequest.model_validate(await json_body(request), strict=True)
    except ValidationError as e:
        raise invalid("token request", e) from None
    life = None if req.expires_in_s is None else timedelta(seconds=req.expires_in_s)
    token, info = await services(request).tokens.create(req.name, Role(req.role), expires_in=life)
    return respond(TokenCreated(token=token, **info.model_dump()), 201)


async def list_tokens(request: web.Request) -> web.Response:
    return respond_list(await services(request).tokens.list())


async def revoke_token(request: web.Request) -> web.Response:
    await services(request).tokens.revoke(request.match_info["token_id"])
    return web.Response(status=204)
