"""The ingest machinery of one gateway process: built, started and stopped together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import asyncpg

from gateway.ingest.best_cache import BestCache
from gateway.ingest.consent_index import ConsentIndex, IndexMaintainer
from gateway.ingest.pipeline import IngestPipeline, IngestResult
from gateway.ingest.writer import BatchWriter, RowsRefusedError, RowWriter
from gateway.settings import Settings
from gateway.storage import db

log = logging.getLogger(__name__)

#: how often a process catches up with the change log (one indexed query when nothing changed):
#: the bound on how long a change whose NOTIFY got lost stays unseen
CATCH_UP_INTERVAL_S = 5.0


@dataclass(slots=True)
class IngestState:
    """The ingest machinery of one gateway process."""

    pipeline: IngestPipeline
    writer: RowWriter
    index: ConsentIndex
    maintainer: IndexMaintainer | None
    clock: Callable[[], float]

    async def ingest(self, parts: Sequence[bytes], meter_ids: frozenset[str]) -> IngestResult:
        """Process one request's telegrams and commit their rows; returns once they are durable.

        Should the database refuse the request's rows for a data reason (see
        ``gateway.ingest.writer``), each telegram is written on its own so that only the one it
        refuses is rejected (``bad-value``) and the rest of the request is stored."""
        # "processed now" in whole seconds, rounded UP: policies compare it with the ceilings
        # of consent starts and ends (consent.policy), so a consent granted at 12:00:00.6 is in
        # force for a telegram processed at 12:00:00.7 (truncating would wait for 12:00:01 and
        # withhold the interval reading of a telegram pushed right after the grant's response),
        # and one ending at 12:00:00.6 is over from 12:00:00.0 on (early, never late)
        now_s = math.ceil(self.clock())
        result = self.pipeline.process(parts, meter_ids, now_s)
        if result.rows:
            try:
                await self.writer.write(result.batch)
            except RowsRefusedError:
                return await self._one_by_one(parts, meter_ids, now_s)
        return result

    async def _one_by_one(
        self, parts: Sequence[bytes], meter_ids: frozenset[str], now_s: int
    ) -> IngestResult:
        ones = [self.pipeline.process((part,), meter_ids, now_s) for part in parts]
        writes = [(index, one) for index, one in enumerate(ones) if one.rows]
        # concurrently: the writer merges them into one batch and bisects to the refused ones
        outcomes = await asyncio.gather(
            *(self.writer.write(one.batch) for _, one in writes), return_exceptions=True
        )
        refused: dict[int, RowsRefusedError] = {}
        for (index, _), outcome in zip(writes, outcomes, strict=True):
            if isinstance(outcome, RowsRefusedError):
                refused[index] = outcome
            elif isinstance(outcome, BaseException):
                raise outcome
        total = IngestResult()
        for index, one in enumerate(ones):
            total.dst_flag_mismatches += one.dst_flag_mismatches  # parsed, refused or not
            if index in refused:
                total.rejected.append(
                    {"index": index, "reason": "bad-value", "detail": str(refused[index])}
                )
                continue
            total.accepted += one.accepted
            total.rows += one.rows
            total.rejected.extend({**r, "index": index} for r in one.rejected)
            for mine, theirs in zip(total.depths, one.depths, strict=True):
                for depth, count in enumerate(theirs):
                    mine[depth] += count
        return total

    async def refresh(self, eans: list[str]) -> None:
        """Reload ``eans`` in THIS process's consent index now (after a consent or level
        change: other processes follow the NOTIFY it committed, and the database insert rule
        covers the meantime).

        The change has committed when this runs, so a busy or unreachable database must not
        turn its answer into an error: the reload is then left to the background (the NOTIFY
        brings it too), and the insert rule keeps every write correct until it happens."""
        if self.maintainer is None:
            return
        try:
            await self.maintainer.reload_eans(eans)
        except db.RETRYABLE_ERRORS as exc:
            log.warning("consent index: reload after a change deferred (%s)", type(exc).__name__)
            for ean in eans:
                self.maintainer.notify(ean)


@contextlib.asynccontextmanager
async def running_ingest(
    pool: asyncpg.Pool,
    settings: Settings,
    *,
    listen: bool = True,
    clock: Callable[[], float] | None = None,
    on_devices_changed: Callable[[], None] | None = None,
) -> AsyncIterator[IngestState]:
    """The consent index (loaded, and kept fresh by LISTEN and catch-ups unless ``listen`` is
    False), the group-commit writer and the pipeline, for the duration of the block. On exit
    the writer drains its in-flight batches first, while ``pool`` is still open."""
    index = ConsentIndex()
    best = BestCache()

    def forget(eans: list[str] | None) -> None:
        # what the old routing cached about these EANs' periods no longer holds (BestCache)
        if eans is None:
            best.forget_all()
        else:
            for ean in eans:
                best.forget(int(ean))

    maintainer = IndexMaintainer(
        pool,
        index,
        listen=listen,
        # without LISTEN a test wants this process stale until it says otherwise
        catch_up_interval_s=CATCH_UP_INTERVAL_S if listen else None,
        acquire_timeout_s=settings.pool_acquire_timeout_s,
        on_devices_changed=on_devices_changed,
        on_reloaded=forget,
    )
    await maintainer.start()
    try:
        writer = BatchWriter(
            pool,
            best,
            max_delay_s=settings.ingest_batch_max_delay_ms / 1000,
            max_rows=settings.ingest_batch_max_rows,
            acquire_timeout_s=settings.pool_acquire_timeout_s,
        )
        writer.start()
        try:
            pipeline = IngestPipeline(
                index,
                best,
                future_tolerance_s=settings.future_tolerance_s,
                horizon_s=settings.spool_horizon_days * 86400,
            )
            yield IngestState(pipeline, writer, index, maintainer, clock or time.time)
        finally:
            await writer.close()
    finally:
        await maintainer.stop()
