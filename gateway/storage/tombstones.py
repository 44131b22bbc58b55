"""Why readings are deleted, for the sync feed's tombstones (migration 0012).

A trigger on every reading table records each DELETE statement's rows as tombstone ranges
(``reading_tombstones``), whoever runs it, so no deletion path can forget to. What the trigger
cannot know is why: the deleting code says so with ``label`` just before its DELETE. The label
holds for the next DELETE of a reading table in the transaction only (the trigger resets it), so
a stale reason never sticks to an unrelated deletion; an unlabelled one is recorded as
``deleted`` for every client of the granularity.
"""

from __future__ import annotations

from typing import Final

import asyncpg

#: deletions by rule (SPEC §2 retention): no tombstones, clients know the rule
RETENTION: Final = "retention"
#: readings a lowered sharing level forbids
LEVEL_LOWERED: Final = "level-lowered"
#: the customer's erasure request
ERASURE: Final = "erasure"


async def label(conn: asyncpg.Connection, reason: str, purpose: str | None = None) -> None:
    """Name the reason (and, for a consent end, the consent's purpose: only clients with it see
    the tombstone) of the next reading DELETE in the caller's transaction."""
    if not conn.is_in_transaction():
        raise RuntimeError("tombstones.label must run in the deleting transaction")
    await conn.execute(
        "SELECT set_config('meterpoort.delete_reason', $1, true),"
        " set_config('meterpoort.delete_purpose', $2, true)",
        reason,
        purpose or "",
    )
