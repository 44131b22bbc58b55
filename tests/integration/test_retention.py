"""Retention (SPEC §2) and consent expiry (SPEC §4) on real PostgreSQL, tested by moving the
clock: data is inserted with old timestamps and the jobs run at a chosen ``now``.

Checked: expired interval partitions are dropped and the rest deleted in batches; daily/monthly
readings go per connection 7 years after its contract ended (open contracts keep everything);
consent records go 1 year after the interval data they justified; expired consents get their end
recorded; every run that deletes something is audited; a dry run changes nothing; one process at
a time holds the retention lock; the CLI as a subprocess; the in-process job.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from consent.retention import RetentionPolicy
from gateway.jobs import retention
from gateway.settings import RetentionSettings, Settings
from gateway.storage import audit, db

REPO = Path(__file__).resolve().parents[2]
UTC = dt.UTC
#: the clock of most tests: cutoffs interval 2015-02-15T06:00Z, contracts 2012-02-15T06:00Z,
#: consent records 2014-02-15T06:00Z
NOW = dt.datetime(2019, 2, 15, 6, 0, tzinfo=UTC)
Q = dt.timedelta(minutes=15)
H = dt.timedelta(hours=1)
D = dt.timedelta(days=1)


def ts(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


def ean(n: int) -> str:
    return f"87168714{n:010d}"


# ---------------------------------------------------------------------------------------------
# data helpers


async def add_connection(
    conn: asyncpg.Connection,
    n: int,
    commodity: str = "electricity",
    *,
    start: str = "2009-01-01",
    end: str | None = None,
) -> int:
    """Register connection ``ean(n)`` directly; returns its ean_num."""
    row = await conn.fetchrow(
        "INSERT INTO connections (ean, commodity) VALUES ($1, $2) RETURNING ean_num",
        ean(n),
        commodity,
    )
    await conn.execute(
        "INSERT INTO contracts (ean, customer_id, contract_start, contract_end, end_reason)"
        " VALUES ($1, $2, $3, $4, $5)",
        ean(n),
        f"cust-{n}",
        ts(start),
        None if end is None else ts(end),
        None if end is None else "contract-ended",
    )
    await conn.execute(
        "INSERT INTO meter_installations (ean, commodity, meter_id, installed_from)"
        " VALUES ($1, $2, $3, $4)",
        ean(n),
        commodity,
        f"M{n}",
        ts(start),
    )
    assert row is not None
    value: int = row["ean_num"]
    return value


async def add_readings(
    conn: asyncpg.Connection,
    table: str,
    ean_num: int,
    first: dt.datetime,
    count: int,
    step: dt.timedelta,
) -> None:
    """``count`` readings of ``ean_num`` starting at ``first``, ``step`` apart."""
    starts = [first + i * step for i in range(count)]
    column = "volume_dm3" if table.startswith("readings_g_") else "import_t1_wh"
    await conn.execute(
        f"INSERT INTO {table} (ean, period_start, measured_at, {column})"
        " SELECT $1, s, s + $3::interval, 1 FROM unnest($2::timestamptz[]) AS s",
        ean_num,
        starts,
        step,
    )


async def count_rows(conn: asyncpg.Connection, table: str, where: str = "true") -> int:
    value: int = await conn.fetchval(f"SELECT count(*) FROM {table} WHERE {where}")
    return value


async def partitions_of(conn: asyncpg.Connection, table: str) -> set[str]:
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = $1::regclass",
        table,
    )
    return {r["relname"] for r in rows}


async def table_exists(conn: asyncpg.Connection, name: str) -> bool:
    value: bool = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name)
    return value


async def add_consent(
    conn: asyncpg.Connection,
    n: int,
    *,
    granted: str,
    expires: str | None = None,
    ended: str | None = None,
    reason: str = "revoked",
) -> uuid.UUID:
    """A consent of connection ``ean(n)`` with its history events, inserted directly."""
    consent_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO consents (ean, consent_id, customer_id, purpose, notice_version, channel,"
        " granted_at, expires_at, ended_at, end_reason, contract_id)"
        " VALUES ($1, $2, $3, 'dynamic-tariff-billing', 'v1', 'api', $4, $5, $6, $7,"
        " (SELECT contract_id FROM contracts WHERE ean = $1))",
        ean(n),
        consent_id,
        f"cust-{n}",
        ts(granted),
        None if expires is None else ts(expires),
        None if ended is None else ts(ended),
        None if ended is None else reason,
    )
    await conn.execute(
        "INSERT INTO consent_events (ean, consent_id, kind, at) VALUES ($1, $2, 'granted', $3)",
        ean(n),
        consent_id,
        ts(granted),
    )
    if ended is not None:
        await conn.execute(
            "INSERT INTO consent_events (ean, consent_id, kind, at, detail)"
            " VALUES ($1, $2, 'ended', $3, $4::text::jsonb)",
            ean(n),
            consent_id,
            ts(ended),
            json.dumps({"reason": reason}),
        )
    return consent_id


async def audit_rows(conn: asyncpg.Connection, kind: str | None = None) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT seq, kind, actor, subject, ean, detail::text AS detail FROM audit_log"
        " WHERE $1::text IS NULL OR kind = $1 ORDER BY seq",
        kind,
    )
    return rows


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    c = await db.connect(database_url)
    try:
        yield c
    finally:
        await c.close()


# ---------------------------------------------------------------------------------------------
# interval readings


async def seed_interval(conn: asyncpg.Connection) -> dict[str, int]:
    """Interval readings around the 2015-02-15T06:00Z cutoff; returns expected deletions."""
    await db.ensure_partitions(conn, ts("2014-12-01"), ts("2015-04-01"))
    e, g = 1_000_001, 1_000_002
    # whole partitions before the cutoff month: dropped
    await add_readings(conn, "readings_e_pt15m", e, ts("2014-12-31T22:00"), 8, Q)
    await add_readings(conn, "readings_e_pt15m", e, ts("2015-01-10T00:00"), 96, Q)
    await add_readings(conn, "readings_g_pt1h", g, ts("2015-01-05T00:00"), 24, H)
    # the cutoff month: 24 of 48 quarter-hours and 6 of 12 hours are before 06:00
    await add_readings(conn, "readings_e_pt15m", e, ts("2015-02-15T00:00"), 48, Q)
    await add_readings(conn, "readings_g_pt1h", g, ts("2015-02-15T00:00"), 12, H)
    # after the cutoff
    await add_readings(conn, "readings_e_pt15m", e, ts("2015-03-01T00:00"), 8, Q)
    # the DEFAULT partition: 2010 (no partition) goes, 2031 stays
    await add_readings(conn, "readings_e_pt15m", e, ts("2010-06-01T00:00"), 12, Q)
    await add_readings(conn, "readings_e_pt15m", e, ts("2031-01-01T00:00"), 4, Q)
    return {"e_deleted": 24 + 12, "g_deleted": 6, "e_left": 24 + 8 + 4, "g_left": 6}


async def test_interval_partitions_dropped_and_the_rest_deleted_in_batches(
    conn: asyncpg.Connection,
) -> None:
    expect = await seed_interval(conn)
    assert await count_rows(conn, "readings_e_pt15m_default") == 16
    policy = RetentionPolicy(batch_rows=5)

    report = await retention.run_retention(conn, NOW, policy)

    e = report.tables["readings_e_pt15m"]
    g = report.tables["readings_g_pt1h"]
    assert sorted(e.partitions_dropped) == [
        "readings_e_pt15m_y2014m12",
        "readings_e_pt15m_y2015m01",
    ]
    assert sorted(g.partitions_dropped) == ["readings_g_pt1h_y2014m12", "readings_g_pt1h_y2015m01"]
    for name in e.partitions_dropped + g.partitions_dropped:
        assert not await table_exists(conn, name)
    # still attached: the cutoff month and later
    assert {"readings_e_pt15m_y2015m02", "readings_e_pt15m_y2015m03"} <= await partitions_of(
        conn, "readings_e_pt15m"
    )
    assert e.rows_deleted == expect["e_deleted"]
    assert g.rows_deleted == expect["g_deleted"]
    # batches of 5, until one deletes less: 24 rows → 5 statements, 12 default rows → 3;
    # 6 gas rows → 2, the empty gas default partition → 1
    assert e.delete_statements == 5 + 3
    assert g.delete_statements == 2 + 1
    assert e.partitions_skipped == [] and g.partitions_skipped == []

    cutoff = "'2015-02-15T06:00:00Z'"
    assert await count_rows(conn, "readings_e_pt15m", f"period_start < {cutoff}") == 0
    assert await count_rows(conn, "readings_g_pt1h", f"period_start < {cutoff}") == 0
    assert await count_rows(conn, "readings_e_pt15m") == expect["e_left"]
    assert await count_rows(conn, "readings_g_pt1h") == expect["g_left"]
    first_kept = await conn.fetchval("SELECT min(period_start) FROM readings_e_pt15m")
    assert first_kept == ts("2015-02-15T06:00")  # the reading at the cutoff itself stays
    assert await count_rows(conn, "readings_e_pt15m_default") == 4  # the 2031 rows

    # audited, chain intact
    (row,) = await audit_rows(conn, retention.KIND_RETENTION_RUN)
    assert row["actor"] == retention.RETENTION_ACTOR and row["subject"] is None
    detail = json.loads(row["detail"])
    assert detail["cutoffs"]["interval_period_start"] == "2015-02-15T06:00:00.000000Z"
    assert detail["now"] == "2019-02-15T06:00:00.000000Z"
    assert detail["completed"] is True and detail["dry_run"] is False
    assert detail["tables"]["readings_e_pt15m"]["rows_deleted"] == expect["e_deleted"]
    assert "readings_g_pt1h_y2015m01" in detail["tables"]["readings_g_pt1h"]["partitions_dropped"]
    assert (await audit.verify(conn)).ok

    # nothing left to do at the same clock: no change, no second audit row
    again = await retention.run_retention(conn, NOW, policy)
    assert not again.changed()
    assert len(await audit_rows(conn, retention.KIND_RETENTION_RUN)) == 1

    # a year later the next months go (partitions of Feb and Mar 2015 now entirely expired)
    later = await retention.run_retention(conn, NOW + dt.timedelta(days=365), policy)
    assert set(later.tables["readings_e_pt15m"].partitions_dropped) == {
        "readings_e_pt15m_y2015m02",
        "readings_e_pt15m_y2015m03",
    }
    assert await count_rows(conn, "readings_e_pt15m") == 4


async def test_a_busy_partition_is_skipped_and_dropped_on_a_later_run(
    conn: asyncpg.Connection, database_url: str
) -> None:
    await seed_interval(conn)
    blocker = await asyncpg.connect(database_url)
    try:
        tx = blocker.transaction()
        await tx.start()
        # a long reader of the interval table: DETACH needs its ACCESS EXCLUSIVE lock
        await blocker.execute("LOCK TABLE readings_e_pt15m IN ACCESS SHARE MODE")
        # no compaction: a rebuild waits for every open transaction that has the table
        # locked, this one included, which waits for the run (tests/integration/
        # test_compaction.py)
        report = await retention.run_retention(
            conn, NOW, RetentionPolicy(batch_rows=5, lock_timeout_ms=200, compactions_per_run=0)
        )
        await tx.rollback()
    finally:
        await blocker.close()
    e = report.tables["readings_e_pt15m"]
    assert e.partitions_dropped == []
    assert sorted(e.partitions_skipped) == [
        "readings_e_pt15m_y2014m12",
        "readings_e_pt15m_y2015m01",
    ]
    assert await table_exists(conn, "readings_e_pt15m_y2015m01")
    # the rest of the run went on: gas partitions dropped, rows before the cutoff deleted
    assert len(report.tables["readings_g_pt1h"].partitions_dropped) == 2
    assert e.rows_deleted == 36
    # the skipped rows were not deleted one by one; the next run drops their partitions
    assert await count_rows(conn, "readings_e_pt15m_y2015m01") == 96
    (row,) = await audit_rows(conn, retention.KIND_RETENTION_RUN)
    assert (
        "readings_e_pt15m_y2015m01"
        in json.loads(row["detail"])["tables"]["readings_e_pt15m"]["partitions_skipped"]
    )

    again = await retention.run_retention(conn, NOW, RetentionPolicy(batch_rows=5))
    assert sorted(again.tables["readings_e_pt15m"].partitions_dropped) == [
        "readings_e_pt15m_y2014m12",
        "readings_e_pt15m_y2015m01",
    ]
    assert not await table_exists(conn, "readings_e_pt15m_y2015m01")


# ---------------------------------------------------------------------------------------------
# daily and monthly readings


async def seed_daily(conn: asyncpg.Connection) -> dict[str, int]:
    """Connections with ended and open contracts; returns their ean_nums."""
    await db.ensure_partitions(conn, ts("2010-01-01"), ts("2010-02-01"))  # yearly: y2010
    ended_long_ago = await add_connection(conn, 1, end="2011-06-01")  # +7 y < NOW
    ended_recently = await add_connection(conn, 2, end="2012-06-01")  # +7 y > NOW
    still_open = await add_connection(conn, 3)
    gas_ended = await add_connection(conn, 4, "gas", end="2010-12-31")
    for num in (ended_long_ago, ended_recently, still_open):
        await add_readings(conn, "readings_e_p1d", num, ts("2010-01-01"), 40, D)
        for month in range(1, 13):
            await add_readings(conn, "readings_e_p1m", num, ts(f"2010-{month:02d}-01"), 1, D)
    await add_readings(conn, "readings_g_p1d", gas_ended, ts("2010-03-01"), 10, D)
    await add_readings(conn, "readings_g_p1m", gas_ended, ts("2010-03-01"), 1, D)
    return {
        "ended_long_ago": ended_long_ago,
        "ended_recently": ended_recently,
        "still_open": still_open,
        "gas_ended": gas_ended,
    }


async def test_daily_and_monthly_readings_go_seven_years_after_the_contract_ends(
    conn: asyncpg.Connection,
) -> None:
    eans = await seed_daily(conn)
    report = await retention.run_retention(conn, NOW, RetentionPolicy(batch_rows=7))

    assert report.connections_purged == 2
    e_day = report.tables["readings_e_p1d"]
    assert e_day.rows_deleted == 40
    assert e_day.delete_statements == 6  # 7+7+7+7+7+5
    assert report.tables["readings_e_p1m"].rows_deleted == 12
    assert report.tables["readings_g_p1d"].rows_deleted == 10
    assert report.tables["readings_g_p1m"].rows_deleted == 1
    assert e_day.partitions_dropped == []  # yearly partitions hold every EAN: never dropped

    for key, left in (("ended_long_ago", 0), ("ended_recently", 40), ("still_open", 40)):
        assert await count_rows(conn, "readings_e_p1d", f"ean = {eans[key]}") == left, key
    assert await count_rows(conn, "readings_e_p1m", f"ean = {eans['still_open']}") == 12
    assert await count_rows(conn, "readings_e_p1m", f"ean = {eans['ended_long_ago']}") == 0
    assert await count_rows(conn, "readings_g_p1d") == 0
    # the connections themselves stay in the registry
    assert await count_rows(conn, "connections") == 4

    # the open contract keeps its 2010 data however far the clock moves
    far = await retention.run_retention(conn, ts("2040-01-01T00:00"), RetentionPolicy())
    assert far.connections_purged == 1  # the one that ended in 2012
    assert await count_rows(conn, "readings_e_p1d", f"ean = {eans['still_open']}") == 40
    assert await count_rows(conn, "readings_e_p1d") == 40


async def test_the_fiscal_hold_counts_per_contract_on_one_ean(conn: asyncpg.Connection) -> None:
    """SPEC §3a: two tenants on one EAN; the first contract ended more than 7 years ago, the
    next one is open. Only the first tenant's readings go."""
    await db.ensure_partitions(conn, ts("2010-01-01"), ts("2010-02-01"))
    num = await add_connection(conn, 7, end="2010-01-20")
    await conn.execute(
        "INSERT INTO contracts (ean, customer_id, contract_start) VALUES ($1, 'next', $2)",
        ean(7),
        ts("2010-01-20"),
    )
    # measured 2010-01-02 … 2010-02-10: 18 in the first contract, 22 in the next
    await add_readings(conn, "readings_e_p1d", num, ts("2010-01-01"), 40, D)
    report = await retention.run_retention(conn, NOW, RetentionPolicy(batch_rows=5))
    assert report.connections_purged == 1  # one contract
    assert report.tables["readings_e_p1d"].rows_deleted == 18
    left = await conn.fetch("SELECT measured_at FROM readings_e_p1d ORDER BY measured_at")
    assert [r["measured_at"] for r in left] == [ts("2010-01-20") + i * D for i in range(22)]


