"""What the customer API reads and changes in PostgreSQL: connections, consents, the two logs,
level changes, the export's reading cursors and erasure (SPEC §2, §4, §5 ``/v1/me/...``).

Everything here is scoped to ONE customer: every query filters on the customer id, so a
handler cannot forget the check. A connection's readings are only the customer's inside their
contract window ``[contract_start, contract_end)`` (measured time): an EAN outlives its
customers, and readings of a previous or later occupant are not this customer's data.

Choices the SPEC leaves open, made here:

* **Lowering the level** (``daily`` → ``monthly``/``none``, SPEC §2 "object to daily readings")
  acts from now on: no new daily (or, for ``none``, monthly) readings are stored, and readings of
  those granularities *measured at or after the change* (a meter clock running ahead) are deleted
  in the same transaction — the same rule as a consent's end (SPEC §3). Readings measured before
  the change are KEPT: they were collected lawfully without consent (Elektriciteitswet art.
  26ab), an objection works from the moment it is made (like a revocation, "processing that
  already took place stays lawful"), and they stay under the billing/fiscal retention (7 years
  after the contract ends). The customer removes what is no longer needed with an erasure
  request. Interval readings stop too (``consent.levels``: an objection to daily reading covers
  shorter periods; the database insert rule requires level ``daily``); interval readings
  measured at or after the change are deleted as well. Consents stay as they are (dormant), so
  raising the level back to ``daily`` resumes them until they end.
* **Erasure** deletes interval readings (PT15M/PT1H, consent-based, no legal hold) and ends
  every open consent (reason ``erasure``); daily/monthly readings are kept while the fiscal hold
  runs (7 years after the contract ends) and deleted once it has passed; consent records, level
  history, the registry entry and the audit trail are kept as proof. The answer lists each kept
  class with why and until when.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Final

import asyncpg

from consent.model import DEFAULT_PURPOSES, EndReason, Purpose
from consent.retention import RetentionPolicy, add_years
from gateway.errors import ConflictError, NotFoundError
from gateway.services.consents import consent_json, end_consent, end_consents_for_ean
from gateway.storage import audit, outbox
from gateway.storage.schema import BILLING_TABLES, INTERVAL_TABLE, READING_TABLES, ReadingTable

#: the contract window condition on a reading row ``r`` ($2 contract_start, $3 contract_end)
_WINDOW = "r.measured_at >= $2 AND ($3::timestamptz IS NULL OR r.measured_at < $3)"


def ean_text(ean_num: int) -> str:
    """A reading table's bigint EAN as the 18-digit text the API uses."""
    return f"{ean_num:018d}"


def reading_json(table: ReadingTable, row: Mapping[str, Any]) -> dict[str, Any]:
    """A reading row in the API shape (SPEC §5); datetimes are serialised by the caller."""
    return {
        "ean": ean_text(row["ean"]),
        "commodity": table.commodity,
        "granularity": table.granularity,
        "period_start": row["period_start"],
        "measured_at": row["measured_at"],
        "registers": {name: row[name] for name in table.registers},
    }


# ---------------------------------------------------------------------------------------------
# connections and consents

_CONNECTION_COLUMNS = (
    "ean, ean_num, commodity, meter_id, customer_id, contract_start, contract_end, end_reason,"
    " level, created_at, updated_at"
)
_CONSENT_COLUMNS = (
    "c.ean, c.consent_id, c.customer_id, c.purpose, c.data_class, c.notice_version, c.channel,"
    " c.granted_at, c.expires_at, c.ended_at, c.end_reason"
)


async def connections_of(conn: asyncpg.Connection, customer_id: str) -> list[asyncpg.Record]:
    """The customer's connections, by EAN."""
    rows: list[asyncpg.Record] = await conn.fetch(
        f"SELECT {_CONNECTION_COLUMNS} FROM connections WHERE customer_id = $1 ORDER BY ean",
        customer_id,
    )
    return rows


