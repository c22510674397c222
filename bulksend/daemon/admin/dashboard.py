"""The live dashboard of ``bulksend serve``: a static page at ``/ui/`` over the admin API.

The page (HTML, JavaScript and CSS in ``ui/`` beside this module, shipped as package data) holds
no data and is served without a token; it asks for the admin token, keeps it in the tab's
``sessionStorage`` and sends it as a bearer token with every call to the JSON endpoints, which
are authenticated like the rest of the API. Nothing is loaded from another host: every answer
of the API carries a Content-Security-Policy that allows this origin only and no inline script.
See docs/daemon.md, Dashboard.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Final

from aiohttp import hdrs, web

from bulksend.reporting.html import stylesheet

__all__ = ["CONTENT_SECURITY_POLICY", "UI_ROUTES", "add_dashboard", "security_headers"]

CONTENT_SECURITY_POLICY: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""This origin only, no inline script or style, no plugin, no framing, no form submission (the
token form is handled by the script, so it can never land in a URL)."""

_SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}

_TYPES: Final = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}

UI_ROUTES: Final = frozenset({"ui", "ui.index", "ui.asset"})
"""Route names of the static page: served without a token (they hold no data)."""


def _load_assets() -> dict[str, tuple[bytes, str]]:
    """Every file of ``ui/``, by name, with its content type (read once: a few kilobytes), and
    the campaign report's stylesheet as ``report.css``: the report's sections the dashboard
    shows look as they do in the report file."""
    assets = {"report.css": (stylesheet().encode(), _TYPES[".css"])}
    for entry in files(__package__ or "bulksend.daemon.admin").joinpath("ui").iterdir():
        content_type = _TYPES.get("." + entry.name.rpartition(".")[2])
        if entry.is_file() and content_type is not None:
            assets[entry.name] = (entry.read_bytes(), content_type)
    return assets


def add_dashboard(app: web.Application) -> None:
    """Serve the page at ``/ui/`` (``/ui`` redirects there) and its files at ``/ui/<name>``."""
    assets = _load_assets()

    async def index(request: web.Request) -> web.Response:
        return _asset(assets, "index.html")

    async def asset(request: web.Request) -> web.Response:
        # Only the names read above: a path never reaches the file system.
        return _asset(assets, request.match_info["name"])

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPPermanentRedirect("/ui/")

    app.router.add_get("/ui", redirect, name="ui")
    app.router.add_get("/ui/", index, name="ui.index")
    app.router.add_get("/ui/{name}", asset, name="ui.asset")


def _asset(assets: dict[str, tuple[bytes, str]], name: str) -> web.Response:
    found = assets.get(name)
    if found is None:
        raise web.HTTPNotFound(text=f"no dashboard file {name[:80]!r}")
    body, content_type = found
    # Revalidated on every load, so a new version of the daemon never runs an old script.
    return web.Response(
        body=body, content_type=content_type, charset="utf-8", headers={hdrs.CACHE_CONTROL: "no-cache"}
    )


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: the headers that keep a browser strict with every answer."""
    for name, value in _SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
