"""Errors and authentication: one error body shape for everything the API answers."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable

from aiohttp import web
from pydantic import ValidationError

from orchestrator.api.http import services, validation_details
from orchestrator.errors import Forbidden, TooManyRequests, Unauthorized, VmorchError
from schemas.api import ErrorBody, ErrorDetail, ErrorResponse, Role, TokenInfo

log = logging.getLogger("vmorch.api")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

TOKEN_INFO = web.RequestKey("vmorch_token", TokenInfo)
ROUTE_ROLES = web.AppKey("vmorch_route_roles", dict)
MAX_BODY = web.AppKey("vmorch_max_body_bytes", int)


def error_response(
    status: int, code: str, message: str, details: list[ErrorDetail] | None = None
) -> web.Response:
    body = ErrorResponse(error=ErrorBody(code=code, message=message, details=details or []))
    resp = web.json_response(text=body.model_dump_json(), status=status)
    if status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="vmorch"'
    return resp


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except VmorchError as e:
        details = [ErrorDetail(loc=list(loc), msg=msg) for loc, msg in e.details]
        resp = error_response(e.http_status, e.code, e.message, details)
        if isinstance(e, TooManyRequests):
            resp.headers["Retry-After"] = str(math.ceil(e.retry_after_s))
        return resp
    except ValidationError as e:
        return error_response(
            422, "validation_error", "the request is not valid", validation_details(e)
        )
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[MAX_BODY]
        return error_response(
            413,
            "payload_too_large",
            f"request body exceeds the limit of {limit} bytes",
            [ErrorDetail(loc=["body"], msg=f"at most {limit} bytes")],
        )
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status, "http_error")
        return error_response(e.status, code, e.reason)
    except json.JSONDecodeError as e:
        return error_response(
            400,
            "bad_json",
            f"request body is not valid JSON: {e.msg}",
            [ErrorDetail(loc=["body"], msg=str(e))],
        )
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal", "internal error")


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bearer tokens with roles: viewer reads, operator submits and aborts, admin does all."""
    resource = request.match_info.route.resource
    method = "GET" if request.method == "HEAD" else request.method
    roles: dict[tuple[str, str], Role | None] = request.app[ROUTE_ROLES]
    needed = roles.get((method, resource.canonical)) if resource is not None else None
    if needed is None:  # public route, or no route at all (the router answers 404/405)
        return await handler(request)
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing bearer token (Authorization: Bearer <token>)")
    info: TokenInfo | None = await services(request).tokens.lookup(token.strip())
    if info is None:
        raise Unauthorized("invalid or revoked token")
    if not info.role.allows(needed):
        raise Forbidden(f"role {info.role.value} may not do this (needs {needed.value})")
    request[TOKEN_INFO] = info
    return await handler(request)


def caller(request: web.Request) -> TokenInfo:
    info: TokenInfo = request[TOKEN_INFO]
    return info