async def connection_of(
    conn: asyncpg.Connection, customer_id: str, ean: str, *, lock: bool = False
) -> asyncpg.Record | None:
    """The customer's connection ``ean`` (row-locked with ``lock``), or None when there is no
    such connection or it is someone else's — the two are not told apart (no EAN probing)."""
    row: asyncpg.Record | None = await conn.fetchrow(
        f"SELECT {_CONNECTION_COLUMNS} FROM connections WHERE ean = $1 AND customer_id = $2"
        + (" FOR UPDATE" if lock else ""),
        ean,
        customer_id,
    )
    return row


def connection_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """A connection as the customer sees it."""
    return {
        "ean": row["ean"],
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
        f"SELECT {_CONSENT_COLUMNS}, k.commodity, k.contract_end FROM consents c"
        " JOIN connections k ON k.ean = c.ean"
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
        f"SELECT {_CONSENT_COLUMNS}, k.commodity, k.contract_end FROM consents c"
        " JOIN connections k ON k.ean = c.ean"
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
        "  FROM level_events l JOIN connections k ON k.ean = l.ean"
        "  WHERE k.customer_id = $1 AND l.at >= k.contract_start"
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
    eans: Sequence[str],
    *,
    limit: int | None = None,
    before_seq: int | None = None,
) -> list[dict[str, Any]]:
    """Audit rows of reads of the customer's readings and of their own exports, newest first.

    A client read is ONE audit row per request (``data.read``, ``detail.eans`` = every EAN it
    returned, for many customers at once), so each entry shows only THIS customer's EANs of it.
    ``before_seq`` pages backwards (the ``seq`` of the last entry of the previous page).
    """
    rows = await conn.fetch(
        "SELECT seq, at, kind, actor, detail FROM audit_log"
        " WHERE ((kind = $1 AND (subject = $3 OR detail->'eans' ?| $4::text[]))"
        "        OR (kind = $2 AND subject = $3))"
        "   AND ($5::bigint IS NULL OR seq < $5)"
        " ORDER BY seq DESC LIMIT $6",
        audit.KIND_READ,
        audit.KIND_EXPORT,
        customer_id,
        list(eans),
        before_seq,
        limit,
    )
    mine = set(eans)
    entries: list[dict[str, Any]] = []
    for row in rows:
        detail: Mapping[str, Any] = row["detail"] if isinstance(row["detail"], Mapping) else {}
        listed = detail.get("eans")
        shown = sorted(e for e in listed if e in mine) if isinstance(listed, list) else []
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
) -> AsyncIterator[asyncpg.Record]:
    """The connection's readings in ``table`` within its contract window, by period, through a
    server-side cursor (constant memory). ``conn`` must be inside a transaction."""
    columns = ", ".join(("ean", "period_start", "measured_at", *table.registers))
    query = (
        f"SELECT {columns} FROM {table.name} r WHERE r.ean = $1 AND {_WINDOW}"
        " ORDER BY r.period_start"
    )
    async for row in conn.cursor(
        query,
        connection["ean_num"],
        connection["contract_start"],
        connection["contract_end"],
        prefetch=prefetch,
    ):
        yield row


# ---------------------------------------------------------------------------------------------
# level changes

#: granularity tables a level no longer allows, per new level (interval needs level daily)
_LOWERED_TABLES: Final = {
    "daily": (),
    "monthly": ("p1d", "interval"),
    "none": ("p1d", "p1m", "interval"),
}


def _table_for(commodity: str, kind: str) -> str:
    if kind == "interval":
        return INTERVAL_TABLE[commodity]
    return f"readings_{commodity[0]}_{kind}"


