"""The registry (SPEC §3a): connections (EAN, commodity), their supply contracts and meter
installations over time (field devices are ``gateway.services.devices``).

The admin API (gateway.api.handlers.admin), the CLI (gateway.cli) and the CSV imports call the
same functions here. The database enforces the rules itself (migration 0011's exclusion
constraints: contracts of an EAN never overlap, a meter is on one EAN at a time); the checks here
come first so that a refusal names the conflicting record. Registry writes take one
transaction-level advisory lock: they are rare, and it keeps a check and its write together.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Literal

import asyncpg
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from consent.ean import ean_problem
from consent.model import EndReason as ConsentEndReason
from gateway import metrics
from gateway.errors import (
    ConflictError,
    FieldError,
    InvalidEANError,
    NotFoundError,
    ValidationError,
)
from gateway.services.consents import end_consents_of_contract
from gateway.storage import audit, locks, tombstones
from gateway.storage.schema import BILLING_TABLES, CUSTOMER_ID_RE, INTERVAL_TABLE
from gateway.times import ApiTime

#: transaction advisory lock serialising registry writes ('mtrp' + 2)
REGISTRY_LOCK_KEY = locks.REGISTRY


Commodity = Literal["electricity", "gas"]
EndReason = Literal["contract-ended", "move-out", "switch"]
COMMODITIES: frozenset[str] = frozenset(("electricity", "gas"))
END_REASONS: frozenset[str] = frozenset(("contract-ended", "move-out", "switch"))
# meter equipment ids are printable ASCII after hex-decoding (DSMR 0-0:96.1.1 / 0-n:96.1.0)
MeterId = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=96, pattern=r"^[!-~]+$")
]
CustomerId = Annotated[
    str,
    StringConstraints(strip_whitespace=True, pattern=f"^{CUSTOMER_ID_RE.pattern}$"),
    Field(description="customer id: letters, digits and . _ : @ | = - (at most 128)"),
]

# ---------------------------------------------------------------------------------------------
# EAN-18 (GS1 GSRN-style connection codes)


def _checked_ean(code: str) -> str:
    problem = ean_problem(code)
    if problem is not None:
        raise ValueError(problem)
    return code


#: an EAN-18 field of an API body or CLI argument set: 422 naming the field and why
Ean = Annotated[
    str,
    AfterValidator(_checked_ean),
    Field(description="EAN-18 connection code (18 digits, GS1 check digit)"),
]


def validate_ean(code: str) -> str:
    """``code`` if it is a valid EAN-18; InvalidEANError saying why otherwise."""
    problem = ean_problem(code)
    if problem is not None:
        raise InvalidEANError(problem, [FieldError(("ean",), problem)])
    return code


# ---------------------------------------------------------------------------------------------
# edge models (API bodies, CLI arguments)


class ConnectionIn(BaseModel):
    """A connection to register with its first contract and meter (the ``/v1/admin/meters``
    shorthand)."""

    model_config = ConfigDict(extra="forbid")

    ean: Ean
    commodity: Commodity
    meter_id: MeterId = Field(description="meter equipment id as in the telegram (decoded)")
    customer_id: CustomerId
    contract_start: ApiTime
    contract_end: ApiTime | None = None

    @model_validator(mode="after")
    def _period(self) -> ConnectionIn:
        if self.contract_end is not None and self.contract_end <= self.contract_start:
            raise ValueError("contract_end must be after contract_start")
        return self


class ContractEndIn(BaseModel):
    """Ending the contract in force on a connection (the ``/v1/admin/meters`` shorthand)."""

    model_config = ConfigDict(extra="forbid")

    contract_end: ApiTime
    end_reason: EndReason


class ContractIn(BaseModel):
    """A supply contract to register on a connection (a move-in, a switch to us)."""

    model_config = ConfigDict(extra="forbid")

    ean: Ean
    customer_id: CustomerId
    start: ApiTime
    end: ApiTime | None = None
    previous_end_reason: EndReason | None = Field(
        default=None,
        description="a handover: the contract open at `start` ends then with this reason, in"
        " the same transaction, and the daily and monthly readings measured since (a move"
        " registered late) become the new contract's; without it an overlap is a 409",
    )

    @model_validator(mode="after")
    def _period(self) -> ContractIn:
        if self.end is not None and self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class ContractPatchIn(BaseModel):
    """Ending a contract (contract ended, move-out, switch to another supplier)."""

    model_config = ConfigDict(extra="forbid")

    end: ApiTime
    end_reason: EndReason


class MeterExchangeIn(BaseModel):
    """A meter exchange: the installed meter's installation ends at ``at``, ``meter_id``'s
    starts."""

    model_config = ConfigDict(extra="forbid")

    meter_id: MeterId
    at: ApiTime


#: a contract row as services read it (with its connection's commodity)
CONTRACT_COLUMNS = (
    "k.contract_id, k.ean, n.commodity, k.customer_id, k.contract_start, k.contract_end,"
    " k.end_reason, k.level, k.created_at, k.updated_at"
)
_CONTRACTS_OF = "contracts k JOIN connections n ON n.ean = k.ean"


def contract_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """A contract as the admin API shows it (datetimes still datetime objects)."""
    return {
        "contract_id": row["contract_id"],
        "ean": row["ean"],
        "customer_id": row["customer_id"],
        "start": row["contract_start"],
        "end": row["contract_end"],
        "end_reason": row["end_reason"],
        "level": row["level"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


def installation_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """A meter installation as the admin API shows it."""
    return {
        "meter_id": row["meter_id"],
        "installed_from": row["installed_from"],
        "installed_until": row["installed_until"],
    }


def connection_json(contract: Mapping[str, Any], meter_id: str | None) -> dict[str, Any]:
    """The ``/v1/admin/meters`` shorthand's view: a connection with one contract and meter."""
    return {
        "ean": contract["ean"],
        "commodity": contract["commodity"],
        "meter_id": meter_id,
        "customer_id": contract["customer_id"],
        "contract_id": contract["contract_id"],
        "contract_start": contract["contract_start"],
        "contract_end": contract["contract_end"],
        "end_reason": contract["end_reason"],
        "level": contract["level"],
        "created_at": contract["created_at"],
        "updated_at": contract["updated_at"],
    }


