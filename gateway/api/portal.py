"""``GET /portal``: the customer portal, a static page on top of the customer API (``/v1/me/*``).

Three files from ``gateway/static`` (package data), read once at setup: ``portal.html`` at
``/portal`` and its script and stylesheet at ``/portal/portal.js`` / ``/portal/portal.css``. No
build step, no CDN, no server-side templating: everything customer-specific is fetched by the
script with the customer's bearer token, so these responses hold no personal data and may be
cached (revalidated by ETag).

The token reaches the page in the URL *fragment* (``/portal#token=…``): browsers never send the
fragment to the server, so it cannot end up in access logs or ``Referer`` headers. The script
moves it to ``sessionStorage`` and strips it from the address bar. A pasted dev token works too.

Headers: a strict Content-Security-Policy (scripts, styles and fetches from this origin only, no
inline script), ``frame-ancestors`` from ``portal_frame_ancestors`` (the supplier's portal that
embeds the page; default ``'self'``), ``Referrer-Policy: no-referrer``, ``nosniff``, and
``Strict-Transport-Security`` when the page came over HTTPS (served by the gateway, or by a
trusted proxy that says so in ``X-Forwarded-Proto``): a browser that once reached the portal
securely never falls back to plain HTTP for it. RFC 6797 forbids sending it over plain HTTP.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

from gateway.api.appkeys import SETTINGS_KEY
from gateway.api.client_address import request_scheme
from gateway.errors import ConfigurationError
from gateway.settings import Settings

#: default ``frame-ancestors`` CSP source list (proposed setting ``portal_frame_ancestors``)
DEFAULT_FRAME_ANCESTORS = "'self'"

#: URL path → (file in gateway/static, media type)
ASSETS: dict[str, tuple[str, str]] = {
    "/portal": ("portal.html", "text/html"),
    "/portal/portal.js": ("portal.js", "text/javascript"),
    "/portal/portal.css": ("portal.css", "text/css"),
}

#: Strict-Transport-Security over HTTPS: one year, this host only (the operator's other hosts
#: under the same domain may still serve plain HTTP)
HSTS = "max-age=31536000"

_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data: blob:; form-action 'none'; base-uri 'none'; "
    "frame-ancestors {ancestors}"
)


@dataclass(frozen=True, slots=True)
class Asset:
    """One static file, ready to serve."""

    body: bytes
    content_type: str
    etag: str


#: the portal's files by URL path (this module's own state: no other module reads it)
PORTAL_ASSETS_KEY: web.AppKey[dict[str, Asset]] = web.AppKey("portal_assets")
#: the page's Content-Security-Policy header value
CSP_KEY = web.AppKey("portal_csp", str)


def load_asset(name: str, content_type: str) -> Asset:
    """``gateway/static/<name>`` with its ETag; ConfigurationError if the package lacks it."""
    try:
        body = (resources.files("gateway.api") / "static" / name).read_bytes()
    except OSError as exc:
        raise ConfigurationError(
            f"portal file gateway/static/{name} is missing from the installed package: {exc}"
        ) from exc
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    return Asset(body, content_type, etag)


def _frame_ancestors(settings: Settings) -> str:
    value = settings.portal_frame_ancestors or DEFAULT_FRAME_ANCESTORS
    if not isinstance(value, str) or any(c in value for c in ";,\r\n"):
        raise ConfigurationError(
            "portal_frame_ancestors must be a CSP source list (e.g. \"'self' "
            "https://portal.supplier.example\") without ';' or ','"
        )
    return value


async def serve_asset(request: web.Request) -> web.Response:
    """GET /portal and its script and stylesheet (ETag revalidation, security headers)."""
    assets = request.app[PORTAL_ASSETS_KEY]
    asset = assets[request.match_info.route.resource.canonical]  # type: ignore[union-attr]
    headers = {
        "ETag": asset.etag,
        # revalidate every time: a new release must reach customers at once
        "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
    if asset.content_type == "text/html":
        headers["Content-Security-Policy"] = request.app[CSP_KEY]
    if request_scheme(request, request.app[SETTINGS_KEY].trusted_proxies) == "https":
        headers["Strict-Transport-Security"] = HSTS
    if asset.etag in _etags(request.headers.get("If-None-Match", "")):
        return web.Response(status=304, headers=headers)
    return web.Response(
        body=asset.body, content_type=asset.content_type, charset="utf-8", headers=headers
    )


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}


def install(app: web.Application, settings: Settings) -> None:
    """Load the portal's files into ``app`` (read now: a broken install fails at start); the
    routes to them are in ``gateway.api.routes``."""
    app[PORTAL_ASSETS_KEY] = {
        path: load_asset(name, ctype) for path, (name, ctype) in ASSETS.items()
    }
    app[CSP_KEY] = _CSP.format(ancestors=_frame_ancestors(settings))
