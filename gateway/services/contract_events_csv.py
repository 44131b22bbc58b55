"""Importing supply-contract events from a CSV file, all or nothing (``admin contracts
import``): the supplier CRM's daily sync of move-ins, move-outs, switches and contract ends
(SPEC §3a).

Columns (header line required): ``event,ean,customer_id,at[,end_reason]``.

* ``start``: a new contract of ``customer_id`` on ``ean`` from ``at`` (a move-in, a switch to
  us), open-ended;
* ``end``: the contract of ``customer_id`` on ``ean`` open at ``at`` ends then, with
  ``end_reason`` ``contract-ended``, ``move-out`` or ``switch`` (its consents end with it and
  readings measured after the end are deleted, as ``registry.end_contract`` does).

Times are RFC 3339 with an offset, or ``YYYY-MM-DD`` (local midnight).

The import is **idempotent**: a ``start`` whose contract (same EAN, customer and start) exists
already, and an ``end`` whose contract has already ended at the same time for the same reason,
are skipped, so the same file imported twice changes nothing the second time. Anything else
that conflicts with the registry (or with an earlier row of the file) is an error naming the
row and the contract it conflicts with.

All or nothing: every row is checked first, the file against the registry as it stands under
the registry lock, every bad row reported at once with its line (CsvImportError); then nothing
changes. A good file applies in one transaction, each row through the same service function as
one change made by hand (``registry.add_contract`` / ``registry.end_contract``, each a
savepoint). Rows apply EAN by EAN, in time order within an EAN (an ``end`` before a ``start``
at the same instant: a move-out and the next move-in on one line of the calendar).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal
from zoneinfo import ZoneInfo

import asyncpg

from consent.ean import ean_problem
from gateway.errors import CsvImportError, FieldError, GatewayError
from gateway.services import registry
from gateway.services.csv_table import csv_import_error, in_line_order, read_csv_table
from gateway.storage.schema import CUSTOMER_ID_RE
from gateway.times import parse_time

CSV_REQUIRED = ("event", "ean", "customer_id", "at")
CSV_OPTIONAL = ("end_reason",)
EVENTS = ("start", "end")

Event = Literal["start", "end"]


@dataclass(frozen=True, slots=True)
class EventRow:
    """One valid CSV row and the (1-based, physical) line it ended on."""

    line: int
    event: Event
    ean: str
    customer_id: str
    at: dt.datetime
    end_reason: str | None


def parse_contract_events_csv(
    text: str, tz: ZoneInfo
) -> tuple[list[EventRow], list[FieldError], set[str]]:
    """Parse and check a contract-events CSV without the database.

    Returns the valid rows, one error per problem of a bad row, and the EANs named by a bad
    row (their other rows are not checked against the registry: the bad row would change what
    they mean).
    """
    records, errors = read_csv_table(text, CSV_REQUIRED, CSV_OPTIONAL)
    rows: list[EventRow] = []
    tainted: set[str] = set()
    for record in records:
        bad = len(errors)
        line, values = record.line, record.values
        event = values["event"]
        ean = values["ean"]
        customer_id = values["customer_id"]
        reason = values["end_reason"]
        if event not in EVENTS:
            errors.append(FieldError(("line", line, "event"), "event must be start or end"))
        problem = ean_problem(ean)
        if problem is not None:
            errors.append(FieldError(("line", line, "ean"), problem))
        if not CUSTOMER_ID_RE.fullmatch(customer_id):
            errors.append(FieldError(("line", line, "customer_id"), "invalid customer id"))
        at: dt.datetime | None = None
        try:
            at = parse_time(values["at"], tz)
        except ValueError as exc:
            errors.append(FieldError(("line", line, "at"), str(exc)))
        if event == "end" and reason not in registry.END_REASONS:
            errors.append(
                FieldError(
                    ("line", line, "end_reason"),
                    "an end needs end_reason " + " | ".join(sorted(registry.END_REASONS)),
                )
            )
        elif event == "start" and reason:
            errors.append(FieldError(("line", line, "end_reason"), "a start takes no end_reason"))
        if len(errors) > bad:
            tainted.add(ean)
        elif at is not None and event in EVENTS:
            rows.append(
                EventRow(
                    line,
                    "start" if event == "start" else "end",
                    ean,
                    customer_id,
                    at,
                    reason or None,
                )
            )
    return rows, in_line_order(errors), tainted


# ---------------------------------------------------------------------------------------------
# checking the file against the registry (a model of each named EAN's contracts)


@dataclass(slots=True)
class _Contract:
    """A contract of the registry, or one a row of the file starts (``contract_id`` None until
    it is applied), as the file's rows change it."""

    contract_id: uuid.UUID | None
    customer_id: str
    start: dt.datetime
    end: dt.datetime | None
    end_reason: str | None
    line: int | None = None  # the row of the file that starts it

    def describe(self, ean: str) -> str:
        until = self.end.isoformat() if self.end is not None else "open end"
        what = (
            f"contract {self.contract_id}"
            if self.contract_id is not None
            else f"the contract started on line {self.line}"
        )
        return (
            f"{what} of customer {self.customer_id} on connection {ean}"
            f" ({self.start.isoformat()} – {until})"
        )


