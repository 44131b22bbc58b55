"""The registry: connections (EAN ↔ meter ↔ customer ↔ contract) and field devices.

The admin API (gateway.api.handlers.admin) and the CLI (gateway.cli) call the same functions here.
Registry writes take one transaction-level advisory lock: they are rare, and the lock lets the
rule "a meter id belongs to at most one connection of a commodity at a time" be enforced without
a unique index that would not include the EAN (which Citus could not distribute, SPEC §7).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import asyncpg
from pydantic import (
    AfterValidator,
    AwareDatetime,
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
from gateway.services.consents import end_consents_for_ean
from gateway.storage import audit, locks
from gateway.tokens import generate_token, hash_token

#: transaction advisory lock serialising registry writes ('mtrp' + 2)
REGISTRY_LOCK_KEY = locks.REGISTRY


Commodity = Literal["electricity", "gas"]
EndReason = Literal["contract-ended", "move-out"]
COMMODITIES: frozenset[str] = frozenset(("electricity", "gas"))
END_REASONS: frozenset[str] = frozenset(("contract-ended", "move-out"))
# meter equipment ids are printable ASCII after hex-decoding (DSMR 0-0:96.1.1 / 0-n:96.1.0)
MeterId = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=96, pattern=r"^[!-~]+$")
]
CustomerId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128)]

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
    """A connection to register."""

    model_config = ConfigDict(extra="forbid")

    ean: Ean
    commodity: Commodity
    meter_id: MeterId = Field(description="meter equipment id as in the telegram (decoded)")
    customer_id: CustomerId
    contract_start: AwareDatetime
    contract_end: AwareDatetime | None = None

    @model_validator(mode="after")
    def _period(self) -> ConnectionIn:
        if self.contract_end is not None and self.contract_end <= self.contract_start:
            raise ValueError("contract_end must be after contract_start")
        return self


class ContractEndIn(BaseModel):
    """Ending a connection's contract (contract ended, or the customer moved out)."""

    model_config = ConfigDict(extra="forbid")

    contract_end: AwareDatetime
    end_reason: EndReason


class DeviceIn(BaseModel):
    """A field device to register, bound to the meter equipment ids it reads."""

    model_config = ConfigDict(extra="forbid")

    meter_ids: list[MeterId] = Field(min_length=1, max_length=32)


@dataclass(frozen=True, slots=True)
class NewDevice:
    """A device just registered; ``token`` exists only here (the database keeps its hash)."""

    device_id: uuid.UUID
    token: str
    meter_ids: tuple[str, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "device_id": str(self.device_id),
            "token": self.token,
            "meter_ids": list(self.meter_ids),
        }


_CONNECTION_COLUMNS = (
    "ean, commodity, meter_id, customer_id, contract_start, contract_end, end_reason, level,"
    " created_at, updated_at"
)


