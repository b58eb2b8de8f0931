"""Webhook delivery against a local receiver on 127.0.0.1 (no other network)."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import TestServer

from orchestrator.router.actions.webhook import WebhookSender, sign, verify
from orchestrator.targets import WebhookAllowList, WebhookRefused

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


class _FakeResolver(AbstractResolver):
    """Answers every name with the given addresses, as a DNS server the attacker runs would."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [resolved(ip, port) for ip in self.addresses]

    async def close(self) -> None:
        pass


def resolved(ip: str, port: int) -> ResolveResult:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    return ResolveResult(hostname="", host=ip, port=port, family=family, proto=0, flags=0)


@pytest.mark.parametrize("entry", ["127.0.0.1:{port}", "127.0.0.1", "127.0.0.0/8:{port}"])
async def test_allowed_address_entries(receiver: Receiver, entry: str) -> None:
    port = receiver.server.port
    sender = make_sender(entry.format(port=port))
    try:
        res = await sender.deliver(f"http://127.0.0.1:{port}/hook", SECRET, BODY, "d", 5, 0)
    finally:
        await sender.close()
    assert res.outcome == "delivered"


async def test_a_listed_name_reaches_loopback_only_when_an_address_entry_covers_it(
    receiver: Receiver,
) -> None:
    # given a listed name that resolves to the receiver's address, 127.0.0.1
    port = receiver.server.port
    url = f"http://receiver.test:{port}/hook"
    alone = make_sender("receiver.test", resolver=_FakeResolver("127.0.0.1"))
    covered = make_sender(f"receiver.test:{port}", "127.0.0.1", resolver=_FakeResolver("127.0.0.1"))
    try:
        # when it is the only entry, then the delivery is refused at resolution
        refused = await alone.deliver(url, SECRET, BODY, "d1", 5, 3)
        assert receiver.seen == []
        # when an address entry covers 127.0.0.1, then it is delivered
        delivered = await covered.deliver(url, SECRET, BODY, "d2", 5, 0)
    finally:
        await alone.close()
        await covered.close()
    assert (refused.outcome, refused.attempts) == ("refused", 1)  # nothing connected
    assert "resolves to a forbidden address 127.0.0.1 (loopback)" in refused.detail
    assert delivered.outcome == "delivered"
    assert [h["X-Vmorch-Delivery"] for _, h, _ in receiver.seen] == ["d2"]


async def test_listed_name_resolving_to_one_forbidden_address_is_refused(
    receiver: Receiver,
) -> None:
    evil = _FakeResolver("93.184.216.34", "169.254.169.254")  # one public, one metadata
    sender = make_sender("hooks.example", resolver=evil)
    try:
        res = await sender.deliver("http://hooks.example/hook", SECRET, BODY, "d", 5, 3)
    finally:
        await sender.close()
    assert res.outcome == "refused" and "169.254.169.254 (link-local)" in res.detail
    assert res.attempts == 1  # refused at resolution: not retried, nothing connected


# (address, why it is refused, an allow-list entry that covers it)
FORBIDDEN = [
    ("127.0.0.1", "loopback", "127.0.0.1"),
    ("127.8.9.10", "loopback", "127.0.0.0/8"),
    ("::1", "loopback", "[::1]"),
    ("10.1.2.3", "private", "10.1.0.0/16"),
    ("172.16.0.1", "private", "172.16.0.0/12"),
    ("172.31.255.254", "private", "172.31.255.254"),
    ("192.168.1.1", "private", "192.168.0.0/16"),
    ("fd00::1", "unique local", "fd00::/8"),
    ("fc00::1", "unique local", "[fc00::/7]"),
    ("100.64.0.1", "shared address space", "100.64.0.0/10"),
    ("100.100.100.200", "shared address space", "100.100.100.200"),  # Alibaba metadata
    ("169.254.169.254", "link-local", "169.254.169.254"),
    ("fe80::1", "link-local", "fe80::/10"),
    ("64:ff9b::a9fe:a9fe", "NAT64", "64:ff9b::/96"),  # NAT64 to 169.254.169.254
    ("64:ff9b::808:808", "NAT64", "64:ff9b::808:808"),  # even to a public address
    ("64:ff9b:1::1", "NAT64", "64:ff9b:1::/48"),
    ("2002:a9fe:a9fe::", "6to4", "2002::/16"),
    ("2001:0:4136:e378::1", "Teredo", "2001::/32"),
    ("224.0.0.1", "multicast", "224.0.0.0/4"),
    ("ff02::1", "multicast", "ff00::/8"),
    ("0.0.0.0", "unspecified", "0.0.0.0"),
    ("::", "unspecified", "[::]"),
    ("0.1.2.3", "this network", "0.0.0.0/8"),
    ("240.0.0.1", "reserved", "240.0.0.0/4"),
    ("255.255.255.255", "broadcast", "255.255.255.255"),
    ("4000::1", "reserved", "4000::/3"),
    ("fec0::1", "site-local", "fec0::/10"),
    ("192.0.2.1", "not globally reachable", "192.0.2.0/24"),
    ("::ffff:127.0.0.1", "loopback", "127.0.0.0/8"),  # IPv4-mapped forms
    ("::ffff:10.0.0.1", "private", "10.0.0.0/8"),
    ("::ffff:100.64.0.1", "shared address space", "100.64.0.0/10"),
    ("::ffff:169.254.169.254", "link-local", "169.254.0.0/16"),
    ("::a9fe:a9fe", "link-local", "169.254.169.254"),  # IPv4-compatible forms
    ("::10.0.0.1", "private", "10.0.0.1"),
]
PUBLIC = ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "::ffff:93.184.216.34"]


