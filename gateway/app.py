"""The composition root: ``create_app(settings)`` wires routes, middlewares, the pool and
background tasks. Nothing here runs at import time.

App state uses typed keys: ``POOL_KEY`` (the asyncpg pool) and ``SETTINGS_KEY``. Long-lived
resources live in ``cleanup_ctx`` so they close in reverse order on shutdown: the ingest pipeline
(registered after the pool) drains its in-flight batches while the pool is still open.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib
import importlib.util
import logging
import os
from collections.abc import AsyncIterator

import asyncpg
from aiohttp import web

from gateway import db, metrics
from gateway.customer_auth import setup_customer_auth
from gateway.errors import ConfigurationError
from gateway.middleware import make_problem_middleware, metrics_middleware
from gateway.portal import setup_portal
from gateway.settings import Settings

log = logging.getLogger(__name__)

POOL_KEY = web.AppKey("pool", asyncpg.Pool)
SETTINGS_KEY = web.AppKey("settings", Settings)

#: how often each process makes sure next months' reading partitions exist
PARTITION_CHECK_INTERVAL_S = 6 * 3600.0
#: failures partition maintenance retries instead of crashing the process
_MAINTENANCE_ERRORS: tuple[type[BaseException], ...] = (
    *db.CONNECTION_ERRORS,
    TimeoutError,
    ConfigurationError,
)
#: seconds to wait for pooled connections to be returned at shutdown before closing them hard
POOL_CLOSE_TIMEOUT_S = 10.0
#: seconds between samples of the pool gauges
POOL_SAMPLE_INTERVAL_S = 5.0


def create_app(settings: Settings) -> web.Application:
    """The gateway's aiohttp application.

    ``settings.database_url`` must be set (``serve`` sets it to the embedded server's URL when
    the operator gave none); the database must be migrated (``serve`` and ``migrate`` do that).
    """
    if settings.database_dsn() is None:
        raise ConfigurationError("create_app needs settings.database_url (the CLI resolves it)")
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[
            metrics_middleware,
            make_problem_middleware(settings.retry_after_s, settings.max_body_bytes),
        ],
    )
    app[SETTINGS_KEY] = settings
    app.cleanup_ctx.append(_pool_ctx)
    app.cleanup_ctx.append(_partition_maintenance_ctx)

    # handler modules import POOL_KEY from here, so they are imported once it exists
    from gateway.handlers import admin, keys, ops

    ops.setup_routes(app)
    admin.setup_routes(app)
    keys.setup_routes(app, settings)
    setup_customer_auth(app, settings)
    from gateway.handlers import me

    me.setup_routes(app, settings)
    # data clients: admin routes, GET /v1/readings and GET /v1/consents
    from gateway.handlers import clients as client_handlers
    from gateway.handlers import readings as readings_handlers

    client_handlers.setup_routes(app)
    readings_handlers.setup_routes(app, settings)
    # consent-change notifications: needs the signing key and the pool set up above
    from gateway.webhooks import setup_webhooks

    setup_webhooks(app)
    setup_portal(app)
    # the ingest pipeline (gateway/ingest.py) is built alongside; wire it once it is present
    if importlib.util.find_spec("gateway.ingest") is not None:
        ingest = importlib.import_module("gateway.ingest")
        ingest.setup_ingest(app)
    else:
        log.warning("gateway.ingest is not installed: POST /v1/telegrams is not served")
    # hourly retention + consent expiry (METERPOORT_RETENTION_*); one process works at a time
    from gateway.retention import setup_retention

    setup_retention(app)
    return app


async def _pool_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS_KEY]
    dsn = settings.database_dsn()
    assert dsn is not None  # checked in create_app
    metrics.WORKER_INFO.labels(str(os.getpid())).set(1)
    pool = await db.create_pool(dsn, settings)
    app[POOL_KEY] = pool
    metrics.sample_pool(pool)
    # every worker keeps its pool gauges fresh: a scrape reaches one worker but reports all
    sampler = asyncio.create_task(_sample_pool(pool), name="pool-gauges")
    try:
        yield
    finally:
        sampler.cancel()
        try:
            await asyncio.wait_for(pool.close(), POOL_CLOSE_TIMEOUT_S)
        except TimeoutError:
            log.warning(
                "pooled connections still busy after %ss; closing them", POOL_CLOSE_TIMEOUT_S
            )
            pool.terminate()


async def _sample_pool(pool: asyncpg.Pool) -> None:
    while True:
        await asyncio.sleep(POOL_SAMPLE_INTERVAL_S)
        metrics.sample_pool(pool)


async def _maintain_partitions(app: web.Application) -> None:
    settings = app[SETTINGS_KEY]
    while True:
        try:
            start, end = db.partition_window(settings, dt.datetime.now(dt.UTC))
            async with db.acquire(app[POOL_KEY], settings.pool_acquire_timeout_s) as conn:
                await db.ensure_partitions(conn, start, end)
        except _MAINTENANCE_ERRORS as exc:
            # readings outside existing partitions still land in the DEFAULT partition, so a
            # missed run costs nothing but a retry
            log.warning("partition maintenance failed (%s); retrying in 60 s", type(exc).__name__)
            await asyncio.sleep(60)
            continue
        await asyncio.sleep(PARTITION_CHECK_INTERVAL_S)


async def _partition_maintenance_ctx(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(_maintain_partitions(app), name="partition-maintenance")
    try:
        yield
    finally:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            if not task.cancelled():
                raise