@dataclass(frozen=True, slots=True)
class _Action:
    kind: Literal["start", "end", "skip"]
    row: EventRow
    contract: _Contract | None = None


def _apply_order(rows: Iterable[EventRow]) -> list[EventRow]:
    """EAN by EAN (in the order the file first names them), by time within an EAN; at one
    instant an end before a start, then file order."""
    by_ean: dict[str, list[EventRow]] = {}
    for row in rows:
        by_ean.setdefault(row.ean, []).append(row)
    ordered: list[EventRow] = []
    for group in by_ean.values():
        ordered.extend(sorted(group, key=lambda r: (r.at, r.event == "start", r.line)))
    return ordered


def _plan(
    rows: list[EventRow], known: set[str], contracts: dict[str, list[_Contract]]
) -> tuple[list[_Action], list[FieldError]]:
    """What each row does to the registry (start, end, skip), or why it cannot; ``contracts``
    (each EAN's contracts) is updated as the rows would change it."""
    actions: list[_Action] = []
    errors: list[FieldError] = []
    for row in _apply_order(rows):
        if row.ean not in known:
            errors.append(
                FieldError(("line", row.line, "ean"), f"no connection {row.ean} is registered")
            )
            continue
        ks = contracts.setdefault(row.ean, [])
        if row.event == "start":
            action, error = _plan_start(row, ks)
        else:
            action, error = _plan_end(row, ks)
        if error is not None:
            errors.append(error)
        elif action is not None:
            actions.append(action)
    return actions, errors


def _plan_start(row: EventRow, ks: list[_Contract]) -> tuple[_Action | None, FieldError | None]:
    for k in ks:
        if k.customer_id == row.customer_id and k.start == row.at:
            return _Action("skip", row), None  # imported before
    for k in sorted(ks, key=lambda k: k.start):
        if k.end is None or k.end > row.at:
            return None, FieldError(
                ("line", row.line, "at"),
                f"a contract from {row.at.isoformat()} would overlap {k.describe(row.ean)}",
            )
    new = _Contract(None, row.customer_id, row.at, None, None, row.line)
    ks.append(new)
    return _Action("start", row, new), None


