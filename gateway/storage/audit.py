"""The audit trail: an append-only, hash-chained log of every access to and change of personal data
(SPEC §2 "an activity log of every access to personal data, tamper-evident").

Each row has a gapless sequence number ``seq`` and::

    hash = SHA-256(prev_hash || canonical JSON of {seq, at, kind, actor, subject, ean, detail})

where ``prev_hash`` is the previous row's ``hash`` (32 zero bytes for row 1). Canonical JSON:
sorted keys, no whitespace, UTF-8 (non-ASCII as is), ``at`` as RFC 3339 UTC with microseconds
(``2024-03-01T12:00:00.000000Z``). Anyone with read access can recompute the chain (``verify``);
changing a row's content breaks its hash, deleting a middle row leaves a gap in ``seq``, and
rewriting the whole suffix is detectable against a head hash recorded elsewhere (``expect_head``).

Appends are one round trip: ``meterpoort_audit_append()`` (migration 0003) takes the lock, reads
the head, fills the timestamp and seq into the canonical JSON built here (``content_parts``) and
hashes with the database's ``sha256``; ``verify`` recomputes everything in Python from the stored
columns, so the two must agree (tests/unit/gateway/test_audit_chain.py, tests/integration).

Appends are serialised by a transaction-level advisory lock taken in the caller's transaction, so
the chain stays linear across any number of gateway processes, and the audit row commits or rolls
back with the change it records. The lock is held until that transaction ends: append last, just
before commit, and log one row per request (a bulk read is ONE row), not one per reading.

Retention (``prune``): the oldest rows may go once their retention has passed, but only after an
``audit.prune`` row appended to the chain announces it (``through_seq`` and that row's hash);
``verify`` then starts from the first remaining row, which must link to the announced hash (a
removal cut short is checked at ``through_seq`` instead). Removing rows without the announcement
is a missing row as before, and the announcement itself is a chained row like any other.

Future work: record the head hash periodically outside the database (an operator's log, a
transparency service, the customer's own receipts) so that a truncated tail is detected by
``verify --expect-head`` without manual bookkeeping.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

import asyncpg

from gateway.storage import locks

#: transaction advisory lock key serialising appends (arbitrary constant, 'mtrp' + 3)
AUDIT_LOCK_KEY: Final = locks.AUDIT
#: ``prev_hash`` of the first row
GENESIS_HASH: Final = bytes(32)

# Kinds the gateway records (the column takes any lower-case dotted name; these keep callers
# consistent and the customer's logs filterable).
KIND_CONSENT_GRANT: Final = "consent.grant"
KIND_CONSENT_REVOKE: Final = "consent.revoke"
KIND_CONSENT_END: Final = "consent.end"
KIND_LEVEL_CHANGE: Final = "level.change"
KIND_REGISTRY_CHANGE: Final = "registry.change"
KIND_TOKEN_CREATE: Final = "token.create"
KIND_TOKEN_REVOKE: Final = "token.revoke"
KIND_EXPORT: Final = "data.export"
KIND_ERASURE: Final = "data.erasure"
KIND_READ: Final = "data.read"
#: the announcement of a removal of the oldest rows (``prune``)
KIND_PRUNE: Final = "audit.prune"

_VERIFY_BATCH = 2000
#: the same rule as the CHECK on audit_log.kind
_KIND_RE: Final = re.compile(r"[a-z][a-z0-9_.-]*")


# ---------------------------------------------------------------------------------------------
# canonical form and hashing (pure)


def format_timestamp(at: dt.datetime) -> str:
    """RFC 3339 UTC with microseconds, e.g. ``2024-03-01T12:00:00.000000Z``."""
    if at.tzinfo is None:
        raise ValueError("audit timestamps must be timezone-aware")
    return at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def normalise_detail(value: Any, where: str = "detail") -> Any:
    """``value`` as plain JSON data that survives a jsonb round trip unchanged.

    Accepted: str, int, bool, None, lists/tuples, mappings with str keys, and for convenience
    aware datetimes (→ RFC 3339 UTC string), dates (→ ``YYYY-MM-DD``) and UUIDs (→ str).
    Floats are refused: jsonb re-formats numbers (``1e3`` comes back as ``1000``), which would
    change the canonical JSON and so the hash; pass decimals as strings.
    """
    if value is None or isinstance(value, (str, bool, int)):
        # bool before int does not matter here: both serialise as themselves
        return value
    if isinstance(value, float):
        raise TypeError(f"{where}: floats are not allowed in audit details (use a string)")
    if isinstance(value, dt.datetime):
        return format_timestamp(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where}: keys must be strings, got {type(key).__name__}")
            out[key] = normalise_detail(item, f"{where}.{key}")
        return out
    if isinstance(value, (list, tuple)):
        return [normalise_detail(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise TypeError(f"{where}: {type(value).__name__} is not allowed in audit details")


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8 (non-ASCII characters as themselves)."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def content_bytes(
    *,
    seq: int,
    at: dt.datetime,
    kind: str,
    actor: str,
    subject: str | None,
    ean: str | None,
    detail: Any,
) -> bytes:
    """The canonical JSON of one row's content fields (what its hash covers)."""
    return canonical_json(
        {
            "seq": seq,
            "at": format_timestamp(at),
            "kind": kind,
            "actor": actor,
            "subject": subject,
            "ean": ean,
            "detail": detail,
        }
    )


