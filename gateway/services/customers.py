"""What the customer API reads in PostgreSQL, and its smaller operations: connections,
consents, the permission and access logs, the export's reading cursors, revocation (SPEC §4, §5
``/v1/me/...``). Level changes are in ``gateway.services.levels``, erasure in
``gateway.services.erasure``.

Everything here is scoped to ONE customer: every query filters on the customer id, so a
handler cannot forget the check. What the customer sees of a connection is a **contract** (SPEC
§3a): a connection's readings are only the customer's inside their contract window
``[contract_start, contract_end)`` (measured time): an EAN outlives its customers, and readings of
a previous or later occupant are not this customer's data. A customer who moved out and back in
has two contracts on one EAN, each its own entry.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import asyncpg

from consent.model import DEFAULT_PURPOSES, EndReason, Purpose
from gateway.errors import NotFoundError
from gateway.services.consents import consent_json, end_consent
from gateway.storage import audit
from gateway.storage.schema import ReadingTable

#: the contract window condition on a reading row ``r`` ($2 contract_start, $3 contract_end)
CONTRACT_WINDOW = "r.measured_at >= $2 AND ($3::timestamptz IS NULL OR r.measured_at < $3)"


def ean_text(ean_num: int) -> str:
    """A reading table's bigint EAN as the 18-digit text the API uses."""
    return f"{ean_num:018d}"


def reading_json(
    table: ReadingTable, row: Mapping[str, Any], contract: Mapping[str, Any]
) -> dict[str, Any]:
    """A reading row of ``contract``'s window in the API shape (SPEC §5); datetimes are
    serialised by the caller."""
    return {
        "ean": ean_text(row["ean"]),
        "contract_id": contract["contract_id"],
        "customer_id": contract["customer_id"],
        "commodity": table.commodity,
        "granularity": table.granularity,
        "period_start": row["period_start"],
        "measured_at": row["measured_at"],
        "registers": {name: row[name] for name in table.registers},
    }


# ---------------------------------------------------------------------------------------------
# connections and consents

#: a contract as the customer API reads it (``k`` contracts, ``n`` connections), with the meter
#: installed last within the contract window
CONNECTION_COLUMNS = (
    "k.contract_id, k.ean, k.ean_num, n.commodity, k.customer_id, k.contract_start,"
    " k.contract_end, k.end_reason, k.level, k.created_at, k.updated_at,"
    " (SELECT m.meter_id FROM meter_installations m WHERE m.ean = k.ean"
    "  AND (k.contract_end IS NULL OR m.installed_from < k.contract_end)"
    "  ORDER BY m.installed_from DESC LIMIT 1) AS meter_id"
)
CONTRACTS_FROM = "contracts k JOIN connections n ON n.ean = k.ean"
_CONSENT_COLUMNS = (
    "c.ean, c.consent_id, c.customer_id, c.purpose, c.data_class, c.notice_version, c.channel,"
    " c.granted_at, c.expires_at, c.ended_at, c.end_reason, c.contract_id"
)


async def connections_of(conn: asyncpg.Connection, customer_id: str) -> list[asyncpg.Record]:
    """The customer's contracts, current and ended, by EAN and start."""
    rows: list[asyncpg.Record] = await conn.fetch(
        f"SELECT {CONNECTION_COLUMNS} FROM {CONTRACTS_FROM} WHERE k.customer_id = $1"
        " ORDER BY k.ean, k.contract_start",
        customer_id,
    )
    return rows


async def connection_of(
    conn: asyncpg.Connection, customer_id: str, ean: str, *, lock: bool = False
) -> asyncpg.Record | None:
    """The customer's latest contract on ``ean`` (row-locked with ``lock``), or None when they
    have none there — someone else's contract and no contract are not told apart (no EAN
    probing)."""
    row: asyncpg.Record | None = await conn.fetchrow(
        f"SELECT {CONNECTION_COLUMNS} FROM {CONTRACTS_FROM} WHERE k.ean = $1"
        " AND k.customer_id = $2 ORDER BY k.contract_start DESC LIMIT 1"
        + (" FOR UPDATE OF k" if lock else ""),
        ean,
        customer_id,
    )
    return row


