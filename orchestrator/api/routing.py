"""The route table: one declaration per endpoint, read by the app, the auth check and OpenAPI."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from orchestrator.api import params
from schemas.api import Role

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Query:
    """A query parameter or request header. Its `schema` is what the OpenAPI document shows
    and what the server checks (orchestrator.api.params), with `default` filled in."""

    name: str
    description: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})

    def __post_init__(self) -> None:
        params.check_schema(self.name, self.schema)

    def parse(self, raw: str | None) -> Any:
        """The checked value of `raw` (the default, or None, when not given); ValueError
        with a message for the client when it does not fit the schema."""
        if raw is None:
            return self.schema.get("default")
        return params.parse(self.schema, raw)


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    role: Role | None  # None: no token needed
    body: Any = None  # pydantic model or TypeAdapter-able type for the request body
    body_required: bool = True  # False: the body may be left out (an abort without a reason)
    response: Any = None
    status: int = 200
    query: tuple[Query, ...] = ()
    headers: tuple[Query, ...] = ()
    # a body that is not JSON: its media type (an upload: application/octet-stream)
    raw_body: str | None = None
    # path parameters documented more narrowly than a string ({"group": name schema})
    path_schemas: tuple[tuple[str, dict[str, Any]], ...] = ()
