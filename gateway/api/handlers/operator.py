"""Operator endpoints: ``/healthz``, ``/readyz``, ``/metrics``, ``/openapi.json``, ``/docs``."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
from aiohttp import web

from gateway import metrics
from gateway.api.appkeys import DRAINING_KEY, OPENAPI_KEY, POOL_KEY
from gateway.api.http import json_response
from gateway.api.openapi import html
from gateway.errors import DatabaseUnavailableError, ServiceUnavailableError
from gateway.storage import db

#: seconds /readyz waits for the database before calling it unreachable
READY_TIMEOUT_S = 2.0


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers HTTP."""
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: the database answers a query within READY_TIMEOUT_S (503 otherwise), and the
    process is not shutting down (503 during the drain period, ``gateway.cli.serve``)."""
    if request.app[DRAINING_KEY].is_set():
        raise ServiceUnavailableError("the gateway is shutting down")
    try:
        await _ask_database(request.app[POOL_KEY])
    except TimeoutError as exc:
        raise DatabaseUnavailableError("the database did not answer in time") from exc
    return json_response({"status": "ready"})


async def _ask_database(pool: asyncpg.Pool) -> None:
    # the deadline covers waiting for a pooled connection too: an exhausted pool is "not
    # ready", answered in bounded time; db.acquire closes a connection cut off mid-query
    async with asyncio.timeout(READY_TIMEOUT_S), db.acquire(pool, READY_TIMEOUT_S) as conn:
        await conn.fetchval("SELECT 1")


async def metrics_endpoint(request: web.Request) -> web.Response:
    """Prometheus text exposition of the gateway's metrics (all workers' with ``--workers``).
    The database is asked once per scrape (``meterpoort_db_up``): alerts then see an outage
    even when no request meets it."""
    pool = request.app[POOL_KEY]
    try:
        await _ask_database(pool)
        metrics.DB_UP.set(1)
    except db.RETRYABLE_ERRORS:  # TimeoutError included
        metrics.DB_UP.set(0)
    metrics.sample_pool(pool)
    resp = web.Response(body=metrics.render())
    resp.headers["Content-Type"] = metrics.CONTENT_TYPE
    return resp


async def openapi_json(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document describing every endpoint."""
    return json_response(request.app[OPENAPI_KEY])


async def docs(request: web.Request) -> web.Response:
    """The whole API document as one server-rendered page (``gateway.api.openapi.html``)."""
    doc = request.app[OPENAPI_KEY]
    page = _PAGES.get(id(doc))
    if page is None or page[0] is not doc:
        page = _PAGES[id(doc)] = (doc, html.render(doc))
    return web.Response(text=page[1], content_type="text/html")


#: the rendered page per document (one per process in practice): rendering takes milliseconds,
#: and fuzzers and crawlers fetch it often
_PAGES: dict[int, tuple[dict[str, Any], str]] = {}