# ---------------------------------------------------------------------------------------------
# consents: expiry and records


async def test_consent_expiry_records_the_end_once(conn: asyncpg.Connection) -> None:
    await add_connection(conn, 1)
    expired = await add_consent(conn, 1, granted="2016-01-01", expires="2019-01-01")
    not_yet = await add_consent(conn, 1, granted="2017-01-01", expires="2020-01-01")
    revoked = await add_consent(
        conn, 1, granted="2016-06-01", expires="2019-01-01", ended="2017-01-01"
    )

    report = await retention.run_retention(conn, NOW)
    assert report.consents_expired == 1

    rows = {
        r["consent_id"]: r
        for r in await conn.fetch("SELECT consent_id, ended_at, end_reason FROM consents")
    }
    assert (rows[expired]["ended_at"], rows[expired]["end_reason"]) == (ts("2019-01-01"), "expired")
    assert (rows[not_yet]["ended_at"], rows[not_yet]["end_reason"]) == (None, None)
    assert (rows[revoked]["ended_at"], rows[revoked]["end_reason"]) == (ts("2017-01-01"), "revoked")
    events = await conn.fetch(
        "SELECT consent_id, at, detail FROM consent_events WHERE kind = 'ended' ORDER BY at"
    )
    assert [(e["consent_id"], e["at"]) for e in events] == [
        (revoked, ts("2017-01-01")),
        (expired, ts("2019-01-01")),
    ]
    assert events[1]["detail"] == {"reason": "expired"}

    (end_row,) = await audit_rows(conn, audit.KIND_CONSENT_END)
    assert end_row["actor"] == retention.RETENTION_ACTOR
    assert (end_row["subject"], end_row["ean"]) == ("cust-1", ean(1))
    assert json.loads(end_row["detail"])["consent_id"] == str(expired)
    (run_row,) = await audit_rows(conn, retention.KIND_RETENTION_RUN)
    assert json.loads(run_row["detail"])["consents_expired"] == 1
    assert end_row["seq"] < run_row["seq"]

    # idempotent; and the next one expires when the clock passes it
    assert (await retention.run_retention(conn, NOW)).consents_expired == 0
    assert (await retention.run_retention(conn, ts("2020-01-01T00:00"))).consents_expired == 1
    assert await count_rows(conn, "consent_events", "kind = 'ended'") == 3
    assert await count_rows(conn, "consents", "ended_at IS NULL") == 0
    assert (await audit.verify(conn)).ok


