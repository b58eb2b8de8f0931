"""Helpers every handler module uses: the app's services, reading input, answering JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from pydantic import BaseModel, TypeAdapter, ValidationError

from orchestrator.errors import BadRequest, ValidationFailed
from orchestrator.services import Services
from schemas.api import ErrorDetail

SERVICES = web.AppKey("vmorch_services", Services)
_LIST_ADAPTER: TypeAdapter[list[BaseModel]] = TypeAdapter(list[BaseModel])


def services(request: web.Request) -> Services:
    return request.app[SERVICES]


def respond(model: BaseModel, status: int = 200, **headers: str) -> web.Response:
    return web.json_response(text=model.model_dump_json(), status=status, headers=headers)


def respond_list(items: Sequence[BaseModel], status: int = 200) -> web.Response:
    body = _LIST_ADAPTER.dump_json(list(items), serialize_as_any=True)
    return web.Response(body=body, status=status, content_type="application/json")


async def json_body(request: web.Request) -> Any:
    raw = await request.read()  # raises 413 past client_max_size
    if not raw:
        raise BadRequest("request body is empty", details=[(["body"], "a JSON object is required")])
    return json.loads(raw)


def query_int(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationFailed(
            f"{name} must be an integer", details=[(["query", name], "not an integer")]
        ) from None
    if not lo <= value <= hi:
        raise ValidationFailed(
            f"{name} must be between {lo} and {hi}",
            details=[(["query", name], f"must be between {lo} and {hi}")],
        )
    return value


def validation_details(
    e: ValidationError, prefix: str = "body", tag: object = None
) -> list[ErrorDetail]:
    """pydantic errors as (loc, msg); `tag` is a discriminated union's tag, which pydantic
    puts first in each loc and which the client did not write as a field."""
    out = []
    for err in e.errors(include_url=False):
        loc = list(err["loc"])
        if tag is not None and loc and loc[0] == tag:
            loc = loc[1:]
        out.append(ErrorDetail(loc=[prefix, *loc], msg=err["msg"]))
    return out


def invalid(what: str, e: ValidationError, tag: object = None) -> ValidationFailed:
    """The 422 for a body that does not validate, naming each field and its problem."""
    return ValidationFailed(
        f"the {what} is not valid", details=[(d.loc, d.msg) for d in validation_details(e, tag=tag)]
    )
