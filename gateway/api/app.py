"""The composition root: ``create_app(settings)`` builds the gateway's aiohttp application.

It reads no environment: everything comes from ``settings``, which the entry point
(``gateway.cli.main``) builds once. Shared state sits under the typed keys of
``gateway.api.appkeys``; the routes are registered in ``gateway.api.routes`` alone.

Long-lived resources live in ``cleanup_ctx`` so they close in reverse order on shutdown: the
ingest pipeline (registered after the pool) drains its in-flight batches while the pool is still
open, and every background job runs through ``gateway.supervisor.background``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
from aiohttp import web

from gateway import metrics
from gateway.api import openapi, portal, routes
from gateway.api.appkeys import (
    CLOCK_KEY,
    CREDENTIALS_KEY,
    CURSOR_CODEC_KEY,
    CUSTOMER_AUTH_KEY,
    DRAINING_KEY,
    INGEST_KEY,
    KEYRING_KEY,
    LISTEN_KEY,
    OPENAPI_KEY,
    POOL_KEY,
    SETTINGS_KEY,
    THROTTLE_KEY,
    WEBHOOK_WORKER_KEY,
)
from gateway.api.customer_auth import CustomerAuthConfig, CustomerAuthenticator
from gateway.api.middleware import (
    echo_request_id,
    make_metrics_middleware,
    make_problem_middleware,
)
from gateway.api.throttle import AuthThrottle
from gateway.errors import ConfigurationError
from gateway.ingest.state import running_ingest
from gateway.jobs.partitions import maintain_partitions
from gateway.jobs.readings_changed import readings_changed_loop
from gateway.jobs.retention import retention_loop
from gateway.jobs.webhooks import WebhookWorker
from gateway.keys import key_ring
from gateway.settings import Settings
from gateway.storage import db, readings_query
from gateway.storage.credentials import Credentials
from gateway.supervisor import background

log = logging.getLogger(__name__)

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
            make_metrics_middleware(settings.access_log, settings.trusted_proxies),
            make_problem_middleware(settings.retry_after_s, settings.max_body_bytes),
        ],
    )
    app[SETTINGS_KEY] = settings
    app[DRAINING_KEY] = asyncio.Event()
    # every answer carries its request id, streamed ones and problems included
    app.on_response_prepare.append(echo_request_id)
    # the signing key is loaded (or generated) now: a broken key file fails at start, not later
    ring = key_ring(settings)
    app[KEYRING_KEY] = ring
    app[CURSOR_CODEC_KEY] = readings_query.CursorCodec(
        readings_query.cursor_key(ring.secret_material()),
        [readings_query.cursor_key(raw) for raw in ring.retired_secret_material()],
    )
    app[CUSTOMER_AUTH_KEY] = CustomerAuthenticator(CustomerAuthConfig.from_settings(settings))
    app[THROTTLE_KEY] = AuthThrottle.from_settings(settings)
    if settings.dev_mode:
        log.warning("dev mode: customer tokens signed with the local dev key are accepted")
    app[OPENAPI_KEY] = openapi.document()
    portal.install(app, settings)
    routes.setup_routes(app)

    app.cleanup_ctx.append(_customer_auth_ctx)
    app.cleanup_ctx.append(_pool_ctx)
    app.cleanup_ctx.append(_partitions_ctx)
    app.cleanup_ctx.append(_ingest_ctx)
    if settings.webhook.enabled:
        app.cleanup_ctx.append(_webhooks_ctx)
    if settings.retention.enabled:
        # hourly retention + consent expiry; every process tries, the advisory lock lets one work
        app.cleanup_ctx.append(_retention_ctx)
    return app


async def _customer_auth_ctx(app: web.Application) -> AsyncIterator[None]:
    try:
        yield
    finally:
        await app[CUSTOMER_AUTH_KEY].close()


async def _pool_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS_KEY]
    dsn = settings.database_dsn()
    assert dsn is not None  # checked in create_app
    metrics.WORKER_INFO.labels(str(os.getpid())).set(1)
    pool = await db.create_pool(dsn, settings)
    app[POOL_KEY] = pool
    app[CREDENTIALS_KEY] = Credentials(pool, settings.pool_acquire_timeout_s)
    metrics.sample_pool(pool)
    try:
        # every worker keeps its pool gauges fresh: a scrape reaches one worker but reports all
        async with background("pool-gauges", _sample_pool(pool)):
            yield
    finally:
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


async def _partitions_ctx(app: web.Application) -> AsyncIterator[None]:
    job = maintain_partitions(app[POOL_KEY], app[SETTINGS_KEY])
    async with background("partition-maintenance", job):
        yield


async def _ingest_ctx(app: web.Application) -> AsyncIterator[None]:
    async with running_ingest(
        app[POOL_KEY],
        app[SETTINGS_KEY],
        listen=app.get(LISTEN_KEY, True),
        clock=app.get(CLOCK_KEY),
        on_devices_changed=app[CREDENTIALS_KEY].forget_devices,
    ) as state:
        app[INGEST_KEY] = state
        yield


async def _webhooks_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS_KEY]
    async with aiohttp.ClientSession() as session:
        worker = WebhookWorker(
            app[POOL_KEY],
            app[KEYRING_KEY],
            settings.webhook,
            session,
            acquire_timeout_s=settings.pool_acquire_timeout_s,
        )
        # set during start-up, before the app is frozen; tests watch the worker's outcomes
        app[WEBHOOK_WORKER_KEY] = worker
        # an attempt cut short at shutdown keeps its lease; it is retried when the lease runs out
        changes = readings_changed_loop(
            app[POOL_KEY], settings.webhook, settings.pool_acquire_timeout_s
        )
        async with (
            background("webhook-delivery", worker.run()),
            background("readings-changed", changes),
        ):
            yield


async def _retention_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS_KEY]
    job = retention_loop(
        app[POOL_KEY],
        settings.retention,
        settings.pool_acquire_timeout_s,
        settings.spool_horizon_days,
    )
    async with background("retention", job):
        yield
