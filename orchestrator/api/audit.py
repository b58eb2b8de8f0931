"""The audit trail of the api: every write (any route but GET, HEAD and public ones) made
with a token is recorded with the caller's token, the request id, the action, the target
and the reason given, whatever the outcome (a refused abort is recorded too). Admins read it
at `GET /v1/audit`.

The request id is the caller's `X-Request-Id` when it is a plain token of at most 64
characters, else a new one; the api answers with it on every response and it is on the
log lines of the request, so a record, a log line and a client's report meet."""

from __future__ import annotations

import json
import logging
import re
import uuid

from aiohttp import web

from orchestrator import logs
from orchestrator.api.http import BODY, params, respond, services
from orchestrator.api.middleware import TOKEN_INFO, Handler, route_of
from orchestrator.store.audit import AuditFilter
from schemas.api import Page
from schemas.audit import AuditRecord
from schemas.base import utcnow

log = logging.getLogger("vmorch.api.audit")

REQUEST_ID = web.RequestKey("vmorch_request_id", str)
REQUEST_ID_HEADER = "X-Request-Id"
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}", re.ASCII)
_READS = frozenset({"GET", "HEAD", "OPTIONS"})
_VERBS = {"POST": "create", "PUT": "put", "PATCH": "update", "DELETE": "delete"}
REASON_MAX = 500


def action_of(method: str, path: str) -> str:
    """A route's action name: its fixed path segments after /v1, then a verb. A POST to a
    sub-resource named after a verb is that verb (jobs.abort, alerts.ack); otherwise the
    method's (jobs.create, hooks.delete, queues.put)."""
    parts = path.strip("/").split("/")[1:]
    fixed = [p for p in parts if not p.startswith("{")]
    ends_fixed_after_param = len(parts) > 1 and parts[-2].startswith("{") and parts[-1] == fixed[-1]
    if method == "POST" and ends_fixed_after_param:
        return ".".join(fixed)
    return ".".join([*fixed, _VERBS.get(method, method.lower())])


def _request_id(request: web.Request) -> str:
    given = request.headers.get(REQUEST_ID_HEADER, "")
    return given if _REQUEST_ID_RE.fullmatch(given) else uuid.uuid4().hex


def _reason(request: web.Request) -> str:
    """The `reason` of the JSON body the handler read (`json_body` keeps it), if any."""
    body = request.get(BODY)
    reason = body.get("reason") if isinstance(body, dict) else None
    return reason[:REASON_MAX] if isinstance(reason, str) else ""


def _target(request: web.Request, response: web.StreamResponse) -> str:
    """What was acted on: the path's parameters, or the id of what a 2xx created (its
    Location's last part, else the `id` of the answer)."""
    named = "/".join(request.match_info.values())
    if named or not isinstance(response, web.Response) or response.status >= 300:
        return named
    if location := response.headers.get("Location"):
        return location.rstrip("/").rsplit("/", 1)[-1]
    if response.content_type != "application/json" or not response.body:
        return ""
    try:
        doc = json.loads(response.body)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        return ""
    ident = doc.get("id") if isinstance(doc, dict) else None
    return ident if isinstance(ident, str) else ""


@web.middleware
async def audit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: it sees the answer the client gets, after errors became responses."""
    rid = _request_id(request)
    request[REQUEST_ID] = rid
    logs.bind(request_id=rid)  # this request's task only
    response = await handler(request)
    response.headers[REQUEST_ID_HEADER] = rid
    route = route_of(request)
    info = request.get(TOKEN_INFO)
    if request.method in _READS or route is None or info is None:
        return response
    try:
        rec = AuditRecord(
            at=utcnow(),
            token_id=info.id,
            token_name=info.name,
            role=info.role.value,
            request_id=rid,
            action=action_of(route.method, route.path),
            method=request.method,
            path=request.path,
            status=response.status,
            target=_target(request, response),
            reason=_reason(request),
        )
        await services(request).audit.record(rec)
    except Exception:  # the write happened (or was refused); the client must hear of it
        log.exception("audit record not written: %s %s", request.method, request.path)
    return response


async def list_audit(request: web.Request) -> web.Response:
    q = params(request)
    flt = AuditFilter(
        token_name=q["token_name"], token_id=q["token_id"], action=q["action"], target=q["target"]
    )
    items, nxt = await services(request).audit.page(flt, limit=q["limit"], cursor=q["cursor"])
    return respond(Page[AuditRecord](items=items, next_cursor=nxt))