async def test_consent_records_go_a_year_after_the_data_they_justified(
    conn: asyncpg.Connection,
) -> None:
    await add_connection(conn, 1)  # open contract
    await add_connection(conn, 2, end="2013-06-01")
    # ended 2013-06-01: its data went 2017-06-01, its records 2018-06-01 < NOW
    old = await add_consent(conn, 1, granted="2011-01-01", ended="2013-06-01")
    # ended 2014-06-01: records stay until 2019-06-01
    recent = await add_consent(conn, 1, granted="2012-01-01", ended="2014-06-01")
    # ended by its contract's end (2013) without its own end recorded: its records go too
    by_contract = await add_consent(conn, 2, granted="2012-01-01")
    # granted long ago, never ended, no expiry, contract open: it still justifies data
    open_ended = await add_consent(conn, 1, granted="2010-06-01")
    # expires 2014-01-01 (< the consent-record cutoff 2014-02-15): expired, then removed
    expired_old = await add_consent(conn, 1, granted="2012-01-01", expires="2014-01-01")

    report = await retention.run_retention(conn, NOW, RetentionPolicy(batch_rows=2))

    assert report.consents_deleted == 3
    # old: granted + ended; by_contract: granted; expired_old: granted + the expiry's ended
    assert report.consent_events_deleted == 5
    assert report.consents_expired == 1
    left = {r["consent_id"] for r in await conn.fetch("SELECT consent_id FROM consents")}
    assert left == {recent, open_ended}
    left_events = {
        r["consent_id"] for r in await conn.fetch("SELECT consent_id FROM consent_events")
    }
    assert left_events == {recent, open_ended}
    assert old not in left and by_contract not in left and expired_old not in left
    (row,) = await audit_rows(conn, retention.KIND_RETENTION_RUN)
    detail = json.loads(row["detail"])
    assert (detail["consents_deleted"], detail["consent_events_deleted"]) == (3, 5)
    assert detail["cutoffs"]["consent_end"] == "2014-02-15T06:00:00.000000Z"
    # the audit trail is never touched by retention
    assert (await audit.verify(conn)).ok


