"""Redis URLs that name a Sentinel-managed master, for every client vmorch makes.

Every process (the api, workers and their Celery broker, routers, agents, the CLI) is
configured by one `VMORCH_REDIS_URL`. A plain `redis://`, `rediss://` or `unix://` URL is
redis-py's own and names one server; the form below names the Sentinels that know which
server is the master of a service, so a client finds the new master after a failover:

    redis+sentinel://[[username]:password@]host1[:26379][,host2[:26379]...]/service[/db]
        [?sentinel_password=...&sentinel_username=...]

The credentials before `@` are the master's (and its replicas'); Sentinels that require
their own password get it in the query. Both are percent-encoded, as in `redis://` URLs.
The form is the one PyPI's `redis-sentinel-url` defined and RedisVL and Prefect accept:
every address in one URL, so the one setting still fits an environment variable.

Celery's broker (kombu's Redis transport) spells Sentinels its own way (`sentinel://h1;
sentinel://h2` and a `master_name` transport option): `SentinelUrl.kombu_url` translates.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Any

SCHEME = "redis+sentinel"
DEFAULT_PORT = 26379
_QUERY = frozenset({"sentinel_password", "sentinel_username"})


@dataclass(frozen=True)
class SentinelUrl:
    """What a `redis+sentinel://` URL says: where the Sentinels are, which service's master
    to ask them for, and the credentials of each."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None

    @classmethod
    def parse(cls, url: str) -> SentinelUrl:
        """Parse a `redis+sentinel://` URL; ValueError says what is wrong with it (without
        repeating the URL, which holds passwords)."""
        scheme, _, rest = url.partition("://")
        if scheme.lower() != SCHEME:
            raise ValueError(f"not a {SCHEME}:// URL (scheme {scheme!r})")
        # split by hand: urlsplit refuses a host list with an IPv6 address in it
        rest, _, query_string = rest.partition("#")[0].partition("?")
        netloc, slash, path = rest.partition("/")
        userinfo, _, hosts = netloc.rpartition("@")
        username, password = _credentials(userinfo)
        service, db = _service_and_db(slash + path)
        query = _query(query_string)
        return cls(
            sentinels=tuple(_address(h) for h in hosts.split(",")),
            service=service,
            db=db,
            username=username,
            password=password,
            sentinel_username=query.get("sentinel_username"),
            sentinel_password=query.get("sentinel_password"),
        )

    def __str__(self) -> str:
        """The URL again (it holds the passwords: keep it where only its owner reads it)."""
        hosts = ",".join(_netloc_host(h, p) for h, p in self.sentinels)
        query = urllib.parse.urlencode(
            {
                k: v
                for k, v in (
                    ("sentinel_username", self.sentinel_username),
                    ("sentinel_password", self.sentinel_password),
                )
                if v is not None
            }
        )
        path = f"/{urllib.parse.quote(self.service, safe='')}/{self.db}"
        return f"{SCHEME}://{self._userinfo()}{hosts}{path}" + (f"?{query}" if query else "")

    def master_auth(self) -> dict[str, Any]:
        """redis-py's connection arguments for the master's credentials."""
        return _auth(self.username, self.password)

    def sentinel_auth(self) -> dict[str, Any]:
        """redis-py's connection arguments for the Sentinels' credentials."""
        return _auth(self.sentinel_username, self.sentinel_password)

    def kombu_url(self) -> str:
        """The same Sentinels as kombu's Redis transport spells them (`sentinel://...;
        sentinel://...`, the master's credentials and db in each); the service goes in its
        `master_name` transport option, the Sentinels' credentials in `sentinel_kwargs`."""
        return ";".join(
            f"sentinel://{self._userinfo()}{_netloc_host(h, p)}/{self.db}"
            for h, p in self.sentinels
        )

    def _userinfo(self) -> str:
        if self.username is None and self.password is None:
            return ""
        user = urllib.parse.quote(self.username or "", safe="")
        secret = "" if self.password is None else ":" + urllib.parse.quote(self.password, safe="")
        return f"{user}{secret}@"


def sentinel_url(url: str) -> SentinelUrl | None:
    """The Sentinels `url` names, or None when it is any other Redis URL (redis-py's own)."""
    if url.partition("://")[0].lower() != SCHEME:
        return None
    return SentinelUrl.parse(url)


def redacted(url: str) -> str:
    """`url` for messages and logs: any Redis URL without its passwords (the one before
    `@`, and those of the query: a Sentinel URL's `sentinel_password`, a unix:// URL's)."""
    head, _, query = url.partition("?")
    scheme, sep, rest = head.partition("://")
    netloc, slash, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if ":" in userinfo:
        userinfo = userinfo.partition(":")[0] + ":****"
    fields = [
        (k, "****" if "password" in k.lower() else v)
        for k, v in urllib.parse.parse_qsl(query, keep_blank_values=True)
    ]
    tail = f"?{urllib.parse.urlencode(fields, safe='*')}" if query else ""
    return f"{scheme}{sep}{userinfo}{at}{hosts}{slash}{path}{tail}"


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    """(username, password) from `[username][:password]`, percent-decoded; empty is None."""
    if not userinfo:
        return None, None
    user, has_secret, secret = userinfo.partition(":")
    username = urllib.parse.unquote(user) or None
    return username, urllib.parse.unquote(secret) if has_secret else None


def _service_and_db(path: str) -> tuple[str, int]:
    segments = [urllib.parse.unquote(s) for s in path.strip("/").split("/")] if path else []
    if not segments or not segments[0] or len(segments) > 2:
        raise ValueError(f"{SCHEME}:// URLs end in /<service name>[/<db>]")
    db = segments[1] if len(segments) == 2 else "0"
    if not db.isdigit():
        raise ValueError(f"the database must be a number, not {db!r}")
    return segments[0], int(db)


def _query(query: str) -> dict[str, str]:
    try:
        pairs = urllib.parse.parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:  # its message would quote the field: maybe part of a password
        raise ValueError(f"the query of a {SCHEME}:// URL is name=value pairs") from None
    unknown = set(pairs) - _QUERY
    if unknown:
        raise ValueError(f"unknown {SCHEME}:// options {sorted(unknown)}: {sorted(_QUERY)} only")
    return {k: v[-1] for k, v in pairs.items()}


def _address(host: str) -> tuple[str, int]:
    """(host, port) from `host[:port]` or `[v6 address][:port]`."""
    if host.startswith("["):
        name, bracket, rest = host[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"bad Sentinel address {host!r}")
        port = rest[1:]
    else:
        name, _, port = host.partition(":")
    if not name:
        raise ValueError(f"a Sentinel address needs a host, not {host!r}")
    if not port:
        return name, DEFAULT_PORT
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad Sentinel port in {host!r}")
    return name, int(port)


def _netloc_host(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _auth(username: str | None, password: str | None) -> dict[str, Any]:
    given = {"username": username, "password": password}
    return {k: v for k, v in given.items() if v is not None}
