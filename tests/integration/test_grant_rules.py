"""One grant rule set for every entry point: the admin API and the customer API answer alike.

Each case runs through both doors, each on a connection of its own set up the same way; the
status and problem type must match, and a refused grant stores nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.api.app import create_app
from gateway.cli.token import mint_dev_token
from gateway.settings import Settings
from tests.support import make_ean

Client = TestClient[web.Request, web.Application]
PURPOSE = "dynamic-tariff-billing"
MAX_DAYS = 400


@pytest.fixture
def settings(gateway_settings: Settings) -> Settings:
    return gateway_settings.model_copy(
        update={"dev_mode": True, "consent_max_lifetime_days": MAX_DAYS}
    )


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[Client]:
    # the dev key exists before the app's authenticator looks for it
    mint_dev_token(settings.data_dir, "warm-up", "meterpoort", dt.timedelta(minutes=1))
    c: Client = TestClient(TestServer(create_app(settings), host="127.0.0.1", port=0))
    await c.start_server()
    try:
        yield c
    finally:
        await c.close()


Grant = Callable[[str, str, dict[str, Any]], Awaitable[tuple[int, dict[str, Any]]]]


@pytest.fixture
def doors(client: Client, settings: Settings, admin_headers: dict[str, str]) -> dict[str, Grant]:
    async def admin(ean: str, customer: str, extra: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        body = {"ean": ean, "customer_id": customer, "purpose": PURPOSE, "notice_version": "v1"}
        resp = await client.post(
            "/v1/admin/consents", json={**body, **extra}, headers=admin_headers
        )
        return resp.status, await resp.json()

    async def customer(
        ean: str, customer_id: str, extra: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        token = mint_dev_token(
            settings.data_dir, customer_id, "meterpoort", dt.timedelta(minutes=10)
        )
        resp = await client.post(
            "/v1/me/consents",
            json={"ean": ean, "purpose": PURPOSE, "notice_version": "v1", **extra},
            headers={"Authorization": f"Bearer {token}"},
        )
        return resp.status, await resp.json()

    return {"admin": admin, "customer": customer}


async def register(client: Client, admin: dict[str, str], n: int, customer: str) -> str:
    ean = make_ean(n)
    resp = await client.post(
        "/v1/admin/meters",
        json={
            "ean": ean,
            "commodity": "electricity",
            "meter_id": f"GR{n}",
            "customer_id": customer,
            "contract_start": (dt.datetime.now(dt.UTC) - dt.timedelta(days=10)).isoformat(),
        },
        headers=admin,
    )
    assert resp.status == 201, await resp.text()
    return ean


async def consents_on(pool: asyncpg.Pool, ean: str) -> int:
    count: int = await pool.fetchval("SELECT count(*) FROM consents WHERE ean = $1", ean)
    return count


async def answers(
    doors: dict[str, Grant],
    client: Client,
    admin: dict[str, str],
    pool: asyncpg.Pool,
    first_n: int,
    prepare: Callable[[str], Awaitable[None]],
    extra: dict[str, Any],
) -> dict[str, tuple[int, str]]:
    """Through each door: (status, problem type) of a grant on a freshly prepared connection."""
    out = {}
    for i, (name, grant) in enumerate(sorted(doors.items())):
        customer = f"cust-{first_n + i}"
        ean = await register(client, admin, first_n + i, customer)
        await prepare(ean)
        before = await consents_on(pool, ean)
        status, body = await grant(ean, customer, extra)
        if status >= 400:
            assert await consents_on(pool, ean) == before, (name, body)
        out[name] = (status, body.get("type", "created"))
    return out


async def test_a_second_consent_for_the_same_purpose_is_refused_alike(
    doors: dict[str, Grant], client: Client, admin_headers: dict[str, str], pool: asyncpg.Pool
) -> None:
    async def already_granted(ean: str) -> None:
        owner = await pool.fetchval("SELECT customer_id FROM contracts WHERE ean = $1", ean)
        status, body = await doors["admin"](ean, owner, {})
        assert status == 201, body

    got = await answers(doors, client, admin_headers, pool, 100, already_granted, {})
    assert got["admin"] == got["customer"]
    assert got["admin"][0] == 409


@pytest.mark.parametrize("level", ["monthly", "none"])
async def test_no_consent_on_a_connection_below_daily_alike(
    level: str,
    doors: dict[str, Grant],
    client: Client,
    settings: Settings,
    admin_headers: dict[str, str],
    pool: asyncpg.Pool,
) -> None:
    async def lowered(ean: str) -> None:
        owner = await pool.fetchval("SELECT customer_id FROM contracts WHERE ean = $1", ean)
        token = mint_dev_token(settings.data_dir, owner, "meterpoort", dt.timedelta(minutes=10))
        resp = await client.put(
            f"/v1/me/connections/{ean}/level",
            json={"level": level},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert resp.status == 200, await resp.text()

    got = await answers(doors, client, admin_headers, pool, 200, lowered, {})
    assert got["admin"] == got["customer"]
    assert got["admin"][0] == 409


async def nothing(ean: str) -> None:
    return None


@pytest.mark.parametrize(
    ("first", "extra", "status"),
    [
        # the configured cap (400 days here, not the 3-year default) binds both doors
        (300, {"expires_at_days": MAX_DAYS + 2}, 422),
        (310, {"expires_at_days": MAX_DAYS - 2}, 201),
        (320, {"expires_at_days": -1}, 422),
        (330, {"purpose": "no-such-purpose"}, 422),
    ],
)
async def test_lifetime_and_purpose_rules_alike(
    first: int,
    extra: dict[str, Any],
    status: int,
    doors: dict[str, Grant],
    client: Client,
    admin_headers: dict[str, str],
    pool: asyncpg.Pool,
) -> None:
    body = dict(extra)
    days = body.pop("expires_at_days", None)
    if days is not None:
        body["expires_at"] = (dt.datetime.now(dt.UTC) + dt.timedelta(days=days)).isoformat()
    got = await answers(doors, client, admin_headers, pool, first, nothing, body)
    assert got["admin"] == got["customer"]
    assert got["admin"][0] == status


async def test_a_stranger_cannot_learn_an_ean_through_the_customer_door(
    doors: dict[str, Grant], client: Client, admin_headers: dict[str, str], pool: asyncpg.Pool
) -> None:
    ean = await register(client, admin_headers, 400, "owner")
    status, body = await doors["customer"](ean, "stranger", {})
    assert status == 404, body
    unknown_status, unknown = await doors["customer"](make_ean(401), "stranger", {})
    assert unknown_status == 404 and unknown["detail"].replace(make_ean(401), ean) == body["detail"]
    assert await consents_on(pool, ean) == 0
