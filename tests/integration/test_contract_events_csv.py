"""Contract-events CSV import (the CRM's daily sync): all-or-nothing, every bad row reported,
idempotent (the same file twice changes nothing the second time)."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from gateway.errors import CsvImportError
from gateway.services import registry
from gateway.services.contract_events_csv import import_contract_events_csv
from tests.support import insert_consent, make_ean

TZ = ZoneInfo("Europe/Amsterdam")
HEADER = "event,ean,customer_id,at,end_reason\n"
E1, E2, E3, E4 = make_ean(1), make_ean(2), make_ean(3), make_ean(4)
UNKNOWN = make_ean(99)


def local(day: str) -> dt.datetime:
    return dt.datetime.combine(dt.date.fromisoformat(day), dt.time(0), tzinfo=TZ).astimezone(dt.UTC)


async def _registry(pool: asyncpg.Pool) -> None:
    """Four connections, each with one open contract from 2024-01-01 (customers c1 … c4)."""
    async with pool.acquire() as conn:
        for n in (1, 2, 3, 4):
            await registry.add_connection(
                conn,
                registry.ConnectionIn(
                    ean=make_ean(n),
                    commodity="electricity",
                    meter_id=f"E{n:016d}",
                    customer_id=f"c{n}",
                    contract_start=local("2024-01-01"),
                ),
            )


async def _snapshot(pool: asyncpg.Pool) -> dict[str, Any]:
    """Everything an import may change."""
    return {
        "contracts": [
            dict(r)
            for r in await pool.fetch("SELECT * FROM contracts ORDER BY ean, contract_start")
        ],
        "consents": [dict(r) for r in await pool.fetch("SELECT * FROM consents ORDER BY 1, 2")],
        "consent_events": await pool.fetchval("SELECT count(*) FROM consent_events"),
        "audit": await pool.fetchval("SELECT count(*) FROM audit_log"),
        "outbox": await pool.fetchval("SELECT count(*) FROM outbox_events"),
    }


async def _contracts(pool: asyncpg.Pool, ean: str) -> list[tuple[Any, ...]]:
    rows = await pool.fetch(
        "SELECT customer_id, contract_start, contract_end, end_reason FROM contracts"
        " WHERE ean = $1 ORDER BY contract_start",
        ean,
    )
    return [tuple(r) for r in rows]


GOOD = (
    HEADER
    # E1: c1 moves out, n1 moves in the same day (the start row first: applied in time order)
    + f"start,{E1},n1,2024-06-01,\n"
    + f"end,{E1},c1,2024-06-01,move-out\n"
    # E2: c2's contract ends at an exact instant (RFC 3339); nobody supplied by us after that
    + f"end,{E2},c2,2024-03-01T12:00:00+01:00,contract-ended\n"
    # E3: c3's contract ends and is renewed, then the renewal ends too
    + f"end,{E3},c3,2024-02-01,contract-ended\n"
    + f"start,{E3},c3,2024-02-01,\n"
    + f"end,{E3},c3,2025-02-01,contract-ended\n"
)


async def test_good_file_applies_and_a_second_import_changes_nothing(pool: asyncpg.Pool) -> None:
    await _registry(pool)
    async with pool.acquire() as conn:
        consent_id = await insert_consent(
            conn,
            ean=E1,
            customer_id="c1",
            purpose="dynamic-tariff-billing",
            granted_at=local("2024-02-01"),
        )
        counts = await import_contract_events_csv(conn, GOOD, TZ)
    assert counts == {"started": 2, "ended": 4, "skipped": 0}

    assert await _contracts(pool, E1) == [
        ("c1", local("2024-01-01"), local("2024-06-01"), "move-out"),
        ("n1", local("2024-06-01"), None, None),
    ]
    assert await _contracts(pool, E2) == [
        ("c2", local("2024-01-01"), dt.datetime(2024, 3, 1, 11, tzinfo=dt.UTC), "contract-ended"),
    ]
    assert await _contracts(pool, E3) == [
        ("c3", local("2024-01-01"), local("2024-02-01"), "contract-ended"),
        ("c3", local("2024-02-01"), local("2025-02-01"), "contract-ended"),
    ]
    assert await _contracts(pool, E4) == [("c4", local("2024-01-01"), None, None)]
    # the contract's consent ended with it (registry.end_contract)
    consent = await pool.fetchrow(
        "SELECT ended_at, end_reason FROM consents WHERE consent_id = $1", consent_id
    )
    assert consent is not None
    assert tuple(consent) == (local("2024-06-01"), "move-out")

    before = await _snapshot(pool)
    async with pool.acquire() as conn:
        again = await import_contract_events_csv(conn, GOOD, TZ)
    assert again == {"started": 0, "ended": 0, "skipped": 6}
    assert await _snapshot(pool) == before

    # the next day's file repeats yesterday's rows and adds one: only the new row applies
    tomorrow = GOOD + f"end,{E1},n1,2024-09-01,move-out\n"
    async with pool.acquire() as conn:
        assert await import_contract_events_csv(conn, tomorrow, TZ) == {
            "started": 0,
            "ended": 1,
            "skipped": 6,
        }
    assert (await _contracts(pool, E1))[-1] == (
        "n1",
        local("2024-06-01"),
        local("2024-09-01"),
        "move-out",
    )


async def test_every_bad_row_is_reported_and_nothing_changes(pool: asyncpg.Pool) -> None:
    await _registry(pool)
    before = await _snapshot(pool)
    text = (
        HEADER
        + f"end,{E1},c1,2024-06-01,move-out\n"  # good (line 2)
        + f"begin,{E2},x,2024-06-01,\n"  # event (3)
        + f"start,{E2[:-1]}0,x,2024-06-01,\n"  # check digit (4)
        + f"start,{E3},x y,2024-06-01,\n"  # customer id (5)
        + f"start,{E3},x,2024-06-01T00:00:00,\n"  # no offset (6)
        + f"end,{E4},c4,2024-06-01,\n"  # an end without reason (7)
        + f"end,{E4},c4,2024-06-01,moved\n"  # unknown reason (8)
        + f"start,{UNKNOWN},x,2024-06-01,switch\n"  # a start with a reason (9)
        + f"start,{UNKNOWN},x\n"  # too few fields (10)
        + f"start,{make_ean(98)},x,2024-06-01,\n"  # connection not registered (11)
        + f"end,{E1},someone-else,2024-07-01,move-out\n"  # no contract of that customer (12)
        + f"start,{E1},n1,2024-05-01,\n"  # overlaps c1 (ends only 2024-06-01) (13)
        + f"end,{E1},c1,2024-08-01,move-out\n"  # c1 ended already, at another time (14)
    )
    async with pool.acquire() as conn:
        with pytest.raises(CsvImportError) as info:
            await import_contract_events_csv(conn, text, TZ)
    found = {(e.loc[1], e.loc[2]) for e in info.value.errors}
    assert found == {
        (3, "event"),
        (4, "ean"),
        (5, "customer_id"),
        (6, "at"),
        (7, "end_reason"),
        (8, "end_reason"),
        (9, "end_reason"),
        (10, "row"),
        (11, "ean"),
        (12, "customer_id"),
        (13, "at"),
        (14, "at"),
    }
    assert all(e.msg for e in info.value.errors)
    assert [e.loc[1] for e in info.value.errors] == sorted(e.loc[1] for e in info.value.errors)
    assert "nothing changed" in info.value.detail
    assert await _snapshot(pool) == before
    # line 2 is good (and was checked against the registry: c1's contract is open then)
    assert not any(e.loc[1] == 2 for e in info.value.errors)


async def test_an_overlapping_start_names_the_contract(pool: asyncpg.Pool) -> None:
    await _registry(pool)
    c1 = await pool.fetchval("SELECT contract_id FROM contracts WHERE ean = $1", E1)
    before = await _snapshot(pool)
    # n1 moves in while c1's contract is still open: the CRM missed the move-out
    text = HEADER + f"end,{E2},c2,2024-06-01,switch\n" + f"start,{E1},n1,2024-06-01,\n"
    async with pool.acquire() as conn:
        with pytest.raises(CsvImportError) as info:
            await import_contract_events_csv(conn, text, TZ)
    [error] = info.value.errors
    assert error.loc == ("line", 3, "at")
    assert str(c1) in error.msg and "c1" in error.msg and E1 in error.msg
    assert await _snapshot(pool) == before

    # a different end of an ended contract is a conflict too, naming it
    async with pool.acquire() as conn:
        await import_contract_events_csv(conn, HEADER + f"end,{E1},c1,2024-06-01,move-out\n", TZ)
        with pytest.raises(CsvImportError) as info:
            await import_contract_events_csv(conn, HEADER + f"end,{E1},c1,2024-06-01,switch\n", TZ)
    [error] = info.value.errors
    assert error.loc == ("line", 2, "at")
    assert str(c1) in error.msg and "already ended (move-out" in error.msg


async def test_rows_of_the_file_build_on_each_other(pool: asyncpg.Pool) -> None:
    await _registry(pool)
    text = (
        HEADER
        + f"end,{E4},c4,2024-03-01,move-out\n"
        + f"start,{E4},a,2024-03-01,\n"
        + f"start,{E4},b,2024-05-01,\n"  # a is still open then (line 4)
        + f"start,{E4},a,2024-03-01,\n"  # the same row twice: skipped
    )
    async with pool.acquire() as conn:
        with pytest.raises(CsvImportError) as info:
            await import_contract_events_csv(conn, text, TZ)
    [error] = info.value.errors
    assert error.loc == ("line", 4, "at")
    assert "the contract started on line 3 of customer a" in error.msg

    fixed = text.replace(f"start,{E4},b,2024-05-01,\n", f"end,{E4},a,2024-05-01,move-out\n")
    async with pool.acquire() as conn:
        counts = await import_contract_events_csv(conn, fixed, TZ)
    assert counts == {"started": 1, "ended": 2, "skipped": 1}
    assert await _contracts(pool, E4) == [
        ("c4", local("2024-01-01"), local("2024-03-01"), "move-out"),
        ("a", local("2024-03-01"), local("2024-05-01"), "move-out"),
    ]


async def test_a_switch_to_another_supplier_ends_the_contract(pool: asyncpg.Pool) -> None:
    await _registry(pool)
    async with pool.acquire() as conn:
        counts = await import_contract_events_csv(
            conn, HEADER + f"end,{E2},c2,2024-06-01,switch\n", TZ
        )
    assert counts == {"started": 0, "ended": 1, "skipped": 0}
    assert await _contracts(pool, E2) == [
        ("c2", local("2024-01-01"), local("2024-06-01"), "switch"),
    ]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty file"),
        ("event,ean,at\n", "missing columns ['customer_id']"),
        (HEADER.strip() + ",colour\n", "unknown columns"),
    ],
)
async def test_bad_header(pool: asyncpg.Pool, text: str, why: str) -> None:
    async with pool.acquire() as conn:
        with pytest.raises(CsvImportError) as info:
            await import_contract_events_csv(conn, text, TZ)
    assert why in info.value.errors[0].msg and info.value.errors[0].loc[1] == 1


async def test_header_only_and_optional_end_reason(pool: asyncpg.Pool) -> None:
    await _registry(pool)
    async with pool.acquire() as conn:
        assert await import_contract_events_csv(conn, HEADER, TZ) == {
            "started": 0,
            "ended": 0,
            "skipped": 0,
        }
        # a file of starts only may leave the end_reason column out
        await registry.end_contract(
            conn,
            await conn.fetchval("SELECT contract_id FROM contracts WHERE ean = $1", E2),
            local("2024-04-01"),
            "move-out",
        )
        text = f"ean,event,at,customer_id\r\n{E2},start,2024-04-01,z\r\n"
        assert await import_contract_events_csv(conn, text, TZ) == {
            "started": 1,
            "ended": 0,
            "skipped": 0,
        }
    assert (await _contracts(pool, E2))[-1] == ("z", local("2024-04-01"), None, None)
