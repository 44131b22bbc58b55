"""A customer's consumption per period, computed from their stored register readings: what the
portal's charts show (``GET /v1/me/consumption``).

A stored reading is a register snapshot, not an amount: SPEC §3 keeps, per period, the reading
with the **earliest measured time inside that period**. A daily (``P1D``) reading is therefore
the meter's registers at the first telegram of the local day — at or just after local midnight
when the device was online, later when it was not. The consumption of a period is the increase
from its reading to the reading of the next period: day D's bar is ``reading(D + 1) −
reading(D)``, a quarter's or an hour's likewise. A period whose own or whose next reading is
missing has no value (a gap, never a zero), and so has a pair that would mix two meters (a meter
exchange between the two measured times: the new meter's registers start elsewhere) or whose
registers went down.

Which readings are the customer's is the export's rule, reused (``customers.iter_readings``:
measured inside one of their contract windows, SPEC §3a); a pair is only taken inside one
contract, so the bar of a contract's last day (whose closing reading was measured after the
contract ended) is a gap too. The read is recorded in the access log (``data.read``, actor
``customer:<id>``) in its own committed transaction before any reading leaves, like the export.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import asyncpg

from consent.levels import Granularity
from gateway.errors import FieldError, NotFoundError, ValidationError
from gateway.ingest.periods import period_end, period_start
from gateway.services.customers import (
    CONTRACT_WINDOW,
    connections_of,
    customer_actor,
    iter_readings,
)
from gateway.storage import audit
from gateway.storage.schema import INTERVAL_TABLE, READING_TABLES, ReadingTable

#: the longest range one request may ask for, per granularity (bounds the answer: 31 days of
#: quarters are 2 976 periods, 400 days 400, 10 years of months 120)
MAX_SPAN: Final[dict[str, dt.timedelta]] = {
    Granularity.PT15M.value: dt.timedelta(days=31),
    Granularity.PT1H.value: dt.timedelta(days=31),
    Granularity.P1D.value: dt.timedelta(days=400),
    Granularity.P1M.value: dt.timedelta(days=3700),
}
#: the unit of each commodity's amounts (integers, like the registers they come from)
UNITS: Final = {"electricity": "Wh", "gas": "dm3"}


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One stored reading of a period: when it was measured, under which contract, and its
    amounts' registers (electricity: import and export in Wh, T1 + T2 — a totals-only meter has
    its total in T1 and no T2; gas: volume in dm³). ``None`` for a register the meter lacks."""

    period_start: dt.datetime
    measured_at: dt.datetime
    contract_id: Any
    registers: tuple[int | None, ...]


@dataclass(frozen=True, slots=True)
class Amount:
    """The consumption of one period: the increase of each amount between two snapshots."""

    period_start: dt.datetime
    period_end: dt.datetime
    contract_id: Any
    measured_from: dt.datetime
    measured_to: dt.datetime
    values: tuple[int, ...]


def table_for(commodity: str, granularity: str) -> ReadingTable:
    """The reading table of ``commodity`` at ``granularity``; ValidationError when the
    commodity has no such readings (hourly electricity, quarter-hourly gas)."""
    for table in READING_TABLES.values():
        if table.commodity == commodity and table.granularity == granularity:
            return table
    offered = [t.granularity for t in READING_TABLES.values() if t.commodity == commodity]
    raise ValidationError(
        f"{commodity} has no {granularity} readings",
        [FieldError(("query", "granularity"), f"one of {', '.join(offered)} for {commodity}")],
    )


def _amounts(table: ReadingTable, registers: tuple[int | None, ...]) -> tuple[int | None, ...]:
    """The amounts a snapshot holds: (import, export) for electricity, (volume,) for gas. An
    amount is None when none of its registers is there."""
    if table.commodity != "electricity":
        return registers
    i1, i2, e1, e2 = registers
    return (_sum(i1, i2), _sum(e1, e2))


def _sum(a: int | None, b: int | None) -> int | None:
    if a is None and b is None:
        return None
    return (a or 0) + (b or 0)


def differences(
    granularity: Granularity,
    snapshots: Sequence[Snapshot],
    meter_changes: Sequence[dt.datetime] = (),
) -> list[Amount]:
    """The consumption of each period of ``snapshots`` (sorted by period) whose next period's
    snapshot is there too, under the same contract, with no meter change in between (an
    installation starting in ``(measured_at, next measured_at]``) and no amount going down or
    missing on one side only. Every other period is left out: a gap."""
    out: list[Amount] = []
    for here, after in itertools.pairwise(snapshots):
        end = period_end(granularity, here.period_start)
        if after.period_start != end or after.contract_id != here.contract_id:
            continue
        if any(here.measured_at < m <= after.measured_at for m in meter_changes):
            continue
        values: list[int] = []
        for a, b in zip(here.registers, after.registers, strict=True):
            if a is None and b is None:
                values.append(0)  # the meter has no such register (no export on a gas meter…)
            elif a is None or b is None or b < a:
                break
            else:
                values.append(b - a)
        else:
            out.append(
                Amount(
                    here.period_start,
                    end,
                    here.contract_id,
                    here.measured_at,
                    after.measured_at,
                    tuple(values),
                )
            )
    return out