# ---------------------------------------------------------------------------------------------
# notifications


async def add_notification(
    conn: asyncpg.Connection, n: int, created: dt.datetime, states: list[str]
) -> uuid.UUID:
    """An outbox event of ``ean(n)`` recorded at ``created``, with one delivery per state."""
    event_id: uuid.UUID = await conn.fetchval(
        "INSERT INTO outbox_events (ean, kind, payload, occurred_at, created_at)"
        " VALUES ($1, 'consent.granted', '{}'::jsonb, $2, $2) RETURNING event_id",
        ean(n),
        created,
    )
    for state in states:
        await conn.execute(
            "INSERT INTO webhook_deliveries (ean, event_id, client_id, seq, state, delivered_at)"
            " SELECT $1, $2, $3, seq, $4, CASE WHEN $4 = 'delivered' THEN $5::timestamptz END"
            " FROM outbox_events WHERE ean = $1 AND event_id = $2",
            ean(n),
            event_id,
            uuid.uuid4(),
            state,
            created,
        )
    return event_id


async def test_finished_notifications_go_after_30_days(conn: asyncpg.Connection) -> None:
    old = NOW - 40 * D
    done = await add_notification(conn, 1, old, ["delivered", "failed"])
    pending = await add_notification(conn, 2, old, ["delivered", "pending"])
    nobody = await add_notification(conn, 3, old, [])  # no subscriber at the time
    recent = await add_notification(conn, 4, NOW - 10 * D, ["delivered"])
    edge = await add_notification(conn, 5, NOW - 30 * D, ["delivered"])  # not before the cutoff

    report = await retention.run_retention(conn, NOW, RetentionPolicy(batch_rows=1))

    assert (report.outbox_events_deleted, report.webhook_deliveries_deleted) == (2, 2)
    left = {r["event_id"] for r in await conn.fetch("SELECT event_id FROM outbox_events")}
    assert left == {pending, recent, edge} and done not in left and nobody not in left
    deliveries = await conn.fetch("SELECT event_id, state FROM webhook_deliveries")
    assert sorted((r["event_id"] == pending, r["state"]) for r in deliveries) == [
        (False, "delivered"),
        (False, "delivered"),
        (True, "delivered"),
        (True, "pending"),
    ]
    (row,) = await audit_rows(conn, retention.KIND_RETENTION_RUN)
    detail = json.loads(row["detail"])
    assert (detail["outbox_events_deleted"], detail["webhook_deliveries_deleted"]) == (2, 2)
    assert detail["cutoffs"]["outbox_created"] == "2019-01-16T06:00:00.000000Z"


