"""Retention (SPEC §2) and consent expiry (SPEC §4): what is deleted when, run hourly.

Rules per data class (defaults in ``consent.retention``; settings
``gateway.settings.RetentionSettings``, environment ``METERPOORT_RETENTION_*``):

* **Interval readings** (``readings_e_pt15m``, ``readings_g_pt1h``): 4 years from receipt. The
  receipt time is not stored; ``period_start`` stands in for it. A reading is received at or after
  its ``measured_at``, which is at or after its ``period_start``, so the rule deletes a reading at
  most one period plus its upload delay (the field device's spool horizon, days) *earlier* than 4
  years after receipt — never later: for this data class the 4 years are a maximum. A reading is
  expired when ``period_start < now - 4 years``. Monthly partitions whose upper bound is at or
  before that cutoff are detached and dropped (no row-by-row delete of national-scale months);
  rows in the DEFAULT partition and in the partition the cutoff falls into are deleted in batches.
* **Daily and monthly readings** (``*_p1d``, ``*_p1m``): 7 years after the contract ends
  (fiscal), per contract (SPEC §3a): when ``contract_end < now - 7 years`` every daily/monthly
  reading measured inside that contract's window is deleted, in batches; the tenant before or
  after on the same EAN keeps theirs. An open contract keeps everything. The tables are
  partitioned by year across all EANs, so here partitions are not dropped: one partition holds
  contracts that end at different times.
* **Consent records** (``consents`` and their ``consent_events``): as long as the data they
  justify, plus 1 year. A consent justifies interval readings measured before its end (the first
  of ``ended_at``, ``expires_at`` and the contract's end); the last of those readings is gone 4
  years after that end, so its records go when ``end < now - (4 + 1) years``. Consents with no
  end at all (no expiry, contract open) are kept.
* **Consent-change notifications** (``outbox_events`` and their ``webhook_deliveries``): 30
  days after they were recorded, once every delivery is delivered or given up; pending ones are
  left to the webhook worker. They hold EANs and consent details, and after 30 days a recipient
  that missed one re-syncs with ``GET /v1/consents?changed_since=`` anyway.
* **The audit trail**: only with ``audit_years`` set (off by default: see RetentionSettings), rows
  recorded more than that many years ago, through ``gateway.audit.prune`` (an ``audit.prune``
  row announces the removal, so ``audit verify`` still checks the rest of the chain).

Compaction (no deletion): an interval partition beyond the spool horizon can receive no more
readings; the run rebuilds its indexes once, packed (``gateway.jobs.compaction``), at most
``compactions_per_run`` partitions per run, after everything else.

Consent expiry: a consent whose ``expires_at`` has passed is already treated as ended by every
reader (the policy compares ``expires_at``); this job makes the history say so: it records an
``ended`` consent event (reason ``expired``, ``at = expires_at``), sets ``ended_at``/``end_reason``
and appends a ``consent.end`` audit row, per consent in one transaction, under the same locks as
``gateway.services.consents`` (contract row, then consent row).

Every job function takes ``now`` as a parameter (tests move the clock instead of waiting), and a
run is recorded in the audit trail (kind ``retention.run``: counts per table, partitions dropped,
cutoffs) when it changed anything. ``run_retention_locked`` runs only while holding a session
advisory lock, so of several gateway processes (``serve --workers N``, several machines, a CLI
run) at most one works at a time; the others skip that round.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Final

import asyncpg

from consent.levels import INTERVAL_GRANULARITIES, LEVEL_GRANULARITIES, Level
from consent.retention import Cutoffs, RetentionPolicy
from gateway import metrics
from gateway.errors import GatewayError
from gateway.jobs import compaction
from gateway.settings import RetentionSettings
from gateway.storage import audit, db, locks, schema, tombstones

log = logging.getLogger(__name__)

#: session advisory lock key: one retention run at a time across processes ('mtrp' + part 7)
RETENTION_LOCK_KEY: Final = locks.RETENTION
#: the audit actor of retention runs and expiries (audit_log's "system:<job>" convention)
RETENTION_ACTOR: Final = "system:retention"
#: audit kind of one retention run
KIND_RETENTION_RUN: Final = "retention.run"
#: what a run that found the lock taken reports
LOCK_HELD_MESSAGE: Final = "another process holds the retention lock"

_INTERVAL_GRANULARITIES: Final = tuple(sorted(INTERVAL_GRANULARITIES))
_LONG_GRANULARITIES: Final = tuple(sorted(LEVEL_GRANULARITIES[Level.DAILY]))
# the partition bound text as pg_get_expr prints it; timestamps are re-read by the same session,
# so its DateStyle/TimeZone settings do not matter
_BOUND_RE: Final = re.compile(r"FOR VALUES FROM \('([^']*)'\) TO \('([^']*)'\)")


@dataclass(slots=True)
class TableReport:
    """What a run did (or, dry, would do) to one reading table."""

    rows_deleted: int = 0
    delete_statements: int = 0
    partitions_dropped: list[str] = field(default_factory=list)
    #: partitions due to be dropped whose table lock did not come free in time (next run)
    partitions_skipped: list[str] = field(default_factory=list)
    #: closed partitions whose indexes were rebuilt (gateway.jobs.compaction)
    partitions_compacted: list[str] = field(default_factory=list)
    #: closed partitions whose rebuild failed or timed out (a later run retries)
    partitions_not_compacted: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """JSON form (audit detail, CLI output)."""
        return {
            "rows_deleted": self.rows_deleted,
            "delete_statements": self.delete_statements,
            "partitions_dropped": list(self.partitions_dropped),
            "partitions_skipped": list(self.partitions_skipped),
            "partitions_compacted": list(self.partitions_compacted),
            "partitions_not_compacted": list(self.partitions_not_compacted),
        }


@dataclass(slots=True)
class RetentionReport:
    """The outcome of one run. With ``dry_run`` the counts are what a real run would delete."""

    now: dt.datetime
    dry_run: bool
    cutoffs: Cutoffs
    tables: dict[str, TableReport] = field(default_factory=dict)
    #: connections (contract ended > 7 years ago) whose daily/monthly readings were deleted
    connections_purged: int = 0
    consents_expired: int = 0
    consents_deleted: int = 0
    consent_events_deleted: int = 0
    #: finished notifications deleted: outbox events and their webhook delivery rows
    outbox_events_deleted: int = 0
    webhook_deliveries_deleted: int = 0
    #: audit rows removed (``audit_years``), announced by an audit.prune row
    audit_rows_pruned: int = 0
    #: False when the run stopped on an error (the audit row then records the work done so far)
    completed: bool = False

    def table(self, name: str) -> TableReport:
        """The report of table ``name`` (created on first use)."""
        return self.tables.setdefault(name, TableReport())

    def changed(self) -> bool:
        """Whether the run changed (or, dry, would change) anything."""
        return bool(
            self.connections_purged
            or self.consents_expired
            or self.consents_deleted
            or self.consent_events_deleted
            or self.outbox_events_deleted
            or self.audit_rows_pruned
            or any(t.rows_deleted or t.partitions_dropped for t in self.tables.values())
        )

    def as_json(self) -> dict[str, Any]:
        """JSON form (the audit row's detail and the CLI's output)."""
        return {
            "now": audit.format_timestamp(self.now),
            "dry_run": self.dry_run,
            "completed": self.completed,
            "cutoffs": {
                "interval_period_start": audit.format_timestamp(self.cutoffs.interval),
                "daily_contract_end": audit.format_timestamp(self.cutoffs.contract_end),
                "consent_end": audit.format_timestamp(self.cutoffs.consent_end),
                "outbox_created": audit.format_timestamp(self.cutoffs.outbox),
                "closed_period_end": (
                    None
                    if self.cutoffs.closed is None
                    else audit.format_timestamp(self.cutoffs.closed)
                ),
            },
            "tables": {name: t.as_json() for name, t in sorted(self.tables.items())},
            "connections_purged": self.connections_purged,
            "consents_expired": self.consents_expired,
            "consents_deleted": self.consents_deleted,
            "consent_events_deleted": self.consent_events_deleted,
            "outbox_events_deleted": self.outbox_events_deleted,
            "webhook_deliveries_deleted": self.webhook_deliveries_deleted,
            "audit_rows_pruned": self.audit_rows_pruned,
        }


def _count(status: str) -> int:
    """The row count of a command status such as ``DELETE 42``."""
    return int(status.rsplit(" ", 1)[-1])


# ---------------------------------------------------------------------------------------------
# consent expiry (SPEC §4)


async def expire_consents(
    conn: asyncpg.Connection, now: dt.datetime, *, dry_run: bool = False, batch: int = 1000
) -> int:
    """Record the end of every consent whose ``expires_at`` is at or before ``now`` and that has
    no end yet; returns how many (with ``dry_run``: how many would be). Idempotent."""
    if dry_run:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM consents WHERE ended_at IS NULL AND expires_at <= $1", now
        )
        return count
    expired = 0
    while True:
        due = await conn.fetch(
            "SELECT ean, consent_id FROM consents WHERE ended_at IS NULL AND expires_at <= $1"
            " ORDER BY expires_at, consent_id LIMIT $2",
            now,
            batch,
        )
        for row in due:
            if await _expire_one(conn, row["ean"], row["consent_id"], now):
                expired += 1
        if len(due) < batch:
            return expired


async def _expire_one(
    conn: asyncpg.Connection, ean: str, consent_id: uuid.UUID, now: dt.datetime
) -> bool:
    async with conn.transaction():
        # lock order as in gateway.services.consents: the contract row, then the consent row
        await conn.execute(
            "SELECT 1 FROM contracts k WHERE k.ean = $1 AND k.contract_id ="
            " (SELECT c.contract_id FROM consents c WHERE c.ean = $1 AND c.consent_id = $2)"
            " FOR UPDATE",
            ean,
            consent_id,
        )
        row = await conn.fetchrow(
            "SELECT customer_id, expires_at, ended_at FROM consents"
            " WHERE ean = $1 AND consent_id = $2 FOR UPDATE",
            ean,
            consent_id,
        )
        if row is None or row["ended_at"] is not None or row["expires_at"] > now:
            return False  # ended (or removed) by someone else since the scan
        expires_at: dt.datetime = row["expires_at"]
        await conn.execute(
            "UPDATE consents SET ended_at = expires_at, end_reason = 'expired'"
            " WHERE ean = $1 AND consent_id = $2",
            ean,
            consent_id,
        )
        has_end_event = await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM consent_events"
            " WHERE ean = $1 AND consent_id = $2 AND kind = 'ended')",
            ean,
            consent_id,
        )
        if not has_end_event:
            await conn.execute(
                "INSERT INTO consent_events (ean, consent_id, kind, at, detail)"
                " VALUES ($1, $2, 'ended', $3, $4::text::jsonb)",
                ean,
                consent_id,
                expires_at,
                json.dumps({"reason": "expired"}),
            )
            metrics.CONSENT_EVENTS.labels("ended").inc()
        await audit.append(
            conn,
            kind=audit.KIND_CONSENT_END,
            actor=RETENTION_ACTOR,
            subject=row["customer_id"],
            ean=ean,
            detail={"consent_id": consent_id, "reason": "expired", "at": expires_at},
        )
    return True


# ---------------------------------------------------------------------------------------------
# readings


@dataclass(frozen=True, slots=True)
class _Partition:
    name: str  # regclass text: quoted as needed, usable in SQL as is
    lower: dt.datetime | None  # None: DEFAULT or MINVALUE
    upper: dt.datetime | None  # None: DEFAULT or MAXVALUE


async def _tables(conn: asyncpg.Connection, granularities: tuple[str, ...]) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT table_name, to_regclass(table_name)::text AS rel, commodity FROM reading_tables"
        " WHERE granularity = ANY($1::text[]) ORDER BY table_name",
        list(granularities),
    )
    return rows


async def _partitions(conn: asyncpg.Connection, table: str) -> list[_Partition]:
    """The leaf partitions of ``table`` with their range bounds."""
    rows = await conn.fetch(
        "SELECT c.oid::regclass::text AS name, pg_get_expr(c.relpartbound, c.oid) AS bound"
        " FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = $1::regclass AND c.relkind = 'r' ORDER BY 1",
        table,
    )
    found: list[_Partition] = []
    for row in rows:
        match = _BOUND_RE.fullmatch(row["bound"])
        lower = upper = None
        if match is not None:
            # the session prints and re-reads the bounds with the same settings
            bounds = await conn.fetchrow(
                "SELECT $1::text::timestamptz AS lower, $2::text::timestamptz AS upper",
                match.group(1),
                match.group(2),
            )
            assert bounds is not None
            lower, upper = bounds["lower"], bounds["upper"]
        found.append(_Partition(row["name"], lower, upper))
    return found


async def _drop_partition(
    conn: asyncpg.Connection, parent: str, part: _Partition, policy: RetentionPolicy
) -> bool:
    """DETACH + DROP one partition; False when its lock did not come free in time."""
    try:
        async with conn.transaction():
            # DETACH takes an ACCESS EXCLUSIVE lock on the parent: waiting for it queues every
            # ingest insert behind us, so wait a bounded time and retry next run instead
            await conn.execute(f"SET LOCAL lock_timeout = {int(policy.lock_timeout_ms)}")
            await conn.execute(f"ALTER TABLE {parent} DETACH PARTITION {part.name}")
            await conn.execute(f"DROP TABLE {part.name}")
            await compaction.forget(conn, part.name)
    except asyncpg.LockNotAvailableError:
        log.warning("retention: partition %s is busy; it will be dropped on a later run", part.name)
        return False
    return True


async def _delete_batched(
    conn: asyncpg.Connection,
    report: TableReport,
    *,
    delete_sql: str,
    count_sql: str,
    args: tuple[Any, ...],
    policy: RetentionPolicy,
    dry_run: bool,
) -> None:
    """Run ``delete_sql`` (taking ``$n`` = batch size last) until it deletes less than a batch;
    each statement commits on its own, so locks stay short and progress survives a crash.

    Retention is deletion by a published rule: the sync feed records no tombstones for it
    (labelled; a DELETE on a leaf partition fires no tombstone trigger anyway)."""
    if dry_run:
        would: int = await conn.fetchval(count_sql, *args)
        report.rows_deleted += would
        # the real loop ends with the first statement deleting less than a batch
        report.delete_statements += would // policy.batch_rows + 1
        return
    while True:
        async with conn.transaction():
            await tombstones.label(conn, tombstones.RETENTION)
            deleted = _count(await conn.execute(delete_sql, *args, policy.batch_rows))
        report.delete_statements += 1
        report.rows_deleted += deleted
        if deleted < policy.batch_rows:
            return


async def purge_interval_readings(
    conn: asyncpg.Connection,
    cutoff: dt.datetime,
    report: RetentionReport,
    policy: RetentionPolicy,
    *,
    dry_run: bool = False,
) -> None:
    """Delete interval readings with ``period_start < cutoff``: drop whole partitions, delete
    the rest (DEFAULT partition, the partition the cutoff falls in) in batches."""
    for table in await _tables(conn, _INTERVAL_GRANULARITIES):
        rel: str = table["rel"]
        table_report = report.table(table["table_name"])
        for part in await _partitions(conn, rel):
            if part.upper is not None and part.upper <= cutoff:
                if dry_run or await _drop_partition(conn, rel, part, policy):
                    table_report.partitions_dropped.append(part.name)
                else:
                    table_report.partitions_skipped.append(part.name)
            elif part.lower is None or part.lower < cutoff:
                # a leaf table, so ctid identifies a row; the tid scan finds the batch again
                await _delete_batched(
                    conn,
                    table_report,
                    delete_sql=(
                        f"DELETE FROM {part.name} WHERE period_start < $1 AND ctid = ANY(ARRAY("
                        f"SELECT ctid FROM {part.name} WHERE period_start < $1 LIMIT $2))"
                    ),
                    count_sql=f"SELECT count(*) FROM {part.name} WHERE period_start < $1",
                    args=(cutoff,),
                    policy=policy,
                    dry_run=dry_run,
                )


async def purge_ended_contracts(
    conn: asyncpg.Connection,
    cutoff: dt.datetime,
    report: RetentionReport,
    policy: RetentionPolicy,
    *,
    dry_run: bool = False,
) -> None:
    """Delete the daily and monthly readings of every contract that ended before ``cutoff``
    (those measured inside its window; SPEC §3a: the hold counts per contract, the next tenant's
    readings on the same EAN keep theirs), contract by contract in batches. Open contracts keep
    everything."""
    tables = await _tables(conn, _LONG_GRANULARITIES)
    window = "ean = $1 AND measured_at >= $2 AND measured_at < $3"
    for commodity in ("electricity", "gas"):
        rels = [t for t in tables if t["commodity"] == commodity]
        if not rels:
            continue
        has_rows = " OR ".join(
            f"EXISTS (SELECT 1 FROM {t['rel']} WHERE ean = k.ean_num"
            f" AND {schema.in_contract('measured_at')})"
            for t in rels
        )
        # only contracts that still have rows: the ended ones stay in the registry for good
        contracts = await conn.fetch(
            "SELECT k.ean_num, k.contract_start, k.contract_end FROM contracts k"
            " JOIN connections n ON n.ean = k.ean WHERE n.commodity = $1"
            f" AND k.contract_end < $2 AND ({has_rows}) ORDER BY k.ean_num, k.contract_start",
            commodity,
            cutoff,
        )
        for row in contracts:
            for table in rels:
                rel = table["rel"]
                await _delete_batched(
                    conn,
                    report.table(table["table_name"]),
                    delete_sql=(
                        f"DELETE FROM {rel} WHERE ean = $1 AND period_start = ANY(ARRAY("
                        f"SELECT period_start FROM {rel} WHERE {window} LIMIT $4))"
                    ),
                    count_sql=f"SELECT count(*) FROM {rel} WHERE {window}",
                    args=(row["ean_num"], row["contract_start"], row["contract_end"]),
                    policy=policy,
                    dry_run=dry_run,
                )
            report.connections_purged += 1


# ---------------------------------------------------------------------------------------------
# consent records

_CONSENT_END = (
    "coalesce(least(o.ended_at, o.expires_at,"
    " (SELECT k.contract_end FROM contracts k WHERE k.ean = o.ean"
    " AND k.contract_id = o.contract_id)), 'infinity')"
)


async def purge_consent_records(
    conn: asyncpg.Connection,
    cutoff: dt.datetime,
    report: RetentionReport,
    policy: RetentionPolicy,
    *,
    now: dt.datetime,
    dry_run: bool = False,
) -> None:
    """Delete consents (and their events) that ended before ``cutoff``, in batches."""
    if dry_run:
        # a consent the (dry) expiry step would end gets its `ended` event first
        row = await conn.fetchrow(
            "SELECT count(*) AS consents, coalesce(sum((SELECT count(*) FROM consent_events e"
            "  WHERE e.ean = o.ean AND e.consent_id = o.consent_id)"
            "  + (o.ended_at IS NULL AND o.expires_at <= $2 AND NOT EXISTS ("
            "     SELECT 1 FROM consent_events e WHERE e.ean = o.ean"
            "     AND e.consent_id = o.consent_id AND e.kind = 'ended'))::int), 0)::bigint"
            " AS events"
            f" FROM consents o WHERE {_CONSENT_END} < $1",
            cutoff,
            now,
        )
        assert row is not None
        report.consents_deleted += row["consents"]
        report.consent_events_deleted += row["events"]
        return
    parents, children = await _delete_with_children(
        conn,
        "DELETE FROM consents WHERE (ean, consent_id) IN ("
        f" SELECT o.ean, o.consent_id FROM consents o WHERE {_CONSENT_END} < $1"
        " LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING ean, consent_id",
        "consent_events",
        "consent_id",
        cutoff,
        policy.batch_rows,
    )
    report.consents_deleted += parents
    report.consent_events_deleted += children


async def _delete_with_children(
    conn: asyncpg.Connection,
    parent_sql: str,
    child_table: str,
    key: str,
    cutoff: dt.datetime,
    batch_rows: int,
) -> tuple[int, int]:
    """Run ``parent_sql`` (a DELETE of at most ``$2`` rows due before ``$1``, RETURNING ean and
    ``key``) batch after batch, each in its own transaction with the ``child_table`` rows of the
    same (ean, key); returns how many parent and child rows went."""
    parents = children = 0
    while True:
        async with conn.transaction():
            gone = await conn.fetch(parent_sql, cutoff, batch_rows)
            if gone:
                status = await conn.execute(
                    f"DELETE FROM {child_table} WHERE (ean, {key}) IN ("
                    " SELECT * FROM unnest($1::text[], $2::uuid[]))",
                    [r["ean"] for r in gone],
                    [r[key] for r in gone],
                )
                children += _count(status)
        parents += len(gone)
        if len(gone) < batch_rows:
            return parents, children


# finished: no delivery of the event is still pending (an event nobody was subscribed to has none)
_OUTBOX_DONE: Final = (
    "o.created_at < $1 AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d"
    " WHERE d.ean = o.ean AND d.event_id = o.event_id AND d.state = 'pending')"
)


async def purge_outbox(
    conn: asyncpg.Connection,
    cutoff: dt.datetime,
    report: RetentionReport,
    policy: RetentionPolicy,
    *,
    dry_run: bool = False,
) -> None:
    """Delete notifications recorded before ``cutoff`` whose deliveries have all ended
    (delivered or given up), with their delivery rows, in batches. Pending ones stay, however
    old: the webhook worker still owns them."""
    if dry_run:
        row = await conn.fetchrow(
            "SELECT count(*) AS events, coalesce(sum((SELECT count(*) FROM webhook_deliveries d"
            "  WHERE d.ean = o.ean AND d.event_id = o.event_id)), 0)::bigint AS deliveries"
            f" FROM outbox_events o WHERE {_OUTBOX_DONE}",
            cutoff,
        )
        assert row is not None
        report.outbox_events_deleted += row["events"]
        report.webhook_deliveries_deleted += row["deliveries"]
        return
    parents, children = await _delete_with_children(
        conn,
        "DELETE FROM outbox_events WHERE (ean, event_id) IN ("
        f" SELECT o.ean, o.event_id FROM outbox_events o WHERE {_OUTBOX_DONE}"
        " ORDER BY o.created_at LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING ean, event_id",
        "webhook_deliveries",
        "event_id",
        cutoff,
        policy.batch_rows,
    )
    report.outbox_events_deleted += parents
    report.webhook_deliveries_deleted += children


# ---------------------------------------------------------------------------------------------
# a run


async def run_retention(
    conn: asyncpg.Connection,
    now: dt.datetime,
    policy: RetentionPolicy | None = None,
    *,
    dry_run: bool = False,
) -> RetentionReport:
    """One retention run at ``now`` on ``conn`` (outside a transaction): expire consents, delete
    expired readings and consent records, and audit what was deleted. Callers normally use
    ``run_retention_locked``; this one does not coordinate with other processes."""
    pol = RetentionPolicy() if policy is None else policy
    cutoffs = Cutoffs.at(now, pol)
    report = RetentionReport(now=now, dry_run=dry_run, cutoffs=cutoffs)
    if conn.is_in_transaction():
        raise RuntimeError("run_retention commits batch by batch: call it outside a transaction")
    try:
        report.consents_expired = await expire_consents(conn, now, dry_run=dry_run)
        await purge_interval_readings(conn, cutoffs.interval, report, pol, dry_run=dry_run)
        await purge_ended_contracts(conn, cutoffs.contract_end, report, pol, dry_run=dry_run)
        await purge_consent_records(
            conn, cutoffs.consent_end, report, pol, now=now, dry_run=dry_run
        )
        await purge_outbox(conn, cutoffs.outbox, report, pol, dry_run=dry_run)
        if cutoffs.audit is not None:
            pruned = await audit.prune(
                conn,
                cutoffs.audit,
                actor=RETENTION_ACTOR,
                batch_rows=pol.batch_rows,
                dry_run=dry_run,
            )
            report.audit_rows_pruned = pruned.rows
        # last: a rebuild can take long, and the deletions above should not wait for it
        if cutoffs.closed is not None:
            for done in await compaction.compact_closed_partitions(
                conn, cutoffs.closed, cutoffs.interval, pol.compactions_per_run, dry_run=dry_run
            ):
                table = report.table(done.table_name)
                if done.failed is None:
                    table.partitions_compacted.append(done.partition)
                else:
                    table.partitions_not_compacted.append(done.partition)
        report.completed = True
    finally:
        # also after an error: what was deleted before it must be on record
        if not dry_run and report.changed():
            await audit.append(
                conn,
                kind=KIND_RETENTION_RUN,
                actor=RETENTION_ACTOR,
                subject=None,
                ean=None,
                detail=report.as_json(),
            )
    return report


async def run_retention_locked(
    conn: asyncpg.Connection,
    now: dt.datetime,
    policy: RetentionPolicy | None = None,
    *,
    dry_run: bool = False,
) -> RetentionReport | None:
    """``run_retention`` while holding the retention lock; None (and nothing done) when another
    process holds it. The lock is a session lock on ``conn``, released at the end (or when the
    session dies)."""
    got: bool = await conn.fetchval("SELECT pg_try_advisory_lock($1)", RETENTION_LOCK_KEY)
    if not got:
        log.info("retention: %s; skipping this run", LOCK_HELD_MESSAGE)
        return None
    try:
        return await run_retention(conn, now, policy, dry_run=dry_run)
    finally:
        if not conn.is_closed():
            await conn.execute("SELECT pg_advisory_unlock($1)", RETENTION_LOCK_KEY)


# ---------------------------------------------------------------------------------------------
# the in-process hourly job

#: failures the hourly job logs and retries next round instead of ending the process
_JOB_ERRORS: tuple[type[BaseException], ...] = (*db.RETRYABLE_ERRORS, GatewayError)


async def retention_loop(
    pool: asyncpg.Pool, settings: RetentionSettings, wait_s: float, spool_horizon_days: int
) -> None:
    """Run retention and consent expiry every ``run_every_s`` until cancelled (every process
    tries; the advisory lock lets one work). ``wait_s``: how long to wait for a connection;
    ``spool_horizon_days``: ``Settings.spool_horizon_days`` (when a partition is closed)."""
    policy = settings.policy(spool_horizon_days=spool_horizon_days)
    await asyncio.sleep(settings.first_run_delay_s)
    while True:
        try:
            async with db.acquire(pool, wait_s) as conn:
                report = await run_retention_locked(conn, dt.datetime.now(dt.UTC), policy)
            if report is None:
                metrics.RETENTION_RUNS.labels("skipped").inc()
            else:
                metrics.RETENTION_RUNS.labels("ok").inc()
                metrics.RETENTION_LAST_SUCCESS.set_to_current_time()
                if report.changed():
                    log.info("retention run", extra={"retention": report.as_json()})
        except _JOB_ERRORS:
            # the next round retries; the audit row records any partial run
            metrics.RETENTION_RUNS.labels("failed").inc()
            log.exception("retention run failed; retrying in %s s", settings.run_every_s)
        await asyncio.sleep(settings.run_every_s)
