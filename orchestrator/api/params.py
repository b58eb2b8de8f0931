"""Query parameters and request headers checked against the JSON schema that the OpenAPI
document shows for them, so the document and the server cannot disagree.

Only a small subset of JSON schema is understood (the keywords in `_KEYWORDS`); a route that
declares anything else fails when the route table is built, not by being silently unchecked.
Values are ASCII-strict: `int("²")` and `"٣".isdigit()` are Python's ideas of digits, not the
document's, and such values must not reach Redis as cursors or scores.
"""

from __future__ import annotations

import re
from typing import Any

_KEYWORDS = {"type", "minimum", "maximum", "minLength", "maxLength", "pattern", "enum", "default"}
_TYPES = {"string", "integer", "boolean"}
_INTEGER = re.compile(r"-?[0-9]{1,19}")  # what fits in a Redis score or a 64-bit int
_TRUE, _FALSE = {"true", "1"}, {"false", "0"}  # 1 and 0: `?all=1` predates the schema


def check_schema(name: str, schema: dict[str, Any]) -> None:
    """Refuse a declaration the checker would not enforce."""
    unknown = set(schema) - _KEYWORDS
    if unknown:
        raise ValueError(f"parameter {name}: unsupported schema keywords {sorted(unknown)}")
    if schema.get("type") not in _TYPES:
        raise ValueError(f"parameter {name}: type must be one of {sorted(_TYPES)}")
    pattern = schema.get("pattern")
    if pattern is not None and not (pattern.startswith("^") and pattern.endswith("$")):
        raise ValueError(f"parameter {name}: anchor the pattern with ^...$ ({pattern})")
    if "default" in schema:
        try:
            parse(schema, str(schema["default"]).lower())
        except ValueError as e:
            raise ValueError(f"parameter {name}: the default {e}") from None


def parse(schema: dict[str, Any], raw: str) -> Any:
    """The value of `raw` under `schema`, or ValueError with a message for the client."""
    kind = schema["type"]
    value: Any
    if kind == "integer":
        if not _INTEGER.fullmatch(raw):
            raise ValueError("must be an integer (ASCII digits)")
        value = int(raw)
        lo, hi = schema.get("minimum"), schema.get("maximum")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            if lo is None or hi is None:
                raise ValueError(
                    f"must be at least {lo}" if hi is None else f"must be at most {hi}"
                )
            raise ValueError(f"must be between {lo} and {hi}")
    elif kind == "boolean":
        if raw not in _TRUE | _FALSE:
            raise ValueError("must be true or false")
        value = raw in _TRUE
    else:
        value = _string(schema, raw)
    if "enum" in schema and value not in schema["enum"]:
        raise ValueError("must be one of " + ", ".join(map(str, schema["enum"])))
    return value


def _string(schema: dict[str, Any], raw: str) -> str:
    if len(raw) < schema.get("minLength", 0):
        raise ValueError(f"must be at least {schema['minLength']} characters")
    if "maxLength" in schema and len(raw) > schema["maxLength"]:
        raise ValueError(f"must be at most {schema['maxLength']} characters")
    pattern = schema.get("pattern")
    # fullmatch, not search: Python's `$` also matches before a final newline
    if pattern is not None and not re.fullmatch(pattern[1:-1], raw):
        raise ValueError(f"must match {pattern}")
    return raw
