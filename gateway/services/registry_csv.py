"""Importing connections from a CSV file, all or nothing (``admin meters import``).

Every row is checked first (EAN, commodity, meter id, customer, times, meters overlapping within
the file and with the registry); one bad row refuses the whole file, with every problem listed by
line. A good file is registered in one transaction, through the same rules as one connection
added by hand (``gateway.services.registry``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import asyncpg

from consent.ean import ean_problem
from gateway import metrics
from gateway.errors import FieldError
from gateway.services.csv_table import csv_import_error, in_line_order, read_csv_table
from gateway.services.registry import COMMODITIES, lock_registry
from gateway.storage import audit
from gateway.storage.schema import CUSTOMER_ID_RE
from gateway.times import parse_time

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


def parse_connections_csv(text: str, tz: ZoneInfo) -> tuple[list[CsvRow], list[FieldError]]:
    """Parse and check a registry CSV; returns the valid rows and one error per bad row.

    Checks everything that does not need the database: header, EAN, commodity, ids, times,
    and duplicates within the file (EAN twice, one meter on two connections at once).
    """
    records, errors = read_csv_table(text, CSV_REQUIRED, CSV_OPTIONAL)
    rows: list[CsvRow] = []
    first_line_of_ean: dict[str, int] = {}
    for record in records:
        line, values = record.line, record.values
        ean = values["ean"]
        commodity = values["commodity"]
        meter_id = values["meter_id"]
        customer_id = values["customer_id"]
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
        if not CUSTOMER_ID_RE.fullmatch(customer_id):
            errors.append(FieldError(("line", line, "customer_id"), "invalid customer id"))
        start: dt.datetime | None = None
        end: dt.datetime | None = None
        try:
            start = parse_time(values["contract_start"], tz)
        except ValueError as exc:
            errors.append(FieldError(("line", line, "contract_start"), _time_problem(exc)))
        if values["contract_end"]:
            try:
                end = parse_time(values["contract_end"], tz)
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

    errors = in_line_order(errors)  # a row of the wrong width among the rows' own errors
    errors.extend(_meter_overlaps(rows))
    return rows, errors


def _time_problem(exc: ValueError) -> str:
    text = str(exc)
    if "UTC offset" in text:
        return text
    return "not a date (YYYY-MM-DD) or RFC 3339 timestamp"


def _meter_overlaps(rows: list[CsvRow]) -> list[FieldError]:
    """One error per row whose meter is also on an earlier row of the file: a meter registered
    with a connection stays installed there (until a meter exchange), so two rows would put it
    on two EANs at once."""
    first: dict[tuple[str, str], CsvRow] = {}
    errors: list[FieldError] = []
    for row in rows:
        prev = first.setdefault((row.commodity, row.meter_id), row)
        if prev is not row:
            errors.append(
                FieldError(
                    ("line", row.line, "meter_id"),
                    f"meter {row.meter_id} is also on line {prev.line}",
                )
            )
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
        raise csv_import_error(errors)
    if not rows:
        return 0
    async with conn.transaction():
        await lock_registry(conn)
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
            " SELECT i.line, 'meter_id', 'meter ' || i.meter_id || ' is installed on"
            " connection ' || m.ean || ' during that period'"
            " FROM registry_import i JOIN meter_installations m"
            "   ON m.meter_id = i.meter_id AND m.commodity = i.commodity AND m.ean <> i.ean"
            "  AND tstzrange(m.installed_from, m.installed_until)"
            "   && tstzrange(i.contract_start, NULL)"
            " ORDER BY 1"
        )
        if clashes:
            raise csv_import_error(
                [FieldError(("line", r["line"], r["col"]), r["msg"]) for r in clashes]
            )
        inserted = await conn.execute(
            "INSERT INTO connections (ean, commodity) SELECT ean, commodity FROM registry_import"
        )
        await conn.execute(
            "INSERT INTO contracts (ean, customer_id, contract_start, contract_end)"
            " SELECT ean, customer_id, contract_start, contract_end FROM registry_import"
        )
        # the meter stays on the EAN after the contract ends (the next tenant reads it too)
        await conn.execute(
            "INSERT INTO meter_installations (ean, commodity, meter_id, installed_from)"
            " SELECT ean, commodity, meter_id, contract_start FROM registry_import"
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
