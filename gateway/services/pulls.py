"""What data clients pull (SPEC §5): readings and consent changes, each read audited.

Handlers turn these into HTTP (pages, streams, cursors); the queries and the access-log rows are
here. What a client may see is decided in SQL (``gateway.storage.readings_query``). Every
request that returns data is recorded as ONE audit row (kind ``data.read``, actor
``client:<id>``) listing the EANs returned, so each customer's access log shows who read their
data.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any, Final

import asyncpg

from gateway import metrics
from gateway.storage import audit, readings_query
from gateway.storage.credentials import Client
from gateway.storage.readings_query import ReadingsQuery

#: COPY writes times in UTC, ISO 8601, whatever the server's defaults
_SESSION_SQL: Final = "SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO, YMD'"


async def copy_readings(
    conn: asyncpg.Connection,
    client: Client,
    query: ReadingsQuery,
    output: str,
    sink: Callable[[bytes], Awaitable[None]],
    *,
    paged: bool,
    copy_timeout_s: float | None = None,
) -> int:
    """Run the query's COPY into ``sink``; returns the number of rows (COPY's status).
    ``copy_timeout_s``: seconds the COPY may take (None: the pool's command timeout)."""
    sql, args = readings_query.build_sql(
        query,
        output,
        paged=paged,
        purposes=sorted(client.purposes),
        keep=readings_query.keep_purposes(),
    )
    async with conn.transaction(readonly=True):
        await conn.execute(_SESSION_SQL)
        if output == "json":
            status = await conn.copy_from_query(
                sql, *args, output=sink, null="null", timeout=copy_timeout_s
            )
        else:
            status = await conn.copy_from_query(
                sql, *args, output=sink, format="csv", header=True, timeout=copy_timeout_s
            )
    return int(status.rsplit(" ", 1)[-1])


#: what a sync pull hands its caller before the first reading: the snapshot the pull runs in
#: (the next token's) and the tombstones to send first
SyncStart = Callable[[str, list[asyncpg.Record]], Awaitable[None]]


async def sync_readings(
    conn: asyncpg.Connection,
    client: Client,
    query: ReadingsQuery,
    output: str,
    sink: Callable[[bytes], Awaitable[None]],
    *,
    paged: bool,
    on_start: SyncStart,
    copy_timeout_s: float | None = None,
) -> int:
    """A ``changed_since`` pull (``query.sync``): in ONE repeatable-read snapshot, take the
    snapshot (the next token), the tombstones (none on a continued page: the first page had
    them, nor for ``changed_since=0``), then COPY the changed readings into ``sink``; returns
    the number of readings. Tombstones come before readings so a client that applies the feed
    in order never deletes a reading stored again after its deletion."""
    purposes = sorted(client.purposes)
    sql, args = readings_query.build_sql(
        query, output, paged=paged, purposes=purposes, keep=readings_query.keep_purposes()
    )
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        # the transaction's snapshot (repeatable read: every statement below uses it)
        snapshot: str = await conn.fetchval("SELECT pg_current_snapshot()::text")
        await conn.execute(_SESSION_SQL)
        tombstones: list[asyncpg.Record] = []
        if query.since_snapshot is not None and query.after is None:
            t_sql, t_args = readings_query.tombstones_sql(query, purposes)
            tombstones = list(await conn.fetch(t_sql, *t_args))
        await on_start(snapshot, tombstones)
        if output == "json":
            status = await conn.copy_from_query(
                sql, *args, output=sink, null="null", timeout=copy_timeout_s
            )
        else:
            # the caller wrote the header (CSV_SYNC_HEADER) before the tombstone rows
            status = await conn.copy_from_query(
                sql, *args, output=sink, format="csv", timeout=copy_timeout_s
            )
    return int(status.rsplit(" ", 1)[-1])


async def log_read(
    conn: asyncpg.Connection,
    client: Client,
    query: ReadingsQuery,
    eans: list[str],
    readings: int | None,
    media: str,
    *,
    complete: bool,
) -> None:
    """The access-log row of one request (its own short transaction); ``readings`` is None
    for a stream that stopped early (its EANs are those of every chunk handed over)."""
    # "application/json" → json, "application/x-ndjson" → ndjson, "text/csv" → csv
    fmt = media.rpartition("/")[2].removeprefix("x-")
    metrics.READINGS_EXPORTED.labels(fmt).inc(readings or 0)
    await audit_read(
        conn,
        client,
        {
            "granularity": query.granularity,
            "from": query.start,
            "to": query.end,
            "eans": eans,
            "readings": readings,
            "changed_since": query.sync,
            "format": media,
            "complete": complete,
        },
    )


async def audit_read(conn: asyncpg.Connection, client: Client, detail: dict[str, Any]) -> None:
    """One ``data.read`` access-log row for a client request (its own short transaction when
    ``conn`` is in none): who read, and ``detail`` (with ``eans``) what."""
    await audit.append(
        conn,
        kind=audit.KIND_READ,
        actor=client.actor,
        subject=None,
        ean=None,
        detail={"client_id": client.client_id, "client_name": client.name, **detail},
    )


_CHANGES_SQL: Final = """
SELECT * FROM (
    SELECT e.event_id, e.kind, e.at, e.recorded_at AS changed_at,
           c.consent_id, c.ean, c.purpose, c.granted_at, c.expires_at, c.ended_at, c.end_reason
    FROM consent_events e JOIN consents c ON c.ean = e.ean AND c.consent_id = e.consent_id
    WHERE e.recorded_at >= $1 AND c.purpose = ANY($2::text[]) AND c.data_class = 'interval'
    UNION ALL
    -- an expiry is no event: it happens by itself at expires_at, which is then its change time
    SELECT md5(c.consent_id::text || ':expired')::uuid, 'expired', c.expires_at, c.expires_at,
           c.consent_id, c.ean, c.purpose, c.granted_at, c.expires_at, c.ended_at, c.end_reason
    FROM consents c
    WHERE c.expires_at >= $1 AND c.expires_at <= now() AND c.ended_at IS NULL
      AND c.purpose = ANY($2::text[]) AND c.data_class = 'interval'
) AS changes
ORDER BY changed_at, event_id
LIMIT $3
"""

_SAME_TIME_SQL: Final = """
SELECT e.event_id, e.kind, e.at, e.recorded_at AS changed_at,
       c.consent_id, c.ean, c.purpose, c.granted_at, c.expires_at, c.ended_at, c.end_reason
FROM consent_events e JOIN consents c ON c.ean = e.ean AND c.consent_id = e.consent_id
WHERE e.recorded_at = $1 AND e.event_id > $3 AND c.purpose = ANY($2::text[])
  AND c.data_class = 'interval'
ORDER BY e.event_id
"""


async def consent_changes(
    conn: asyncpg.Connection, client: Client, since: dt.datetime, limit: int
) -> tuple[dt.datetime, list[asyncpg.Record], bool]:
    """Consent changes (grants, ends, expiries) for the client's purposes recorded since
    ``since``, oldest first: ``(now, rows, full)``. A full page is extended with the other
    changes of its last instant, so no instant is split over two pages. Audited as one
    ``data.read`` row (consents are personal data too)."""
    purposes = sorted(client.purposes)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        now: dt.datetime = await conn.fetchval("SELECT now()")
        rows = list(await conn.fetch(_CHANGES_SQL, since, purposes, limit))
        full = len(rows) == limit
        if full:
            last = rows[-1]
            rows.extend(
                await conn.fetch(_SAME_TIME_SQL, last["changed_at"], purposes, last["event_id"])
            )
    await audit_read(
        conn,
        client,
        {
            "data": "consents",
            "changed_since": since,
            "eans": sorted({r["ean"] for r in rows}),
            "changes": len(rows),
        },
    )
    return now, rows, full
