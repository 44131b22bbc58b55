"""Hostile request content against the served gateway (real HTTP over TCP, real PostgreSQL):
whatever a client puts in a body, a path, a query or a JWT, the answer is a 4xx problem+json with
a stable ``type`` (SPEC §6), never a 5xx, and the gateway goes on answering normal requests.

The cases are the input classes that once ended in a 500: NUL characters and lone surrogates
(text PostgreSQL refuses), very deep JSON nesting, integers beyond int64, dates at the edges of
the calendar, a Content-Encoding the body does not match, and odd JWT headers.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.api.app import create_app
from gateway.cli.token import mint_dev_token
from gateway.settings import Settings
from tests.support import make_ean
from tests.support.telegram_builder import build_telegram

Client = TestClient[web.Request, web.Application]

PROBLEMS = "https://meterpoort.nl/problems/"
BAD_REQUEST = PROBLEMS + "bad-request"
INVALID = PROBLEMS + "validation-error"
UNAUTHORIZED = PROBLEMS + "unauthorized"
UNSUPPORTED = PROBLEMS + "unsupported-media-type"
BROKEN_BODY = PROBLEMS + "invalid-body-framing"

EAN = make_ean(1)
METER = "E0000000000000001"
ZERO_ID = "00000000-0000-0000-0000-000000000000"


@dataclass
class World:
    client: Client
    headers: dict[str, dict[str, str]]


@pytest.fixture
async def world(gateway_settings: Settings, admin_headers: dict[str, str]) -> AsyncIterator[World]:
    settings = gateway_settings.model_copy(
        # hostile credentials on purpose, many from one address: throttling would answer 429
        # before the check under test (tests/integration/test_auth_throttle.py covers it)
        update={"dev_mode": True, "auth_failure_limit": 100_000}
    )
    # the dev key exists before the app's authenticator looks for it
    customer = mint_dev_token(settings.data_dir, "alice", "meterpoort", dt.timedelta(minutes=10))
    client: Client = TestClient(TestServer(create_app(settings), host="127.0.0.1", port=0))
    await client.start_server()
    try:
        start = (dt.datetime.now(dt.UTC) - dt.timedelta(days=3)).isoformat()
        meter = {
            "ean": EAN,
            "commodity": "electricity",
            "meter_id": METER,
            "customer_id": "alice",
            "contract_start": start,
        }
        resp = await client.post("/v1/admin/meters", json=meter, headers=admin_headers)
        assert resp.status == 201, await resp.text()
        resp = await client.post(
            "/v1/admin/devices", json={"meter_ids": [METER]}, headers=admin_headers
        )
        device = (await resp.json())["token"]
        resp = await client.post(
            "/v1/admin/clients",
            json={"name": "billing", "granularities": ["P1D"]},
            headers=admin_headers,
        )
        data_client = (await resp.json())["token"]
        yield World(
            client,
            {
                "admin": admin_headers,
                "customer": {"Authorization": f"Bearer {customer}"},
                "device": {"Authorization": f"Bearer {device}"},
                "client": {"Authorization": f"Bearer {data_client}"},
            },
        )
    finally:
        await client.close()


async def assert_problem(resp: Any, *types: str) -> dict[str, Any]:
    text = await resp.text()
    assert 400 <= resp.status < 500, (resp.status, text)
    assert resp.content_type == "application/problem+json", text
    problem: dict[str, Any] = json.loads(text)
    assert problem["type"] in types, problem
    assert problem["status"] == resp.status
    return problem


async def assert_still_serving(w: World) -> None:
    # a fresh connection: the gateway may close the one a broken body came on
    async with aiohttp.ClientSession() as session:
        url = w.client.make_url(f"/v1/admin/meters/{EAN}")
        async with session.get(url, headers=w.headers["admin"]) as resp:
            assert resp.status == 200, await resp.text()
        url = w.client.make_url("/v1/me/connections")
        async with session.get(url, headers=w.headers["customer"]) as resp:
            assert resp.status == 200, await resp.text()


# Every endpoint that reads a JSON body, with a body it would accept. ``{text}`` marks a string
# member that reaches PostgreSQL as text; ``{time}`` a time member.
JSON_ENDPOINTS: list[tuple[str, str, str, dict[str, Any], str]] = [
    (
        "POST",
        "/v1/admin/meters",
        "admin",
        {
            "ean": make_ean(2),
            "commodity": "electricity",
            "meter_id": "E0000000000000002",
            "customer_id": "{text}",
            "contract_start": "{time}",
        },
        "bob",
    ),
    (
        "PATCH",
        f"/v1/admin/meters/{EAN}",
        "admin",
        {"contract_end": "{time}", "end_reason": "{text}"},
        "contract-ended",
    ),
    (
        "POST",
        f"/v1/admin/connections/{EAN}/meter-exchange",
        "admin",
        {"meter_id": "{text}", "at": "{time}"},
        "E0000000000000009",
    ),
    (
        "POST",
        "/v1/admin/contracts",
        "admin",
        {"ean": EAN, "customer_id": "{text}", "start": "{time}", "previous_end_reason": "switch"},
        "bob",
    ),
    (
        "PATCH",
        f"/v1/admin/contracts/{ZERO_ID}",
        "admin",
        {"end": "{time}", "end_reason": "{text}"},
        "switch",
    ),
    ("POST", "/v1/admin/devices", "admin", {"meter_ids": ["{text}"]}, METER),
    ("PATCH", f"/v1/admin/devices/{ZERO_ID}", "admin", {"meter_ids": ["{text}"]}, METER),
    (
        "POST",
        "/v1/admin/consents",
        "admin",
        {
            "ean": EAN,
            "customer_id": "alice",
            "purpose": "dynamic-tariff-billing",
            "notice_version": "{text}",
            "expires_at": "{time}",
        },
        "v1",
    ),
    (
        "POST",
        f"/v1/admin/consents/{ZERO_ID}/end",
        "admin",
        {"reason": "{text}", "at": "{time}"},
        "revoked",
    ),
    ("POST", "/v1/admin/clients", "admin", {"name": "{text}", "granularities": ["P1D"]}, "x"),
    (
        "POST",
        "/v1/me/consents",
        "customer",
        {
            "ean": EAN,
            "purpose": "dynamic-tariff-billing",
            "notice_version": "{text}",
            "expires_at": "{time}",
        },
        "v1",
    ),
    ("PUT", f"/v1/me/connections/{EAN}/level", "customer", {"level": "{text}"}, "daily"),
]
ENDPOINT_IDS = [f"{m} {p}" for m, p, *_ in JSON_ENDPOINTS]
TIME_ENDPOINTS = [e for e in JSON_ENDPOINTS if "{time}" in e[3].values()]
TIME_IDS = [f"{m} {p}" for m, p, *_ in TIME_ENDPOINTS]


def fill(body: Any, text: str, time: str | float) -> Any:
    if isinstance(body, dict):
        return {k: fill(v, text, time) for k, v in body.items()}
    if isinstance(body, list):
        return [fill(v, text, time) for v in body]
    if body == "{text}":
        return text
    if body == "{time}":
        return time
    return body


async def send_json(w: World, method: str, path: str, who: str, raw: bytes, **hdrs: str) -> Any:
    headers = {**w.headers[who], "Content-Type": "application/json", **hdrs}
    return await w.client.request(method, path, data=raw, headers=headers)


ONE_DAY_AGO = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).isoformat()


@pytest.mark.parametrize(("method", "path", "who", "body", "ok"), JSON_ENDPOINTS, ids=ENDPOINT_IDS)
@pytest.mark.parametrize(
    "text",
    ["a\u0000b", "\u0000", "x\ud800y", "\udfff"],
    ids=["nul", "only-nul", "lone-high-surrogate", "lone-low-surrogate"],
)
async def test_unstorable_text_in_json_bodies_is_400(
    world: World, method: str, path: str, who: str, body: dict[str, Any], ok: str, text: str
) -> None:
    # json.dumps spells U+0000 and lone surrogates as \u escapes, as a hostile client would
    raw = json.dumps(fill(body, text, ONE_DAY_AGO)).encode("ascii")
    resp = await send_json(world, method, path, who, raw)
    await assert_problem(resp, BAD_REQUEST)
    await assert_still_serving(world)


@pytest.mark.parametrize(("method", "path", "who", "body", "ok"), JSON_ENDPOINTS, ids=ENDPOINT_IDS)
async def test_unstorable_text_in_json_member_names_is_400(
    world: World, method: str, path: str, who: str, body: dict[str, Any], ok: str
) -> None:
    raw = json.dumps({**fill(body, ok, ONE_DAY_AGO), "n\u0000": 1}).encode("ascii")
    resp = await send_json(world, method, path, who, raw)
    await assert_problem(resp, BAD_REQUEST)


@pytest.mark.parametrize(("method", "path", "who", "body", "ok"), JSON_ENDPOINTS, ids=ENDPOINT_IDS)
@pytest.mark.parametrize("opener", [b"[", b'{"a":'], ids=["arrays", "objects"])
async def test_deeply_nested_json_is_400(
    world: World, method: str, path: str, who: str, body: dict[str, Any], ok: str, opener: bytes
) -> None:
    resp = await send_json(world, method, path, who, opener * 100_000)
    await assert_problem(resp, BAD_REQUEST)
    await assert_still_serving(world)


EDGE_TIMES = [
    "0001-01-01",
    "9999-12-31",
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:30:00+01:00",
    "9999-12-31T23:59:59Z",
    "9999-12-31T23:59:59.999999-01:00",
    "0001-01-01T00:00:00+00:00",
]


@pytest.mark.parametrize(("method", "path", "who", "body", "ok"), TIME_ENDPOINTS, ids=TIME_IDS)
@pytest.mark.parametrize("time", EDGE_TIMES)
async def test_times_at_the_edges_of_the_calendar_are_422(
    world: World, method: str, path: str, who: str, body: dict[str, Any], ok: str, time: str
) -> None:
    raw = json.dumps(fill(body, ok, time)).encode("ascii")
    resp = await send_json(world, method, path, who, raw)
    await assert_problem(resp, INVALID)
    await assert_still_serving(world)


@pytest.mark.parametrize(("method", "path", "who", "body", "ok"), TIME_ENDPOINTS, ids=TIME_IDS)
@pytest.mark.parametrize("time", [1e300, 253402300799, -62135596800])
async def test_times_as_numbers_are_422(
    world: World, method: str, path: str, who: str, body: dict[str, Any], ok: str, time: float
) -> None:
    raw = json.dumps(fill(body, ok, time)).encode("ascii")
    resp = await send_json(world, method, path, who, raw)
    await assert_problem(resp, INVALID)


# --- path segments and query parameters ---------------------------------------------------------

PATHS: list[tuple[str, str, str]] = [
    ("GET", "/v1/admin/meters/{}", "admin"),
    ("GET", "/v1/admin/connections/{}", "admin"),
    ("POST", "/v1/admin/devices/{}/revoke", "admin"),
    ("GET", "/v1/admin/clients/{}", "admin"),
    ("POST", "/v1/admin/clients/{}/rotate", "admin"),
    ("POST", "/v1/me/consents/{}/revoke", "customer"),
    ("PUT", "/v1/me/connections/{}/level", "customer"),
]


@pytest.mark.parametrize(("method", "path", "who"), PATHS, ids=[f"{m} {p}" for m, p, _ in PATHS])
@pytest.mark.parametrize("segment", ["%00", "8716%00", EAN + "%00", "%ED%A0%80", "%FF"])
async def test_unstorable_text_in_path_segments_is_4xx(
    world: World, method: str, path: str, who: str, segment: str
) -> None:
    resp = await world.client.request(
        method, path.format(segment), json={"level": "daily"}, headers=world.headers[who]
    )
    await assert_problem(
        resp, BAD_REQUEST, INVALID, PROBLEMS + "invalid-ean", PROBLEMS + "not-found"
    )
    await assert_still_serving(world)


QUERIES: list[tuple[str, str, str]] = [
    ("/v1/readings", "granularity=P1D&from={}&to=2030-01-01", "client"),
    ("/v1/readings", "granularity=P1D&from=2020-01-01&to={}", "client"),
    ("/v1/readings", "granularity=P1D&from=2020-01-01&to=2030-01-01&cursor={}", "client"),
    ("/v1/readings", "granularity=P1D&from=2020-01-01&to=2030-01-01&limit={}", "client"),
    ("/v1/readings", "granularity={}&from=2020-01-01&to=2030-01-01", "client"),
    ("/v1/readings", "granularity=P1D&from=2020-01-01&to=2030-01-01&ean={}", "client"),
    ("/v1/consents", "changed_since={}", "client"),
    ("/v1/consents", "changed_since=2020-01-01&limit={}", "client"),
    ("/v1/me/access-log", "before_seq={}", "customer"),
    ("/v1/me/access-log", "limit={}", "customer"),
    ("/v1/me/permission-log", "limit={}", "customer"),
    ("/v1/me/export", "format=csv&table={}", "customer"),
    ("/v1/me/consumption", "ean={}&granularity=P1D&from=2020-01-01&to=2020-02-01", "customer"),
    (
        "/v1/me/consumption",
        "ean=" + EAN + "&granularity={}&from=2020-01-01&to=2020-02-01",
        "customer",
    ),
    ("/v1/me/consumption", "ean=" + EAN + "&granularity=P1D&from={}&to=2020-02-01", "customer"),
    ("/v1/me/consumption", "ean=" + EAN + "&granularity=P1D&from=2020-01-01&to={}", "customer"),
]
UNSTORABLE_QUERY_TEXT = ["%00", "a%00b", "%ED%A0%80", "%FF", "%C0%80"]
QUERY_VALUES = [
    *UNSTORABLE_QUERY_TEXT,
    "2024-01-01%00",
    "99999999999999999999",
    "-99999999999999999999",
    "9223372036854775808",
    "1" * 5000,
    "0001-01-01",
    "9999-12-31",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59Z",
    "0001-01-01T00:30:00%2B01:00",
    "9999-12-31T23:59:59-01:00",
]


@pytest.mark.parametrize(("path", "query", "who"), QUERIES, ids=[f"{p}?{q}" for p, q, _ in QUERIES])
async def test_hostile_query_parameters_are_4xx(
    world: World, path: str, query: str, who: str
) -> None:
    from yarl import URL

    # every value against one gateway (read-only requests): a world per value cost minutes
    for value in QUERY_VALUES:
        url = URL(f"{path}?{query.format(value)}", encoded=True)
        resp = await world.client.get(url, headers=world.headers[who])
        try:
            await assert_problem(resp, BAD_REQUEST, INVALID)
        except AssertionError as exc:
            raise AssertionError(f"{path}?{query.format(value)[:80]}: {exc}") from None
        await assert_still_serving(world)


# --- content codings ------------------------------------------------------------------------------

BODY_ENDPOINTS: list[tuple[str, str, str, str, bytes]] = [
    (
        "POST",
        "/v1/admin/clients",
        "admin",
        "application/json",
        b'{"name": "x", "granularities": []}',
    ),
    ("POST", "/v1/me/consents", "customer", "application/json", b'{"ean": "1"}'),
    ("POST", "/v1/telegrams", "device", "text/plain", build_telegram(METER, None)),
]


@pytest.mark.parametrize(
    ("method", "path", "who", "ctype", "body"),
    BODY_ENDPOINTS,
    ids=[f"{m} {p}" for m, p, *_ in BODY_ENDPOINTS],
)
@pytest.mark.parametrize(
    # br and zstd are refused by aiohttp's parser before any handler runs (a protocol error)
    "coding",
    ["gzip", "deflate", "GZIP", "x-unknown", "compress", "gzip, deflate", "identity, gzip"],
)
async def test_a_content_coding_the_body_does_not_match_is_4xx(
    world: World,
    caplog: pytest.LogCaptureFixture,
    method: str,
    path: str,
    who: str,
    ctype: str,
    body: bytes,
    coding: str,
) -> None:
    headers = {**world.headers[who], "Content-Type": ctype, "Content-Encoding": coding}
    resp = await world.client.request(method, path, data=body, headers=headers)
    await assert_problem(resp, BROKEN_BODY, UNSUPPORTED)
    await assert_still_serving(world)
    # the broken payload is not left for aiohttp to trip over after the answer
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_a_gzip_body_that_matches_its_coding_is_read(world: World) -> None:
    import gzip

    headers = {**world.headers["device"], "Content-Type": "text/plain", "Content-Encoding": "gzip"}
    body = gzip.compress(build_telegram(METER, dt.datetime.now(dt.UTC)))
    resp = await world.client.post("/v1/telegrams", data=body, headers=headers)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["accepted"] == 1


# --- customer JWTs --------------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jws(header: Any, payload: Any = None, signature: bytes = b"\x00" * 64) -> str:
    claims = {"sub": "alice", "iss": "meterpoort-dev", "aud": "meterpoort", "exp": 2**31}
    parts = [json.dumps(header).encode(), json.dumps(claims if payload is None else payload)]
    return ".".join((b64(parts[0]), b64(str(parts[1]).encode()), b64(signature)))


HOSTILE_TOKENS = {
    "crit": jws({"alg": "EdDSA", "crit": ["exp"]}),
    "crit-not-a-list": jws({"alg": "EdDSA", "crit": "exp"}),
    "crit-empty": jws({"alg": "EdDSA", "crit": []}),
    "alg-list": jws({"alg": ["EdDSA"]}),
    "alg-object": jws({"alg": {"EdDSA": 1}}),
    "alg-none": jws({"alg": "none"}),
    "alg-hs256": jws({"alg": "HS256"}),
    "kid-number": jws({"alg": "EdDSA", "kid": 1}),
    "kid-list": jws({"alg": "EdDSA", "kid": ["a"]}),
    "header-list": jws(["EdDSA"]),
    "header-string": jws("EdDSA"),
    "header-null": jws(None),
    "b64-false": jws({"alg": "EdDSA", "b64": False, "crit": ["b64"]}),
    "payload-list": jws({"alg": "EdDSA"}, ["alice"]),
    "payload-huge-exp": jws({"alg": "EdDSA"}, {"sub": "a", "exp": 10**400}),
    "header-not-json": ".".join((b64(b"{not json"), b64(b"{}"), b64(b"x"))),
    "header-not-utf8": ".".join((b64(b"\xff\xfe{"), b64(b"{}"), b64(b"x"))),
    "bad-base64": "!!!.???.***",
    "bad-padding": "a.b.c",
    "empty-parts": "..",
    # within aiohttp's 8 KiB header line limit (beyond it is a protocol-level error)
    "huge": jws({"alg": "EdDSA", "x": "a" * 5000}),
    "deep-header": ".".join((b64(b"[" * 5000), b64(b"{}"), b64(b"x"))),
    "deep-payload": ".".join((b64(b'{"alg":"EdDSA"}'), b64(b"[" * 5000), b64(b"x"))),
    "nul-in-kid": jws({"alg": "EdDSA", "kid": "\u0000"}),
    "surrogate-kid": ".".join((b64(b'{"alg":"EdDSA","kid":"\\ud800"}'), b64(b"{}"), b64(b"x"))),
}


@pytest.mark.parametrize("token", HOSTILE_TOKENS.values(), ids=HOSTILE_TOKENS.keys())
async def test_hostile_customer_tokens_are_401(world: World, token: str) -> None:
    resp = await world.client.get(
        "/v1/me/connections", headers={"Authorization": f"Bearer {token}"}
    )
    problem = await assert_problem(resp, UNAUTHORIZED)
    assert token not in problem["detail"]
    await assert_still_serving(world)


@pytest.mark.parametrize("value", UNSTORABLE_QUERY_TEXT)
async def test_unstorable_text_in_a_customer_id_query_is_422(world: World, value: str) -> None:
    from yarl import URL

    query = f"granularity=P1D&from=2020-01-01&to=2030-01-01&customer_id={value}"
    url = URL(f"/v1/readings?{query}", encoded=True)
    resp = await world.client.get(url, headers=world.headers["client"])
    await assert_problem(resp, INVALID)