def connection_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """A connection row as the API shows it (datetimes still datetime objects)."""
    return {
        "ean": row["ean"],
        "commodity": row["commodity"],
        "meter_id": row["meter_id"],
        "customer_id": row["customer_id"],
        "contract_start": row["contract_start"],
        "contract_end": row["contract_end"],
        "end_reason": row["end_reason"],
        "level": row["level"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


# ---------------------------------------------------------------------------------------------
# storage


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
    """The EAN of another connection using this meter during [start, end), if any."""
    ean: str | None = await conn.fetchval(
        "SELECT ean FROM connections WHERE meter_id = $1 AND commodity = $2"
        " AND (contract_end IS NULL OR contract_end > $3)"
        " AND ($4::timestamptz IS NULL OR contract_start < $4) LIMIT 1",
        meter_id,
        commodity,
        start,
        end,
    )
    return ean


async def add_connection(
    conn: asyncpg.Connection, new: ConnectionIn, *, actor: str = "admin"
) -> dict[str, Any]:
    """Register a connection; ConflictError if the EAN exists or the meter is in use."""
    async with conn.transaction():
        await lock_registry(conn)
        if await conn.fetchval("SELECT 1 FROM connections WHERE ean = $1", new.ean):
            raise ConflictError(f"connection {new.ean} is already registered")
        other = await _meter_in_use(
            conn, new.commodity, new.meter_id, new.contract_start, new.contract_end
        )
        if other is not None:
            raise ConflictError(
                f"meter {new.meter_id} already belongs to connection {other} during that period"
            )
        row = await conn.fetchrow(
            "INSERT INTO connections (ean, commodity, meter_id, customer_id, contract_start,"
            f" contract_end) VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_CONNECTION_COLUMNS}",
            new.ean,
            new.commodity,
            new.meter_id,
            new.customer_id,
            new.contract_start,
            new.contract_end,
        )
        await audit.append(
            conn,
            kind=audit.KIND_REGISTRY_CHANGE,
            actor=actor,
            subject=new.customer_id,
            ean=new.ean,
            detail={"change": "connection-added", "commodity": new.commodity},
        )
    metrics.CONNECTIONS_REGISTERED.inc()
    assert row is not None
    return connection_json(row)


async def get_connection(conn: asyncpg.Connection, ean: str) -> dict[str, Any]:
    """A registered connection; NotFoundError if there is none with this EAN."""
    row = await conn.fetchrow(f"SELECT {_CONNECTION_COLUMNS} FROM connections WHERE ean = $1", ean)
    if row is None:
        raise NotFoundError(f"no connection {ean} is registered")
    return connection_json(row)


async def end_contract(
    conn: asyncpg.Connection, ean: str, at: dt.datetime, reason: str, *, actor: str = "admin"
) -> dict[str, Any]:
    """End the contract of connection ``ean`` at ``at`` (``contract-ended`` or ``move-out``).

    In the same transaction (SPEC §4: a registry change ends every consent on that EAN at once):
    every consent on the EAN still open at ``at`` ends at ``at`` with the same reason, each end is
    recorded in ``consent_events``, interval readings measured at or after ``at`` are deleted
    (SPEC §3 invariant), and ``meterpoort_consent`` is notified (payload: the EAN) so every
    gateway process drops its cached consent state. Extend here, inside the transaction, for
    anything else that must end with a contract (webhook outbox rows).
    """
    if reason not in END_REASONS:
        raise ValidationError(
            f"end_reason must be one of {sorted(END_REASONS)}",
            [FieldError(("end_reason",), "unknown end reason")],
        )
    async with conn.transaction():
        await lock_registry(conn)
        row = await conn.fetchrow(
            "SELECT ean_num, contract_start, end_reason, contract_end FROM connections"
            " WHERE ean = $1 FOR UPDATE",
            ean,
        )
        if row is None:
            raise NotFoundError(f"no connection {ean} is registered")
        if row["end_reason"] is not None:
            raise ConflictError(
                f"the contract of connection {ean} has already ended ({row['end_reason']})"
            )
        if at <= row["contract_start"]:
            raise ValidationError(
                "contract_end must be after the contract start",
                [FieldError(("contract_end",), "before or at contract_start")],
            )
        updated = await conn.fetchrow(
            "UPDATE connections SET contract_end = $2, end_reason = $3, updated_at = now()"
            f" WHERE ean = $1 RETURNING {_CONNECTION_COLUMNS}",
            ean,
            at,
            reason,
        )
        # every consent still open ends with the contract, each as a revocation would (event,
        # readings at or after the end deleted, delete-purpose data removed), one NOTIFY
        await end_consents_for_ean(conn, ean, at, ConsentEndReason(reason), actor=actor)
        assert updated is not None
        await audit.append(
            conn,
            kind=audit.KIND_REGISTRY_CHANGE,
            actor=actor,
            subject=updated["customer_id"],
            ean=ean,
            detail={"change": reason, "contract_end": at},
        )
    assert updated is not None
    return connection_json(updated)


async def add_device(
    conn: asyncpg.Connection, meter_ids: Iterable[str], *, actor: str = "admin"
) -> NewDevice:
    """Register a device bound to ``meter_ids``; the returned token is shown once."""
    ids = tuple(dict.fromkeys(meter_ids))  # de-duplicated, order kept
    if not ids:
        raise ValidationError(
            "a device needs at least one meter id", [FieldError(("meter_ids",), "empty")]
        )
    token = generate_token()
    async with conn.transaction():
        device_id: uuid.UUID = await conn.fetchval(
            "INSERT INTO devices (token_hash, meter_ids) VALUES ($1, $2) RETURNING device_id",
            hash_token(token),
            list(ids),
        )
        # the token itself is never recorded, only that one was issued and for what
        await audit.append(
            conn,
            kind=audit.KIND_TOKEN_CREATE,
            actor=actor,
            subject=None,
            ean=None,
            detail={"token": "device", "device_id": device_id, "meter_ids": list(ids)},
        )
    metrics.DEVICES_REGISTERED.inc()
    return NewDevice(device_id, token, ids)