def test_notifications_are_kept_at_least_14_days() -> None:
    # the webhook worker's expiry sweep looks back 7 days and relies on the events it sent
    assert RetentionSettings(outbox_days=14).policy().outbox_days == 14
    with pytest.raises(ValueError):
        RetentionSettings(outbox_days=7)


# ---------------------------------------------------------------------------------------------
# dry run


async def snapshot(conn: asyncpg.Connection) -> dict[str, Any]:
    tables = [
        "readings_e_pt15m",
        "readings_g_pt1h",
        "readings_e_p1d",
        "readings_e_p1m",
        "readings_g_p1d",
        "readings_g_p1m",
        "consents",
        "consent_events",
        "outbox_events",
        "webhook_deliveries",
        "audit_log",
    ]
    state: dict[str, Any] = {t: await count_rows(conn, t) for t in tables}
    state["partitions"] = await partitions_of(conn, "readings_e_pt15m") | await partitions_of(
        conn, "readings_g_pt1h"
    )
    state["open_consents"] = await count_rows(conn, "consents", "ended_at IS NULL")
    return state


async def test_dry_run_changes_nothing_and_predicts_the_real_run(
    conn: asyncpg.Connection,
) -> None:
    await seed_interval(conn)
    await seed_daily(conn)
    await add_consent(conn, 3, granted="2011-01-01", ended="2013-06-01")
    await add_consent(conn, 3, granted="2016-01-01", expires="2019-01-01")
    await add_notification(conn, 3, NOW - 60 * D, ["delivered", "failed", "delivered"])
    await add_notification(conn, 3, NOW - 60 * D, ["pending"])
    policy = RetentionPolicy(batch_rows=5)
    before = await snapshot(conn)

    dry = await retention.run_retention(conn, NOW, policy, dry_run=True)

    assert await snapshot(conn) == before
    assert dry.changed() and dry.dry_run
    assert dry.consents_expired == 1 and dry.consents_deleted == 1
    assert (dry.outbox_events_deleted, dry.webhook_deliveries_deleted) == (1, 3)
    real = await retention.run_retention(conn, NOW, policy)
    dry_json, real_json = dry.as_json(), real.as_json()
    assert dry_json.pop("dry_run") is True and real_json.pop("dry_run") is False
    assert dry_json == real_json
    assert await snapshot(conn) != before
    assert len(await audit_rows(conn, retention.KIND_RETENTION_RUN)) == 1


