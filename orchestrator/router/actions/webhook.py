"""Deliver a hook's event to a webhook: signed, allow-listed, and treating the target as untrusted.

Receivers check `X-Vmorch-Signature` with `verify` and de-duplicate on `X-Vmorch-Delivery`.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import re
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)
from yarl import URL

from orchestrator.errors import Forbidden
from schemas.hooks import HookRun, WebhookAction

if TYPE_CHECKING:
    from orchestrator.router.actions import ActionContext, Firing

log = logging.getLogger("vmorch.webhooks")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_RESPONSE_BYTES = 64 * 1024
USER_AGENT = "vmorch-webhook/1"


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    return hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def verify(
    secret: bytes,
    timestamp: int,
    body: bytes,
    header: str,
    tolerance_s: float = 300,
    now: float | None = None,
) -> bool:
    """Check an `X-Vmorch-Signature` header (`sha256=<hex>`); stale timestamps are refused."""
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    scheme, _, digest = header.partition("=")
    expected = sign(secret, timestamp, body)
    return scheme == "sha256" and hmac.compare_digest(digest.encode(), expected.encode())


class WebhookRefused(Forbidden):
    code = "webhook_refused"


_V4_COMPATIBLE = ipaddress.IPv6Network("::/96")


def _ip(text: str) -> IPAddress | None:
    """`text` as an address, with an IPv4-mapped or -compatible IPv6 form taken as the IPv4
    address it embeds: that is where a connection to it goes, and what the rule must see."""
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return addr.ipv4_mapped
        if addr in _V4_COMPATIBLE and not (addr.is_loopback or addr.is_unspecified):
            return ipaddress.IPv4Address(int(addr))
    return addr


# Ranges refused by default that no stable stdlib property names. `is_private` is not used:
# it leaves 100.64/10 out, lumps in documentation ranges, and its IPv6 ranges changed in
# 3.12.4 and 3.13; listing the ranges keeps the rule the same on every Python version.
_FORBIDDEN_NETWORKS: tuple[tuple[Network, str], ...] = tuple(
    (ipaddress.ip_network(net), why)
    for net, why in (
        ("0.0.0.0/8", "this network"),  # Linux connects 0.0.0.0 to the local host
        ("10.0.0.0/8", "private"),
        ("172.16.0.0/12", "private"),
        ("192.168.0.0/16", "private"),
        ("100.64.0.0/10", "shared address space"),
        ("255.255.255.255/32", "broadcast"),
        ("fc00::/7", "unique local"),
        ("fec0::/10", "site-local"),
        ("64:ff9b::/96", "NAT64"),
        ("64:ff9b:1::/48", "NAT64"),
        ("2002::/16", "6to4"),
        ("2001::/32", "Teredo"),
    )
)


def forbidden_reason(addr: IPAddress) -> str | None:
    """Why `addr` is refused as a webhook target by default, or None when it is not; an IP or
    CIDR entry of the allow-list that covers it overrides this.

    Each range reaches the orchestrator's own host or networks, or translates or tunnels to
    an address that may (NAT64, 6to4 and Teredo embed an IPv4 address: 169.254.169.254 too).
    `is_global` last catches the other special-purpose ranges (documentation, benchmarking)."""
    if addr.is_loopback:
        return "loopback"
    if addr.is_unspecified:
        return "unspecified"
    if addr.is_link_local:
        return "link-local"
    if addr.is_multicast:
        return "multicast"
    for net, why in _FORBIDDEN_NETWORKS:
        if addr in net:
            return why
    if addr.is_reserved:
        return "reserved"
    if not addr.is_global:
        return "not globally reachable"
    return None


_NAME = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)(\.(?!-)[a-z0-9_-]{1,63}(?<!-))*")
_BRACKETED = re.compile(r"\[([^\]]*)\](?::(.*))?")


def _port(text: str, raw: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"bad webhook allow-list entry {raw!r}: port must be 1-65535")
    return int(text)


def _parse_entry(raw: str) -> tuple[str | Network, int | None]:
    """One allow-list entry as (host name or network, port or None for any port).

    `host`, `host:port`, `1.2.3.4[:port]`, `::1` or `[::1][:port]`, `10.1.0.0/16[:port]`,
    `fd00::/8` or `[fd00::/8][:port]`. An address is a network of one."""
    entry = raw.strip()
    port: int | None = None
    if bracketed := _BRACKETED.fullmatch(entry):
        host, port_text = bracketed.group(1), bracketed.group(2)
        if ":" not in host:
            raise ValueError(f"bad webhook allow-list entry {raw!r}: only IPv6 goes in brackets")
        port = None if port_text is None else _port(port_text, raw)
    elif entry.count(":") == 1:
        host, _, port_text = entry.partition(":")
        port = _port(port_text, raw)
    else:
        host = entry  # no port, or a bare IPv6 address or network (which cannot carry one)
    if "/" in host:
        try:
            return ipaddress.ip_network(host, strict=True), port
        except ValueError as exc:
            raise ValueError(f"bad webhook allow-list entry {raw!r}: {exc}") from None
    if (addr := _ip(host)) is not None:
        return ipaddress.ip_network(addr), port
    name = host.lower()
    if ":" in name or not _NAME.fullmatch(name) or len(name) > 253:
        raise ValueError(f"bad webhook allow-list entry {raw!r}: not a host name or address")
    if name.replace(".", "").isdigit():  # 2130706433, 127.1: aiohttp refuses these as URLs
        raise ValueError(f"bad webhook allow-list entry {raw!r}: not a canonical IPv4 address")
    return name, port


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class WebhookAllowList:
    """Operator-allowed targets (see `_parse_entry`); an entry without a port allows any.
    Empty: deny all.

    An address entry or CIDR allows the addresses it covers, whatever they are. A host name
    entry allows the name only while every address it resolves to passes `forbidden_reason`
    or is covered by an address entry. `check` is static (no I/O) and covers IP literals,
    which aiohttp connects to without resolving. Addresses a name resolves to are checked by
    `check_resolved`, which the sender's resolver calls on the very addresses it connects to,
    so a DNS answer that changes between check and connect gains nothing."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.networks: list[tuple[Network, int | None]] = []
        self.names: list[tuple[str, int | None]] = []
        for raw in entries:
            target, port = _parse_entry(raw)
            if isinstance(target, str):
                self.names.append((target, port))
            else:
                self.networks.append((target, port))

    def covers(self, addr: IPAddress, port: int) -> bool:
        """Whether an address entry allows `addr` on `port` explicitly."""
        return any(addr in net and p in (None, port) for net, p in self.networks)

    def check(self, url: str) -> None:
        try:
            parsed = URL(url)
        except ValueError as exc:
            raise WebhookRefused("webhook URL is not a valid URL") from exc
        if parsed.scheme not in ("http", "https"):
            raise WebhookRefused(f"webhook URL scheme {parsed.scheme!r} is not http or https")
        if parsed.user is not None or parsed.password is not None:
            raise WebhookRefused("webhook URL must not carry credentials")
        if not parsed.raw_host or parsed.port is None:
            raise WebhookRefused("webhook URL has no host")
        host, port = parsed.raw_host, parsed.port
        addr = _ip(host)
        if addr is None:
            if any(h == host.lower() and p in (None, port) for h, p in self.names):
                return
        elif self.covers(addr, port):
            return
        elif why := forbidden_reason(addr):
            raise WebhookRefused(
                f"webhook target {_hostport(host, port)} is a forbidden address ({why}); "
                "only an IP or CIDR entry of the webhook allow-list can allow it"
            )
        raise WebhookRefused(
            f"webhook target {_hostport(host, port)} is not allowed "
            "(not in the operator's webhook allow-list)"
        )

    def check_resolved(self, host: str, results: Iterable[ResolveResult]) -> None:
        """Refuse a name that resolves to a forbidden address no address entry covers."""
        for r in results:
            addr = _ip(r["host"])
            if addr is None:
                raise WebhookRefused(f"webhook host {host} resolves to {r['host']!r}")
            if not self.covers(addr, r["port"]) and (why := forbidden_reason(addr)):
                raise WebhookRefused(
                    f"webhook host {host} resolves to a forbidden address {r['host']} ({why}); "
                    "only an IP or CIDR entry of the webhook allow-list can allow it"
                )


