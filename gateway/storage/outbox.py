"""The notification outbox: consent and level changes recorded for webhook delivery (SPEC §4).

``enqueue`` runs inside the caller's transaction, next to the change it announces: it writes one
``outbox_events`` row and one ``webhook_deliveries`` row per subscribed client, so a change is
notified if and only if it commits, and a rolled-back change is never announced.
``gateway.jobs.webhooks`` delivers the rows.

Who is subscribed (decided when the event is enqueued, i.e. at the time of the change): clients
with a ``webhook_url`` that are not revoked and, for consent events, whose ``purposes`` include
the consent's purpose; every such client for level changes. A client registered later learns the
current state from ``GET /v1/consents?changed_since=`` instead.

Expiries are not changes anyone makes: a consent simply passes its ``expires_at``. The delivery
worker calls ``sweep_expired`` now and then, which announces each expiry once (as
``consent.ended`` with ``end_reason`` ``expired``, ``occurred_at`` = the expiry) for expiries
within a look-back window; older ones are left to ``GET /v1/consents?changed_since=``. Whether or
not the hourly retention job (``gateway.jobs.retention.expire_consents``) has recorded the expiry in
the consent row yet makes no difference; that job must NOT enqueue itself (it would announce the
expiry twice).

Order: ``enqueue`` takes a per-EAN transaction-scoped advisory lock before it draws the event's
``seq``, so the seqs of one EAN increase in commit order even for a caller that holds no row lock
(consent_store holds the connection row lock anyway). Deliveries go out in that order per client.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Mapping
from typing import Any, Final

import asyncpg

from gateway.jsonenc import json_default
from gateway.storage import locks

KIND_CONSENT_GRANTED: Final = "consent.granted"
KIND_CONSENT_ENDED: Final = "consent.ended"
KIND_LEVEL_CHANGED: Final = "level.changed"
#: changed readings of many EANs, for one client (gateway.jobs.readings_changed); stored under
#: the EAN ``NO_EAN`` (migration 0012)
KIND_READINGS_CHANGED: Final = "readings.changed"
NO_EAN: Final = ""
#: every event kind; the outbox table's CHECK constraint lists the same
KINDS: Final = frozenset(
    {KIND_CONSENT_GRANTED, KIND_CONSENT_ENDED, KIND_LEVEL_CHANGED, KIND_READINGS_CHANGED}
)
_CONSENT_KINDS: Final = frozenset({KIND_CONSENT_GRANTED, KIND_CONSENT_ENDED})

#: first key of the per-EAN advisory lock ('mtrp'); the second is hashtext(ean)
_ORDER_LOCK_KEY: Final = locks.OUTBOX_ORDER
#: advisory lock (bigint key space) held by the one process sweeping expiries at a time
_SWEEP_LOCK_KEY: Final = locks.EXPIRY_SWEEP

#: consent fields sent to recipients; the customer id stays out (data minimisation: the EAN is
#: how a billing system knows the connection)
_CONSENT_FIELDS: Final = (
    "consent_id",
    "purpose",
    "data_class",
    "notice_version",
    "channel",
    "granted_at",
    "expires_at",
    "ended_at",
    "end_reason",
)


def consent_payload(consent: Mapping[str, Any]) -> dict[str, Any]:
    """The ``data`` of a ``consent.granted``/``consent.ended`` event for a consent row or its
    JSON (as ``gateway.services.consents`` returns it)."""
    return {name: consent.get(name) for name in _CONSENT_FIELDS}


def level_payload(level: str, previous_level: str | None) -> dict[str, Any]:
    """The ``data`` of a ``level.changed`` event."""
    return {"level": level, "previous_level": previous_level}


def _plain_json(payload: Mapping[str, Any]) -> dict[str, Any]:
    # datetimes → RFC 3339 UTC strings, UUIDs → strings; what the receiver will see, byte for byte
    plain: dict[str, Any] = json.loads(json.dumps(dict(payload), default=json_default))
    return plain


async def enqueue(
    conn: asyncpg.Connection,
    *,
    ean: str,
    kind: str,
    payload: Mapping[str, Any],
    occurred_at: dt.datetime | None = None,
    client_id: uuid.UUID | None = None,
) -> uuid.UUID:
    """Record a notification of ``kind`` about ``ean`` in the caller's transaction; returns its
    event id (the receivers' idempotency key).

    ``payload`` becomes the event's ``data`` (see ``consent_payload``/``level_payload``); for
    consent kinds it must carry the consent's ``purpose``, which selects the recipients.
    ``occurred_at`` is when the change took effect (default: the transaction's time).
    ``client_id`` limits the recipients to that client (``readings.changed``: what changed is
    what that client may see; its ``ean`` is ``NO_EAN``).
    ValueError for an unknown kind or a consent payload without a purpose; RuntimeError when
    called outside a transaction (the event would be announced even if the change rolled back).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown outbox event kind {kind!r} (one of {sorted(KINDS)})")
    purpose: str | None = None
    if kind in _CONSENT_KINDS:
        purpose = payload.get("purpose")
        if not isinstance(purpose, str) or not purpose:
            raise ValueError(f"a {kind} event needs the consent's purpose in its payload")
    if not conn.is_in_transaction():
        raise RuntimeError("outbox.enqueue must run in the transaction that makes the change")
    data = _plain_json(payload)
    await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", _ORDER_LOCK_KEY, ean)
    row = await conn.fetchrow(
        "INSERT INTO outbox_events (ean, kind, payload, occurred_at)"
        " VALUES ($1, $2, $3, coalesce($4, now()))"
        " RETURNING event_id, seq",
        ean,
        kind,
        data,
        occurred_at,
    )
    assert row is not None
    event_id: uuid.UUID = row["event_id"]
    await conn.execute(
        "INSERT INTO webhook_deliveries (ean, event_id, client_id, seq)"
        " SELECT $1, $2, c.client_id, $3 FROM clients c"
        " WHERE c.webhook_url IS NOT NULL AND c.revoked_at IS NULL"
        "   AND ($4::text IS NULL OR $4::text = ANY(c.purposes))"
        "   AND ($5::uuid IS NULL OR c.client_id = $5)",
        ean,
        event_id,
        row["seq"],
        purpose,
        client_id,
    )
    return event_id


_EXPIRED_SQL: Final = f"""
SELECT {", ".join("c." + name for name in _CONSENT_FIELDS)}, c.ean
FROM consents c
WHERE c.expires_at <= now() AND (c.ended_at IS NULL OR c.end_reason = 'expired')
  AND c.expires_at > now() - make_interval(secs => $1)
  AND NOT EXISTS (
      SELECT 1 FROM outbox_events e
      WHERE e.ean = c.ean AND e.kind = 'consent.ended'
        AND e.payload ->> 'consent_id' = c.consent_id::text)
ORDER BY c.expires_at
LIMIT $2
"""


async def sweep_expired(conn: asyncpg.Connection, *, lookback_s: float, limit: int = 500) -> int:
    """Announce consents that expired in the last ``lookback_s`` seconds and were not announced
    yet (at most ``limit``); returns how many. One process sweeps at a time (a transaction
    advisory lock; the others return 0 at once), so every expiry is enqueued once."""
    async with conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _SWEEP_LOCK_KEY):
            return 0
        rows = await conn.fetch(_EXPIRED_SQL, lookback_s, limit)
        for row in rows:
            data = consent_payload(row)
            data["ended_at"] = row["expires_at"]
            data["end_reason"] = "expired"
            await enqueue(
                conn,
                ean=row["ean"],
                kind=KIND_CONSENT_ENDED,
                payload=data,
                occurred_at=row["expires_at"],
            )
    return len(rows)