# ---------------------------------------------------------------------------------------------
# one leader


async def test_runs_skip_while_another_process_holds_the_lock(
    conn: asyncpg.Connection, database_url: str
) -> None:
    await seed_interval(conn)
    other = await asyncpg.connect(database_url)
    try:
        await other.execute("SELECT pg_advisory_lock($1)", retention.RETENTION_LOCK_KEY)
        assert await retention.run_retention_locked(conn, NOW) is None
        code, out, err = await run_cli(database_url, "retention", "run")
        assert code == 0, err
        assert json.loads(out) == {"ran": False, "reason": retention.LOCK_HELD_MESSAGE}
        assert retention.LOCK_HELD_MESSAGE in err
        assert await table_exists(conn, "readings_e_pt15m_y2015m01")
        await other.execute("SELECT pg_advisory_unlock($1)", retention.RETENTION_LOCK_KEY)
    finally:
        await other.close()
    report = await retention.run_retention_locked(conn, NOW)
    assert report is not None and report.completed
    # the lock is released after a run
    assert await conn.fetchval("SELECT pg_try_advisory_lock($1)", retention.RETENTION_LOCK_KEY)
    await conn.execute("SELECT pg_advisory_unlock($1)", retention.RETENTION_LOCK_KEY)


async def test_two_concurrent_runs_one_works_the_other_reports_the_lock(
    conn: asyncpg.Connection, database_url: str
) -> None:
    await seed_interval(conn)
    first = await db.connect(database_url)
    second = await db.connect(database_url)
    blocker = await asyncpg.connect(database_url)
    try:
        tx = blocker.transaction()
        await tx.start()
        # keep the first run inside its work (waiting to detach a partition) while the
        # second starts
        await blocker.execute("LOCK TABLE readings_e_pt15m IN ACCESS SHARE MODE")
        first_pid = first.get_server_pid()
        running = asyncio.create_task(
            retention.run_retention_locked(first, NOW, RetentionPolicy(lock_timeout_ms=60_000))
        )
        for _ in range(200):
            waiting = await conn.fetchval(
                "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", first_pid
            )
            if waiting:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the first run never reached the partition drop")

        assert await retention.run_retention_locked(second, NOW) is None

        await tx.rollback()
        report = await asyncio.wait_for(running, 30)
    finally:
        await blocker.close()
        await first.close()
        await second.close()
    assert report is not None and report.completed
    assert len(report.tables["readings_e_pt15m"].partitions_dropped) == 2
    assert len(await audit_rows(conn, retention.KIND_RETENTION_RUN)) == 1