def content_parts(
    *, kind: str, actor: str, subject: str | None, ean: str | None, detail: Any
) -> tuple[bytes, bytes, bytes]:
    """``content_bytes`` in three pieces around the timestamp and the seq, which the database
    fills in under the append lock: content = a + at + b + seq + c (keys in sorted order)."""
    return (
        b'{"actor":' + canonical_json(actor) + b',"at":"',
        b'","detail":'
        + canonical_json(detail)
        + b',"ean":'
        + canonical_json(ean)
        + b',"kind":'
        + canonical_json(kind)
        + b',"seq":',
        b',"subject":' + canonical_json(subject) + b"}",
    )


def chain_hash(prev_hash: bytes, content: bytes) -> bytes:
    """SHA-256(prev_hash || content)."""
    return hashlib.sha256(prev_hash + content).digest()


# ---------------------------------------------------------------------------------------------
# append


async def append(
    conn: asyncpg.Connection,
    *,
    kind: str,
    actor: str,
    subject: str | None,
    ean: str | None,
    detail: Mapping[str, Any],
) -> int:
    """Append one audit row inside the caller's transaction; returns its sequence number.

    ``subject`` is the customer id whose data this concerns (or None), ``detail`` what exactly
    (ids, periods, counts — never reading values or raw telegrams; see ``normalise_detail`` for
    the types allowed). Call it inside ``conn.transaction()`` together with the change it
    records, preferably last: the append lock is held until that transaction ends. Outside a
    transaction the row commits on its own (the lock is then released at once).

    Under REPEATABLE READ/SERIALIZABLE a transaction that ran a query before appending sees a
    stale head; the append then fails on the ``seq`` primary key (never forks the chain) — use
    READ COMMITTED, the default.
    """
    clean = normalise_detail(detail)
    # checked here with a clear message (the table's CHECKs say the same, less readably)
    if _KIND_RE.fullmatch(kind) is None:
        raise ValueError(f"audit kind {kind!r}: must be a lower-case dotted name like 'data.read'")
    if not actor:
        raise ValueError("audit actor must not be empty")
    if conn.is_in_transaction():
        # the usual case; no savepoint: if the insert fails, the caller's transaction is aborted
        # anyway, and a savepoint would cost two more round trips under the lock
        return await _append_locked(conn, kind, actor, subject, ean, clean)
    async with conn.transaction():
        return await _append_locked(conn, kind, actor, subject, ean, clean)


async def _append_locked(
    conn: asyncpg.Connection,
    kind: str,
    actor: str,
    subject: str | None,
    ean: str | None,
    detail: Any,
) -> int:
    part_a, part_b, part_c = content_parts(
        kind=kind, actor=actor, subject=subject, ean=ean, detail=detail
    )
    # detail goes over as text and is cast in SQL, so this works whatever jsonb codec the
    # connection has (the pool's decodes to Python objects, a bare connection to text)
    seq: int = await conn.fetchval(
        "SELECT meterpoort_audit_append($1, $2, $3, $4, $5, $6::text::jsonb, $7, $8, $9)",
        AUDIT_LOCK_KEY,
        kind,
        actor,
        subject,
        ean,
        canonical_json(detail).decode("utf-8"),
        part_a,
        part_b,
        part_c,
    )
    return seq


# ---------------------------------------------------------------------------------------------
# verify


class Problem(StrEnum):
    """What is wrong with the first broken row."""

    CONTENT_ALTERED = "content altered"
    ROW_MISSING = "row missing"
    CHAIN_LINK_BROKEN = "chain link broken"
    HEAD_NOT_FOUND = "expected head not found"


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """Outcome of ``verify``.

    ``rows`` counts the rows checked (all of them when ``ok``); ``head_seq``/``head_hash`` are the
    last row's (0 and the genesis hash for an empty log). When not ``ok``, ``broken_seq`` is the
    sequence number of the first broken row (for a gap: the first missing number), ``problem``
    what is wrong and ``message`` a sentence for people.
    """

    ok: bool
    rows: int
    head_seq: int
    head_hash: bytes
    broken_seq: int | None = None
    problem: Problem | None = None
    message: str = ""
    #: rows 1..pruned_through were removed by ``prune`` (announced in the chain); 0 if none
    pruned_through: int = 0

    def summary(self) -> str:
        """``ok: N rows, head <hex>`` (plus ``; rows 1..K pruned``) or
        ``broken: row S: <problem>: <message>``."""
        if self.ok:
            pruned = f"; rows 1..{self.pruned_through} pruned" if self.pruned_through else ""
            return f"ok: {self.rows} rows, head {self.head_hash.hex()}{pruned}"
        return f"broken: row {self.broken_seq}: {self.problem}: {self.message}"


