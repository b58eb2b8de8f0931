"""Helpers every handler module uses: the app's services, reading input, answering JSON."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import hdrs, web
from pydantic import BaseModel, TypeAdapter, ValidationError

from orchestrator.api import params as _params
from orchestrator.errors import BadJson, BadRequest, UnsupportedMediaType, ValidationFailed
from orchestrator.services import Services
from schemas.api import ErrorDetail
from schemas.base import is_name

SERVICES = web.AppKey("vmorch_services", Services)
PARAMS = web.RequestKey("vmorch_params", dict)
BODY = web.RequestKey("vmorch_body", object)  # the JSON body as read (the audit's reason)
# No request needs more than a few levels; a deep one would take the parser, pydantic or a
# later json.dumps into RecursionError (a 500), so it is refused before parsing.
MAX_DEPTH = 32
MAX_INT_DIGITS = 100  # Python refuses more than 4300 with a ValueError; no field needs 20
_STRINGS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")
_LIST_ADAPTER: TypeAdapter[list[BaseModel]] = TypeAdapter(list[BaseModel])


def services(request: web.Request) -> Services:
    return request.app[SERVICES]


def respond(model: BaseModel, status: int = 200, **headers: str) -> web.Response:
    return web.json_response(text=model.model_dump_json(), status=status, headers=headers)


def respond_list(items: Sequence[BaseModel], status: int = 200) -> web.Response:
    body = _LIST_ADAPTER.dump_json(list(items), serialize_as_any=True)
    return web.Response(body=body, status=status, content_type="application/json")


def _require_json(request: web.Request) -> None:
    """415 unless the body is declared JSON: a form or text body is a client bug, and
    reading it as JSON anyway would hide it."""
    given = request.headers.get(hdrs.CONTENT_TYPE)
    ctype = request.content_type
    is_json = ctype == "application/json" or (
        ctype.startswith("application/") and ctype.endswith("+json")
    )
    charset = (request.charset or "utf-8").lower()
    if given is None or not is_json or charset not in ("utf-8", "utf8"):
        raise UnsupportedMediaType(
            f"the body must be sent as Content-Type: application/json, not {given or '(none)'}",
            details=[(["header", "Content-Type"], "must be application/json (charset utf-8)")],
        )


def _too_deep(text: str) -> bool:
    """Whether arrays and objects nest deeper than MAX_DEPTH (brackets in strings aside).
    At worst (a MiB of brackets) this takes about 0.1 s, only for callers with a token."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:  # most bodies: no scan at all
        return False
    depth = 0
    for ch in _NOT_BRACKETS.sub("", _STRINGS.sub("", text)):
        depth += 1 if ch in "[{" else -1
        if depth > MAX_DEPTH:
            return True
    return False


def _int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise BadJson(
            f"request body has an integer of {len(digits)} digits",
            details=[(["body"], f"integers have at most {MAX_INT_DIGITS} digits")],
        )
    return int(digits)


def _float(text: str) -> float | int:
    value = float(text)
    if not math.isfinite(value):  # 1e999: it would be stored as null
        raise BadJson(
            f"request body has a number out of range: {text[:40]}",
            details=[(["body"], "numbers must be finite")],
        )
    # JSON schema calls 9.0 an integer; bodies are validated strictly (no "9" for 9), so
    # an integral number becomes an int here, where that is exact
    if value.is_integer() and abs(value) <= 2**53:
        return int(value)
    return value


def _constant(name: str) -> Any:
    raise BadJson(
        f"request body is not valid JSON: {name}", details=[(["body"], f"{name} is not JSON")]
    )


async def json_body(request: web.Request) -> Any:
    """The request body as JSON, or a 4xx naming what is wrong with it: every route that
    takes a body reads it here, so none of them can fail on one with a 500."""
    _require_json(request)
    raw = await request.read()  # raises 413 past client_max_size
    if not raw:
        raise BadRequest("request body is empty", details=[(["body"], "a JSON object is required")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadJson(
            f"request body is not UTF-8 (byte {e.start})",
            details=[(["body"], "JSON is sent as UTF-8")],
        ) from None
    if _too_deep(text):
        raise BadJson(
            f"request body nests deeper than {MAX_DEPTH} levels",
            details=[(["body"], f"at most {MAX_DEPTH} levels of arrays and objects")],
        )
    try:
        body = json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except json.JSONDecodeError as e:
        raise BadJson(
            f"request body is not valid JSON: {e.msg}", details=[(["body"], str(e))]
        ) from None
    request[BODY] = body
    return body


def params(request: web.Request) -> Mapping[str, Any]:
    """The route's declared query parameters and headers, checked, with defaults filled in
    (set by the params middleware from the route table)."""
    checked: dict[str, Any] = request[PARAMS]
    return checked


def query_int(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    """An integer query parameter between lo and hi (for handlers not on `params` yet)."""
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value: int = _params.parse({"type": "integer", "minimum": lo, "maximum": hi}, raw)
    except ValueError as e:
        raise ValidationFailed(f"{name} {e}", details=[(["query", name], str(e))]) from None
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


def path_name(request: web.Request, param: str = "group", what: str = "group name") -> str:
    """A name from the path, checked like every name (422 naming the parameter)."""
    name = request.match_info[param]
    if not is_name(name):
        msg = f"a {what} is 1-63 letters, digits, '.', '_' or '-', starting alphanumeric"
        raise ValidationFailed(msg, details=[(["path", param], msg)])
    return name
