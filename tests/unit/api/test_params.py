"""Query parameter schemas: one declaration checked by the server and shown by OpenAPI."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.api.openapi import build_openapi
from orchestrator.api.params import check_schema, parse
from orchestrator.api.routes import routes
from orchestrator.api.routing import Query

LIMIT = {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}
CURSOR = {"type": "string", "pattern": "^[0-9]{1,20}$"}


@pytest.mark.parametrize(
    ("schema", "raw", "value"),
    [
        (LIMIT, "1", 1),
        (LIMIT, "500", 500),
        (CURSOR, "1733054400000000", "1733054400000000"),
        ({"type": "boolean"}, "true", True),
        ({"type": "boolean"}, "1", True),
        ({"type": "boolean"}, "false", False),
        ({"type": "string", "enum": ["queued", "running"]}, "running", "running"),
        ({"type": "string", "maxLength": 3}, "", ""),
    ],
)
def test_values_that_fit_are_parsed(schema: dict[str, Any], raw: str, value: object) -> None:
    assert parse(schema, raw) == value


@pytest.mark.parametrize(
    ("schema", "raw"),
    [
        (LIMIT, "0"),
        (LIMIT, "501"),
        (LIMIT, "²"),  # "²".isdigit() is True; int("²") is an error
        (LIMIT, "٣"),  # int("٣") == 3: an Arabic-Indic digit
        (LIMIT, " 5"),
        (LIMIT, "5.0"),
        (LIMIT, "1_0"),
        (LIMIT, "9" * 5000),  # past Python's int digit limit
        (CURSOR, "²"),
        (CURSOR, "12\n"),  # re.match's `$` would let the newline through
        (CURSOR, ""),
        ({"type": "boolean"}, "yes"),
        ({"type": "string", "enum": ["queued"]}, "QUEUED"),
        ({"type": "string", "maxLength": 3}, "abcd"),
        ({"type": "string", "minLength": 1}, ""),
    ],
)
def test_values_that_do_not_fit_are_refused(schema: dict[str, Any], raw: str) -> None:
    with pytest.raises(ValueError, match="must"):
        parse(schema, raw)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "format": "uuid"},  # a keyword the checker does not enforce
        {"type": "number"},
        {"type": "string", "pattern": "[0-9]+"},  # unanchored
        {"type": "integer", "minimum": 1, "default": 0},  # a default that fails its check
    ],
)
def test_declarations_the_checker_cannot_enforce_are_refused(schema: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="parameter p"):
        Query("p", "", schema)


def test_a_missing_parameter_takes_its_default() -> None:
    assert Query("limit", "", LIMIT).parse(None) == 50
    assert Query("cursor", "", CURSOR).parse(None) is None


def test_the_document_shows_the_schemas_the_server_checks() -> None:
    table = {(r.method.lower(), r.path): r for r in routes()}
    doc = build_openapi(list(table.values()), "0")
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            declared = {q.name: q.schema for q in (*table[method, path].query,)}
            declared |= {h.name: h.schema for h in table[method, path].headers}
            shown = {p["name"]: p["schema"] for p in op.get("parameters", []) if p["in"] != "path"}
            assert shown == declared, (method, path)
            for schema in declared.values():
                check_schema("doc", schema)


def test_every_integer_parameter_is_bounded() -> None:
    for r in routes():
        for q in r.query:
            if q.schema["type"] == "integer":
                assert {"minimum", "maximum"} <= set(q.schema), (r.path, q.name)
