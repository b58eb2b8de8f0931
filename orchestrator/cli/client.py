"""The HTTP client of the CLI (and of the integration tests): the API's address and token
come from flags, the settings (VMORCH_API_URL, VMORCH_TOKEN) or the running lab's state
file, in that order."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from orchestrator.lab.labdir import STATE_FILE

DEFAULT_API_URL = "http://127.0.0.1:8080"


class ApiError(Exception):
    def __init__(self, status: int, body: Any):
        super().__init__(f"HTTP {status}: {json.dumps(body)}")
        self.status = status
        self.body = body


class Client:
    def __init__(self, api_url: str | None, token: str | None, lab_dir: Path | None = None) -> None:
        state: dict[str, Any] = {}
        path = lab_dir / STATE_FILE if lab_dir is not None else None
        if (api_url is None or token is None) and path is not None and path.exists():
            state = json.loads(path.read_text())
        self.api_url = (api_url or state.get("api_url") or DEFAULT_API_URL).rstrip("/")
        self.token = token or state.get("admin_token") or ""

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        timeout_s: float = 30,
    ) -> tuple[int, Any]:
        """(status, decoded body) of one request; errors are answers too."""
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.api_url + path, data=data, method=method)
        tok = self.token if token is None else token
        if tok:
            req.add_header("Authorization", f"Bearer {tok}")
        req.add_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            payload = e.read()
            try:
                return e.code, json.loads(payload)
            except ValueError:
                return e.code, payload.decode(errors="replace")
        except urllib.error.URLError as e:  # nothing answered at all
            message = f"cannot reach the api at {self.api_url}: {e.reason}"
            raise ApiError(0, {"error": {"code": "unreachable", "message": message}}) from None

    def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> Any:
        """The decoded body of a successful request; ApiError for a 4xx or 5xx."""
        status, answer = self.request(method, path, body, headers=headers)
        if status >= 400:
            raise ApiError(status, answer)
        return answer
