"""The operators' web dashboard: plain ES modules and CSS, served by the api at `/` and
`/ui/...` (docs/dashboard.md).

The files are public, as any login page is: they hold no data, and every data call the page
makes sends the user's token as a Bearer header to the `/v1` routes, which check it. The
routes are not in the route table, so the OpenAPI document (and the fuzzing against it)
never sees them, and the auth middleware lets them through.

What a browser may do with the pages is pinned down by headers: scripts and styles from
this origin only (no inline script or style, no eval), no DOM sinks that take strings
(Trusted Types with no policy: `innerHTML = ...` throws), no framing, no referrer, no
MIME sniffing. Everything the pages show comes from guests, events, hooks and users, so
they build the DOM with `textContent` alone; the headers make a slip fail loudly.

The files are read once, at setup, from an allow-list made of what the package ships:
no request path ever reaches the file system.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

STATIC = Path(__file__).with_name("static")
INDEX = "index.html"

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers without CSP level 2
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    # a new release is fetched at once; an unchanged file costs a 304
    "Cache-Control": "no-cache",
}
_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def load_assets(root: Path = STATIC) -> dict[str, Asset]:
    """Every servable file under `root`, by its path relative to it (`js/main.js`)."""
    assets = {}
    for path in sorted(root.rglob("*")):
        content_type = _CONTENT_TYPES.get(path.suffix)
        if content_type is None or not path.is_file():
            continue
        body = path.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        assets[path.relative_to(root).as_posix()] = Asset(body, content_type, etag)
    return assets


def _answer(request: web.Request, asset: Asset) -> web.Response:
    headers = {**SECURITY_HEADERS, "ETag": asset.etag}
    if asset.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    return web.Response(body=asset.body, headers={**headers, "Content-Type": asset.content_type})


def setup_dashboard(app: web.Application, root: Path = STATIC) -> None:
    """Serve the dashboard: `/` is its page, `/ui/<file>` its scripts and styles."""
    assets = load_assets(root)
    index = assets[INDEX]

    async def page(request: web.Request) -> web.Response:
        return _answer(request, index)

    async def static(request: web.Request) -> web.Response:
        asset = assets.get(request.match_info["path"])
        if asset is None:
            raise web.HTTPNotFound()
        return _answer(request, asset)

    app.router.add_get("/", page)
    app.router.add_get("/ui/{path:.+}", static)