def _plan_end(row: EventRow, ks: list[_Contract]) -> tuple[_Action | None, FieldError | None]:
    at = row.at
    mine = [k for k in ks if k.customer_id == row.customer_id and k.start < at]
    if not mine:
        open_then = [k for k in ks if k.start < at and (k.end is None or k.end > at)]
        then = f"; open then: {open_then[0].describe(row.ean)}" if open_then else ""
        return None, FieldError(
            ("line", row.line, "customer_id"),
            f"customer {row.customer_id} has no contract on connection {row.ean}"
            f" open at {at.isoformat()}{then}",
        )
    k = max(mine, key=lambda k: k.start)
    if k.end_reason is not None:
        if k.end == at and k.end_reason == row.end_reason:
            return _Action("skip", row), None  # imported before
        assert k.end is not None
        return None, FieldError(
            ("line", row.line, "at"),
            f"{k.describe(row.ean)} has already ended ({k.end_reason}, {k.end.isoformat()})",
        )
    if k.end is not None and k.end < at:
        return None, FieldError(
            ("line", row.line, "at"),
            f"{k.describe(row.ean)} is not open at {at.isoformat()}",
        )
    later = sorted((o for o in ks if o is not k and k.start <= o.start < at), key=lambda o: o.start)
    if later:
        return None, FieldError(
            ("line", row.line, "at"),
            f"ending {k.describe(row.ean)} at {at.isoformat()} would overlap"
            f" {later[0].describe(row.ean)}",
        )
    k.end = at
    k.end_reason = row.end_reason
    return _Action("end", row, k), None


async def _registry_state(
    conn: asyncpg.Connection, eans: list[str]
) -> tuple[set[str], dict[str, list[_Contract]]]:
    """The registered EANs among ``eans`` and their contracts."""
    known = {
        r["ean"]
        for r in await conn.fetch("SELECT ean FROM connections WHERE ean = ANY($1::text[])", eans)
    }
    contracts: dict[str, list[_Contract]] = {}
    for r in await conn.fetch(
        "SELECT ean, contract_id, customer_id, contract_start, contract_end, end_reason"
        " FROM contracts WHERE ean = ANY($1::text[]) ORDER BY ean, contract_start",
        eans,
    ):
        contracts.setdefault(r["ean"], []).append(
            _Contract(
                r["contract_id"],
                r["customer_id"],
                r["contract_start"],
                r["contract_end"],
                r["end_reason"],
            )
        )
    return known, contracts


# ---------------------------------------------------------------------------------------------


async def import_contract_events_csv(
    conn: asyncpg.Connection, text: str, tz: ZoneInfo, *, actor: str = "admin"
) -> dict[str, int]:
    """Import a contract-events CSV all-or-nothing and idempotently (see the module docstring);
    returns ``{"started": …, "ended": …, "skipped": …}``. CsvImportError listing every bad row
    (``loc`` ``["line", n, column]``) when any row is bad or conflicts; then nothing changed."""
    rows, errors, tainted = parse_contract_events_csv(text, tz)
    if not rows:
        if errors:
            raise _csv_error(errors)
        return {"started": 0, "ended": 0, "skipped": 0}
    counts = {"started": 0, "ended": 0, "skipped": 0}
    async with conn.transaction():
        await registry.lock_registry(conn)
        checked = [r for r in rows if r.ean not in tainted]
        known, contracts = await _registry_state(conn, sorted({r.ean for r in checked}))
        actions, problems = _plan(checked, known, contracts)
        errors.extend(problems)
        if errors:
            raise _csv_error(errors)
        for action in actions:
            row = action.row
            try:
                if action.kind == "start":
                    assert action.contract is not None
                    new = registry.ContractIn.model_validate(
                        {"ean": row.ean, "customer_id": row.customer_id, "start": row.at}
                    )
                    added = await registry.add_contract(conn, new, actor=actor)
                    action.contract.contract_id = added["contract_id"]
                    counts["started"] += 1
                elif action.kind == "end":
                    assert action.contract is not None
                    assert action.contract.contract_id is not None
                    assert row.end_reason is not None
                    await registry.end_contract(
                        conn, action.contract.contract_id, row.at, row.end_reason, actor=actor
                    )
                    counts["ended"] += 1
                else:
                    counts["skipped"] += 1
            except GatewayError as exc:
                # the check above should have caught it; the whole file is still refused
                raise _csv_error([FieldError(("line", row.line, "row"), exc.detail)]) from exc
    return counts


def _csv_error(errors: list[FieldError]) -> CsvImportError:
    # rows are checked against the registry EAN by EAN in time order: list them in file order
    errors = sorted(errors, key=lambda e: (int(e.loc[1]), str(e.loc[2])))
    return csv_import_error(errors, "nothing changed")
