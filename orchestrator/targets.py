"""Which remote targets vmorch may connect to on an operator's behalf (webhook receivers,
import sources): the operator's allow-list and the address rules, one per use.

Entries: `host`, `host:port`, `1.2.3.4[:port]`, `[v6][:port]`, `10.1.0.0/16[:port]`,
`[fd00::/8][:port]`; an entry without a port allows any port. Loopback, private, shared,
link-local, NAT64, 6to4, Teredo, multicast, reserved and unspecified addresses (and their
IPv4-mapped forms) are refused unless an IP or CIDR entry covers them. The check runs on IP
literals in URLs and, through `CheckingResolver`, on the very addresses connected to.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
import socket
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from orchestrator.errors import Forbidden

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TargetRefused(Forbidden):
    """A target the allow-list or the address rules refuse."""

    code = "target_refused"


class WebhookRefused(TargetRefused):
    code = "webhook_refused"


class ImportRefused(TargetRefused):
    code = "import_refused"


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
    """Why `addr` is refused as a target by default, or None when it is not; an IP or
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


def _port(text: str, raw: str, what: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"bad {what} allow-list entry {raw!r}: port must be 1-65535")
    return int(text)


def _parse_entry(raw: str, what: str) -> tuple[str | Network, int | None]:
    """One allow-list entry as (host name or network, port or None for any port).

    `host`, `host:port`, `1.2.3.4[:port]`, `::1` or `[::1][:port]`, `10.1.0.0/16[:port]`,
    `fd00::/8` or `[fd00::/8][:port]`. An address is a network of one."""
    entry = raw.strip()
    port: int | None = None
    if bracketed := _BRACKETED.fullmatch(entry):
        host, port_text = bracketed.group(1), bracketed.group(2)
        if ":" not in host:
            raise ValueError(f"bad {what} allow-list entry {raw!r}: only IPv6 goes in brackets")
        port = None if port_text is None else _port(port_text, raw, what)
    elif entry.count(":") == 1:
        host, _, port_text = entry.partition(":")
        port = _port(port_text, raw, what)
    else:
        host = entry  # no port, or a bare IPv6 address or network (which cannot carry one)
    if "/" in host:
        try:
            return ipaddress.ip_network(host, strict=True), port
        except ValueError as exc:
            raise ValueError(f"bad {what} allow-list entry {raw!r}: {exc}") from None
    if (addr := _ip(host)) is not None:
        return ipaddress.ip_network(addr), port
    name = host.lower()
    if ":" in name or not _NAME.fullmatch(name) or len(name) > 253:
        raise ValueError(f"bad {what} allow-list entry {raw!r}: not a host name or address")
    if name.replace(".", "").isdigit():  # 2130706433, 127.1: aiohttp refuses these as URLs
        raise ValueError(f"bad {what} allow-list entry {raw!r}: not a canonical IPv4 address")
    return name, port


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class AllowList:
    """Operator-allowed targets (see `_parse_entry`); an entry without a port allows any.
    Empty: deny all. One per use (`WebhookAllowList`, `ImportAllowList`): `what` names it
    in messages, `refused` is its error, `schemes` the URL schemes it takes.

    An address entry or CIDR allows the addresses it covers, whatever they are. A host name
    entry allows the name only while every address it resolves to passes `forbidden_reason`
    or is covered by an address entry. `check` is static (no I/O) and covers IP literals,
    which aiohttp connects to without resolving. Addresses a name resolves to are checked by
    `check_resolved`, which the client's resolver calls on the very addresses it connects
    to, so a DNS answer that changes between check and connect gains nothing."""

    what = "target"
    refused: type[TargetRefused] = TargetRefused
    schemes: tuple[str, ...] = ("http", "https")

    def __init__(self, entries: Iterable[str]) -> None:
        self.networks: list[tuple[Network, int | None]] = []
        self.names: list[tuple[str, int | None]] = []
        for raw in entries:
            target, port = _parse_entry(raw, self.what)
            if isinstance(target, str):
                self.names.append((target, port))
            else:
                self.networks.append((target, port))

    def covers(self, addr: IPAddress, port: int) -> bool:
        """Whether an address entry allows `addr` on `port` explicitly."""
        return any(addr in net and p in (None, port) for net, p in self.networks)

    def check(self, url: str) -> URL:
        """Refuse `url` unless its scheme is one of ours and its host (a name entry, or an
        address no rule forbids or an entry covers) and port are allowed; the parsed URL."""
        w = self.what
        try:
            parsed = URL(url)
        except ValueError as exc:
            raise self.refused(f"{w} URL is not a valid URL") from exc
        if parsed.scheme not in self.schemes:
            raise self.refused(
                f"{w} URL scheme {parsed.scheme!r} is not {' or '.join(self.schemes)}"
            )
        if parsed.user is not None or parsed.password is not None:
            raise self.refused(f"{w} URL must not carry credentials")
        if not parsed.raw_host or parsed.port is None:
            raise self.refused(f"{w} URL has no host")
        host, port = parsed.raw_host, parsed.port
        addr = _ip(host)
        if addr is None:
            if any(h == host.lower() and p in (None, port) for h, p in self.names):
                return parsed
        elif self.covers(addr, port):
            return parsed
        elif why := forbidden_reason(addr):
            raise self.refused(
                f"{w} target {_hostport(host, port)} is a forbidden address ({why}); "
                f"only an IP or CIDR entry of the {w} allow-list can allow it"
            )
        raise self.refused(
            f"{w} target {_hostport(host, port)} is not allowed "
            f"(not in the operator's {w} allow-list)"
        )

    def check_resolved(self, host: str, results: Iterable[ResolveResult]) -> None:
        """Refuse a name that resolves to a forbidden address no address entry covers."""
        w = self.what
        for r in results:
            addr = _ip(r["host"])
            if addr is None:
                raise self.refused(f"{w} host {host} resolves to {r['host']!r}")
            if not self.covers(addr, r["port"]) and (why := forbidden_reason(addr)):
                raise self.refused(
                    f"{w} host {host} resolves to a forbidden address {r['host']} ({why}); "
                    f"only an IP or CIDR entry of the {w} allow-list can allow it"
                )


