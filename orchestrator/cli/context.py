"""What every command gets: the settings, its arguments, the output, and (made when first
used) the API client with the tokens the CLI knows, or a Redis connection."""

from __future__ import annotations

import argparse
import asyncio
import os
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar

from orchestrator.cli.client import DEFAULT_API_URL, ApiError, Client, read_details
from orchestrator.cli.credentials import Credentials
from orchestrator.cli.exitcodes import CliError, ExitCode
from orchestrator.cli.output import Output
from orchestrator.redisurl import redacted
from orchestrator.settings import Settings

if TYPE_CHECKING:
    from orchestrator.services import Services

T = TypeVar("T")


def redact_url(url: str) -> str:
    """A Redis URL without its passwords (a Sentinel URL's query ones too)."""
    return redacted(url)


def query(path: str, **params: Any) -> str:
    """`path` with the params that are set as its query string."""
    given = {k: v for k, v in params.items() if v is not None and v is not False}
    given = {k: ("true" if v is True else v) for k, v in given.items()}
    return f"{path}?{urllib.parse.urlencode(given)}" if given else path


@dataclass
class Context:
    settings: Settings
    args: argparse.Namespace
    out: Output

    @cached_property
    def details(self) -> dict[str, Any]:
        """The running lab's details file (`vmorch up`), or {}."""
        return read_details(self.settings.lab_dir.resolve())

    @cached_property
    def client(self) -> Client:
        """The API client. The details file's tokens go to the lab's own api only: given
        another api (--api, VMORCH_API_URL), only the tokens given go with its calls."""
        lab_api = self.details.get("api_url")
        api = getattr(self.args, "api", None) or self.settings.api_url or lab_api
        fixed = getattr(self.args, "token", None) or self.settings.token
        known = self.details if api == lab_api else {}
        creds = Credentials.discover(fixed, os.environ, known)
        return Client(api or DEFAULT_API_URL, None, credentials=creds)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """The decoded answer; ApiError (which main() turns into an exit code) otherwise."""
        return self.client.call(method, path, body)

    def get(self, path: str, **params: Any) -> Any:
        return self.call("GET", query(path, **params))

    def find(self, path: str, **params: Any) -> Any:
        """GET, or None when the api answers 404 (gone, or an endpoint an older api has
        not got)."""
        try:
            return self.get(path, **params)
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    @cached_property
    def redis_url(self) -> str:
        """VMORCH_REDIS_URL, else the running lab's (from its details file)."""
        if "redis_url" in self.settings.model_fields_set:
            return self.settings.redis_url
        return str(self.details.get("redis_url") or self.settings.redis_url)

    def redis(self, fn: Callable[[Services], Awaitable[T]]) -> T:
        """Run `fn(services)` against Redis directly (the commands that work without an
        api: tokens, inventory)."""
        from redis.exceptions import RedisError

        from orchestrator.services import Services, connect

        settings = self.settings.model_copy(update={"redis_url": self.redis_url})

        async def main() -> T:
            r = connect(settings)
            try:
                return await fn(Services.build(settings, r))
            finally:
                await r.aclose()

        try:
            return asyncio.run(main())
        except RedisError as e:
            where = redact_url(self.redis_url)
            raise CliError(
                ExitCode.UNREACHABLE, f"Redis at {where}: {e}", error_code="redis_unavailable"
            ) from None
