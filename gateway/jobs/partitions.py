"""Reading partitions ahead of time: every process makes sure the next months' partitions exist."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

import asyncpg

from gateway.errors import ConfigurationError, DatabaseUnavailableError
from gateway.settings import Settings
from gateway.storage import db

log = logging.getLogger(__name__)

#: how often each process makes sure next months' reading partitions exist
PARTITION_CHECK_INTERVAL_S = 6 * 3600.0
#: seconds before a failed check is tried again
RETRY_S = 60.0
#: failures partition maintenance retries instead of crashing the process
_MAINTENANCE_ERRORS: tuple[type[BaseException], ...] = (
    *db.CONNECTION_ERRORS,
    TimeoutError,
    DatabaseUnavailableError,
    ConfigurationError,
)


async def maintain_partitions(pool: asyncpg.Pool, settings: Settings) -> None:
    """Create the partitions of ``db.partition_window`` now and every few hours, until cancelled."""
    while True:
        try:
            start, end = db.partition_window(settings, dt.datetime.now(dt.UTC))
            async with db.acquire(pool, settings.pool_acquire_timeout_s) as conn:
                await db.ensure_partitions(conn, start, end)
        except _MAINTENANCE_ERRORS as exc:
            # readings outside existing partitions still land in the DEFAULT partition, so a
            # missed run costs nothing but a retry
            log.warning("partition maintenance failed (%s); retrying in 60 s", type(exc).__name__)
            await asyncio.sleep(RETRY_S)
            continue
        await asyncio.sleep(PARTITION_CHECK_INTERVAL_S)
