"""The group-commit writer: requests enqueue rows, one task flushes them in one statement.

Each request awaits the commit of its rows before it answers, so every acknowledged reading is
durable; see ``gateway.ingest.pipeline`` for the whole flow.

One request's rows must never cost another request its answer. The pipeline validates every
value before it joins a batch, but should the database still refuse a merged batch for a data
reason (SQLSTATE class 22 or 23), the writer splits the requests in halves and writes each half
on its own, down to the single request whose rows the database refuses: that request alone gets
``RowsRefusedError``, every other request's rows are committed and acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Final, Protocol

import asyncpg

from gateway import metrics
from gateway.errors import DatabaseUnavailableError
from gateway.ingest.best_cache import BestCache
from gateway.ingest.sql import (
    N_TABLES,
    TABLE_GRANULARITY,
    Batch,
    flush_sql,
    merge_into,
    new_batch,
)
from gateway.storage import db

log = logging.getLogger(__name__)

# --- the writer ---------------------------------------------------------------------------------

#: errors after which a batch is simply tried again (another process held conflicting locks)
_RETRYABLE: Final = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)
_MAX_ATTEMPTS: Final = 5
#: errors that say "these values", not "this database": data exceptions and constraint violations
_DATA_ERRORS: Final = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)


#: Run on the writer's connection when it is acquired (the pool's reset on release undoes it).
#: The flush statements' parameters are column arrays, and the planner estimates a custom plan
#: from the arrays it is given: for the few rows of a small flush (one telegram's day and month
#: rows) a custom plan always looks cheaper than the generic one, estimated for 10 rows, so
#: PostgreSQL planned such a flush afresh every time (pg_prepared_statements: 105 custom plans
#: and no generic one over a B3 run), about a third of its CPU per flush. The plan is the same
#: for any batch: per row, index look-ups of the contract, the consent and the conflicting row.
_GENERIC_PLANS: Final = "SET plan_cache_mode = force_generic_plan"


class RowsRefusedError(Exception):
    """The database refused this request's rows for a data reason (no other request's)."""

    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"the database refused the values (SQLSTATE {sqlstate})")
        self.sqlstate = sqlstate


class RowWriter(Protocol):
    """Where the pipeline's rows go; returns once they are committed."""

    async def write(self, batch: Batch) -> None: ...

    def arriving(self) -> contextlib.AbstractContextManager[None]:
        """Around a request's work before it may ``write`` (its token, its body)."""
        ...


