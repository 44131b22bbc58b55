"""Consents in PostgreSQL: grant and end, each in one transaction with its event and NOTIFY.

Ending a consent (SPEC §3/§4), in ONE transaction:

1. lock the consent's contract row (serialises every consent change of the contract, and its
   end: two consents of one contract ended concurrently would each see the other still active
   and both keep readings that neither covers any more), then the consent row (``FOR UPDATE``: this
   is the lock ingest's ``FOR SHARE`` waits for, see gateway.ingest.sql ``INTERVAL_CONDITION``);
2. set ``ended_at``/``end_reason`` (an end is final: a second end is a ConflictError);
3. delete the EAN's interval readings measured at or after the end — or, for a purpose whose
   data is deleted at revocation, from the grant on — unless another consent covers them (one
   still in force, or an ended one whose purpose keeps its data);
4. insert a ``consent_events`` row and NOTIFY ``meterpoort_consent`` with the EAN;
5. enqueue the webhook notification (``gateway.storage.outbox``): it is sent if and only if this
   commits.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from typing import Any

import asyncpg

from consent.errors import ConsentError, ConsentLifetimeError, UnknownPurposeError
from consent.model import (
    DEFAULT_MAX_LIFETIME,
    DEFAULT_PURPOSES,
    Channel,
    EndReason,
    OnRevoke,
    Purpose,
    new_consent,
    purpose_named,
)
from gateway import metrics
from gateway.errors import ConflictError, FieldError, NotFoundError, ValidationError
from gateway.storage import audit, outbox, tombstones
from gateway.storage.schema import CONSENT_COLUMNS, INTERVAL_TABLE

#: the length of an interval period per commodity
_INTERVAL_PERIOD = {"electricity": "15 minutes", "gas": "1 hour"}


def consent_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """A consent row as API JSON (datetimes and UUIDs are serialised by the handler)."""
    return {
        "consent_id": row["consent_id"],
        "ean": row["ean"],
        "customer_id": row["customer_id"],
        "purpose": row["purpose"],
        "data_class": row["data_class"],
        "notice_version": row["notice_version"],
        "channel": row["channel"],
        "granted_at": row["granted_at"],
        "expires_at": row["expires_at"],
        "ended_at": row["ended_at"],
        "end_reason": row["end_reason"],
        "contract_id": row["contract_id"],
    }


async def create_consent(
    conn: asyncpg.Connection,
    *,
    ean: str,
    customer_id: str,
    purpose: str,
    notice_version: str,
    expires_at: dt.datetime | None = None,
    granted_at: dt.datetime | None = None,
    channel: Channel = Channel.API,
    purposes: dict[str, Purpose] | None = None,
    actor: str = "admin",
    max_lifetime: dt.timedelta = DEFAULT_MAX_LIFETIME,
    as_customer: bool = False,
) -> dict[str, Any]:
    """Record an interval consent granted by the connection's customer; returns its JSON.

    The one home of the grant rules, for every entry point (customer API, admin API, CLI), all
    checked under the connection's row lock:

    * the connection exists and is the customer's (``as_customer``: another customer's EAN is
      "not found", so a stranger learns nothing; otherwise a 409 names the mismatch);
    * the purpose is configured;
    * ``expires_at`` lies in the future and within ``max_lifetime`` (the installation's
      ``consent_max_lifetime_days``) of the grant; without it the consent runs that long;
    * the contract has not ended, the connection is at level ``daily`` (interval readings need
      it, SPEC §2), and no consent for the same purpose is in force on it already.
    """
    table = DEFAULT_PURPOSES if purposes is None else purposes
    async with conn.transaction():
        # now() is the transaction's start: the instant the consent is granted at
        now: dt.datetime = await conn.fetchval("SELECT now()")
        granted = now if granted_at is None else granted_at
        # the contract in force on the EAN now: consents belong to it (SPEC §3a)
        row = await conn.fetchrow(
            "SELECT contract_id, customer_id, contract_end, level FROM contracts"
            " WHERE ean = $1 AND contract_start <= $2"
            " AND (contract_end IS NULL OR contract_end > $2)"
            " FOR UPDATE",
            ean,
            granted,
        )
        if as_customer and (row is None or row["customer_id"] != customer_id):
            raise NotFoundError(f"you have no current contract on connection {ean}")
        if row is None:
            if await conn.fetchval("SELECT 1 FROM connections WHERE ean = $1", ean) is None:
                raise NotFoundError(f"no connection {ean} is registered")
            raise ConflictError(f"no contract is in force on connection {ean}; no consent")
        if row["customer_id"] != customer_id:
            raise ConflictError(
                f"the contract in force on connection {ean} ({row['contract_id']}) is not"
                f" customer {customer_id}'s"
            )
        if expires_at is not None and expires_at <= now:
            raise ValidationError(
                "expires_at must be in the future",
                [FieldError(("body", "expires_at"), "not after now")],
            )
        try:
            consent = new_consent(
                ean=ean,
                customer_id=customer_id,
                purpose=purpose,
                notice_version=notice_version,
                granted_at=granted,
                expires_at=expires_at,
                channel=channel,
                purposes=table,
                max_lifetime=max_lifetime,
            )
        except (UnknownPurposeError, ConsentLifetimeError) as exc:
            # the domain's rule and message; the field it is about is what the API adds
            field = "purpose" if isinstance(exc, UnknownPurposeError) else "expires_at"
            raise ValidationError(str(exc), [FieldError(("body", field), str(exc))]) from exc
        if row["level"] != "daily":
            raise ConflictError(
                f"connection {ean} is at level {row['level']!r}: interval readings need"
                " level 'daily' (PUT /v1/me/connections/{ean}/level) before a consent"
            )
        duplicate = await conn.fetchval(
            "SELECT consent_id FROM consents WHERE ean = $1 AND contract_id = $2"
            " AND purpose = $3 AND ended_at IS NULL"
            " AND (expires_at IS NULL OR expires_at > $4)",
            ean,
            row["contract_id"],
            purpose,
            granted,
        )
        if duplicate is not None:
            raise ConflictError(f"consent {duplicate} for {purpose!r} on {ean} is already in force")
        created = await conn.fetchrow(
            f"INSERT INTO consents ({CONSENT_COLUMNS})"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL, NULL, $10)"
            f" RETURNING {CONSENT_COLUMNS}",
            consent.ean,
            consent.consent_id,
            consent.customer_id,
            consent.purpose,
            consent.data_class,
            consent.notice_version,
            consent.channel.value,
            consent.granted_at,
            consent.expires_at,
            row["contract_id"],
        )
        await conn.execute(
            "INSERT INTO consent_events (ean, consent_id, kind, at, detail)"
            " VALUES ($1, $2, 'granted', $3, $4)",
            ean,
            consent.consent_id,
            consent.granted_at,
            {"purpose": purpose, "notice_version": notice_version, "channel": channel.value},
        )
        metrics.CONSENT_EVENTS.labels("granted").inc()
        await audit.append(
            conn,
            kind=audit.KIND_CONSENT_GRANT,
            actor=actor,
            subject=customer_id,
            ean=ean,
            detail={"consent_id": consent.consent_id, "purpose": purpose},
        )
        assert created is not None
        await outbox.enqueue(
            conn,
            ean=ean,
            kind=outbox.KIND_CONSENT_GRANTED,
            payload=outbox.consent_payload(created),
            occurred_at=consent.granted_at,
        )
        await conn.execute("SELECT pg_notify('meterpoort_consent', $1)", ean)
    return consent_json(created)


async def end_consent(
    conn: asyncpg.Connection,
    consent_id: uuid.UUID,
    reason: EndReason,
    at: dt.datetime | None = None,
    purposes: dict[str, Purpose] | None = None,
    actor: str = "admin",
) -> dict[str, Any]:
    """End consent ``consent_id`` at ``at`` (default: now); see the module docstring.

    Returns the ended consent's JSON plus ``deleted_readings``.
    """
    table = DEFAULT_PURPOSES if purposes is None else purposes
    async with conn.transaction():
        now: dt.datetime = await conn.fetchval("SELECT now()")
        end = now if at is None else at
        if end > now:
            raise ValidationError(
                "a consent cannot be ended in the future",
                [FieldError(("body", "at"), "after the current time")],
            )
        found = await conn.fetchrow(
            "SELECT ean, contract_id FROM consents WHERE consent_id = $1", consent_id
        )
        if found is None:
            raise NotFoundError(f"no consent {consent_id}")
        ean: str = found["ean"]
        conn_row = await _lock_contract(conn, ean, found["contract_id"])
        row = await conn.fetchrow(
            f"SELECT {CONSENT_COLUMNS} FROM consents WHERE ean = $1 AND consent_id = $2 FOR UPDATE",
            ean,
            consent_id,
        )
        assert row is not None  # the contract lock keeps its consents from vanishing
        if row["ended_at"] is not None:
            raise ConflictError(f"consent {consent_id} already ended ({row['end_reason']})")
        if row["expires_at"] is not None and row["expires_at"] <= end:
            raise ConflictError(f"consent {consent_id} has expired already")
        end = max(end, row["granted_at"])  # an end before the grant: the consent never applied
        deleted = await _delete_uncovered(
            conn,
            ean=ean,
            ean_num=conn_row["ean_num"],
            commodity=conn_row["commodity"],
            consent_id=consent_id,
            since=(
                row["granted_at"]
                if purpose_named_or_keep(row["purpose"], table).on_revoke is OnRevoke.DELETE
                else end
            ),
            keep_purposes=[p.name for p in table.values() if p.on_revoke is OnRevoke.KEEP],
            end=end,
            reason=reason,
            purpose=row["purpose"],
        )
        ended = await conn.fetchrow(
            f"SELECT {CONSENT_COLUMNS} FROM consents WHERE ean = $1 AND consent_id = $2",
            ean,
            consent_id,
        )
        await conn.execute(
            "INSERT INTO consent_events (ean, consent_id, kind, at, detail)"
            " VALUES ($1, $2, 'ended', $3, $4)",
            ean,
            consent_id,
            end,
            {"reason": reason.value, "deleted_readings": deleted},
        )
        metrics.CONSENT_EVENTS.labels("ended").inc()
        await audit.append(
            conn,
            kind=audit.KIND_CONSENT_REVOKE
            if reason is EndReason.REVOKED
            else audit.KIND_CONSENT_END,
            actor=actor,
            subject=row["customer_id"],
            ean=ean,
            detail={"consent_id": consent_id, "reason": reason.value, "deleted_readings": deleted},
        )
        assert ended is not None
        await outbox.enqueue(
            conn,
            ean=ean,
            kind=outbox.KIND_CONSENT_ENDED,
            payload=outbox.consent_payload(ended),
            occurred_at=end,
        )
        await conn.execute("SELECT pg_notify('meterpoort_consent', $1)", ean)
    result = consent_json(ended)
    result["deleted_readings"] = deleted
    return result


async def _lock_contract(
    conn: asyncpg.Connection, ean: str, contract_id: uuid.UUID
) -> asyncpg.Record:
    """Lock a contract row (``FOR UPDATE``: the lock ingest's ``FOR SHARE OF k`` waits for);
    its reading key and commodity."""
    row = await conn.fetchrow(
        "SELECT n.ean_num, n.commodity, k.contract_end FROM contracts k"
        " JOIN connections n ON n.ean = k.ean"
        " WHERE k.ean = $1 AND k.contract_id = $2 FOR UPDATE OF k",
        ean,
        contract_id,
    )
    if row is None:
        raise NotFoundError(f"no contract {contract_id} on connection {ean}")
    return row


async def end_consents_of_contract(
    conn: asyncpg.Connection,
    ean: str,
    contract_id: uuid.UUID,
    at: dt.datetime,
    reason: EndReason,
    purposes: dict[str, Purpose] | None = None,
    actor: str = "admin",
) -> list[uuid.UUID]:
    """End every consent of contract ``contract_id`` still open at ``at`` (contract end,
    move-out, switch, erasure), in the caller's transaction: each as ``end_consent`` does
    (event, deletion by purpose, webhook notification), one NOTIFY. Locks the contract row
    first (the caller may hold it already). Returns the ended consent ids."""
    table = DEFAULT_PURPOSES if purposes is None else purposes
    conn_row = await _lock_contract(conn, ean, contract_id)
    rows = await conn.fetch(
        f"SELECT {CONSENT_COLUMNS} FROM consents"
        " WHERE ean = $1 AND contract_id = $3 AND ended_at IS NULL"
        " AND (expires_at IS NULL OR expires_at > $2)"
        " ORDER BY consent_id FOR UPDATE",
        ean,
        at,
        contract_id,
    )
    keep = [p.name for p in table.values() if p.on_revoke is OnRevoke.KEEP]
    ended: list[uuid.UUID] = []
    for row in rows:
        end = max(at, row["granted_at"])
        deleted = await _delete_uncovered(
            conn,
            ean=ean,
            ean_num=conn_row["ean_num"],
            commodity=conn_row["commodity"],
            consent_id=row["consent_id"],
            since=(
                row["granted_at"]
                if purpose_named_or_keep(row["purpose"], table).on_revoke is OnRevoke.DELETE
                else end
            ),
            keep_purposes=keep,
            end=end,
            reason=reason,
            purpose=row["purpose"],
        )
        await conn.execute(
            "INSERT INTO consent_events (ean, consent_id, kind, at, detail)"
            " VALUES ($1, $2, 'ended', $3, $4)",
            ean,
            row["consent_id"],
            end,
            {"reason": reason.value, "deleted_readings": deleted},
        )
        metrics.CONSENT_EVENTS.labels("ended").inc()
        await audit.append(
            conn,
            kind=audit.KIND_CONSENT_END,
            actor=actor,
            subject=row["customer_id"],
            ean=ean,
            detail={
                "consent_id": row["consent_id"],
                "reason": reason.value,
                "deleted_readings": deleted,
            },
        )
        await outbox.enqueue(
            conn,
            ean=ean,
            kind=outbox.KIND_CONSENT_ENDED,
            payload=outbox.consent_payload(
                {**dict(row), "ended_at": end, "end_reason": reason.value}
            ),
            occurred_at=end,
        )
        ended.append(row["consent_id"])
    await conn.execute("SELECT pg_notify('meterpoort_consent', $1)", ean)
    return ended


def purpose_named_or_keep(name: str, purposes: dict[str, Purpose]) -> Purpose:
    """The configured purpose ``name``; a purpose no longer configured keeps its data (the
    cautious choice for records a retention rule, not a revocation, will remove)."""
    try:
        return purpose_named(name, purposes)
    except ConsentError:
        return Purpose(name, OnRevoke.KEEP)


async def _delete_uncovered(
    conn: asyncpg.Connection,
    *,
    ean: str,
    ean_num: int,
    commodity: str,
    consent_id: uuid.UUID,
    since: dt.datetime,
    keep_purposes: list[str],
    end: dt.datetime,
    reason: EndReason,
    purpose: str,
) -> int:
    # the UPDATE comes first: it takes the consent row lock ingest's FOR SHARE conflicts with
    await conn.execute(
        "UPDATE consents SET ended_at = $3, end_reason = $4 WHERE ean = $1 AND consent_id = $2",
        ean,
        consent_id,
        end,
        reason.value,
    )
    table, period = INTERVAL_TABLE[commodity], _INTERVAL_PERIOD[commodity]
    # the sync feed's tombstones: only clients of this purpose could see what goes
    await tombstones.label(conn, reason.value, purpose)
    # period_start > since - one period lets the primary key (and partition pruning) find the
    # rows: a reading measured at or after `since` is in a period starting after since - period
    status = await conn.execute(
        f"DELETE FROM {table} r WHERE r.ean = $1 AND r.measured_at >= $2"
        f" AND r.period_start > $2 - interval '{period}'"
        " AND NOT EXISTS ("
        "   SELECT 1 FROM consents o"
        "   JOIN contracts k ON k.ean = o.ean AND k.contract_id = o.contract_id"
        "   WHERE o.ean = $3 AND o.consent_id <> $4 AND o.data_class = 'interval'"
        "     AND o.granted_at <= r.measured_at"
        "     AND r.measured_at <"
        "         coalesce(least(o.ended_at, o.expires_at, k.contract_end), 'infinity')"
        "     AND (coalesce(least(o.ended_at, o.expires_at, k.contract_end), 'infinity') > now()"
        "          OR o.purpose = ANY($5::text[])))",
        ean_num,
        since,
        ean,
        consent_id,
        keep_purposes,
    )
    return int(status.rsplit(" ", 1)[-1])