def url_of(ip: str, port: int = 80) -> str:
    return f"http://[{ip}]:{port}/" if ":" in ip else f"http://{ip}:{port}/"


@pytest.mark.parametrize(("ip", "why", "entry"), FORBIDDEN)
async def test_forbidden_address_by_name_is_refused(ip: str, why: str, entry: str) -> None:
    sender = make_sender("hooks.example", resolver=_FakeResolver(ip))
    try:
        res = await sender.deliver("http://hooks.example/x", SECRET, BODY, "d", 5, 3)
    finally:
        await sender.close()
    assert (res.outcome, res.attempts) == ("refused", 1)
    assert f"hooks.example resolves to a forbidden address {ip} ({why})" in res.detail


@pytest.mark.parametrize(("ip", "why", "entry"), FORBIDDEN)
def test_forbidden_address_as_literal_is_refused(ip: str, why: str, entry: str) -> None:
    # a host entry does not allow an address, and an unlisted address says why it is special
    allow = WebhookAllowList(["hooks.example"])
    with pytest.raises(WebhookRefused, match=rf"is a forbidden address \({why}\)"):
        allow.check(url_of(ip))


@pytest.mark.parametrize(("ip", "why", "entry"), FORBIDDEN)
def test_forbidden_address_is_allowed_by_a_covering_entry(ip: str, why: str, entry: str) -> None:
    allow = WebhookAllowList(["hooks.example", entry])
    allow.check(url_of(ip, 8080))  # as a literal
    allow.check_resolved("hooks.example", [resolved(ip, 8080)])  # as what a name resolves to
    # ...and only what it covers: a forbidden neighbour outside it stays refused
    with pytest.raises(WebhookRefused, match="forbidden address"):
        WebhookAllowList(["hooks.example", "10.9.0.0/16"]).check(url_of(ip, 8080))


@pytest.mark.parametrize("ip", PUBLIC)
def test_public_addresses_pass_for_a_listed_name_but_need_an_entry_as_literals(ip: str) -> None:
    allow = WebhookAllowList(["hooks.example"])
    allow.check_resolved("hooks.example", [resolved(ip, 443)])
    with pytest.raises(WebhookRefused, match="not in the operator's webhook allow-list"):
        allow.check(url_of(ip, 443))


def test_port_restricted_entries() -> None:
    allow = WebhookAllowList(
        ["Hooks.Example:8443", "[::1]:9000", "1.2.3.4:8080", "10.1.0.0/16:8443", "[fd00::/8]:443"]
    )
    for ok in (
        "https://hooks.example:8443/x",
        "http://[::1]:9000/",
        "http://1.2.3.4:8080/",
        "https://10.1.2.3:8443/",
        "https://[fd00::5]/",  # https: port 443
    ):
        allow.check(ok)
    for refused in (
        "https://hooks.example/x",
        "http://[::1]:9001/",
        "http://1.2.3.4/",
        "http://10.1.2.3/",
        "https://10.1.2.3:8444/",
        "http://[fd00::5]/",
        "https://[fd00::5]:8443/",
    ):
        with pytest.raises(WebhookRefused):
            allow.check(refused)
    # a name's addresses are covered only on the entry's port
    allow.check_resolved("hooks.example", [resolved("10.1.2.3", 8443)])
    with pytest.raises(WebhookRefused, match=r"10\.1\.2\.3 \(private\)"):
        allow.check_resolved("hooks.example", [resolved("10.1.2.3", 8080)])


def test_entries_without_a_port_allow_any_port() -> None:
    allow = WebhookAllowList(["hooks.example", "10.1.0.0/16", "fd00::/8", "1.2.3.4", "::1"])
    for port in (1, 80, 443, 65535):
        allow.check(f"http://hooks.example:{port}/")
        allow.check(f"http://10.1.255.1:{port}/")
        allow.check(f"http://[fd00::5]:{port}/")
        allow.check(f"http://1.2.3.4:{port}/")
        allow.check(f"http://[::1]:{port}/")
        allow.check_resolved("hooks.example", [resolved("10.1.0.9", port)])


@pytest.mark.parametrize(
    "entry",
    [
        "",
        "host:notaport",
        "host:",
        "host:0",
        "host:65536",
        "http://host",
        "user@host",
        "host/path",
        "-host.example",
        "a..example",
        "10.0.0.0/33",
        "10.1.2.3/16",  # host bits set: which network was meant?
        "fd00::/8:8443",  # a port on IPv6 goes after brackets
        "fd00::1:8443x",
        "[10.0.0.1]:80",  # brackets are for IPv6
        "[fd00::1]:x",
        "[fd00::/8]:99999",
        "2130706433",  # numeric aliases that aiohttp refuses as URLs
        "127.1",
    ],
)
def test_bad_entries_are_named_in_the_error(entry: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"bad webhook allow-list entry {entry!r}")):
        WebhookAllowList(["hooks.example", entry])