# ---------------------------------------------------------------------------------------------
# storage


@contextlib.contextmanager
def _as_conflict() -> Iterator[None]:
    """The database's own rules (migration 0011's exclusion constraints) as a 409: the checks
    here name the conflicting record first, this catches whatever writes bypassed them (another
    tool in the same database, a race the registry lock does not cover)."""
    try:
        yield
    except asyncpg.ExclusionViolationError as exc:
        what = "contracts of one connection" if "contracts" in str(exc) else "meter installations"
        raise ConflictError(f"the change would overlap existing {what}: {exc.detail}") from exc


async def lock_registry(conn: asyncpg.Connection) -> None:
    """Serialise registry writes (a transaction lock: held until the caller's transaction ends)."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", REGISTRY_LOCK_KEY)


async def _meter_in_use(
    conn: asyncpg.Connection,
    commodity: str,
    meter_id: str,
    start: dt.datetime,
    end: dt.datetime | None,
) -> str | None:
    """The EAN this meter is installed on at some time of [start, end), if any."""
    ean: str | None = await conn.fetchval(
        "SELECT ean FROM meter_installations WHERE meter_id = $1 AND commodity = $2"
        " AND tstzrange(installed_from, installed_until) && tstzrange($3, $4) LIMIT 1",
        meter_id,
        commodity,
        start,
        end,
    )
    return ean


async def _overlapping_contract(
    conn: asyncpg.Connection, ean: str, start: dt.datetime, end: dt.datetime | None
) -> asyncpg.Record | None:
    """A contract of ``ean`` overlapping [start, end), if any."""
    return await conn.fetchrow(
        "SELECT contract_id, customer_id, contract_start, contract_end FROM contracts"
        " WHERE ean = $1 AND tstzrange(contract_start, contract_end) && tstzrange($2, $3)"
        " ORDER BY contract_start LIMIT 1",
        ean,
        start,
        end,
    )


def _overlap_error(ean: str, other: Mapping[str, Any]) -> ConflictError:
    until = other["contract_end"].isoformat() if other["contract_end"] else "open end"
    return ConflictError(
        f"contract {other['contract_id']} of customer {other['customer_id']} on connection {ean}"
        f" ({other['contract_start'].isoformat()} – {until}) overlaps that period"
    )


async def _contract(conn: asyncpg.Connection, contract_id: uuid.UUID) -> asyncpg.Record:
    row = await conn.fetchrow(
        f"SELECT {CONTRACT_COLUMNS} FROM {_CONTRACTS_OF} WHERE k.contract_id = $1", contract_id
    )
    if row is None:
        raise NotFoundError(f"no contract {contract_id}")
    return row


async def _meter_at(conn: asyncpg.Connection, ean: str, at: dt.datetime) -> str | None:
    """The meter installed on ``ean`` at ``at`` (or the latest one before, for an EAN whose
    meter was removed)."""
    meter: str | None = await conn.fetchval(
        "SELECT meter_id FROM meter_installations WHERE ean = $1 AND installed_from <= $2"
        " ORDER BY installed_from DESC LIMIT 1",
        ean,
        at,
    )
    return meter


async def add_connection(
    conn: asyncpg.Connection, new: ConnectionIn, *, actor: str = "admin"
) -> dict[str, Any]:
    """Register a connection with its first contract and meter; ConflictError if the EAN
    exists or the meter is installed elsewhere."""
    with _as_conflict():
        async with conn.transaction():
            await lock_registry(conn)
            if await conn.fetchval("SELECT 1 FROM connections WHERE ean = $1", new.ean):
                raise ConflictError(
                    f"connection {new.ean} is already registered; add a contract to it"
                    " (POST /v1/admin/contracts)"
                )
            other = await _meter_in_use(conn, new.commodity, new.meter_id, new.contract_start, None)
            if other is not None:
                raise ConflictError(
                    f"meter {new.meter_id} is installed on connection {other} during that period"
                )
            await conn.execute(
                "INSERT INTO connections (ean, commodity) VALUES ($1, $2)", new.ean, new.commodity
            )
            contract_id = await conn.fetchval(
                "INSERT INTO contracts (ean, customer_id, contract_start, contract_end)"
                " VALUES ($1, $2, $3, $4) RETURNING contract_id",
                new.ean,
                new.customer_id,
                new.contract_start,
                new.contract_end,
            )
            # the meter stays when the contract ends: the next tenant reads the same meter
            await conn.execute(
                "INSERT INTO meter_installations (ean, commodity, meter_id, installed_from)"
                " VALUES ($1, $2, $3, $4)",
                new.ean,
                new.commodity,
                new.meter_id,
                new.contract_start,
            )
            await audit.append(
                conn,
                kind=audit.KIND_REGISTRY_CHANGE,
                actor=actor,
                subject=new.customer_id,
                ean=new.ean,
                detail={
                    "change": "connection-added",
                    "commodity": new.commodity,
                    "contract_id": contract_id,
                },
            )
            row = await _contract(conn, contract_id)
    metrics.CONNECTIONS_REGISTERED.inc()
    return connection_json(row, new.meter_id)


async def get_meter(conn: asyncpg.Connection, ean: str) -> dict[str, Any]:
    """The shorthand view of a connection: its latest contract and current meter."""
    row = await conn.fetchrow(
        f"SELECT {CONTRACT_COLUMNS} FROM {_CONTRACTS_OF} WHERE k.ean = $1"
        " ORDER BY k.contract_start DESC LIMIT 1",
        ean,
    )
    if row is None:
        raise NotFoundError(f"no connection {ean} is registered")
    return connection_json(row, await _meter_at(conn, ean, dt.datetime.max.replace(tzinfo=dt.UTC)))


async def get_connection(conn: asyncpg.Connection, ean: str) -> dict[str, Any]:
    """A connection with its whole contract and meter history; NotFoundError if unknown."""
    found = await conn.fetchrow(
        "SELECT ean, commodity, created_at FROM connections WHERE ean = $1", ean
    )
    if found is None:
        raise NotFoundError(f"no connection {ean} is registered")
    contracts = await conn.fetch(
        f"SELECT {CONTRACT_COLUMNS} FROM {_CONTRACTS_OF} WHERE k.ean = $1"
        " ORDER BY k.contract_start",
        ean,
    )
    meters = await conn.fetch(
        "SELECT meter_id, installed_from, installed_until FROM meter_installations"
        " WHERE ean = $1 ORDER BY installed_from",
        ean,
    )
    return {
        "ean": found["ean"],
        "commodity": found["commodity"],
        "created_at": found["created_at"],
        "contracts": [contract_json(k) for k in contracts],
        "meters": [installation_json(m) for m in meters],
    }


async def add_contract(
    conn: asyncpg.Connection, new: ContractIn, *, actor: str = "admin"
) -> dict[str, Any]:
    """Register a supply contract on a known connection (a move-in, a switch to us); it starts
    at the default level with no consent. ConflictError naming the contract it would overlap,
    unless ``previous_end_reason`` hands over: the contract open at the start then ends there,
    in this transaction, keeping the daily and monthly readings measured since for the new
    contract (``end_contract(successor=True)``)."""
    with _as_conflict():
        async with conn.transaction():
            await lock_registry(conn)
            if not await conn.fetchval("SELECT 1 FROM connections WHERE ean = $1", new.ean):
                raise NotFoundError(f"no connection {new.ean} is registered")
            if new.previous_end_reason is not None:
                previous = await conn.fetchval(
                    "SELECT contract_id FROM contracts WHERE ean = $1 AND contract_start < $2"
                    " AND (contract_end IS NULL OR contract_end > $2)",
                    new.ean,
                    new.start,
                )
                if previous is not None:
                    await end_contract(
                        conn,
                        previous,
                        new.start,
                        new.previous_end_reason,
                        actor=actor,
                        successor=True,
                    )
            other = await _overlapping_contract(conn, new.ean, new.start, new.end)
            if other is not None:
                raise _overlap_error(new.ean, other)
            contract_id = await conn.fetchval(
                "INSERT INTO contracts (ean, customer_id, contract_start, contract_end)"
                " VALUES ($1, $2, $3, $4) RETURNING contract_id",
                new.ean,
                new.customer_id,
                new.start,
                new.end,
            )
            await audit.append(
                conn,
                kind=audit.KIND_REGISTRY_CHANGE,
                actor=actor,
                subject=new.customer_id,
                ean=new.ean,
                detail={"change": "contract-added", "contract_id": contract_id, "start": new.start},
            )
            row = await _contract(conn, contract_id)
    return contract_json(row)


async def end_contract(
    conn: asyncpg.Connection,
    contract_id: uuid.UUID,
    at: dt.datetime,
    reason: str,
    *,
    actor: str = "admin",
    successor: bool = False,
) -> dict[str, Any]:
    """End contract ``contract_id`` at ``at`` (``contract-ended``, ``move-out`` or ``switch``).

    In the same transaction (SPEC §3a, §4):

    1. the contract row is locked and its end set (the lock ingest's ``FOR SHARE OF k`` waits
       for, gateway.ingest.sql);
    2. every consent of the contract still open at ``at`` ends at ``at`` with the same reason,
       each as a revocation would (event, receipt data, webhook, interval readings at or after
       the end deleted);
    3. the EAN's readings measured in ``[at, old end)`` are deleted: after the end they belong
       to no contract (a back-dated end, or a meter clock running ahead);
    4. ``meterpoort_consent`` is notified (the contracts trigger) so every gateway process
       reroutes the meter.
    """
    if reason not in END_REASONS:
        raise ValidationError(
            f"end_reason must be one of {sorted(END_REASONS)}",
            [FieldError(("end_reason",), "unknown end reason")],
        )
    with _as_conflict():
        async with conn.transaction():
            await lock_registry(conn)
            row = await conn.fetchrow(
                "SELECT k.ean, n.commodity, k.customer_id, k.contract_start, k.contract_end,"
                " k.end_reason FROM contracts k JOIN connections n ON n.ean = k.ean"
                " WHERE k.contract_id = $1 FOR UPDATE OF k",
                contract_id,
            )
            if row is None:
                raise NotFoundError(f"no contract {contract_id}")
            ean: str = row["ean"]
            if row["end_reason"] is not None:
                raise ConflictError(
                    f"contract {contract_id} on connection {ean} has already ended"
                    f" ({row['end_reason']}, {row['contract_end'].isoformat()})"
                )
            if at <= row["contract_start"]:
                raise ValidationError(
                    "the end must be after the contract's start"
                    f" ({row['contract_start'].isoformat()})",
                    [FieldError(("end",), "before or at the contract start")],
                )
            later = await conn.fetchrow(
                "SELECT contract_id, customer_id, contract_start, contract_end FROM contracts"
                " WHERE ean = $1 AND contract_id <> $2 AND contract_start >= $3"
                " AND contract_start < $4 ORDER BY contract_start LIMIT 1",
                ean,
                contract_id,
                row["contract_start"],
                at,
            )
            if later is not None:
                raise _overlap_error(ean, later)
            # 1. the UPDATE first: it takes the row lock ingest's FOR SHARE conflicts with
            await conn.execute(
                "UPDATE contracts SET contract_end = $3, end_reason = $4, updated_at = now()"
                " WHERE ean = $1 AND contract_id = $2",
                ean,
                contract_id,
                at,
                reason,
            )
            # 2. its consents end with it
            ended = await end_consents_of_contract(
                conn, ean, contract_id, at, ConsentEndReason(reason), actor=actor
            )
            # 3. nothing measured after the end stays under it; with a successor from `at` on
            # (add_contract's handover) its daily and monthly readings are the successor's
            # consumption and stay, to be his: only interval data goes
            deleted = await _delete_readings_between(
                conn, ean, row["commodity"], at, row["contract_end"], reason, billing=not successor
            )
            await audit.append(
                conn,
                kind=audit.KIND_REGISTRY_CHANGE,
                actor=actor,
                subject=row["customer_id"],
                ean=ean,
                detail={
                    "change": reason,
                    "contract_id": contract_id,
                    "contract_end": at,
                    "consents_ended": len(ended),
                    "deleted_readings": deleted,
                },
            )
            updated = await _contract(conn, contract_id)
    return contract_json(updated)


async def _delete_readings_between(
    conn: asyncpg.Connection,
    ean: str,
    commodity: str,
    since: dt.datetime,
    until: dt.datetime | None,
    reason: str,
    *,
    billing: bool = True,
) -> int:
    """Delete the EAN's readings measured in [since, until): interval ones, and with
    ``billing`` the daily and monthly ones too."""
    deleted = 0
    tables = (INTERVAL_TABLE[commodity], *(BILLING_TABLES[commodity] if billing else ()))
    for table in tables:
        # a reading measured at or after `since` is in a period starting less than a month
        # before it: the bound lets the primary key and partition pruning find the rows
        await tombstones.label(conn, reason)
        status = await conn.execute(
            f"DELETE FROM {table} WHERE ean = $1::bigint AND measured_at >= $2"
            " AND ($3::timestamptz IS NULL OR measured_at < $3)"
            " AND period_start > $2 - interval '32 days'",
            int(ean),
            since,
            until,
        )
        deleted += int(status.rsplit(" ", 1)[-1])
    return deleted


async def end_current_contract(
    conn: asyncpg.Connection, ean: str, at: dt.datetime, reason: str, *, actor: str = "admin"
) -> dict[str, Any]:
    """The ``PATCH /v1/admin/meters/{ean}`` shorthand: end the contract that is open at
    ``at`` (or the latest one still open) on connection ``ean``."""
    # the contract in force at `at`, else the latest not yet ended (end_contract then says why
    # `at` does not fit it)
    contract_id = await conn.fetchval(
        "SELECT contract_id FROM contracts WHERE ean = $1 AND end_reason IS NULL"
        " ORDER BY (contract_start < $2 AND (contract_end IS NULL OR contract_end >= $2)) DESC,"
        " contract_start DESC LIMIT 1",
        ean,
        at,
    )
    if contract_id is None:
        if not await conn.fetchval("SELECT 1 FROM connections WHERE ean = $1", ean):
            raise NotFoundError(f"no connection {ean} is registered")
        latest = await conn.fetchrow(
            "SELECT contract_id, end_reason, contract_end FROM contracts WHERE ean = $1"
            " ORDER BY contract_start DESC LIMIT 1",
            ean,
        )
        if latest is not None and latest["end_reason"] is not None:
            raise ConflictError(
                f"the contract of connection {ean} ({latest['contract_id']}) has already ended"
                f" ({latest['end_reason']})"
            )
        raise ConflictError(f"no contract of connection {ean} is open at {at.isoformat()}")
    await end_contract(conn, contract_id, at, reason, actor=actor)
    return await get_meter(conn, ean)


async def exchange_meter(
    conn: asyncpg.Connection, ean: str, change: MeterExchangeIn, *, actor: str = "admin"
) -> dict[str, Any]:
    """A meter exchange on ``ean``: the meter installed at ``change.at`` leaves at that instant
    and ``change.meter_id`` is installed from it. ConflictError naming the EAN when the new
    meter is installed elsewhere then. Returns the connection with its history."""
    at = change.at
    with _as_conflict():
        async with conn.transaction():
            await lock_registry(conn)
            found = await conn.fetchrow("SELECT commodity FROM connections WHERE ean = $1", ean)
            if found is None:
                raise NotFoundError(f"no connection {ean} is registered")
            current = await conn.fetchrow(
                "SELECT installation_id, meter_id, installed_from, installed_until"
                " FROM meter_installations WHERE ean = $1 AND installed_from < $2"
                " AND (installed_until IS NULL OR installed_until > $2) FOR UPDATE",
                ean,
                at,
            )
            if current is None:
                raise ConflictError(
                    f"no meter is installed on connection {ean} at {at.isoformat()}"
                    " (an exchange must fall inside an installation)"
                )
            if current["meter_id"] == change.meter_id:
                raise ConflictError(f"meter {change.meter_id} is already installed on {ean}")
            until = current["installed_until"]
            other = await _meter_in_use(conn, found["commodity"], change.meter_id, at, until)
            if other is not None:
                raise ConflictError(
                    f"meter {change.meter_id} is installed on connection {other} during that period"
                )
            await conn.execute(
                "UPDATE meter_installations SET installed_until = $2 WHERE installation_id = $1",
                current["installation_id"],
                at,
            )
            await conn.execute(
                "INSERT INTO meter_installations (ean, commodity, meter_id, installed_from,"
                " installed_until) VALUES ($1, $2, $3, $4, $5)",
                ean,
                found["commodity"],
                change.meter_id,
                at,
                until,
            )
            await audit.append(
                conn,
                kind=audit.KIND_REGISTRY_CHANGE,
                actor=actor,
                subject=None,
                ean=ean,
                detail={
                    "change": "meter-exchange",
                    "old_meter_id": current["meter_id"],
                    "meter_id": change.meter_id,
                    "at": at,
                },
            )
            return await get_connection(conn, ean)
