"""The HTTP client of the CLI (and of the integration tests), on the standard library.

The API's address comes from flags, the settings (VMORCH_API_URL) or the running lab's
details file, in that order. Each request carries the token `Credentials` choose for its
route (see credentials.py); a client made with one token uses it for everything.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from orchestrator.cli.credentials import Credentials
from orchestrator.lab.labdir import STATE_FILE

DEFAULT_API_URL = "http://127.0.0.1:8080"
REQUEST_ID_HEADER = "X-Request-Id"
# SSE: the api sends a keep-alive comment every 15 s; a stream silent for this long is dead
STREAM_READ_TIMEOUT_S = 45.0


class ApiError(Exception):
    """A 4xx or 5xx answer, or (status 0) no answer at all. `body` is the decoded answer:
    the API's `{"error": {"code", "message", "details"}}`."""

    def __init__(self, status: int, body: Any, request_id: str | None = None):
        super().__init__(f"HTTP {status}: {json.dumps(body)}")
        self.status = status
        self.body = body
        self.request_id = request_id


def read_details(lab_dir: Path | None) -> dict[str, Any]:
    """The running lab's details file (`vmorch up` writes it), or {} when there is none."""
    path = lab_dir / STATE_FILE if lab_dir is not None else None
    if path is None or not path.exists():
        return {}
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _unreachable(api_url: str, reason: object) -> ApiError:
    message = f"cannot reach the api at {api_url}: {reason}"
    return ApiError(0, {"error": {"code": "unreachable", "message": message}})


def _decode(payload: bytes) -> Any:
    try:
        return json.loads(payload or b"null")
    except ValueError:
        return payload.decode(errors="replace")


class Client:
    def __init__(
        self,
        api_url: str | None,
        token: str | None,
        lab_dir: Path | None = None,
        *,
        credentials: Credentials | None = None,
    ) -> None:
        state = read_details(lab_dir) if api_url is None or token is None else {}
        self.api_url = (api_url or state.get("api_url") or DEFAULT_API_URL).rstrip("/")
        self.credentials = credentials or Credentials(fixed=token or state.get("admin_token") or "")

    @property
    def token(self) -> str:
        """The token used when a request does not say (the most privileged known)."""
        return self.credentials.strongest

    def _open(
        self,
        method: str,
        path: str,
        data: bytes | None,
        token: str,
        headers: dict[str, str] | None,
        timeout_s: float,
    ) -> http.client.HTTPResponse:
        req = urllib.request.Request(self.api_url + path, data=data, method=method)
        if token:
            # never sent on to where a redirect points (another host would get the token)
            req.add_unredirected_header("Authorization", f"Bearer {token}")
        req.add_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        resp: http.client.HTTPResponse = urllib.request.urlopen(req, timeout=timeout_s)
        return resp

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
        """(status, decoded body) of one request; errors are answers too. Without `token`,
        the one the credentials choose for the route; a 403 to it is tried once more with
        each more privileged known token (a handler may ask for more than its route)."""
        status, answer, _ = self.exchange(
            method, path, body, raw=raw, token=token, headers=headers, timeout_s=timeout_s
        )
        return status, answer

    def exchange(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        timeout_s: float = 30,
    ) -> tuple[int, Any, str | None]:
        """`request`, with the request id the api answered with (X-Request-Id)."""
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        chosen = self.credentials.for_request(method, path) if token is None else token
        while True:
            try:
                with self._open(method, path, data, chosen, headers, timeout_s) as resp:
                    rid = resp.headers.get(REQUEST_ID_HEADER)
                    return resp.status, _decode(resp.read()), rid
            except urllib.error.HTTPError as e:
                rid = e.headers.get(REQUEST_ID_HEADER) if e.headers else None
                stronger = self.credentials.stronger_than(chosen) if token is None else None
                if e.code == 403 and stronger:
                    chosen = stronger
                    continue
                return e.code, _decode(e.read()), rid
            except urllib.error.URLError as e:  # nothing answered at all
                raise _unreachable(self.api_url, e.reason) from None
            except (OSError, http.client.HTTPException) as e:  # reset, timed out, cut short
                raise _unreachable(self.api_url, e) from None

    def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> Any:
        """The decoded body of a successful request; ApiError for a 4xx or 5xx."""
        status, answer, rid = self.exchange(method, path, body, headers=headers)
        if status >= 400:
            raise ApiError(status, answer, rid)
        return answer

    def stream(self, path: str, *, last_event_id: str | None = None) -> http.client.HTTPResponse:
        """An open text/event-stream response (read it with orchestrator.cli.sse);
        ApiError when the api refuses it or cannot be reached."""
        headers = {"Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        token = self.credentials.for_request("GET", path)
        try:
            return self._open("GET", path, None, token, headers, STREAM_READ_TIMEOUT_S)
        except urllib.error.HTTPError as e:
            rid = e.headers.get(REQUEST_ID_HEADER) if e.headers else None
            raise ApiError(e.code, _decode(e.read()), rid) from None
        except urllib.error.URLError as e:
            raise _unreachable(self.api_url, e.reason) from None
        except (OSError, http.client.HTTPException) as e:
            raise _unreachable(self.api_url, e) from None
