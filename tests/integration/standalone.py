"""An api process of a test's own on a private redis-server of its own, for tests that stall
or stop Redis, or let a fuzzer write whatever it likes, away from the session's shared api
(no router runs here, so no hook a fuzzer creates ever fires)."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.lab.redis_server import RedisServer
from schemas.api import Role
from tests.integration.conftest import Proc, make_token, start_api


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: Any


@dataclass(frozen=True)
class Standalone:
    url: str
    redis: RedisServer
    redis_url: str
    api: Proc
    admin_token: str

    def call(self, method: str, path: str, body: Any = None, timeout_s: float = 30) -> Reply:
        """One request with the admin token; the reply's headers too (Retry-After, Allow)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.admin_token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                raw, status, headers = resp.read(), resp.status, dict(resp.headers)
        except urllib.error.HTTPError as e:
            raw, status, headers = e.read(), e.code, dict(e.headers)
        return Reply(status, headers, json.loads(raw) if raw else None)


@contextmanager
def standalone_api(
    workdir: Path, name: str, *, appendonly: bool = False, **settings: str
) -> Iterator[Standalone]:
    """Start a redis-server and an api on it (extra VMORCH_* settings by keyword), yield
    them, and stop both, whatever the test did to the redis-server's process."""
    server = RedisServer(workdir / f"{name}-redis", appendonly=appendonly, require_password=True)
    redis_url = server.start()
    try:
        env = {
            **os.environ,
            "VMORCH_REDIS_URL": redis_url,
            **{f"VMORCH_{k.upper()}": v for k, v in settings.items()},
        }
        url, proc = start_api(env, workdir / f"{name}-api.log")
        try:
            yield Standalone(url, server, redis_url, proc, make_token(redis_url, Role.ADMIN))
        finally:
            proc.stop()
    finally:
        server.stop()
