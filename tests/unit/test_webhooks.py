"""Webhook delivery against a local receiver on 127.0.0.1 (no other network)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import TestServer

from orchestrator.errors import Forbidden
from orchestrator.router.actions.webhook import WebhookAllowList, WebhookSender, sign, verify

SECRET = b"s3cret-key"
BODY = b'{"specversion":"1.0","id":"e1","source":"vmorch://api","type":"vm.x","time":"t"}'


@dataclass
class Receiver:
    server: TestServer
    statuses: list[int] = field(default_factory=list)  # replies to give, then 200
    seen: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.server.port}{path}"


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    app = web.Application()
    rx = Receiver(TestServer(app, host="127.0.0.1"))

    async def handle(request: web.Request) -> web.StreamResponse:
        rx.seen.append((request.path, dict(request.headers), await request.read()))
        if request.path == "/slow":
            await rx.release.wait()
        if request.path == "/redirect":
            raise web.HTTPFound("/hook")
        return web.Response(status=rx.statuses.pop(0) if rx.statuses else 200, text="ok")

    app.router.add_route("*", "/{tail:.*}", handle)
    await rx.server.start_server()
    yield rx
    rx.release.set()
    await rx.server.close()


def make_sender(*entries: str, resolver: AbstractResolver | None = None) -> WebhookSender:
    allow = WebhookAllowList(entries)
    return WebhookSender(allow, backoff_base_s=0.001, backoff_max_s=0.01, resolver=resolver)


@pytest.fixture
async def sender() -> AsyncIterator[WebhookSender]:
    s = make_sender("127.0.0.0/8")
    yield s
    await s.close()


async def test_delivered_with_verifiable_signature(
    receiver: Receiver, sender: WebhookSender
) -> None:
    res = await sender.deliver(receiver.url(), SECRET, BODY, "hook1:e1", 5.0, 3)
    assert (res.outcome, res.attempts, res.status) == ("delivered", 1, 200)
    [(path, headers, body)] = receiver.seen
    assert (path, body) == ("/hook", BODY)
    assert headers["Content-Type"] == "application/cloudevents+json"
    assert headers["User-Agent"] == "vmorch-webhook/1"
    assert headers["X-Vmorch-Delivery"] == "hook1:e1"
    ts, sig = int(headers["X-Vmorch-Timestamp"]), headers["X-Vmorch-Signature"]
    assert sig == "sha256=" + sign(SECRET, ts, BODY)
    assert verify(SECRET, ts, BODY, sig)
    assert not verify(b"wrong", ts, BODY, sig)
    assert not verify(SECRET, ts, BODY + b" ", sig)
    assert not verify(SECRET, ts, BODY, sig, now=ts + 301)
    assert verify(SECRET, ts, BODY, sig, now=ts + 299)
    assert not verify(SECRET, ts, BODY, sig.replace("sha256=", "sha1="))
    assert SECRET.decode() not in repr(res) and sig not in repr(res)


async def test_5xx_then_ok_is_retried(receiver: Receiver, sender: WebhookSender) -> None:
    receiver.statuses = [500, 503, 200]
    res = await sender.deliver(receiver.url(), SECRET, BODY, "d1", 5.0, 3)
    assert (res.outcome, res.attempts, res.status) == ("delivered", 3, 200)
    assert {h["X-Vmorch-Delivery"] for _, h, _ in receiver.seen} == {"d1"}
    assert len(receiver.seen) == 3


async def test_429_is_retried_until_retries_run_out(
    receiver: Receiver, sender: WebhookSender
) -> None:
    receiver.statuses = [429] * 5
    res = await sender.deliver(receiver.url(), SECRET, BODY, "d1", 5.0, 2)
    assert (res.outcome, res.attempts, res.status) == ("failed", 3, 429)


async def test_404_fails_without_retry(receiver: Receiver, sender: WebhookSender) -> None:
    receiver.statuses = [404]
    res = await sender.deliver(receiver.url(), SECRET, BODY, "d1", 5.0, 3)
    assert (res.outcome, res.attempts, res.status) == ("failed", 1, 404)
    assert len(receiver.seen) == 1


async def test_redirect_is_not_followed(receiver: Receiver, sender: WebhookSender) -> None:
    res = await sender.deliver(receiver.url("/redirect"), SECRET, BODY, "d1", 5.0, 3)
    assert (res.outcome, res.attempts, res.status) == ("failed", 1, 302)
    assert [p for p, _, _ in receiver.seen] == ["/redirect"]


async def test_timeouts_are_retried_then_fail(receiver: Receiver, sender: WebhookSender) -> None:
    res = await sender.deliver(receiver.url("/slow"), SECRET, BODY, "d1", 0.2, 2)
    assert (res.outcome, res.attempts, res.status) == ("failed", 3, None)
    assert "timed out" in res.detail
    assert len(receiver.seen) == 3


@pytest.mark.parametrize(
    ("entries", "url"),
    [
        ((), "http://127.0.0.1:{port}/hook"),  # empty allow-list denies everything
        (("10.0.0.0/8", "192.168.1.1"), "http://127.0.0.1:{port}/hook"),  # IP outside CIDRs
        (("127.0.0.0/8", "allowed.example"), "http://localhost:{port}/hook"),  # name not listed
        (("127.0.0.1:1",), "http://127.0.0.1:{port}/hook"),  # port differs
        (("127.0.0.0/8",), "http://user:pass@127.0.0.1:{port}/hook"),  # credentials
        (("127.0.0.0/8",), "http://token@127.0.0.1:{port}/hook"),
        (("127.0.0.0/8",), "ftp://127.0.0.1:{port}/hook"),  # scheme
        (("127.0.0.0/8",), "http://2130706433:{port}/hook"),  # numeric alias is a name
    ],
)
async def test_refused_targets_see_no_traffic(
    receiver: Receiver, entries: tuple[str, ...], url: str
) -> None:
    sender = make_sender(*entries)
    try:
        res = await sender.deliver(url.format(port=receiver.server.port), SECRET, BODY, "d", 5, 3)
    finally:
        await sender.close()
    assert (res.outcome, res.attempts, res.status) == ("refused", 0, None)
    assert receiver.seen == []
    assert "pass" not in res.detail


@pytest.mark.parametrize("entry", ["127.0.0.1:{port}", "127.0.0.1", "localhost:{port}"])
async def test_allowed_host_entries(receiver: Receiver, entry: str) -> None:
    port = receiver.server.port
    sender = make_sender(entry.format(port=port))
    host = "localhost" if entry.startswith("localhost") else "127.0.0.1"
    try:
        res = await sender.deliver(f"http://{host}:{port}/hook", SECRET, BODY, "d", 5, 0)
    finally:
        await sender.close()
    assert res.outcome == "delivered"


class _EvilResolver(AbstractResolver):
    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(
                hostname=host, host=ip, port=port, family=socket.AF_INET, proto=0, flags=0
            )
            for ip in ("127.0.0.1", "169.254.169.254")
        ]

    async def close(self) -> None:
        pass


async def test_listed_name_resolving_to_link_local_is_refused(receiver: Receiver) -> None:
    sender = make_sender("hooks.example", resolver=_EvilResolver())
    try:
        res = await sender.deliver("http://hooks.example/hook", SECRET, BODY, "d", 5, 3)
    finally:
        await sender.close()
    assert res.outcome == "refused" and "169.254.169.254" in res.detail
    assert res.attempts == 1  # refused at resolution: not retried, nothing connected


def test_allow_list_entries_and_errors() -> None:
    allow = WebhookAllowList(["Hooks.Example:8443", "[::1]:9000", "fd00::/8"])
    allow.check("https://hooks.example:8443/x")
    allow.check("http://[::1]:9000/")
    allow.check("http://[fd00::5]/")
    with pytest.raises(Forbidden, match="not allowed"):
        allow.check("https://hooks.example/x")
    with pytest.raises(ValueError):
        WebhookAllowList(["host:notaport"])
