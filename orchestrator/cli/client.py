"""A small HTTP client for the CLI: the API's address and token come from flags, the
environment (VMORCH_API_URL, VMORCH_TOKEN) or the running lab's state file."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from orchestrator.lab.stack import STATE_FILE


class ApiError(Exception):
    def __init__(self, status: int, body: Any):
        super().__init__(f"HTTP {status}: {json.dumps(body)}")
        self.status = status
        self.body = body


class Client:
    def __init__(self, api_url: str | None, token: str | None, lab_dir: Path):
        state: dict[str, Any] = {}
        path = lab_dir / STATE_FILE
        if (api_url is None or token is None) and path.exists():
            state = json.loads(path.read_text())
        self.api_url = (
            api_url
            or os.environ.get("VMORCH_API_URL")
            or state.get("api_url")
            or "http://127.0.0.1:8080"
        ).rstrip("/")
        self.token = token or os.environ.get("VMORCH_TOKEN") or state.get("admin_token") or ""

    def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.api_url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        req.add_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = raw.decode(errors="replace")
            raise ApiError(e.code, parsed) from None
