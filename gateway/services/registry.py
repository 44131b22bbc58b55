"""The registry: connections (EAN ↔ meter ↔ customer ↔ contract) and field devices.

The admin API (gateway.api.handlers.admin) and the CLI (gateway.cli) call the same functions here.
Registry writes take one transaction-level advisory lock: they are rare, and the lock lets the
rule "a meter id belongs to at most one connection of a commodity at a time" be enforced without
a unique index that would not include the EAN (which Citus could not distribute, SPEC §7).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import itertools
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

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
    CsvImportError,
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


async def _lock_registry(conn: asyncpg.Connection) -> None:
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
        await _lock_registry(conn)
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
        await _lock_registry(conn)
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


# ---------------------------------------------------------------------------------------------
# CSV import

CSV_REQUIRED = ("ean", "commodity", "meter_id", "customer_id", "contract_start")
CSV_OPTIONAL = ("contract_end",)


@dataclass(frozen=True, slots=True)
class CsvRow:
    """One valid CSV row and the (1-based, physical) line it ended on."""

    line: int
    ean: str
    commodity: str
    meter_id: str
    customer_id: str
    contract_start: dt.datetime
    contract_end: dt.datetime | None


def parse_csv_time(text: str, tz: ZoneInfo) -> dt.datetime:
    """An RFC 3339 timestamp with offset, or a date meaning local midnight in ``tz``."""
    if len(text) == 10:
        day = dt.date.fromisoformat(text)
        return dt.datetime(day.year, day.month, day.day, tzinfo=tz)
    value = dt.datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError("a timestamp needs a UTC offset (e.g. 2024-01-01T00:00:00+01:00)")
    return value


def parse_connections_csv(text: str, tz: ZoneInfo) -> tuple[list[CsvRow], list[FieldError]]:
    """Parse and check a registry CSV; returns the valid rows and one error per bad row.

    Checks everything that does not need the database: header, EAN, commodity, ids, times,
    and duplicates within the file (EAN twice, one meter on two connections at once).
    """
    reader = csv.reader(io.StringIO(text, newline=""))
    errors: list[FieldError] = []
    try:
        header = next(reader)
    except StopIteration:
        return [], [FieldError(("line", 1, "row"), "empty file: expected a header line")]
    header = [h.strip().lstrip("\ufeff") for h in header]
    missing = [c for c in CSV_REQUIRED if c not in header]
    unknown = [c for c in header if c not in CSV_REQUIRED + CSV_OPTIONAL]
    if missing or unknown or len(set(header)) != len(header):
        parts = []
        if missing:
            parts.append(f"missing columns {missing}")
        if unknown:
            parts.append(f"unknown columns {unknown}")
        if len(set(header)) != len(header):
            parts.append("repeated columns")
        return [], [FieldError(("line", 1, "header"), "; ".join(parts))]
    index = {name: i for i, name in enumerate(header)}
    i_end = index.get("contract_end")
    width = len(header)

    rows: list[CsvRow] = []
    first_line_of_ean: dict[str, int] = {}
    for record in reader:
        line = reader.line_num
        if not record or (len(record) == 1 and not record[0].strip()):
            continue  # blank lines carry no row
        if len(record) != width:
            errors.append(
                FieldError(("line", line, "row"), f"expected {width} fields, got {len(record)}")
            )
            continue
        fields = [f.strip() for f in record]
        ean = fields[index["ean"]]
        commodity = fields[index["commodity"]]
        meter_id = fields[index["meter_id"]]
        customer_id = fields[index["customer_id"]]
        bad = len(errors)
        problem = ean_problem(ean)
        if problem is not None:
            errors.append(FieldError(("line", line, "ean"), problem))
        elif ean in first_line_of_ean:
            errors.append(
                FieldError(
                    ("line", line, "ean"), f"EAN repeated (first on line {first_line_of_ean[ean]})"
                )
            )
        else:
            first_line_of_ean[ean] = line
        if commodity not in COMMODITIES:
            errors.append(
                FieldError(("line", line, "commodity"), "commodity must be electricity or gas")
            )
        if not (0 < len(meter_id) <= 96 and meter_id.isascii() and meter_id.isprintable()) or (
            " " in meter_id
        ):
            errors.append(FieldError(("line", line, "meter_id"), "invalid meter id"))
        if not customer_id or len(customer_id) > 128:
            errors.append(FieldError(("line", line, "customer_id"), "invalid customer id"))
        start: dt.datetime | None = None
        end: dt.datetime | None = None
        try:
            start = parse_csv_time(fields[index["contract_start"]], tz)
        except ValueError as exc:
            errors.append(FieldError(("line", line, "contract_start"), _time_problem(exc)))
        if i_end is not None and fields[i_end]:
            try:
                end = parse_csv_time(fields[i_end], tz)
            except ValueError as exc:
                errors.append(FieldError(("line", line, "contract_end"), _time_problem(exc)))
        if start is not None and end is not None and end <= start:
            errors.append(
                FieldError(
                    ("line", line, "contract_end"), "contract_end must be after contract_start"
                )
            )
        if len(errors) == bad and start is not None:
            rows.append(CsvRow(line, ean, commodity, meter_id, customer_id, start, end))

    errors.extend(_meter_overlaps(rows))
    return rows, errors


def _time_problem(exc: ValueError) -> str:
    text = str(exc)
    if "UTC offset" in text:
        return text
    return "not a date (YYYY-MM-DD) or RFC 3339 timestamp"


def _meter_overlaps(rows: list[CsvRow]) -> list[FieldError]:
    """One error per row whose meter is also on an earlier row of the file at the same time."""
    by_meter: dict[tuple[str, str], list[CsvRow]] = {}
    for row in rows:
        by_meter.setdefault((row.commodity, row.meter_id), []).append(row)
    errors: list[FieldError] = []
    for group in by_meter.values():
        if len(group) < 2:
            continue
        group.sort(key=lambda r: r.contract_start)
        for prev, row in itertools.pairwise(group):
            if prev.contract_end is None or prev.contract_end > row.contract_start:
                errors.append(
                    FieldError(
                        ("line", row.line, "meter_id"),
                        f"meter {row.meter_id} is also on line {prev.line}"
                        " for an overlapping period",
                    )
                )
    errors.sort(key=lambda e: e.loc[1])
    return errors


async def import_connections_csv(
    conn: asyncpg.Connection, text: str, tz: ZoneInfo, *, actor: str = "admin"
) -> int:
    """Import a registry CSV all-or-nothing; returns the number of connections added.

    Columns (header line required): ean, commodity, meter_id, customer_id, contract_start
    [, contract_end]; times as RFC 3339 with offset or dates (local midnight in ``tz``).
    Every bad row is reported at once in a CsvImportError, with its line number and reason;
    then nothing is imported. Rows travel by COPY into a temporary table, so 100 000 rows take
    seconds.
    """
    rows, errors = parse_connections_csv(text, tz)
    if errors:
        raise _csv_error(errors)
    if not rows:
        return 0
    async with conn.transaction():
        await _lock_registry(conn)
        await conn.execute(
            "CREATE TEMPORARY TABLE registry_import (line int, ean text, commodity text,"
            " meter_id text, customer_id text, contract_start timestamptz,"
            " contract_end timestamptz) ON COMMIT DROP"
        )
        await conn.copy_records_to_table(
            "registry_import",
            records=[
                (
                    r.line,
                    r.ean,
                    r.commodity,
                    r.meter_id,
                    r.customer_id,
                    r.contract_start,
                    r.contract_end,
                )
                for r in rows
            ],
        )
        await conn.execute("ANALYZE registry_import")
        clashes = await conn.fetch(
            "SELECT i.line, 'ean' AS col, 'connection ' || i.ean || ' is already registered'"
            " AS msg FROM registry_import i JOIN connections c USING (ean)"
            " UNION ALL"
            " SELECT i.line, 'meter_id', 'meter ' || i.meter_id || ' already belongs to"
            " connection ' || c.ean || ' during that period'"
            " FROM registry_import i JOIN connections c"
            "   ON c.meter_id = i.meter_id AND c.commodity = i.commodity AND c.ean <> i.ean"
            "  AND (c.contract_end IS NULL OR c.contract_end > i.contract_start)"
            "  AND (i.contract_end IS NULL OR c.contract_start < i.contract_end)"
            " ORDER BY 1"
        )
        if clashes:
            raise _csv_error([FieldError(("line", r["line"], r["col"]), r["msg"]) for r in clashes])
        inserted = await conn.execute(
            "INSERT INTO connections (ean, commodity, meter_id, customer_id, contract_start,"
            " contract_end) SELECT ean, commodity, meter_id, customer_id, contract_start,"
            " contract_end FROM registry_import"
        )
        # one audit row per import (not per connection): what changed is in the registry itself
        await audit.append(
            conn,
            kind=audit.KIND_REGISTRY_CHANGE,
            actor=actor,
            subject=None,
            ean=None,
            detail={"change": "csv-import", "connections": int(inserted.rsplit(" ", 1)[1])},
        )
    count = int(inserted.rsplit(" ", 1)[1])
    metrics.CONNECTIONS_REGISTERED.inc(count)
    return count


def _csv_error(errors: list[FieldError]) -> CsvImportError:
    lines = sorted({int(e.loc[1]) for e in errors})
    shown = ", ".join(str(n) for n in lines[:10]) + (" …" if len(lines) > 10 else "")
    return CsvImportError(f"{len(lines)} bad row(s), nothing imported; lines: {shown}", errors)