async def change_level(
    conn: asyncpg.Connection,
    connection: Mapping[str, Any],
    level: str,
    *,
    actor: str,
    channel: str,
) -> dict[str, Any]:
    """Set the (locked) connection's level in the caller's transaction: update the row (its
    trigger NOTIFYs every gateway process), append a ``level_events`` row, delete readings the
    new level forbids that were measured at or after now (see the module docstring), audit.

    Returns ``{ean, level, previous_level, changed, at, deleted_readings}``.
    """
    ean: str = connection["ean"]
    previous: str = connection["level"]
    now: dt.datetime = await conn.fetchval("SELECT now()")
    deleted: dict[str, int] = {}
    if level == previous:
        return {
            "ean": ean,
            "level": level,
            "previous_level": previous,
            "changed": False,
            "at": None,
            "deleted_readings": deleted,
        }
    await conn.execute(
        "UPDATE connections SET level = $2, level_since = $3, updated_at = now() WHERE ean = $1",
        ean,
        level,
        now,
    )
    await conn.execute(
        "INSERT INTO level_events (ean, level, at, channel) VALUES ($1, $2, $3, $4)",
        ean,
        level,
        now,
        channel,
    )
    for kind in _LOWERED_TABLES[level]:
        name = _table_for(connection["commodity"], kind)
        status = await conn.execute(
            f"DELETE FROM {name} r WHERE r.ean = $1 AND r.measured_at >= $2",
            connection["ean_num"],
            now,
        )
        deleted[name] = int(status.rsplit(" ", 1)[-1])
    await audit.append(
        conn,
        kind=audit.KIND_LEVEL_CHANGE,
        actor=actor,
        subject=connection["customer_id"],
        ean=ean,
        detail={"from": previous, "to": level, "channel": channel, "deleted_readings": deleted},
    )
    # recipients (billing) learn of the change from the outbox, committed with it
    await outbox.enqueue(
        conn,
        ean=ean,
        kind=outbox.KIND_LEVEL_CHANGED,
        payload=outbox.level_payload(level, previous),
        occurred_at=now,
    )
    return {
        "ean": ean,
        "level": level,
        "previous_level": previous,
        "changed": True,
        "at": now,
        "deleted_readings": deleted,
    }


# ---------------------------------------------------------------------------------------------
# erasure