def amount_json(table: ReadingTable, amount: Amount) -> dict[str, Any]:
    """One period of the answer; datetimes are serialised by the caller."""
    out: dict[str, Any] = {
        "period_start": amount.period_start,
        "period_end": amount.period_end,
        "contract_id": amount.contract_id,
        "measured_from": amount.measured_from,
        "measured_to": amount.measured_to,
    }
    if table.commodity == "electricity":
        out["import_wh"], out["export_wh"] = amount.values
    else:
        (out["volume_dm3"],) = amount.values
    return out


async def consumption(
    conn: asyncpg.Connection,
    customer_id: str,
    ean: str,
    granularity: str,
    start: dt.datetime,
    end: dt.datetime,
) -> dict[str, Any]:
    """The customer's consumption on ``ean`` for the periods starting in ``[start, end)``, with
    the range of their stored interval readings on it (what a day's profile can show).
    NotFoundError when the customer has no contract on ``ean`` (someone else's and none are
    not told apart); ValidationError for a granularity the commodity lacks or a range that is
    empty or too long."""
    if end <= start:
        raise ValidationError(
            "'to' must be after 'from'", [FieldError(("query", "to"), "not after 'from'")]
        )
    if end - start > MAX_SPAN[granularity]:
        raise ValidationError(
            f"at most {MAX_SPAN[granularity].days} days of {granularity} periods at once",
            [FieldError(("query", "to"), "range too long")],
        )
    contracts = [k for k in await connections_of(conn, customer_id) if k["ean"] == ean]
    if not contracts:
        raise NotFoundError("you have no connection with this EAN")
    commodity: str = contracts[0]["commodity"]
    table = table_for(commodity, granularity)
    gran = Granularity(granularity)
    # the readings closing the last period: the one starting at that period's end
    last = period_end(gran, period_start(gran, end - dt.timedelta(microseconds=1)))
    first = period_start(gran, start)

    # audited, committed, before anything is read: a read is never unaudited
    async with conn.transaction():
        await audit.append(
            conn,
            kind=audit.KIND_READ,
            actor=customer_actor(customer_id),
            subject=customer_id,
            ean=ean,
            detail={
                "data": "readings",
                "reader": "customer",
                "granularity": granularity,
                "from": start,
                "to": end,
                "eans": [ean],
            },
        )
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        snapshots: list[Snapshot] = []
        for k in contracts:
            async for row in iter_readings(conn, table, k, periods=(first, last)):
                snapshots.append(
                    Snapshot(
                        row["period_start"],
                        row["measured_at"],
                        k["contract_id"],
                        _amounts(table, tuple(row[c] for c in table.registers)),
                    )
                )
        snapshots.sort(key=lambda s: s.period_start)
        changes: list[dt.datetime] = [
            r["installed_from"]
            for r in await conn.fetch(
                "SELECT installed_from FROM meter_installations WHERE ean = $1"
                " AND installed_from > $2 AND installed_from <= $3",
                ean,
                first - dt.timedelta(days=1),
                last + dt.timedelta(days=1),
            )
        ]
        interval = await _interval_range(conn, commodity, contracts)
    amounts = [a for a in differences(gran, snapshots, changes) if start <= a.period_start < end]
    return {
        "ean": ean,
        "commodity": commodity,
        "granularity": granularity,
        "from": start,
        "to": end,
        "unit": UNITS[commodity],
        "periods": [amount_json(table, a) for a in amounts],
        "interval": interval,
    }


async def _interval_range(
    conn: asyncpg.Connection, commodity: str, contracts: Sequence[Mapping[str, Any]]
) -> dict[str, Any] | None:
    """The first and last period of the interval readings stored in the customer's windows on
    the connection (``None``: there are none), so the page offers a day's profile only where
    there is one."""
    table = READING_TABLES[INTERVAL_TABLE[commodity]]
    first: dt.datetime | None = None
    last: dt.datetime | None = None
    for k in contracts:
        row = await conn.fetchrow(
            f"SELECT min(r.period_start) AS lo, max(r.period_start) AS hi FROM {table.name} r"
            f" WHERE r.ean = $1 AND {CONTRACT_WINDOW}",
            k["ean_num"],
            k["contract_start"],
            k["contract_end"],
        )
        if row is None or row["lo"] is None:
            continue
        first = row["lo"] if first is None else min(first, row["lo"])
        last = row["hi"] if last is None else max(last, row["hi"])
    if first is None:
        return None
    return {"granularity": table.granularity, "first": first, "last": last}
