"""The ``readings.changed`` webhook: per subscribed client, at most one event a minute listing
the EANs and periods of readings it may see that changed (stored, improved or deleted).

Every ``readings_changed_interval_s`` one process (a transaction advisory lock; the others skip)
runs ONE repeatable-read transaction that

1. reads where the last run left off: its snapshot and time (``readings_changed_mark``);
2. per client with a ``webhook_url``, per granularity it may read, summarises what changed
   since that snapshot exactly as ``GET /v1/readings?changed_since=`` would return it (same
   visibility SQL, ``gateway.storage.readings_query.changes_summary_sql``): per EAN the first
   and last ``period_start`` of changed readings and tombstones;
3. enqueues one ``readings.changed`` outbox event for each client with changes (delivered,
   signed and retried by ``gateway.jobs.webhooks`` like every event);
4. stores its own snapshot as the new mark.

Being one transaction, a crash anywhere announces nothing and moves no mark: the next run covers
the changes. What changed while the run took its snapshot is not visible in it, hence in the next
run's summary (the same snapshot argument as sync tokens, README billing section).

Payload (the event's ``data``)::

    {"since": "<previous run>", "until": "<this run>",
     "changes": [{"ean", "granularity", "first_period_start", "last_period_start"}, …],
     "truncated": false}

``truncated`` is true when more than ``readings_changed_max_entries`` entries changed: the list
is cut, and the client pulls ``changed_since`` for the rest (it should anyway: the event says
where to look, not what changed).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

import asyncpg

from gateway.jsonenc import rfc3339
from gateway.settings import WebhookSettings
from gateway.storage import db, locks, outbox, readings_query

log = logging.getLogger(__name__)

_GRANULARITY_ORDER: Final = ("P1M", "P1D", "PT1H", "PT15M")

#: errors the loop survives (logged, retried next interval)
_LOOP_ERRORS = db.RETRYABLE_ERRORS


async def run_once(conn: asyncpg.Connection, config: WebhookSettings) -> int | None:
    """One run (module docstring); returns how many events it enqueued, or None when it was
    not this process's turn (another one holds the lock, or the interval has not passed)."""
    try:
        async with conn.transaction(isolation="repeatable_read"):
            if not await conn.fetchval(
                "SELECT pg_try_advisory_xact_lock($1)", locks.READINGS_CHANGED
            ):
                return None
            # FOR UPDATE in repeatable read fails (serialization error) if another process
            # moved the mark after this transaction's snapshot: then that run covered it
            mark = await conn.fetchrow(
                "SELECT snapshot::text AS snapshot, at, now() AS now, pg_current_snapshot()::text"
                " AS current, now() - at >= make_interval(secs => $1) AS due"
                " FROM readings_changed_mark FOR UPDATE",
                config.readings_changed_interval_s,
            )
            if mark is None or not mark["due"]:
                return None
            clients = await conn.fetch(
                "SELECT client_id, granularities, purposes FROM clients"
                " WHERE webhook_url IS NOT NULL AND revoked_at IS NULL ORDER BY client_id"
            )
            sent = 0
            for client in clients:
                data = await _changes_for(conn, client, mark["snapshot"], config)
                if data is None:
                    continue
                data["since"] = rfc3339(mark["at"])
                data["until"] = rfc3339(mark["now"])
                await outbox.enqueue(
                    conn,
                    ean=outbox.NO_EAN,
                    kind=outbox.KIND_READINGS_CHANGED,
                    payload=data,
                    client_id=client["client_id"],
                )
                sent += 1
            await conn.execute(
                "UPDATE readings_changed_mark SET snapshot = $1::text::pg_snapshot, at = now()",
                mark["current"],
            )
            return sent
    except asyncpg.SerializationError:
        return None


async def _changes_for(
    conn: asyncpg.Connection, client: asyncpg.Record, since: str, config: WebhookSettings
) -> dict[str, Any] | None:
    """The event data for one client, None when nothing it may see changed."""
    purposes = sorted(client["purposes"])
    keep = readings_query.keep_purposes()
    room = config.readings_changed_max_entries
    changes: list[dict[str, str]] = []
    truncated = False
    for granularity in _GRANULARITY_ORDER:
        if granularity not in client["granularities"]:
            continue
        query = readings_query.ReadingsQuery(
            granularity,
            readings_query.NO_START,
            readings_query.NO_END,
            (),
            1,
            changed_since="",
            since_snapshot=since,
        )
        sql, args = readings_query.changes_summary_sql(query, purposes, keep, room)
        rows = await conn.fetch(sql, *args)
        if len(rows) > room:
            rows = rows[:room]
            truncated = True
        changes.extend(
            {
                "ean": r["ean"],
                "granularity": granularity,
                "first_period_start": rfc3339(r["first_period_start"]),
                "last_period_start": rfc3339(r["last_period_start"]),
            }
            for r in rows
        )
        room -= len(rows)
        if truncated or room == 0:
            truncated = truncated or _more_follow(client, granularity)
            break
    if not changes:
        return None
    return {"changes": changes, "truncated": truncated}


def _more_follow(client: asyncpg.Record, granularity: str) -> bool:
    # the list is full after `granularity`: later granularities may hold changes not listed;
    # saying "truncated" costs the client one sync pull it makes anyway
    rest = _GRANULARITY_ORDER[_GRANULARITY_ORDER.index(granularity) + 1 :]
    return any(g in client["granularities"] for g in rest)


async def readings_changed_loop(
    pool: asyncpg.Pool, config: WebhookSettings, acquire_timeout_s: float
) -> None:
    """Run ``run_once`` every ``readings_changed_interval_s`` (a fraction of it, so a run is
    at most that late; the mark's time keeps the one-per-interval promise across processes)."""
    pause = min(config.readings_changed_interval_s / 4, 15.0)
    while True:
        try:
            async with db.acquire(pool, acquire_timeout_s) as conn:
                sent = await run_once(conn, config)
            if sent:
                log.info("readings.changed: %d event(s) enqueued", sent)
        except _LOOP_ERRORS as exc:
            log.warning("readings.changed run failed: %s: %s", type(exc).__name__, exc)
        await asyncio.sleep(pause)