# ---------------------------------------------------------------------------------------------
# the CLI, as a subprocess


async def run_cli(database_url: str, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERPOORT_")}
    env["DATABASE_URL"] = database_url
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        *args,
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def five_years_ago() -> dt.datetime:
    now = dt.datetime.now(UTC)
    return dt.datetime(now.year - 5, now.month, 1, tzinfo=UTC)


async def test_cli_dry_run_then_run(conn: asyncpg.Connection, database_url: str) -> None:
    month = five_years_ago()
    await db.ensure_partitions(conn, month, month + dt.timedelta(days=1))
    part = f"readings_e_pt15m_y{month.year}m{month.month:02d}"
    await add_readings(conn, "readings_e_pt15m", 77, month + D, 20, Q)
    await add_readings(
        conn, "readings_e_pt15m", 77, month - dt.timedelta(days=400), 3, Q
    )  # default

    code, out, err = await run_cli(database_url, "retention", "run", "--dry-run")
    assert code == 0, err
    dry = json.loads(out)
    assert dry["ran"] is True and dry["dry_run"] is True
    assert part in dry["tables"]["readings_e_pt15m"]["partitions_dropped"]
    assert dry["tables"]["readings_e_pt15m"]["rows_deleted"] == 3
    assert await table_exists(conn, part)
    assert await count_rows(conn, "readings_e_pt15m") == 23

    code, out, err = await run_cli(database_url, "retention", "run")
    assert code == 0, err
    done = json.loads(out)
    assert done["dry_run"] is False and done["completed"] is True
    assert part in done["tables"]["readings_e_pt15m"]["partitions_dropped"]
    assert not await table_exists(conn, part)
    assert await count_rows(conn, "readings_e_pt15m", "ean = 77") == 0
    (row,) = await audit_rows(conn, retention.KIND_RETENTION_RUN)
    assert json.loads(row["detail"])["tables"]["readings_e_pt15m"]["rows_deleted"] == 3


async def test_cli_now_in_the_future_only_as_a_preview(
    conn: asyncpg.Connection, database_url: str
) -> None:
    await add_readings(conn, "readings_e_pt15m", 78, ts("2024-01-01T00:00"), 4, Q)  # default part.
    future = "2029-06-01T00:00:00Z"
    code, out, err = await run_cli(database_url, "retention", "run", "--now", future)
    assert code == 1
    assert "--now" in err and "--dry-run" in err
    assert await count_rows(conn, "readings_e_pt15m", "ean = 78") == 4

    code, out, err = await run_cli(database_url, "retention", "run", "--now", future, "--dry-run")
    assert code == 0, err
    assert json.loads(out)["tables"]["readings_e_pt15m"]["rows_deleted"] == 4
    assert await count_rows(conn, "readings_e_pt15m", "ean = 78") == 4

    # a bare date is local midnight (METERPOORT_TZ): as much in the future
    code, out, err = await run_cli(database_url, "retention", "run", "--now", "2029-06-01")
    assert code == 1 and "2029-05-31T22:00:00+00:00 is after the database clock" in err
    code, out, err = await run_cli(database_url, "retention", "run", "--now", "next week")
    assert code == 2 and "argument --now" in err and "YYYY-MM-DD" in err


# ---------------------------------------------------------------------------------------------
# the in-process job


async def test_the_hourly_job_runs_in_one_of_several_processes(
    conn: asyncpg.Connection, gateway_settings: Settings
) -> None:
    from gateway.api.app import create_app

    old = five_years_ago()
    await add_readings(conn, "readings_e_pt15m", 79, old, 6, Q)  # default partition
    await add_connection(conn, 9, start="2019-01-01")
    await add_consent(conn, 9, granted="2024-01-01", expires="2025-01-01")

    job = RetentionSettings(enabled=True, first_run_delay_s=0, run_every_s=3600)
    clients: list[TestClient[web.Request, web.Application]] = []
    try:
        for _ in range(2):  # two gateway processes on one database
            app = create_app(gateway_settings.model_copy(update={"retention": job}))
            client: TestClient[web.Request, web.Application] = TestClient(
                TestServer(app, host="127.0.0.1", port=0)
            )
            await client.start_server()
            clients.append(client)
        for _ in range(200):
            if await count_rows(conn, "audit_log", f"kind = '{retention.KIND_RETENTION_RUN}'"):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("no retention run within 10 s")
        await asyncio.sleep(0.5)  # the other process's attempt, if it was late
    finally:
        for client in clients:
            await client.close()
    assert await count_rows(conn, "readings_e_pt15m", "ean = 79") == 0
    assert await count_rows(conn, "consents", "end_reason = 'expired'") == 1
    assert len(await audit_rows(conn, retention.KIND_RETENTION_RUN)) == 1
    assert len(await audit_rows(conn, audit.KIND_CONSENT_END)) == 1


async def test_the_job_can_be_switched_off(
    conn: asyncpg.Connection, gateway_settings: Settings
) -> None:
    from gateway.api.app import create_app

    await add_readings(conn, "readings_e_pt15m", 80, five_years_ago(), 2, Q)
    off = RetentionSettings(enabled=False, first_run_delay_s=0)
    app = create_app(gateway_settings.model_copy(update={"retention": off}))
    client: TestClient[web.Request, web.Application] = TestClient(
        TestServer(app, host="127.0.0.1", port=0)
    )
    await client.start_server()
    try:
        await asyncio.sleep(0.5)
    finally:
        await client.close()
    assert await count_rows(conn, "readings_e_pt15m", "ean = 80") == 2


def test_cutoffs_move_back_calendar_years() -> None:
    cut = retention.Cutoffs.at(ts("2024-02-29T12:00"), RetentionPolicy())
    assert cut.interval == ts("2020-02-29T12:00")
    assert cut.contract_end == ts("2017-02-28T12:00")
    assert cut.consent_end == ts("2019-02-28T12:00")
    with pytest.raises(ValueError, match="timezone-aware"):
        retention.Cutoffs.at(dt.datetime(2024, 1, 1), RetentionPolicy())
