"""Operator endpoints: ``/healthz``, ``/readyz``, ``/metrics``, ``/openapi.json``, ``/docs``."""

from __future__ import annotations

import asyncio
import html
import json
from typing import Any

from aiohttp import web

from gateway import metrics
from gateway.api.appkeys import OPENAPI_KEY, POOL_KEY
from gateway.api.http import json_response
from gateway.errors import DatabaseUnavailableError
from gateway.storage import db

#: seconds /readyz waits for the database before calling it unreachable
READY_TIMEOUT_S = 2.0


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers HTTP."""
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: the database answers a query within READY_TIMEOUT_S (503 otherwise)."""
    pool = request.app[POOL_KEY]
    try:
        # the deadline covers waiting for a pooled connection too: an exhausted pool is "not
        # ready", answered in bounded time; db.acquire closes a connection cut off mid-query
        async with asyncio.timeout(READY_TIMEOUT_S), db.acquire(pool, READY_TIMEOUT_S) as conn:
            await conn.fetchval("SELECT 1")
    except TimeoutError as exc:
        raise DatabaseUnavailableError("the database did not answer in time") from exc
    return json_response({"status": "ready"})


async def metrics_endpoint(request: web.Request) -> web.Response:
    """Prometheus text exposition of the gateway's metrics (all workers' with ``--workers``)."""
    metrics.sample_pool(request.app[POOL_KEY])
    resp = web.Response(body=metrics.render())
    resp.headers["Content-Type"] = metrics.CONTENT_TYPE
    return resp


async def openapi_json(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document describing every endpoint."""
    return json_response(request.app[OPENAPI_KEY])


async def docs(request: web.Request) -> web.Response:
    """A small server-rendered page listing every endpoint with its schemas (no scripts, no CDN)."""
    doc = request.app[OPENAPI_KEY]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(doc['info']['title'])} API</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;"
        "padding:0 1rem}pre{background:#f4f4f4;padding:.5rem;overflow:auto;font-size:.8rem}"
        "h2{border-top:1px solid #ccc;padding-top:1rem}code.m{font-weight:bold}</style></head>",
        f"<body><h1>{html.escape(doc['info']['title'])} {html.escape(doc['info']['version'])}</h1>",
        f"<p>{html.escape(doc['info']['description'])}</p>",
        "<p>Machine-readable: <a href='/openapi.json'>/openapi.json</a>.</p>",
    ]
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            parts.append(
                f"<h2><code class='m'>{method.upper()}</code> <code>{html.escape(path)}</code></h2>"
            )
            parts.append(f"<p>{html.escape(op.get('summary', ''))}</p>")
            if op.get("description"):
                parts.append(f"<p>{html.escape(op['description'])}</p>")
            security = op.get("security")
            if security:
                names = ", ".join(name for req in security for name in req)
                parts.append(f"<p>Authentication: {html.escape(names)}</p>")
            body = op.get("requestBody", {}).get("content", {})
            for media, content in body.items():
                parts.append(f"<h3>Request body ({html.escape(media)})</h3>")
                parts.append(_pre(content.get("schema", {})))
            for status, response in op.get("responses", {}).items():
                described = html.escape(response.get("description", ""))
                parts.append(f"<h3>{html.escape(str(status))}: {described}</h3>")
                for media, content in response.get("content", {}).items():
                    parts.append(f"<p>{html.escape(media)}</p>")
                    parts.append(_pre(content.get("schema", {})))
    parts.append("<h2>Schemas</h2>")
    for name, schema in doc["components"]["schemas"].items():
        parts.append(f"<h3 id='{html.escape(name)}'>{html.escape(name)}</h3>")
        parts.append(_pre(schema))
    parts.append("</body></html>")
    return web.Response(text="".join(parts), content_type="text/html")


def _pre(schema: Any) -> str:
    return f"<pre>{html.escape(json.dumps(schema, indent=2))}</pre>"
