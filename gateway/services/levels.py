"""A connection's remote-reading level (SPEC §2): the customer objects to daily reading, or
withdraws the objection.

Choices the SPEC leaves open, made here: lowering the level (``daily`` → ``monthly``/``none``)
acts from now on: no new daily (or, for ``none``, monthly) readings are stored, and readings of
those granularities *measured at or after the change* (a meter clock running ahead) are deleted
in the same transaction — the same rule as a consent's end (SPEC §3). Readings measured before
the change are KEPT: they were collected lawfully without consent (Elektriciteitswet art. 26ab),
an objection works from the moment it is made (like a revocation, "processing that already took
place stays lawful"), and they stay under the billing/fiscal retention (7 years after the
contract ends). The customer removes what is no longer needed with an erasure request. Interval
readings stop too (``consent.levels``: an objection to daily reading covers shorter periods; the
database insert rule requires level ``daily``); interval readings measured at or after the
change are deleted as well. Consents stay as they are (dormant), so raising the level back to
``daily`` resumes them until they end.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import asyncpg

from consent.levels import LEVEL_GRANULARITIES, Granularity, Level
from gateway.errors import ConflictError, NotFoundError
from gateway.services.customers import connection_of, customer_actor
from gateway.storage import audit, outbox, tombstones
from gateway.storage.schema import INTERVAL_TABLE, READING_TABLES


def forbidden_tables(commodity: str, level: str) -> list[str]:
    """The reading tables of ``commodity`` whose readings ``level`` does not allow: the daily and
    monthly granularities it drops (``consent.levels``) and, below ``daily``, the interval table
    (interval readings need level ``daily``)."""
    allowed = LEVEL_GRANULARITIES[Level(level)]
    names = [
        t.name
        for t in READING_TABLES.values()
        if t.commodity == commodity and not t.interval and Granularity(t.granularity) not in allowed
    ]
    if Level(level) is not Level.DAILY:
        names.append(INTERVAL_TABLE[commodity])
    return names


async def change_level(
    conn: asyncpg.Connection,
    connection: Mapping[str, Any],
    level: str,
    *,
    actor: str,
    channel: str,
) -> dict[str, Any]:
    """Set the (locked) contract's level in the caller's transaction: update the row (its
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
        "UPDATE contracts SET level = $3, level_since = $4, updated_at = now()"
        " WHERE ean = $1 AND contract_id = $2",
        ean,
        connection["contract_id"],
        level,
        now,
    )
    await conn.execute(
        "INSERT INTO level_events (ean, contract_id, level, at, channel)"
        " VALUES ($1, $2, $3, $4, $5)",
        ean,
        connection["contract_id"],
        level,
        now,
        channel,
    )
    for name in forbidden_tables(connection["commodity"], level):
        await tombstones.label(conn, tombstones.LEVEL_LOWERED)
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