def connection_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """A contract on a connection as the customer sees it."""
    return {
        "ean": row["ean"],
        "contract_id": row["contract_id"],
        "commodity": row["commodity"],
        "meter_id": row["meter_id"],
        "level": row["level"],
        "contract_start": row["contract_start"],
        "contract_end": row["contract_end"],
        "end_reason": row["end_reason"],
    }


async def consents_of(conn: asyncpg.Connection, customer_id: str) -> list[asyncpg.Record]:
    """Every consent the customer granted (active and ended), with the connection's commodity
    and contract end, newest grant first."""
    rows: list[asyncpg.Record] = await conn.fetch(
        f"SELECT {_CONSENT_COLUMNS}, n.commodity, k.contract_end FROM consents c"
        " JOIN contracts k ON k.ean = c.ean AND k.contract_id = c.contract_id"
        " JOIN connections n ON n.ean = c.ean"
        " WHERE c.customer_id = $1 ORDER BY c.granted_at DESC, c.consent_id",
        customer_id,
    )
    return rows


async def consent_of(
    conn: asyncpg.Connection, customer_id: str, consent_id: uuid.UUID
) -> asyncpg.Record | None:
    """The customer's consent ``consent_id`` with its connection's commodity, or None (also when
    it is someone else's)."""
    row: asyncpg.Record | None = await conn.fetchrow(
        f"SELECT {_CONSENT_COLUMNS}, n.commodity, k.contract_end FROM consents c"
        " JOIN contracts k ON k.ean = c.ean AND k.contract_id = c.contract_id"
        " JOIN connections n ON n.ean = c.ean"
        " WHERE c.consent_id = $1 AND c.customer_id = $2",
        consent_id,
        customer_id,
    )
    return row


def consent_status(row: Mapping[str, Any], now: dt.datetime) -> str:
    """``active`` while in force, else ``expired``, ``contract-ended`` or its end reason."""
    if row["end_reason"] is not None:
        return str(row["end_reason"])
    if row["expires_at"] is not None and row["expires_at"] <= now:
        return "expired"
    if row["contract_end"] is not None and row["contract_end"] <= now:
        return "contract-ended"
    return "active"


def customer_consent_json(
    row: Mapping[str, Any], now: dt.datetime, purposes: Mapping[str, Purpose] | None = None
) -> dict[str, Any]:
    """A consent as the customer sees it: the stored fields plus its status and what happens
    to its data when it ends."""
    table = DEFAULT_PURPOSES if purposes is None else purposes
    described = table.get(row["purpose"])
    out = consent_json(row)
    out["status"] = consent_status(row, now)
    out["on_revoke"] = None if described is None else described.on_revoke.value
    return out


# ---------------------------------------------------------------------------------------------
# the permission log (SPEC §4: grant, revoke, expire, end)


async def permission_log(
    conn: asyncpg.Connection, customer_id: str, limit: int
) -> list[dict[str, Any]]:
    """The customer's permission log, newest first: consent grants and ends (from
    ``consent_events``), expiries (a consent that ran out has no event; its ``expires_at`` is
    the event) and level changes of the customer's connections during their contract."""
    rows = await conn.fetch(
        "SELECT * FROM ("
        "  SELECT e.at, e.kind AS event, e.ean, e.consent_id, c.purpose, c.notice_version,"
        "         c.channel, e.detail->>'reason' AS reason, NULL::text AS level"
        "  FROM consent_events e JOIN consents c ON c.ean = e.ean AND c.consent_id = e.consent_id"
        "  WHERE c.customer_id = $1"
        "  UNION ALL"
        "  SELECT c.expires_at, 'expired', c.ean, c.consent_id, c.purpose, c.notice_version,"
        "         c.channel, 'expired', NULL"
        "  FROM consents c WHERE c.customer_id = $1 AND c.expires_at <= now()"
        "    AND (c.ended_at IS NULL OR c.ended_at > c.expires_at)"
        "  UNION ALL"
        "  SELECT l.at, 'level-changed', l.ean, NULL, NULL, NULL, l.channel, NULL, l.level"
        "  FROM level_events l"
        "  JOIN contracts k ON k.ean = l.ean AND k.contract_id = l.contract_id"
        "  WHERE k.customer_id = $1"
        ") AS log ORDER BY at DESC, event LIMIT $2",
        customer_id,
        limit,
    )
    entries: list[dict[str, Any]] = []
    for row in rows:
        event = row["event"]
        # an end is shown by its kind: revoked and expired are events of their own (SPEC §4
        # "grant, revoke, expire, end"); the expiry job records expiries as ends
        if event == "ended" and row["reason"] in (EndReason.REVOKED.value, "expired"):
            event = str(row["reason"])
        entry: dict[str, Any] = {"at": row["at"], "event": event, "ean": row["ean"]}
        if row["consent_id"] is not None:
            entry.update(
                consent_id=row["consent_id"],
                purpose=row["purpose"],
                notice_version=row["notice_version"],
                channel=row["channel"],
            )
            if event not in ("granted", "revoked", "expired"):
                entry["reason"] = row["reason"]
        else:
            entry.update(level=row["level"], channel=row["channel"])
        entries.append(entry)
    return entries


