"""The role each API route needs, from the api's own route table (orchestrator.api.routes),
matched by method and path template: the CLI picks its least-privileged token from the same
table the api enforces, never from a list kept by hand.

Importing the route table imports the whole api (about a second): the derived table is
cached in the user's cache directory, under a fingerprint of the api package's files (their
names, sizes and modification times) and the interpreter, so an upgrade or an edit of the
api makes a new one. Without a usable cache directory it is derived each time.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from schemas.api import Role

CACHE_VERSION = 1
_PARAM = re.compile(r"\{[^}/]+\}")


@dataclass(frozen=True)
class RouteRole:
    """One route: `role` None means public (no token needed)."""

    method: str
    template: str
    role: Role | None

    @property
    def pattern(self) -> re.Pattern[str]:
        return _compile(self.template)


@cache
def _compile(template: str) -> re.Pattern[str]:
    parts = _PARAM.split(template)
    return re.compile("[^/]+".join(re.escape(p) for p in parts))


def _api_dir() -> Path | None:
    spec = importlib.util.find_spec("orchestrator.api")
    locations = spec.submodule_search_locations if spec is not None else None
    return Path(next(iter(locations))) if locations else None


def _fingerprint() -> str | None:
    api = _api_dir()
    if api is None:
        return None
    h = hashlib.sha256(f"{CACHE_VERSION}\0{sys.executable}\0{api}".encode())
    for path in sorted(api.rglob("*.py")):
        st = path.stat()
        h.update(f"\0{path.relative_to(api)}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vmorch"


def _derive() -> list[RouteRole]:
    from orchestrator.api.routes import routes  # the api's table: slow to import, see above

    return [RouteRole(r.method, r.path, r.role) for r in routes()]


def _load(path: Path) -> list[RouteRole] | None:
    try:
        rows = json.loads(path.read_text())
        return [RouteRole(m, t, None if r is None else Role(r)) for m, t, r in rows]
    except (OSError, ValueError, TypeError):
        return None


def _store(path: Path, table: list[RouteRole]) -> None:
    rows = [[r.method, r.template, None if r.role is None else r.role.value] for r in table]
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(rows))
        tmp.replace(path)  # atomic: a concurrent reader sees all of it or nothing


@cache
def route_roles() -> tuple[RouteRole, ...]:
    """Every route of the api with the role it needs, in the api's order."""
    fingerprint = _fingerprint()
    path = _cache_dir() / f"route-roles-{fingerprint}.json" if fingerprint else None
    if path is not None and (cached := _load(path)) is not None:
        return tuple(cached)
    table = _derive()
    if path is not None:
        _store(path, table)
    return tuple(table)


def route_for(
    method: str, path: str, table: tuple[RouteRole, ...] | None = None
) -> RouteRole | None:
    """The route a request goes to (its query string ignored), as the api's router would
    pick it: the first of the table whose method and template match; None when none does
    (an endpoint this version of the CLI's api package does not have)."""
    method = "GET" if method.upper() == "HEAD" else method.upper()
    bare = path.split("?", 1)[0]
    for route in route_roles() if table is None else table:
        if route.method == method and route.pattern.fullmatch(bare):
            return route
    return None
