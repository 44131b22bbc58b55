"""Who may use ``/v1/me``, table-driven, over real HTTP on a real PostgreSQL.

* Customer A (alice) can neither read, grant, revoke, change the level of, export nor erase
  anything of customer B (bob): B's EAN and consent ids answer 404 exactly like ones that do not
  exist (no confirmation that they exist), and A's own reads, export and erasure never show or
  touch B's data.
* Only customer tokens open ``/v1/me``: no token, a device token, the admin token, a client-like
  opaque token, and JWTs that are expired, for another audience or signed by an unknown key all
  get 401 problem+json on every route, and change nothing.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.api.app import create_app
from gateway.api.customer_auth import DEV_ISSUER
from gateway.cli.token import mint_dev_token
from gateway.settings import Settings
from gateway.tokens import generate_token
from tests.support import make_ean

Client = TestClient[web.Request, web.Application]
UTC = dt.UTC


@dataclass
class Two:
    client: Client
    settings: Settings
    admin: dict[str, str]
    alice: dict[str, str]
    bob: dict[str, str]
    alice_ean: str
    bob_ean: str
    alice_consent: str
    bob_consent: str
    device: dict[str, str]


def customer_headers(settings: Settings, customer_id: str) -> dict[str, str]:
    token = mint_dev_token(settings.data_dir, customer_id, "meterpoort", dt.timedelta(minutes=10))
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def two(
    gateway_settings: Settings, admin_headers: dict[str, str], pool: asyncpg.Pool
) -> AsyncIterator[Two]:
    # the matrix fails hundreds of authentications from one address on purpose: the throttle
    # (tests/integration/test_auth_throttle.py) would answer 429 instead of the 401 checked here
    settings = gateway_settings.model_copy(update={"dev_mode": True, "auth_failure_limit": 100_000})
    alice = customer_headers(settings, "alice")
    bob = customer_headers(settings, "bob")
    client: Client = TestClient(TestServer(create_app(settings), host="127.0.0.1", port=0))
    await client.start_server()
    try:
        eans = {}
        consents = {}
        for n, who, headers in ((1, "alice", alice), (2, "bob", bob)):
            ean = make_ean(n)
            resp = await client.post(
                "/v1/admin/meters",
                json={
                    "ean": ean,
                    "commodity": "electricity",
                    "meter_id": f"M{n}",
                    "customer_id": who,
                    "contract_start": (dt.datetime.now(UTC) - dt.timedelta(days=30)).isoformat(),
                },
                headers=admin_headers,
            )
            assert resp.status == 201, await resp.text()
            resp = await client.post(
                "/v1/me/consents",
                json={"ean": ean, "purpose": "energy-insights", "notice_version": "v1"},
                headers=headers,
            )
            assert resp.status == 201, await resp.text()
            eans[who] = ean
            consents[who] = (await resp.json())["consent"]["consent_id"]
            # readings of every class, straight into the tables
            now = dt.datetime.now(UTC).replace(microsecond=0)
            for table in ("readings_e_pt15m", "readings_e_p1d", "readings_e_p1m"):
                await pool.execute(
                    f"INSERT INTO {table} (ean, period_start, measured_at, import_t1_wh)"
                    " VALUES ($1, $2, $2, 1)",
                    int(ean),
                    now - dt.timedelta(hours=2),
                )
        resp = await client.post(
            "/v1/admin/devices", json={"meter_ids": ["M1"]}, headers=admin_headers
        )
        device = {"Authorization": f"Bearer {(await resp.json())['token']}"}
        yield Two(
            client,
            settings,
            admin_headers,
            alice,
            bob,
            eans["alice"],
            eans["bob"],
            consents["alice"],
            consents["bob"],
            device,
        )
    finally:
        await client.close()


async def bob_state(pool: asyncpg.Pool, two: Two) -> dict[str, Any]:
    """Everything of bob's an attack could change."""
    return {
        "consent": dict(
            await pool.fetchrow(
                "SELECT ended_at, end_reason FROM consents WHERE consent_id = $1",
                uuid.UUID(two.bob_consent),
            )
        ),
        "consents": await pool.fetchval(
            "SELECT count(*) FROM consents WHERE ean = $1", two.bob_ean
        ),
        "level": await pool.fetchval("SELECT level FROM contracts WHERE ean = $1", two.bob_ean),
        "level_events": await pool.fetchval(
            "SELECT count(*) FROM level_events WHERE ean = $1", two.bob_ean
        ),
        "readings": [
            await pool.fetchval(f"SELECT count(*) FROM {t} WHERE ean = $1", int(two.bob_ean))
            for t in ("readings_e_pt15m", "readings_e_p1d", "readings_e_p1m")
        ],
    }


