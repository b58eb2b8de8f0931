"""The OpenAPI 3.1 document, generated from the route table and the same pydantic models
that validate requests and shape responses."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter
from pydantic.json_schema import GenerateJsonSchema

from orchestrator.api.routing import Route
from schemas.api import ErrorResponse

_REF = "#/components/schemas/{model}"
_ERRORS = {
    "400": "bad request",
    "401": "no or wrong token",
    "403": "role may not",
    "404": "not found",
    "409": "conflict",
    "413": "body too large",
    "415": "body not sent as application/json",
    "422": "validation error",
    "503": "Redis unavailable: try again after Retry-After seconds",
}
_BODY_ONLY = {"413", "415"}  # answers about a request body, on routes that take one


def _schema(tp: Any, defs: dict[str, Any]) -> dict[str, Any]:
    schema = TypeAdapter(tp).json_schema(ref_template=_REF, schema_generator=GenerateJsonSchema)
    defs.update(schema.pop("$defs", {}))
    return schema


def build_openapi(routes: list[Route], version: str) -> dict[str, Any]:
    defs: dict[str, Any] = {}
    err_ref = {"$ref": _REF.format(model="ErrorResponse")}
    defs["ErrorResponse"] = _schema(ErrorResponse, defs)
    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        op: dict[str, Any] = {"summary": r.summary, "operationId": r.handler.__name__}
        params = [
            {
                "name": q.name,
                "in": "query",
                "required": False,
                "description": q.description,
                "schema": q.schema,
            }
            for q in r.query
        ]
        params += [
            {
                "name": h.name,
                "in": "header",
                "required": False,
                "description": h.description,
                "schema": h.schema,
            }
            for h in r.headers
        ]
        narrow = dict(r.path_schemas)
        params += [
            {
                "name": seg[1:-1],
                "in": "path",
                "required": True,
                "schema": narrow.get(seg[1:-1], {"type": "string"}),
            }
            for seg in r.path.split("/")
            if seg.startswith("{")
        ]
        if params:
            op["parameters"] = params
        if r.body is not None:
            op["requestBody"] = {
                "required": r.body_required,
                "content": {"application/json": {"schema": _schema(r.body, defs)}},
            }
        elif r.raw_body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {r.raw_body: {"schema": {"type": "string", "format": "binary"}}},
            }
        responses: dict[str, Any] = {str(r.status): {"description": "success"}}
        if r.response is not None:
            responses[str(r.status)]["content"] = {
                "application/json": {"schema": _schema(r.response, defs)}
            }
        for code, text in _ERRORS.items():
            if (code in ("401", "403") and r.role is None) or (
                code in _BODY_ONLY and r.body is None and r.raw_body is None
            ):
                continue
            responses[code] = {
                "description": text,
                "content": {"application/json": {"schema": err_ref}},
            }
            if code == "503":
                responses[code]["headers"] = {
                    "Retry-After": {"schema": {"type": "integer", "minimum": 1}}
                }
        op["responses"] = responses
        if r.role is not None:
            op["security"] = [{"bearer": []}]
            op["description"] = f"Needs role {r.role.value} or higher."
        paths.setdefault(r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "vmorch",
            "version": version,
            "description": "Event-driven VM orchestration on libvirt.",
        },
        "paths": paths,
        "components": {
            "schemas": defs,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