class BatchWriter:
    """Group commit: merges concurrent requests' rows and writes them in one transaction.

    ``write`` returns when the transaction holding the rows has committed (or raises what made
    it fail: DatabaseUnavailableError when PostgreSQL cannot be reached).
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        best: BestCache,
        *,
        max_delay_s: float = 0.005,
        max_rows: int = 5000,
        acquire_timeout_s: float = 5.0,
    ) -> None:
        self.pool = pool
        self.best = best
        self.max_delay_s = max_delay_s
        self.max_rows = max_rows
        self.acquire_timeout_s = acquire_timeout_s
        self._batch = new_batch()
        self._rows = 0
        # the oldest BestCache.mark() of the queued rows (routed then): see BestCache
        self._batch_mark: int | None = None
        # each waiting request with its own rows: kept to isolate a refused request (see above)
        self._waiters: list[tuple[asyncio.Future[None], Batch]] = []
        self._wake = asyncio.Event()
        self._full: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._conn: asyncpg.Connection | None = None
        # requests past the door that have not queued their rows yet (see arriving)
        self._arriving = 0
        self.flushes = 0

    def start(self) -> None:
        """Start the flush task (in the running loop)."""
        self._task = asyncio.create_task(self._run(), name="ingest-writer")

    async def close(self) -> None:
        """Flush what is queued, then stop."""
        self._closing = True
        self._wake.set()
        if self._full is not None and not self._full.done():
            self._full.set_result(None)
        if self._task is not None:
            try:
                await self._task
            finally:
                self._task = None
                await self._release()

    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """Around a request's work before its ``write`` (authentication, reading the body).

        A flush gathers for up to ``max_delay_s`` only while some request is inside such a
        block: its rows are on their way. Once none is, nothing else can join but a request
        not yet received, and the queued requests are flushed at once: a lone request waits
        for one commit, not a commit plus the whole gather (B3, one telegram per request).
        Leaving the block and calling ``write`` happen without an await in between (the
        pipeline is synchronous), so the flush this may start finds the request's rows queued.
        """
        self._arriving += 1
        try:
            yield
        finally:
            self._arriving -= 1
            if not self._arriving and self._full is not None and not self._full.done():
                self._full.set_result(None)

    async def write(self, batch: Batch) -> None:
        """Queue ``batch`` and wait until it is committed."""
        if self._task is None or self._closing:
            raise DatabaseUnavailableError("the gateway is shutting down; retry later")
        self._rows += merge_into(self._batch, batch)
        # the caller routed these rows just now (no await since): the oldest mark stands for all
        if self._batch_mark is None:
            self._batch_mark = self.best.mark()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((future, batch))
        self._wake.set()
        if self._rows >= self.max_rows and self._full is not None and not self._full.done():
            self._full.set_result(None)
        await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._waiters:
                if self._closing:
                    return
                await self._wake.wait()
                self._wake.clear()
                if not self._waiters:
                    continue
                if (
                    self._arriving
                    and self._rows < self.max_rows
                    and self.max_delay_s > 0
                    and not self._closing
                ):
                    # gather the requests on their way for a few ms (until none is left or
                    # the batch is full)
                    self._full = loop.create_future()
                    await asyncio.wait((self._full,), timeout=self.max_delay_s)
                    self._full = None
            # rows queued while the previous flush ran are flushed at once: they have waited
            batch, waiters, mark = self._batch, self._waiters, self._batch_mark
            self._batch, self._rows, self._waiters = new_batch(), 0, []
            self._batch_mark = None
            await self._flush(batch, waiters, mark)

    async def _flush(
        self, batch: Batch, waiters: list[tuple[asyncio.Future[None], Batch]], mark: int | None
    ) -> None:
        error: BaseException | None = None
        refused: dict[asyncio.Future[None], RowsRefusedError] = {}
        try:
            # shielded: a shutdown must not cut a transaction whose waiters expect an answer
            await asyncio.shield(self._write_isolating(batch, waiters, mark, refused))
        except asyncio.CancelledError:
            for waiter, _ in waiters:
                if not waiter.done():
                    waiter.set_exception(DatabaseUnavailableError("write interrupted; retry"))
            raise
        except db.CONNECTION_ERRORS as exc:
            log.warning("ingest write failed: database unavailable (%s)", type(exc).__name__)
            error = DatabaseUnavailableError("the database is temporarily unavailable")
        except (TimeoutError, DatabaseUnavailableError) as exc:
            log.warning("ingest write failed: %s", type(exc).__name__)
            error = DatabaseUnavailableError("the database did not accept the write in time")
        except Exception as exc:
            # not swallowed: every waiting request re-raises it (a 500 via the middleware)
            log.exception("ingest write failed")
            error = exc
        self.flushes += 1
        for waiter, _ in waiters:
            if waiter.done():
                continue
            failure = error or refused.get(waiter)
            if failure is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(failure)

    async def _write_isolating(
        self,
        batch: Batch,
        waiters: list[tuple[asyncio.Future[None], Batch]],
        mark: int | None,
        refused: dict[asyncio.Future[None], RowsRefusedError],
    ) -> None:
        """Write ``batch`` (the merge of ``waiters``' rows); on a data error, bisect the waiters
        and write each half alone, recording in ``refused`` the requests the database refuses."""
        try:
            await self._write_with_retries(batch, mark)
        except _DATA_ERRORS as exc:
            if len(waiters) == 1:
                # the SQLSTATE only: the message may quote the values, which may be personal
                log.info("ingest write: one request's rows refused (SQLSTATE %s)", exc.sqlstate)
                refused[waiters[0][0]] = RowsRefusedError(exc.sqlstate)
                return
            half = len(waiters) // 2
            for part in (waiters[:half], waiters[half:]):
                merged = new_batch()
                for _, rows in part:
                    merge_into(merged, rows)
                await self._write_isolating(merged, part, mark, refused)

    async def _write_with_retries(self, batch: Batch, mark: int | None = None) -> None:
        for attempt in range(1, _MAX_ATTEMPTS + 1):
            try:
                await self._write_once(batch)
                break
            except _RETRYABLE as exc:
                if attempt == _MAX_ATTEMPTS:
                    raise
                log.info("ingest write retried after %s", type(exc).__name__)
                await asyncio.sleep(0.001 * attempt)
        best = self.best
        for table in range(N_TABLES):
            for (ean, start), row in batch[table].items():
                best.lower((ean, table, start), row[2], mark)  # type: ignore[arg-type]

    async def _connection(self) -> asyncpg.Connection:
        # The writer keeps one pooled connection between flushes: releasing it after every
        # flush costs a reset round trip; on any failure it goes back to the pool (which
        # closes a broken one) and the next flush acquires afresh.
        if self._conn is not None and not _usable(self._conn):
            await self._release()
        if self._conn is None:
            try:
                conn = self._conn = await self.pool.acquire(timeout=self.acquire_timeout_s)
            except TimeoutError as exc:
                raise DatabaseUnavailableError(
                    "the database is busy: no connection came free in time"
                ) from exc
            await conn.execute(_GENERIC_PLANS)
        return self._conn

    async def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await self.pool.release(conn)

    async def _write_once(self, batch: Batch) -> None:
        started = time.perf_counter()
        tables: list[int] = []
        args: list[list[int | None]] = []
        for table in range(N_TABLES):
            rows = batch[table]
            if not rows:
                continue
            # a fixed order (table, ean, period) keeps concurrent writers from deadlocking
            ordered = [rows[k] for k in sorted(rows)]
            tables.append(table)
            args.extend(list(col) for col in zip(*ordered, strict=True))
        if not tables:
            return
        try:
            conn = await self._connection()
            (written,) = await conn.fetch(flush_sql(tuple(tables)), *args)
        except BaseException:
            await self._release()
            raise
        total = 0
        for table, count in zip(tables, written, strict=True):
            total += len(batch[table])
            if count:
                metrics.READINGS_STORED_BY(TABLE_GRANULARITY[table].value).inc(count)
        metrics.INGEST_BATCH_SIZE.observe(total)
        metrics.DB_WRITE_SECONDS.observe(time.perf_counter() - started)


def _usable(conn: asyncpg.Connection) -> bool:
    """False for a kept connection that died while idle (the database restarted, the link
    dropped): asyncpg then takes it back into the pool by itself, and any call on it but a
    release raises InterfaceError."""
    try:
        return not conn.is_closed()
    except asyncpg.InterfaceError:
        return False