# (method, path template, json body template) — {ean} / {consent} are filled with the target's
ATTACKS: list[tuple[str, str, str, dict[str, Any] | None]] = [
    (
        "grant",
        "POST",
        "/v1/me/consents",
        {"ean": "{ean}", "purpose": "energy-insights", "notice_version": "v1"},
    ),
    ("revoke", "POST", "/v1/me/consents/{consent}/revoke", None),
    ("level", "PUT", "/v1/me/connections/{ean}/level", {"level": "none"}),
]


def fill(value: Any, ean: str, consent: str) -> Any:
    if isinstance(value, str):
        return value.replace("{ean}", ean).replace("{consent}", consent)
    if isinstance(value, dict):
        return {k: fill(v, ean, consent) for k, v in value.items()}
    return value


@pytest.mark.parametrize(("name", "method", "path", "body"), ATTACKS, ids=[a[0] for a in ATTACKS])
async def test_customer_a_cannot_change_customer_b(
    two: Two, pool: asyncpg.Pool, name: str, method: str, path: str, body: dict[str, Any] | None
) -> None:
    before = await bob_state(pool, two)
    # an EAN and a consent id that exist nowhere, for comparison
    ghost_ean, ghost_consent = make_ean(99), str(uuid.uuid4())
    answers = []
    for ean, consent in ((two.bob_ean, two.bob_consent), (ghost_ean, ghost_consent)):
        resp = await two.client.request(
            method,
            fill(path, ean, consent),
            json=fill(body, ean, consent),
            headers=two.alice,
        )
        assert resp.status == 404, (name, await resp.text())
        assert resp.content_type == "application/problem+json"
        problem = await resp.json()
        # the same answer as for something that does not exist (ids aside)
        answers.append(json.dumps(problem).replace(ean, "<ean>").replace(consent, "<consent>"))
    assert answers[0] == answers[1], name
    assert await bob_state(pool, two) == before
    # and bob himself can do it (the 404 was about who asks, not the request)
    resp = await two.client.request(
        method,
        fill(path, two.bob_ean, two.bob_consent),
        json=fill(body, two.bob_ean, two.bob_consent),
        headers=two.bob,
    )
    assert resp.status in (200, 201, 409), (name, await resp.text())


READS = [
    ("connections", "/v1/me/connections"),
    ("permission-log", "/v1/me/permission-log"),
    ("access-log", "/v1/me/access-log"),
    ("export-json", "/v1/me/export"),
    ("export-csv", "/v1/me/export?format=csv&table=readings_e_p1d"),
    ("export-interval-csv", "/v1/me/export?format=csv&table=readings_e_pt15m"),
]


@pytest.mark.parametrize(("name", "path"), READS, ids=[r[0] for r in READS])
async def test_customer_a_reads_nothing_of_customer_b(two: Two, name: str, path: str) -> None:
    resp = await two.client.get(path, headers=two.alice)
    assert resp.status == 200, (name, await resp.text())
    text = await resp.text()
    assert two.bob_ean not in text and two.bob_consent not in text, name
    assert str(int(two.bob_ean)) not in text and "bob" not in text, name
    if name.startswith("export") or name == "connections":
        assert two.alice_ean in text, name  # the read did return alice's own data


async def test_customer_a_reads_no_consumption_of_customer_b(two: Two) -> None:
    """Bob's EAN answers alice exactly like an EAN that exists nowhere; her own answers."""
    path = "/v1/me/consumption?ean={ean}&granularity=PT15M&from=2020-01-01&to=2020-01-02"
    answers = []
    for ean in (two.bob_ean, make_ean(99)):
        resp = await two.client.get(fill(path, ean, ""), headers=two.alice)
        assert resp.status == 404, await resp.text()
        assert resp.content_type == "application/problem+json"
        answers.append((await resp.text()).replace(ean, "<ean>"))
    assert answers[0] == answers[1]
    resp = await two.client.get(fill(path, two.alice_ean, ""), headers=two.alice)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["ean"] == two.alice_ean


async def test_customer_a_erasure_touches_nothing_of_customer_b(
    two: Two, pool: asyncpg.Pool
) -> None:
    before = await bob_state(pool, two)
    resp = await two.client.post("/v1/me/erasure", headers=two.alice)
    assert resp.status == 200, await resp.text()
    result = await resp.json()
    assert result["erased"]["consents_ended"] == 1 and result["erased"]["readings_e_pt15m"] == 1
    assert two.bob_ean not in json.dumps(result)
    assert await bob_state(pool, two) == before
    assert (
        await pool.fetchval(
            "SELECT end_reason FROM consents WHERE consent_id = $1", uuid.UUID(two.alice_consent)
        )
        == "erasure"
    )


