"""Errors and authentication: one error body shape for everything the API answers."""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web
from pydantic import ValidationError
from redis import exceptions as redis_errors

from orchestrator.api.http import PARAMS, services, validation_details
from orchestrator.api.routing import Route
from orchestrator.errors import (
    BadRequest,
    Forbidden,
    RedisUnavailable,
    Retryable,
    Unauthorized,
    ValidationFailed,
    VmorchError,
)
from schemas.api import ErrorBody, ErrorDetail, ErrorResponse, Role, TokenInfo

log = logging.getLogger("vmorch.api")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

TOKEN_INFO = web.RequestKey("vmorch_token", TokenInfo)
ROUTE_ROLES = web.AppKey("vmorch_route_roles", dict)
ROUTE_TABLE = web.AppKey("vmorch_route_table", dict)  # (method, path) -> Route
MAX_BODY = web.AppKey("vmorch_max_body_bytes", int)
# Redis down, stalled (the client's socket timeout), loading its data, or a replica after a
# failover: the same request may succeed in a moment, so it is a 503, not a 500.
_REDIS_DOWN = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.ReadOnlyError,
)


def error_response(
    status: int,
    code: str,
    message: str,
    details: list[ErrorDetail] | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    body = ErrorResponse(error=ErrorBody(code=code, message=message, details=details or []))
    resp = web.json_response(text=body.model_dump_json(), status=status, headers=headers)
    if status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="vmorch"'
    return resp


def _vmorch_error(e: VmorchError) -> web.Response:
    details = [ErrorDetail(loc=list(loc), msg=msg) for loc, msg in e.details]
    headers = None
    if isinstance(e, Retryable):
        headers = {"Retry-After": str(max(1, math.ceil(e.retry_after_s)))}
    return error_response(e.http_status, e.code, e.message, details, headers)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except VmorchError as e:
        return _vmorch_error(e)
    except _REDIS_DOWN as e:
        what = type(e).__name__
        log.warning("redis unavailable on %s %s: %s: %s", request.method, request.path, what, e)
        return _vmorch_error(RedisUnavailable(f"Redis is unavailable ({what}); retry later"))
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
    except web.HTTPMethodNotAllowed as e:
        allowed = ", ".join(sorted(e.allowed_methods))
        return error_response(
            405,
            "method_not_allowed",
            f"{request.method} is not allowed here (allowed: {allowed})",
            headers={"Allow": allowed},  # RFC 9110: a 405 must say what is allowed
        )
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = {404: "not_found"}.get(e.status, "http_error")
        return error_response(e.status, code, e.reason)
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
        raise Unauthorized("invalid, expired or revoked token")
    request[TOKEN_INFO] = info  # before the role check: the audit records refusals too
    if not info.role.allows(needed):
        raise Forbidden(f"role {info.role.value} may not do this (needs {needed.value})")
    return await handler(request)


def route_of(request: web.Request) -> Route | None:
    resource = request.match_info.route.resource
    if resource is None:
        return None
    method = "GET" if request.method == "HEAD" else request.method
    table: dict[tuple[str, str], Route] = request.app[ROUTE_TABLE]
    return table.get((method, resource.canonical))


@web.middleware
async def params_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Check the route's declared query parameters (422) and headers (400) against the same
    schemas the OpenAPI document shows, before the handler sees any of them."""
    route = route_of(request)
    if route is None:
        return await handler(request)
    checked: dict[str, Any] = {}
    for where, declared, given, error in (
        ("query", route.query, request.query, ValidationFailed),
        ("header", route.headers, request.headers, BadRequest),
    ):
        for p in declared:
            try:
                checked[p.name] = p.parse(given.get(p.name))
            except ValueError as e:
                raise error(f"{p.name} {e}", details=[([where, p.name], str(e))]) from None
    request[PARAMS] = checked
    return await handler(request)


def caller(request: web.Request) -> TokenInfo:
    info: TokenInfo = request[TOKEN_INFO]
    return info
