"""Repeated authentication failures get 429 + Retry-After, over real HTTP from real addresses.

Callers connect from distinct loopback addresses (127.0.0.0/8 is all local on Linux), so the
gateway sees real peers. The throttle runs on a hand-turned clock: the window passes without
sleeping.

* every credential kind (admin, device, client, customer JWT): ``LIMIT`` wrong tokens from one
  address get 401, the next 429 before any token is checked (the right one too), while a valid
  device elsewhere keeps pushing telegrams; once the window has refilled a try, the address may
  try again;
* a leaked token prefix is bounded across addresses, one customer JWT replayed too, while valid
  credentials with other keys pass from those addresses;
* ``X-Forwarded-For`` names the client only when the peer is a trusted proxy; an IPv6 client is
  counted by its /64;
* the served OpenAPI document lists the 429 beside every 401.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from ipaddress import ip_network
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.api.app import create_app
from gateway.api.appkeys import INGEST_KEY, THROTTLE_KEY
from gateway.api.throttle import AuthThrottle
from gateway.cli.token import mint_dev_token
from gateway.settings import Settings
from gateway.tokens import generate_token
from tests.conftest import ADMIN_TOKEN
from tests.support import make_ean
from tests.support.telegram_builder import build_telegram

UTC = dt.UTC
PROBLEM = "application/problem+json"
LIMIT = 3
WINDOW_S = 30.0
#: after a burst, one more failure is allowed every window/limit seconds
STEP_S = WINDOW_S / LIMIT
PROXY = "127.0.0.9"

#: a request each credential kind may make: method and path
CALLS = {
    "admin": ("GET", "/v1/admin/devices"),
    "device": ("POST", "/v1/telegrams"),
    "client": ("GET", "/v1/consents?changed_since=2026-01-01T00:00:00Z"),
    "customer": ("GET", "/v1/me/connections"),
}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Gateway:
    server: TestServer
    settings: Settings
    clock: Clock
    valid: dict[str, str]
    sessions: dict[str, aiohttp.ClientSession] = field(default_factory=dict)
    pushed: int = 0

    def session(self, source: str) -> aiohttp.ClientSession:
        """A client session whose connections come from ``source``."""
        if source not in self.sessions:
            connector = aiohttp.TCPConnector(local_addr=(source, 0))
            self.sessions[source] = aiohttp.ClientSession(connector=connector)
        return self.sessions[source]

    def wrong(self, kind: str) -> str:
        """A fresh wrong token of ``kind`` (a JWT for customers: every one different)."""
        if kind != "customer":
            return generate_token()
        return mint_dev_token(
            self.settings.data_dir, "alice", "another-service", dt.timedelta(minutes=5)
        )

    async def call(
        self, source: str, kind: str, token: str, forwarded_for: str | None = None
    ) -> aiohttp.ClientResponse:
        method, path = CALLS[kind]
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "text/plain"}
        if forwarded_for is not None:
            headers["X-Forwarded-For"] = forwarded_for
        self.pushed += 1
        # a telegram a minute apart each time: the device's pushes are all new readings
        body = build_telegram("E1", now_s() - dt.timedelta(minutes=self.pushed))
        async with self.session(source).request(
            method,
            self.server.make_url(path),
            data=body if kind == "device" else None,
            headers=headers,
        ) as resp:
            await resp.read()
            return resp

    async def push_ok(self, source: str, forwarded_for: str | None = None) -> None:
        """The valid device pushes a telegram from ``source`` and it is taken."""
        resp = await self.call(source, "device", self.valid["device"], forwarded_for)
        assert resp.status == 200, await resp.text()


def now_s() -> dt.datetime:
    return dt.datetime.now(UTC).replace(microsecond=0)


async def assert_throttled(resp: aiohttp.ClientResponse) -> None:
    assert resp.status == 429, await resp.text()
    assert resp.content_type == PROBLEM
    assert resp.headers["Retry-After"] == str(math.ceil(STEP_S))
    body: dict[str, Any] = await resp.json(content_type=PROBLEM)
    assert body["type"] == "https://meterpoort.nl/problems/too-many-requests"
    assert body["status"] == 429


@pytest.fixture
async def gw(gateway_settings: Settings) -> AsyncIterator[Gateway]:
    settings = gateway_settings.model_copy(
        update={
            "dev_mode": True,
            "auth_failure_limit": LIMIT,
            "auth_failure_window_s": WINDOW_S,
            "trusted_proxies": [ip_network(f"{PROXY}/32")],
        }
    )
    app: web.Application = create_app(settings)
    clock = Clock()
    app[THROTTLE_KEY] = AuthThrottle.from_settings(settings, clock)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    gateway = Gateway(server, settings, clock, {"admin": ADMIN_TOKEN})
    try:
        admin = gateway.session("127.0.0.1")
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        meter = {
            "ean": make_ean(1),
            "commodity": "electricity",
            "meter_id": "E1",
            "customer_id": "alice",
            "contract_start": (now_s() - dt.timedelta(days=30)).isoformat(),
        }
        for path, body, kind in (
            ("/v1/admin/meters", meter, None),
            ("/v1/admin/devices", {"meter_ids": ["E1"]}, "device"),
            (
                "/v1/admin/clients",
                {"name": "billing", "granularities": ["P1D"], "purposes": ["energy-insights"]},
                "client",
            ),
        ):
            async with admin.post(server.make_url(path), json=body, headers=auth) as resp:
                assert resp.status == 201, await resp.text()
                if kind is not None:
                    gateway.valid[kind] = (await resp.json())["token"]
        # the consent index learns of the meter asynchronously (NOTIFY)
        index = app[INGEST_KEY].index
        for _ in range(500):
            if "E1" in index.electricity:
                break
            await asyncio.sleep(0.01)
        gateway.valid["customer"] = mint_dev_token(
            settings.data_dir, "alice", "meterpoort", dt.timedelta(minutes=10)
        )
        yield gateway
    finally:
        for session in gateway.sessions.values():
            await session.close()
        await server.close()


@pytest.mark.parametrize("kind", sorted(CALLS))
async def test_each_credential_kind_is_throttled_per_address(gw: Gateway, kind: str) -> None:
    attacker, elsewhere = "127.0.0.2", "127.0.0.3"
    for _ in range(LIMIT):
        assert (await gw.call(attacker, kind, gw.wrong(kind))).status == 401
        await gw.push_ok(elsewhere)
    await assert_throttled(await gw.call(attacker, kind, gw.wrong(kind)))
    # refused before the check: the right token gets the same answer, so 429 is no oracle
    await assert_throttled(await gw.call(attacker, kind, gw.valid[kind]))
    await gw.push_ok(elsewhere)

    gw.clock.now += STEP_S  # one failure's worth refilled: the address may try again
    assert (await gw.call(attacker, kind, gw.valid[kind])).status == 200
    assert (await gw.call(attacker, kind, gw.wrong(kind))).status == 401
    await assert_throttled(await gw.call(attacker, kind, gw.wrong(kind)))


async def test_a_leaked_token_prefix_is_throttled_from_any_address(gw: Gateway) -> None:
    guesses = [f"leakedAB{generate_token()[8:]}" for _ in range(LIMIT + 1)]
    for n, guess in enumerate(guesses[:LIMIT]):
        assert (await gw.call(f"127.0.1.{n}", "device", guess)).status == 401
    await assert_throttled(await gw.call("127.0.1.99", "device", guesses[LIMIT]))
    # each address failed once: valid tokens with other prefixes pass from all of them
    for n in range(LIMIT):
        await gw.push_ok(f"127.0.1.{n}")
    await gw.push_ok("127.0.1.99")


async def test_one_customer_token_replayed_from_many_addresses_is_throttled(gw: Gateway) -> None:
    stolen = mint_dev_token(
        gw.settings.data_dir,
        "alice",
        "meterpoort",
        dt.timedelta(minutes=1),
        now=dt.datetime.now(UTC) - dt.timedelta(hours=1),
    )
    for n in range(LIMIT):
        assert (await gw.call(f"127.0.2.{n}", "customer", stolen)).status == 401
    await assert_throttled(await gw.call("127.0.2.99", "customer", stolen))
    assert (await gw.call("127.0.2.99", "customer", gw.valid["customer"])).status == 200


async def test_forwarded_for_is_believed_from_trusted_proxies_only(gw: Gateway) -> None:
    # behind the proxy, the client is the address the proxy appended
    for _ in range(LIMIT):
        resp = await gw.call(PROXY, "admin", generate_token(), forwarded_for="203.0.113.7")
        assert resp.status == 401
    await assert_throttled(await gw.call(PROXY, "admin", ADMIN_TOKEN, "203.0.113.7"))
    # what the client wrote itself, left of the proxy's entry, changes nothing
    await assert_throttled(await gw.call(PROXY, "admin", ADMIN_TOKEN, "198.51.100.1, 203.0.113.7"))
    # another client behind the same proxy is not held up
    await gw.push_ok(PROXY, forwarded_for="203.0.113.8")

    # a chain of trusted proxies is looked past
    for _ in range(LIMIT):
        resp = await gw.call(PROXY, "client", generate_token(), f"192.0.2.77, {PROXY}")
        assert resp.status == 401
    await assert_throttled(await gw.call(PROXY, "client", generate_token(), "192.0.2.77"))

    # an IPv6 client is counted by its /64: rotating addresses inside it does not help
    for n in range(LIMIT):
        resp = await gw.call(PROXY, "device", generate_token(), f"2001:db8::{n + 1}")
        assert resp.status == 401
    await assert_throttled(await gw.call(PROXY, "device", generate_token(), "2001:db8::ffff"))
    await gw.push_ok(PROXY, forwarded_for="2001:db8:0:1::1")

    # from a peer that is not a trusted proxy the header is ignored: rotating it does not help
    for n in range(LIMIT):
        resp = await gw.call("127.0.0.4", "admin", generate_token(), f"192.0.2.{n}")
        assert resp.status == 401
    await assert_throttled(await gw.call("127.0.0.4", "admin", ADMIN_TOKEN, "192.0.2.200"))


async def test_the_served_api_document_lists_429_wherever_a_token_is_checked(gw: Gateway) -> None:
    async with gw.session("127.0.0.1").get(gw.server.make_url("/openapi.json")) as resp:
        doc = await resp.json()
    operations = [op for item in doc["paths"].values() for op in item.values()]
    checked = [op["responses"] for op in operations if "401" in op["responses"]]
    assert checked
    assert all("429" in responses for responses in checked)
