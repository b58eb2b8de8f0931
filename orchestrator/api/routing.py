"""The route table: one declaration per endpoint, read by the app, the auth check and OpenAPI."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from schemas.api import Role

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Query:
    name: str
    description: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    role: Role | None  # None: no token needed
    body: Any = None  # pydantic model or TypeAdapter-able type for the request body
    response: Any = None
    status: int = 200
    query: tuple[Query, ...] = ()
    headers: tuple[Query, ...] = ()