# ---------------------------------------------------------------------------------------------
# the data access log (SPEC §4: which client read which of their readings, when, granularity
# and period)


async def access_log(
    conn: asyncpg.Connection,
    customer_id: str,
    contracts: Sequence[Mapping[str, Any]],
    *,
    limit: int | None = None,
    before_seq: int | None = None,
) -> list[dict[str, Any]]:
    """Audit rows of reads of the customer's readings and of their own exports, newest first.

    A client read is ONE audit row per request (``data.read``, ``detail.eans`` = every EAN it
    returned, for many customers at once, ``detail.from``/``to`` its period range), so each entry
    shows only THIS customer's EANs of it, and only a read whose range meets one of the
    customer's contract windows on that EAN: the tenant before or after on the same EAN does not
    see reads of the other's time (SPEC §3a). A customer's own read (``detail.reader`` =
    ``customer``, the portal's charts) is only in that customer's log: it returned nothing of
    anyone else's window, whatever range it named. ``contracts``: rows with ``ean``,
    ``contract_start``, ``contract_end``. ``before_seq`` pages backwards (the ``seq`` of the last
    entry of the previous page).
    """
    eans = sorted({k["ean"] for k in contracts})
    # `shown`: the row's EANs that are the customer's, in a window the read's range meets — the
    # one statement of the rule; a read is listed when it shows any (or names the customer)
    rows = await conn.fetch(
        "SELECT a.seq, a.at, a.kind, a.actor, a.detail, s.shown FROM audit_log a"
        " CROSS JOIN LATERAL (SELECT ARRAY("
        "   SELECT DISTINCT w.ean"
        "   FROM unnest($7::text[], $8::timestamptz[], $9::timestamptz[]) AS w(ean, lo, hi)"
        "   WHERE a.detail->'eans' ? w.ean"
        "     AND (a.detail->>'to' IS NULL OR (a.detail->>'to')::timestamptz > w.lo)"
        "     AND (w.hi IS NULL OR a.detail->>'from' IS NULL"
        "          OR (a.detail->>'from')::timestamptz < w.hi)"
        "   ORDER BY w.ean) AS shown) s"
        " WHERE ((a.kind = $1 AND (a.subject = $3"
        "         OR (a.detail->'eans' ?| $4::text[] AND cardinality(s.shown) > 0"
        "             AND a.detail->>'reader' IS DISTINCT FROM 'customer')))"
        "        OR (a.kind = $2 AND a.subject = $3))"
        "   AND ($5::bigint IS NULL OR a.seq < $5)"
        " ORDER BY a.seq DESC LIMIT $6",
        audit.KIND_READ,
        audit.KIND_EXPORT,
        customer_id,
        eans,
        before_seq,
        limit,
        [k["ean"] for k in contracts],
        [k["contract_start"] for k in contracts],
        [k["contract_end"] for k in contracts],
    )
    entries: list[dict[str, Any]] = []
    for row in rows:
        detail: Mapping[str, Any] = row["detail"] if isinstance(row["detail"], Mapping) else {}
        shown = list(row["shown"])
        if row["kind"] == audit.KIND_READ:
            entries.append(
                {
                    "seq": row["seq"],
                    "at": row["at"],
                    "kind": "read",
                    # what was read: "readings" (GET /v1/readings) or "consents"
                    "data": detail.get("data", "readings"),
                    "actor": row["actor"],
                    "client_id": detail.get("client_id"),
                    "client_name": detail.get("client_name"),
                    "granularity": detail.get("granularity"),
                    "from": detail.get("from"),
                    "to": detail.get("to"),
                    "eans": shown,
                }
            )
        else:
            entries.append(
                {
                    "seq": row["seq"],
                    "at": row["at"],
                    "kind": "export",
                    "actor": row["actor"],
                    "format": detail.get("format"),
                    "tables": detail.get("tables"),
                    "eans": shown,
                }
            )
    return entries


