"""The CLI's token never follows a redirect to another server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from orchestrator.cli.client import Client


def _server(handler: type[BaseHTTPRequestHandler]) -> tuple[HTTPServer, str]:
    srv = HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}"


@pytest.fixture
def servers() -> Iterator[tuple[str, list[str | None]]]:
    seen: list[str | None] = []

    class Elsewhere(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *_: object) -> None:
            pass

    other, other_url = _server(Elsewhere)

    class Redirecting(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", other_url + "/stolen")
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    api, api_url = _server(Redirecting)
    yield api_url, seen
    for srv in (api, other):
        srv.shutdown()
        srv.server_close()


def test_a_redirect_does_not_carry_the_token(servers: tuple[str, list[str | None]]) -> None:
    api_url, seen = servers
    Client(api_url, "vmo_secret-token").request("GET", "/v1/queue")
    assert seen == [None]  # the other server was asked, without the token