class _CheckingResolver(AbstractResolver):
    def __init__(self, allow_list: WebhookAllowList, inner: AbstractResolver) -> None:
        self.allow_list, self.inner = allow_list, inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self.inner.resolve(host, port, family)
        self.allow_list.check_resolved(host, results)
        return results

    async def close(self) -> None:
        await self.inner.close()


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    outcome: Literal["delivered", "failed", "refused"]
    attempts: int
    status: int | None
    detail: str
    elapsed_s: float


class _Transient(Exception):
    def __init__(self, status: int | None, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


class WebhookSender:
    """POSTs events; owns its aiohttp session (created on first use; call `close`)."""

    def __init__(
        self,
        allow_list: WebhookAllowList,
        *,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        resolver: AbstractResolver | None = None,
    ) -> None:
        self.allow_list = allow_list
        self.backoff_base_s, self.backoff_max_s = backoff_base_s, backoff_max_s
        self._inner_resolver = resolver
        self._session: aiohttp.ClientSession | None = None
        self._resolver: AbstractResolver | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._resolver = _CheckingResolver(
                self.allow_list, self._inner_resolver or DefaultResolver()
            )
            connector = aiohttp.TCPConnector(resolver=self._resolver, limit=100)
            # No proxies from the environment, no decompression of untrusted bodies.
            self._session = aiohttp.ClientSession(
                connector=connector, trust_env=False, auto_decompress=False
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._resolver is not None:
            await self._resolver.close()
        self._session = self._resolver = None

    async def _post(
        self, url: str, secret: bytes, body: bytes, delivery_id: str, timeout_s: float
    ) -> int:
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/cloudevents+json",
            "User-Agent": USER_AGENT,
            "X-Vmorch-Timestamp": str(timestamp),
            "X-Vmorch-Delivery": delivery_id,
            "X-Vmorch-Signature": "sha256=" + sign(secret, timestamp, body),
        }
        try:
            async with self._get_session().post(
                url,
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as resp:
                await resp.content.read(MAX_RESPONSE_BYTES)  # capped; content is ignored
                status = resp.status
        except TimeoutError as exc:
            raise _Transient(None, f"timed out after {timeout_s:g}s") from exc
        except aiohttp.ClientError as exc:
            raise _Transient(None, f"connection error ({type(exc).__name__})") from exc
        if status >= 500 or status == 429:
            raise _Transient(status, f"HTTP {status}")
        return status

    async def deliver(
        self,
        url: str,
        secret: bytes,
        event_json: bytes,
        delivery_id: str,
        timeout_s: float,
        retries: int,
    ) -> DeliveryResult:
        started, attempts = time.monotonic(), 0

        def done(
            outcome: Literal["delivered", "failed", "refused"], status: int | None, detail: str
        ) -> DeliveryResult:
            result = DeliveryResult(
                outcome, attempts, status, detail, round(time.monotonic() - started, 3)
            )
            log.info(
                "webhook delivery %s to %s: %s after %d attempt(s) (%s)",
                delivery_id,
                URL(url).host if outcome != "refused" else "-",
                outcome,
                attempts,
                detail,
            )
            return result

        try:
            self.allow_list.check(url)
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(max(retries, 0) + 1),
                reraise=True,
                wait=wait_random_exponential(self.backoff_base_s, self.backoff_max_s),
                retry=retry_if_exception_type(_Transient),
            ):
                with attempt:
                    attempts += 1
                    status = await self._post(url, secret, event_json, delivery_id, timeout_s)
        except WebhookRefused as exc:
            return done("refused", None, exc.message)
        except _Transient as exc:
            return done("failed", exc.status, exc.detail)
        if 200 <= status < 300:
            return done("delivered", status, f"HTTP {status}")
        if 300 <= status < 400:
            return done("failed", status, f"HTTP {status}: redirects are not followed")
        return done("failed", status, f"HTTP {status}")


async def act(ctx: ActionContext, firing: Firing) -> HookRun:
    """POST the event, signed with the hook's secret; a hook without a secret is refused
    (it never signs with an empty key). The delivery id is stable per (hook, event), so a
    receiver de-duplicates a firing delivered again by another router."""
    action = firing.hook.action
    if not isinstance(action, WebhookAction):
        raise TypeError(f"not a webhook action: {action.kind}")
    secret = await ctx.services.hooks.secret(firing.hook.id)
    if not secret:
        return firing.run("refused", "no webhook secret: PATCH the hook with rotate_secret")
    result = await ctx.sender.deliver(
        str(action.url),
        secret.encode(),
        firing.event.model_dump_json().encode(),
        f"{firing.hook.id}:{firing.event.id}",
        action.timeout_s,
        action.retries,
    )
    detail = f"{result.detail} (attempts {result.attempts}, status {result.status})"
    return firing.run(result.outcome, detail)