# every /v1/me route with a request that would succeed for alice
ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/v1/me/connections", None),
    (
        "POST",
        "/v1/me/consents",
        {"ean": "{ean}", "purpose": "dynamic-tariff-billing", "notice_version": "v1"},
    ),
    ("POST", "/v1/me/consents/{consent}/revoke", None),
    ("PUT", "/v1/me/connections/{ean}/level", {"level": "monthly"}),
    ("GET", "/v1/me/permission-log", None),
    ("GET", "/v1/me/access-log", None),
    ("GET", "/v1/me/export", None),
    ("GET", "/v1/me/consumption?ean={ean}&granularity=P1D&from=2020-01-01&to=2020-02-01", None),
    ("POST", "/v1/me/erasure", None),
]


def forged(settings: Settings, **claims: Any) -> str:
    """A customer-shaped JWT that must not be accepted."""
    now = int(dt.datetime.now(UTC).timestamp())
    base = {"iss": DEV_ISSUER, "aud": "meterpoort", "sub": "alice", "exp": now + 600}
    base.update(claims)
    key = Ed25519PrivateKey.generate()  # not the dev key, not an identity provider's
    return jwt.encode(base, key, algorithm="EdDSA")


def unsigned_token() -> str:
    """An ``alg: none`` JWT claiming to be alice (built by hand: no library signs with none)."""

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    claims = {"iss": DEV_ISSUER, "aud": "meterpoort", "sub": "alice", "exp": 2**31}
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def bad_credentials(two: Two) -> dict[str, dict[str, str]]:
    key_path = two.settings.data_dir
    expired = mint_dev_token(
        key_path,
        "alice",
        "meterpoort",
        dt.timedelta(minutes=1),
        now=dt.datetime.now(UTC) - dt.timedelta(hours=1),
    )
    other_audience = mint_dev_token(key_path, "alice", "billing", dt.timedelta(minutes=5))
    return {
        "no token": {},
        "device token": two.device,
        "admin token": two.admin,
        "client-like opaque token": {"Authorization": f"Bearer {generate_token()}"},
        "unknown signing key": {"Authorization": f"Bearer {forged(two.settings)}"},
        "expired customer token": {"Authorization": f"Bearer {expired}"},
        "other audience": {"Authorization": f"Bearer {other_audience}"},
        "alg none": {"Authorization": f"Bearer {unsigned_token()}"},
        "basic auth": {"Authorization": "Basic YWxpY2U6cHc="},
    }


async def alice_state(pool: asyncpg.Pool, two: Two) -> dict[str, Any]:
    return {
        "consents": await pool.fetchval(
            "SELECT count(*) FROM consents WHERE ean = $1", two.alice_ean
        ),
        "ended": await pool.fetchval(
            "SELECT count(*) FROM consents WHERE ean = $1 AND ended_at IS NOT NULL", two.alice_ean
        ),
        "level": await pool.fetchval("SELECT level FROM contracts WHERE ean = $1", two.alice_ean),
        "pt15m": await pool.fetchval(
            "SELECT count(*) FROM readings_e_pt15m WHERE ean = $1", int(two.alice_ean)
        ),
        "audit": await pool.fetchval("SELECT count(*) FROM audit_log"),
    }


async def test_only_customer_tokens_open_v1_me(two: Two, pool: asyncpg.Pool) -> None:
    before = await alice_state(pool, two)
    checked = 0
    for credential, headers in bad_credentials(two).items():
        for method, path, body in ROUTES:
            resp = await two.client.request(
                method,
                fill(path, two.alice_ean, two.alice_consent),
                json=fill(body, two.alice_ean, two.alice_consent),
                headers=headers,
            )
            assert resp.status == 401, (credential, method, path, await resp.text())
            assert resp.content_type == "application/problem+json", (credential, path)
            problem = await resp.json()
            assert problem["type"].endswith("/unauthorized")
            assert two.alice_ean not in problem["detail"]
            checked += 1
    assert checked == len(ROUTES) * 9
    assert await alice_state(pool, two) == before
    # the same routes with alice's own token do work (the 401s were about the token)
    resp = await two.client.get("/v1/me/connections", headers=two.alice)
    assert resp.status == 200
