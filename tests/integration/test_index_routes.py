"""The materialised route table (migration 0015) stays what its view computes after every kind of
change the registry makes, concurrent ones included, and a full load from it routes exactly as
loading every EAN by itself (the live join) does."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import asyncpg
import pytest

from consent.levels import Commodity
from consent.model import EndReason
from consent.retention import RetentionPolicy
from gateway.ingest import consent_index
from gateway.services import consents as consent_store
from gateway.services import erasure, registry
from tests.support import make_ean
from tests.support.index_view import differences, index_view

UTC = dt.UTC
NOW = dt.datetime.now(UTC).replace(microsecond=0)
EANS = [make_ean(800 + n) for n in range(4)]
METERS = ["RT-E1", "RT-G2", "RT-E3", "RT-E4", "RT-E5", "RT\\E1"]
PROBES = [NOW - dt.timedelta(hours=6 * h) for h in range(0, 4 * 130)]

#: rows of the table that the view does not give, and the other way round
_MISMATCH = """
SELECT count(*) FROM (
  (SELECT ean, kind, numbers, meter_id, fields FROM index_routes
   EXCEPT ALL SELECT ean, kind, numbers, meter_id, fields FROM index_route_lines)
  UNION ALL
  (SELECT ean, kind, numbers, meter_id, fields FROM index_route_lines
   EXCEPT ALL SELECT ean, kind, numbers, meter_id, fields FROM index_routes)
) AS d
"""


async def assert_current(conn: asyncpg.Connection, step: str, *, as_view: bool = True) -> None:
    """The table equals the view (unless time moved on since a write: ``as_view``), and a full
    load equals a per-EAN load of every EAN."""
    if as_view:
        assert await conn.fetchval(_MISMATCH) == 0, step
    full = consent_index.ConsentIndex()
    await consent_index.load_all(conn, full)
    by_eans = consent_index.ConsentIndex()
    await consent_index.load_eans(conn, by_eans, EANS)
    now = dt.datetime.now(UTC)
    diff = differences(
        index_view(full, METERS, PROBES, now), index_view(by_eans, METERS, PROBES, now)
    )
    assert diff == [], f"{step}: {diff[:5]}"


def ago(days: float) -> dt.datetime:
    return NOW - dt.timedelta(days=days)


async def test_the_route_table_follows_every_kind_of_change(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        for ean, commodity, meter, customer in (
            (EANS[0], "electricity", "RT-E1", "alice"),
            (EANS[1], "gas", "RT-G2", "alice"),
            (EANS[2], "electricity", "RT-E3", "bob"),
        ):
            await registry.add_connection(
                conn,
                registry.ConnectionIn(
                    ean=ean,
                    commodity=commodity,
                    meter_id=meter,
                    customer_id=customer,
                    contract_start=ago(300),
                ),
            )
        await assert_current(conn, "connections added")
        assert await conn.fetchval("SELECT count(*) FROM index_routes WHERE kind <> 'R'") == 3

        granted = await consent_store.create_consent(
            conn,
            ean=EANS[0],
            customer_id="alice",
            purpose="dynamic-tariff-billing",
            notice_version="v1",
            granted_at=ago(20),
        )
        await assert_current(conn, "consent granted")
        await consent_store.end_consent(
            conn, uuid.UUID(str(granted["consent_id"])), EndReason.REVOKED
        )
        await assert_current(conn, "consent revoked")

        await conn.execute("UPDATE contracts SET level = 'monthly' WHERE ean = $1", EANS[1])
        await assert_current(conn, "level changed")

        contract = await conn.fetchval("SELECT contract_id FROM contracts WHERE ean = $1", EANS[2])
        await registry.end_contract(conn, contract, ago(200), "move-out")
        await assert_current(conn, "contract ended (move-out)")
        await registry.add_contract(
            conn, registry.ContractIn(ean=EANS[2], customer_id="carol", start=ago(150))
        )
        await assert_current(conn, "move-in after a gap")
        await registry.add_contract(
            conn,
            registry.ContractIn(
                ean=EANS[2], customer_id="dave", start=ago(100), previous_end_reason="switch"
            ),
        )
        await assert_current(conn, "switch")

        await registry.exchange_meter(
            conn, EANS[0], registry.MeterExchangeIn(meter_id="RT-E4", at=ago(50))
        )
        await assert_current(conn, "meter exchanged")
        # the old meter moves to another connection
        await registry.add_connection(
            conn,
            registry.ConnectionIn(
                ean=EANS[3],
                commodity="electricity",
                meter_id="RT-E1",
                customer_id="erin",
                contract_start=ago(40),
            ),
        )
        await assert_current(conn, "meter moved")

        await erasure.erase(conn, "bob", actor="admin", retention=RetentionPolicy())
        await assert_current(conn, "erasure")
        await conn.execute("DELETE FROM meter_installations WHERE ean = $1", EANS[3])
        await assert_current(conn, "installation deleted")
        await conn.execute("TRUNCATE meter_installations")
        assert await conn.fetchval("SELECT count(*) FROM index_routes") == 0
        await assert_current(conn, "installations truncated")


@pytest.mark.parametrize(
    ("meter_id", "kind"),
    [
        ("RT-E1", "EW"),  # the common consenting row, loaded in bulk (migration 0016)
        ("RT\\E1", "R"),  # a meter id with a COPY escape: a row read one by one
    ],
)
async def test_a_consent_that_expires_after_it_was_written_is_not_loaded(
    pool: asyncpg.Pool, meter_id: str, kind: str
) -> None:
    """Time moves without a write: the table keeps the consent, the load leaves it out (both
    ways of loading a consenting row)."""
    async with pool.acquire() as conn:
        await registry.add_connection(
            conn,
            registry.ConnectionIn(
                ean=EANS[0],
                commodity="electricity",
                meter_id=meter_id,
                customer_id="alice",
                contract_start=ago(30),
            ),
        )
        soon = dt.datetime.now(UTC) + dt.timedelta(seconds=1)
        await consent_store.create_consent(
            conn,
            ean=EANS[0],
            customer_id="alice",
            purpose="dynamic-tariff-billing",
            notice_version="v1",
            granted_at=ago(10),
            expires_at=soon,
        )
        loaded = consent_index.ConsentIndex()
        await consent_index.load_all(conn, loaded)
        route = loaded.route(meter_id, Commodity.ELECTRICITY, ago(1))
        assert route is not None and route.windows != ()
        await asyncio.sleep((soon - dt.datetime.now(UTC)).total_seconds() + 1.1)
        assert await conn.fetchval("SELECT count(*) FROM index_routes WHERE kind = $1", kind) == 1
        await consent_index.load_all(conn, loaded)
        route = loaded.route(meter_id, Commodity.ELECTRICITY, ago(1))
        assert route is not None and route.windows == () and route.level_depth == 2
        # the table still has the consent the view no longer gives; the loads agree
        assert await conn.fetchval(_MISMATCH) == 2
        await assert_current(conn, "consent expired", as_view=False)


async def test_concurrent_changes_of_one_ean_leave_its_rows_current(pool: asyncpg.Pool) -> None:
    """A level change and a grant on one EAN in two open transactions: the second refresh waits
    for the first transaction and computes its rows with both changes."""
    async with pool.acquire() as conn:
        await registry.add_connection(
            conn,
            registry.ConnectionIn(
                ean=EANS[0],
                commodity="electricity",
                meter_id="RT-E1",
                customer_id="alice",
                contract_start=ago(30),
            ),
        )
        contract = await conn.fetchval("SELECT contract_id FROM contracts WHERE ean = $1", EANS[0])
    async with pool.acquire() as first, pool.acquire() as second:
        one = first.transaction()
        await one.start()
        await first.execute("UPDATE contracts SET level = 'none' WHERE ean = $1", EANS[0])
        two = second.transaction()
        await two.start()
        grant = asyncio.create_task(
            second.execute(
                "INSERT INTO consents (ean, consent_id, contract_id, customer_id, purpose,"
                " notice_version, channel, granted_at)"
                " VALUES ($1, $2, $3, 'alice', 'p', 'v1', 'api', $4)",
                EANS[0],
                uuid.uuid4(),
                contract,
                ago(5),
            )
        )
        await asyncio.sleep(0.3)
        assert not grant.done()  # waits for the first transaction's lock on the EAN
        await one.commit()
        await grant
        await two.commit()
        await assert_current(first, "two transactions on one EAN")
        assert await first.fetchval("SELECT count(*) FROM index_routes") == 1