def parse_head(expect_head: str | bytes | None) -> bytes | None:
    """A head hash given as 64 hex digits (or 32 bytes) as bytes; ValueError if malformed."""
    if expect_head is None:
        return None
    if isinstance(expect_head, bytes):
        if len(expect_head) != 32:
            raise ValueError("expected head: not 32 bytes")
        return expect_head
    try:
        value = bytes.fromhex(expect_head.strip())
    except ValueError as exc:
        raise ValueError(f"expected head {expect_head!r}: not a hex string") from exc
    if len(value) != 32:
        raise ValueError(f"expected head {expect_head!r}: not 32 bytes (64 hex digits)")
    return value


async def verify(
    conn: asyncpg.Connection, *, expect_head: str | bytes | None = None
) -> VerifyResult:
    """Recompute the chain from row 1 and report the first broken row, if any.

    With ``expect_head`` (a head hash recorded earlier, outside the database) the chain must
    also still contain a row with that hash: that catches a truncated tail (and a rewritten
    suffix), which the chain alone cannot show — the remaining rows are a valid chain.

    Reads one consistent snapshot in batches (constant memory), so it can run beside appends.
    """
    anchor = parse_head(expect_head)
    anchor_seen = anchor is None or anchor == GENESIS_HASH
    prev_hash = GENESIS_HASH
    expected_seq = 1
    rows = 0
    pruned_through = 0
    #: (seq, hash) a row must have: the announced end of a removal that was cut short
    checkpoint: tuple[int, bytes] | None = None

    def broken(seq: int, problem: Problem, message: str) -> VerifyResult:
        return VerifyResult(
            ok=False,
            rows=rows,
            head_seq=expected_seq - 1,
            head_hash=prev_hash,
            broken_seq=seq,
            problem=problem,
            message=message,
            pruned_through=pruned_through,
        )

    async with contextlib.AsyncExitStack() as stack:
        if not conn.is_in_transaction():
            # one snapshot for the whole walk, however long it takes beside new appends
            await stack.enter_async_context(
                conn.transaction(isolation="repeatable_read", readonly=True)
            )
        first = await conn.fetchrow("SELECT seq, prev_hash FROM audit_log ORDER BY seq LIMIT 1")
        if first is not None and first["seq"] > 1:
            # the oldest rows are gone: only an announced removal explains that
            start = await _prune_start(conn, first["seq"])
            if start is None:
                gone = first["seq"] - 1
                return broken(
                    1,
                    Problem.ROW_MISSING,
                    f"rows 1..{gone} are missing and no {KIND_PRUNE} row announces their removal",
                )
            through, through_hash = start
            expected_seq = first["seq"]
            pruned_through = expected_seq - 1
            if through == expected_seq - 1:
                prev_hash = through_hash  # the first row must link to the announced hash
            else:
                # a removal cut short: rows up to `through` remain, and row `through` must
                # still carry the hash the announcement recorded
                prev_hash = bytes(first["prev_hash"])
                checkpoint = (through, through_hash)
            if anchor == through_hash:
                anchor_seen = True
        last_seq = expected_seq - 1
        while True:
            batch = await conn.fetch(
                "SELECT seq, at, kind, actor, subject, ean, detail::text AS detail,"
                " prev_hash, hash FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2",
                last_seq,
                _VERIFY_BATCH,
            )
            for row in batch:
                seq: int = row["seq"]
                if seq != expected_seq:
                    missing = (
                        f"row {expected_seq} is missing"
                        if seq == expected_seq + 1
                        else f"rows {expected_seq}..{seq - 1} are missing"
                    )
                    return broken(
                        expected_seq,
                        Problem.ROW_MISSING,
                        f"{missing} (sequence jumps from {expected_seq - 1} to {seq})",
                    )
                stored_prev = bytes(row["prev_hash"])
                stored_hash = bytes(row["hash"])
                recomputed = chain_hash(
                    stored_prev,
                    content_bytes(
                        seq=seq,
                        at=row["at"],
                        kind=row["kind"],
                        actor=row["actor"],
                        subject=row["subject"],
                        ean=row["ean"],
                        detail=json.loads(row["detail"]),
                    ),
                )
                if recomputed != stored_hash:
                    return broken(
                        seq,
                        Problem.CONTENT_ALTERED,
                        f"its content does not match its hash (stored {stored_hash.hex()},"
                        f" recomputed {recomputed.hex()})",
                    )
                if stored_prev != prev_hash:
                    return broken(
                        seq,
                        Problem.CHAIN_LINK_BROKEN,
                        f"its prev_hash {stored_prev.hex()} is not the hash of row {seq - 1}"
                        f" ({prev_hash.hex()}): row {seq - 1} or this row was rewritten",
                    )
                if checkpoint is not None and seq == checkpoint[0] and stored_hash != checkpoint[1]:
                    return broken(
                        seq,
                        Problem.CONTENT_ALTERED,
                        f"its hash {stored_hash.hex()} is not the one the {KIND_PRUNE} row"
                        f" recorded for it ({checkpoint[1].hex()})",
                    )
                prev_hash = stored_hash
                expected_seq = seq + 1
                rows += 1
                if not anchor_seen and stored_hash == anchor:
                    anchor_seen = True
            if len(batch) < _VERIFY_BATCH:
                break
            last_seq = batch[-1]["seq"]
    if not anchor_seen:
        assert anchor is not None
        return broken(
            expected_seq,
            Problem.HEAD_NOT_FOUND,
            f"no row has the expected head hash {anchor.hex()}: the tail was truncated or the"
            f" chain rewritten (the chain holds {rows} rows, head {prev_hash.hex()})",
        )
    return VerifyResult(
        ok=True,
        rows=rows,
        head_seq=expected_seq - 1,
        head_hash=prev_hash,
        pruned_through=pruned_through,
    )