async def erase(
    conn: asyncpg.Connection,
    customer_id: str,
    *,
    actor: str,
    retention: RetentionPolicy,
    purposes: dict[str, Purpose] | None = None,
) -> dict[str, Any]:
    """Erase what may be erased of the customer's data in ONE transaction; returns
    ``{erased: {...counts}, kept: [{what, why, until, until_rule}], at}`` (module docstring)."""
    erased: dict[str, int] = {name: 0 for name in READING_TABLES}
    erased["consents_ended"] = 0
    kept: list[dict[str, Any]] = []
    async with conn.transaction():
        now: dt.datetime = await conn.fetchval("SELECT now()")
        # lock order by EAN, like every multi-connection writer, so two erasures cannot deadlock
        connections = await conn.fetch(
            f"SELECT {_CONNECTION_COLUMNS} FROM connections WHERE customer_id = $1"
            " ORDER BY ean FOR UPDATE",
            customer_id,
        )
        for k in connections:
            ean, commodity = k["ean"], k["commodity"]
            window = (k["ean_num"], k["contract_start"], k["contract_end"])
            # end the consents first: their ends (reason 'erasure') lock the consent rows ingest
            # shares, so no interval row of this EAN can be inserted once this commits
            ended = await end_consents_for_ean(
                conn, ean, now, EndReason.ERASURE, purposes=purposes, actor=actor
            )
            erased["consents_ended"] += len(ended)
            interval = INTERVAL_TABLE[commodity]
            status = await conn.execute(
                f"DELETE FROM {interval} r WHERE r.ean = $1 AND {_WINDOW}", *window
            )
            erased[interval] += int(status.rsplit(" ", 1)[-1])

            hold_until = (
                None
                if k["contract_end"] is None
                else add_years(k["contract_end"], retention.daily_years)
            )
            billing = BILLING_TABLES[commodity]
            if hold_until is not None and hold_until <= now:
                for name in billing:
                    status = await conn.execute(
                        f"DELETE FROM {name} r WHERE r.ean = $1 AND {_WINDOW}", *window
                    )
                    erased[name] += int(status.rsplit(" ", 1)[-1])
                continue
            counts = []
            for name in billing:
                n = await conn.fetchval(
                    f"SELECT count(*) FROM {name} r WHERE r.ean = $1 AND {_WINDOW}", *window
                )
                counts.append(f"{n} {READING_TABLES[name].granularity}")
            running = k["contract_end"] is None or k["contract_end"] > now
            kept.append(
                {
                    "what": f"daily and monthly readings of connection {ean} ({', '.join(counts)})",
                    "why": "needed for billing and the supplier's fiscal records, lawful without"
                    " consent (Elektriciteitswet 1998 art. 26ab); fiscal retention is"
                    f" {retention.daily_years} years after the supply contract ends"
                    " (Algemene wet inzake rijksbelastingen art. 52)"
                    + (
                        "; collected while the contract runs (lower the level to object to"
                        " daily readings)"
                        if running
                        else ""
                    ),
                    "until": hold_until,
                    "until_rule": f"{retention.daily_years} years after the contract ends",
                }
            )
        # what gateway.jobs.retention will do with what stays: consent records go when their end
        # (now ended, at the latest now) is interval_years + consent_extra_years in the past
        consents = await conn.fetchrow(
            "SELECT count(*) AS n,"
            " max(least(c.ended_at, c.expires_at, k.contract_end)) AS last_end"
            " FROM consents c JOIN connections k ON k.ean = c.ean WHERE c.customer_id = $1",
            customer_id,
        )
        if consents["n"]:
            proof_years = retention.interval_years + retention.consent_extra_years
            kept.append(
                {
                    "what": f"{consents['n']} consent record(s) and their permission log",
                    "why": "proof of what was consented to, when and how, and that the processing"
                    " before each end was lawful (GDPR art. 7(1) and 5(2))",
                    "until": add_years(consents["last_end"], proof_years),
                    "until_rule": f"{proof_years} years after the consent ended (as long as the"
                    " interval data it justified could be held, plus"
                    f" {retention.consent_extra_years} year)",
                }
            )
        if connections:
            kept.append(
                {
                    "what": "the activity log of access to and changes of your data, the registry"
                    " record of your connection(s) and their level history",
                    "why": "tamper-evident accountability record (GDPR art. 5(2)): the audit"
                    " trail is a hash chain, a row cannot be removed without breaking its"
                    " verification; it holds ids, times and counts, never reading values",
                    "until": None,
                    "until_rule": "no automatic deletion yet: kept until the audit trail can be"
                    " trimmed at a verified checkpoint",
                }
            )
        await audit.append(
            conn,
            kind=audit.KIND_ERASURE,
            actor=actor,
            subject=customer_id,
            ean=None,
            detail={"eans": [k["ean"] for k in connections], "erased": erased},
        )
    return {"at": now, "erased": erased, "kept": kept}


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


async def set_level(
    conn: asyncpg.Connection, customer_id: str, ean: str, level: str, *, channel: str
) -> dict[str, Any]:
    """The customer sets the level of one of their connections (``change_level``'s answer).

    NotFoundError when the EAN is not theirs (a stranger learns nothing), ConflictError once the
    contract has ended."""
    async with conn.transaction():
        k = await connection_of(conn, customer_id, ean, lock=True)
        if k is None:
            raise NotFoundError(f"you have no connection {ean}")
        now: dt.datetime = await conn.fetchval("SELECT now()")
        if k["contract_end"] is not None and k["contract_end"] <= now:
            raise ConflictError(f"the contract of connection {ean} has ended")
        return await change_level(
            conn, k, level, actor=customer_actor(customer_id), channel=channel
        )


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