# ---------------------------------------------------------------------------------------------
# readings for the export


async def iter_readings(
    conn: asyncpg.Connection,
    table: ReadingTable,
    connection: Mapping[str, Any],
    prefetch: int = 1000,
    periods: tuple[dt.datetime, dt.datetime] | None = None,
) -> AsyncIterator[asyncpg.Record]:
    """The connection's readings in ``table`` within its contract window, by period, through a
    server-side cursor (constant memory). ``conn`` must be inside a transaction.

    ``periods`` ``(first, last)``, both inclusive, narrows the result to those period starts
    (the consumption chart); the export reads the whole window. The narrowed query is a
    statement of its own, so the planner bounds the index scan on ``period_start`` with it
    instead of filtering the connection's whole history."""
    columns = ", ".join(("ean", "period_start", "measured_at", *table.registers))
    args: list[Any] = [
        connection["ean_num"],
        connection["contract_start"],
        connection["contract_end"],
    ]
    bounds = ""
    if periods is not None:
        bounds = " AND r.period_start >= $4 AND r.period_start <= $5"
        args.extend(periods)
    query = (
        f"SELECT {columns} FROM {table.name} r WHERE r.ean = $1 AND {CONTRACT_WINDOW}{bounds}"
        " ORDER BY r.period_start"
    )
    async for row in conn.cursor(query, *args, prefetch=prefetch):
        yield row


# ---------------------------------------------------------------------------------------------
# operations of the customer API, each one transaction


async def overview(
    conn: asyncpg.Connection, customer_id: str
) -> tuple[dt.datetime, list[asyncpg.Record], list[asyncpg.Record]]:
    """``(now, connections, consents)`` of the customer, from one consistent snapshot."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        now: dt.datetime = await conn.fetchval("SELECT now()")
        connections = await connections_of(conn, customer_id)
        consents = await consents_of(conn, customer_id)
    return now, connections, consents


async def revoke(
    conn: asyncpg.Connection, customer_id: str, consent_id: uuid.UUID
) -> tuple[dt.datetime, asyncpg.Record, dict[str, Any]]:
    """The customer revokes one of their consents now: ``(now, the consent as found, the
    ended consent with deleted_readings)``. NotFoundError for a consent that is not theirs.

    ``end_consent`` commits the end, the deletion of interval readings the consent no longer
    covers, the event, the audit row and a NOTIFY in ONE transaction. Every process's ingest is
    bound by it at once whatever its cache says: the database insert rule re-checks the consent
    row under a share lock that this end's row lock conflicts with."""
    found = await consent_of(conn, customer_id, consent_id)
    if found is None:
        raise NotFoundError(f"you have no consent {consent_id}")
    ended = await end_consent(
        conn, consent_id, EndReason.REVOKED, actor=customer_actor(customer_id)
    )
    now: dt.datetime = await conn.fetchval("SELECT now()")
    return now, found, ended


async def record_export(
    conn: asyncpg.Connection, customer_id: str, fmt: str, tables: Sequence[ReadingTable]
) -> None:
    """Audit an export in its own committed transaction before any data leaves: an export is
    never unaudited, even when the client hangs up halfway."""
    async with conn.transaction():
        eans = [k["ean"] for k in await connections_of(conn, customer_id)]
        await audit.append(
            conn,
            kind=audit.KIND_EXPORT,
            actor=customer_actor(customer_id),
            subject=customer_id,
            ean=None,
            detail={"format": fmt, "tables": [t.name for t in tables], "eans": eans},
        )


def customer_actor(customer_id: str) -> str:
    """The audit actor of a customer's own actions."""
    return f"customer:{customer_id}"