async def _prune_start(conn: asyncpg.Connection, first_seq: int) -> tuple[int, bytes] | None:
    """(through_seq, through_hash) of the announcement that explains why rows before
    ``first_seq`` are gone: the one reaching least far among those covering them (the
    announcement row itself is verified with the rest of the chain)."""
    row = await conn.fetchrow(
        "SELECT detail::text AS detail FROM audit_log"
        " WHERE kind = $1 AND (detail ->> 'through_seq')::bigint >= $2"
        " AND seq > (detail ->> 'through_seq')::bigint"
        " ORDER BY (detail ->> 'through_seq')::bigint LIMIT 1",
        KIND_PRUNE,
        first_seq - 1,
    )
    if row is None:
        return None
    detail = json.loads(row["detail"])
    try:
        return int(detail["through_seq"]), bytes.fromhex(detail["through_hash"])
    except (KeyError, TypeError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
# prune


@dataclass(frozen=True, slots=True)
class PruneResult:
    """What ``prune`` removed (or, dry, would remove): rows ``first_seq..through_seq``."""

    rows: int
    first_seq: int | None = None
    through_seq: int | None = None
    #: seq of the audit.prune row announcing it (None for a dry run or nothing to remove)
    announced_seq: int | None = None


async def prune(
    conn: asyncpg.Connection,
    before: dt.datetime,
    *,
    actor: str,
    batch_rows: int = 10_000,
    dry_run: bool = False,
) -> PruneResult:
    """Remove the audit rows recorded before ``before`` (the oldest rows; ``at`` follows
    ``seq``), keeping the chain verifiable: first an ``audit.prune`` row announcing the removal
    is appended (short transaction under the append lock), then the rows go oldest first in
    batches of ``batch_rows``, each its own transaction. Call it outside a transaction.
    """
    if conn.is_in_transaction():
        raise RuntimeError("audit.prune commits batch by batch: call it outside a transaction")
    if before.tzinfo is None:
        raise ValueError("audit.prune needs a timezone-aware `before`")
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", AUDIT_LOCK_KEY)
        last = await conn.fetchrow(
            "SELECT seq, hash FROM audit_log WHERE at < $1 ORDER BY seq DESC LIMIT 1", before
        )
        first_seq: int | None = await conn.fetchval("SELECT min(seq) FROM audit_log")
        if last is None or first_seq is None:
            return PruneResult(rows=0)
        through: int = last["seq"]
        rows = through - first_seq + 1
        if dry_run:
            return PruneResult(rows=rows, first_seq=first_seq, through_seq=through)
        announced = await append(
            conn,
            kind=KIND_PRUNE,
            actor=actor,
            subject=None,
            ean=None,
            detail={
                "through_seq": through,
                "through_hash": bytes(last["hash"]).hex(),
                "rows": rows,
                "before": before,
            },
        )
    while True:
        status = await conn.execute(
            "DELETE FROM audit_log WHERE seq IN ("
            " SELECT seq FROM audit_log WHERE seq <= $1 ORDER BY seq LIMIT $2)",
            through,
            batch_rows,
        )
        if int(status.rsplit(" ", 1)[-1]) < batch_rows:
            break
    return PruneResult(rows=rows, first_seq=first_seq, through_seq=through, announced_seq=announced)