class WebhookAllowList(AllowList):
    """Where hooks may deliver events (`webhook_allowed_hosts`)."""

    what = "webhook"
    refused = WebhookRefused


class ImportAllowList(AllowList):
    """Where repository imports may fetch from (`import_allowed_hosts`), and which files
    of a server they may read (`file:///path`, under one of `import_allowed_paths`: an NFS
    mount the servers see, say)."""

    what = "import"
    refused = ImportRefused
    schemes = ("http", "https", "ftp")

    def __init__(self, entries: Iterable[str], paths: Iterable[str] = ()) -> None:
        super().__init__(entries)
        self.paths = [p.rstrip("/") for p in paths if p.startswith("/") and p.rstrip("/")]

    def check(self, url: str) -> URL:
        if url.startswith("file:"):
            server_path(url, self.paths)
            return URL(url)
        return super().check(url)


def server_path(url: str, allowed: Iterable[str]) -> str:
    """The path of a `file:///path` URL (a file on the server that reads it), refused
    unless it is absolute, plain (no '..', '.', '//' or trailing '/', no control
    characters) and under one of the `allowed` directories."""
    parts = urlsplit(url)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost") or parts.query:
        raise ImportRefused(f"{url[:120]!r} is not a file:///path URL")
    path = unquote(parts.path)
    if (
        not path.startswith("/")
        or posixpath.normpath(path) != path
        or path.endswith("/")
        or any(not c.isprintable() for c in path)
    ):
        raise ImportRefused(f"import path {path[:120]!r} is not a plain absolute path")
    if not any(path.startswith(d + "/") for d in allowed):
        raise ImportRefused(
            f"import path {path[:120]!r} is not under a directory of the operator's "
            "import_allowed_paths"
        )
    return path


def public_url(url: str) -> str:
    """The URL as it may be shown and stored: without query, fragment or credentials."""
    try:
        u = URL(url).with_query(None).with_fragment(None)
        return str(u if u.host is None else u.with_user(None))
    except (ValueError, TypeError):
        return ""


def file_name(url: str) -> str:
    """The last segment of the URL's path (the default name of an import)."""
    try:
        return URL(url).name
    except ValueError:
        return ""


class CheckingResolver(AbstractResolver):
    """Resolves names, then refuses any address the allow-list does not let through."""

    def __init__(self, allow_list: AllowList, inner: AbstractResolver) -> None:
        self.allow_list, self.inner = allow_list, inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self.inner.resolve(host, port, family)
        self.allow_list.check_resolved(host, results)
        return results

    async def close(self) -> None:
        await self.inner.close()
