"""Hostile requests against the served gateway (real TCP, real PostgreSQL), driven by hypothesis.

Telegram bodies (junk, mutated telegrams of a registered meter with a recomputed CRC, so they
reach the write path), JSON bodies for every JSON endpoint (arbitrary values, wrong types,
huge and deep values, NUL characters), headers (Authorization, Content-Type, Content-Encoding),
query parameters, path segments and customer JWTs (any header and payload, signed with the dev
key or not). Whatever is sent: never a 5xx, every 4xx is problem+json with a ``type``, and the
gateway still answers a normal request afterwards. One app per test function; the examples of a
test share it, as the clients of a running gateway do.

Every input that ever failed is kept in ``REGRESSIONS`` (with schemathesis' finds, see
``test_schemathesis.py``), sent as a plain request.
"""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import json
import random
from typing import Any

import aiohttp
import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.api.customer_auth import DEV_ISSUER, dev_kid
from gateway.api.openapi import document
from gateway.keys import dev_customer_key
from gateway.settings import Settings
from tests.support import make_ean
from tests.support.fuzz_world import GAS_ID, METER_ID, World, build_world
from tests.support.telegram_builder import build_telegram
from tests.support.telegram_fuzz import fixture_telegrams, hostile_telegram

Client = TestClient[web.Request, web.Application]
PROBLEM = "application/problem+json"
FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
def gateway_settings(gateway_settings: Settings) -> Settings:
    """Dev mode: the gateway trusts the dev customer key, so JWTs signed with it get through
    signature checking and their claims are what is being fuzzed."""
    return gateway_settings.model_copy(
        # hostile credentials on purpose, many from one address: throttling would answer 429
        # before the check under test (tests/integration/test_auth_throttle.py covers it)
        update={"dev_mode": True, "auth_failure_limit": 100_000}
    )


@pytest.fixture
async def world(
    gateway_client: Client, gateway_settings: Settings, admin_headers: dict[str, str]
) -> World:
    return await build_world(gateway_client, gateway_settings, admin_headers)


async def check_answer(resp: ClientResponse, request: str = "") -> None:
    """Never a 5xx; every 4xx a problem+json with a type. ``request`` describes what was sent
    (the failure message is the reproducer)."""
    body = await resp.read()
    assert resp.status < 500, (request, resp.status, body[:300])
    if resp.status >= 400:
        assert resp.content_type == PROBLEM, (request, resp.status, resp.content_type, body[:300])
        problem = json.loads(body)
        assert isinstance(problem.get("type"), str) and problem["type"], (request, problem)


async def still_serves(world: World) -> None:
    """A normal request after the hostile ones: the admin's device list, from the database.
    (A fuzzed admin call may legitimately exchange a meter or rebind the device, so a telegram
    is the normal request only where nothing is changed: ``test_telegram_bodies``.)"""
    # on a connection of its own, as another client's request would be
    async with aiohttp.ClientSession() as session:
        url = world.client.make_url("/v1/admin/devices")
        async with session.get(url, headers=world.credentials["admin"]) as resp:
            assert resp.status == 200, await resp.text()


async def good_telegram_stored(world: World) -> None:
    """A good telegram of the bound meter is stored and acknowledged."""
    resp = await world.client.post(
        "/v1/telegrams",
        data=build_telegram(METER_ID, dt.datetime.now(dt.UTC)),
        headers={**world.credentials["device"], "Content-Type": "text/plain"},
    )
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["accepted"] == 1


async def send(
    world: World,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
    params: list[tuple[str, str]] | None = None,
) -> None:
    request = f"{method} {path} params={params!r} headers={headers!r} body={(data or b'')[:300]!r}"
    resp = await world.client.request(method, path, headers=headers, data=data, params=params)
    await check_answer(resp, request)


# -- telegram bodies ----------------------------------------------------------------------------

BASES = fixture_telegrams()


@FUZZ
@given(
    rng=st.randoms(),
    count=st.integers(min_value=1, max_value=5),
    ctype=st.sampled_from(("text/plain", "application/octet-stream")),
)
async def test_telegram_bodies(world: World, rng: random.Random, count: int, ctype: str) -> None:
    now = dt.datetime.now(dt.UTC)
    # telegrams of the bound meters too, so mutations with a good CRC reach the write batch
    own = [("own", build_telegram(METER_ID, now, gas=(GAS_ID, now, 1_234_567)))] * 4
    parts = [hostile_telegram(rng, [*own, *BASES])[1] for _ in range(count)]
    await send(
        world,
        "POST",
        "/v1/telegrams",
        data=b"".join(parts),
        headers={**world.credentials["device"], "Content-Type": ctype},
    )
    await good_telegram_stored(world)


# -- JSON bodies -------------------------------------------------------------------------------

DOC = document()
#: (method, path, credential) of every operation with a JSON body, from the served document
JSON_OPERATIONS = sorted(
    (method.upper(), path, next(iter(op["security"][0])).removesuffix("Token"))
    for path, ops in DOC["paths"].items()
    for method, op in ops.items()
    if "application/json" in op.get("requestBody", {}).get("content", {})
)
#: every property name of the document's schemas: fuzzed objects use them as keys, so values of
#: the wrong type land in the fields the handlers read
FIELDS = sorted(
    {
        name
        for schema in DOC["components"]["schemas"].values()
        for name in schema.get("properties", {})
    }
)

EDGE_STRINGS = (
    "",
    "\x00",
    "a\x00b",
    "\u202e",
    "0",
    "-1",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775809",
    "2147483648",
    "1e3",
    "99999999999999999999999999",
    "1e309",
    "NaN",
    "0001-01-01",
    "0000-01-01",
    "9999-12-31",
    "2026-02-30",
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59-14:00",
    "9999-12-31T23:59:59.999999+00:00",
    "2026-01-01T00:00:00",
    "P1D",
    "PT15M",
    "none",
    "daily",
    "interval",
    "electricity",
    "gas",
    "energy-insights",
    "move-out",
    "contract-ended",
    "871600000000000011",
    "00000000-0000-0000-0000-000000000000",
    "x" * 5000,
)
TEXT = st.text(st.characters(codec="utf-8"), max_size=40)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(EDGE_STRINGS),
    TEXT,
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(FIELDS), TEXT), inner, max_size=6),
    ),
    max_leaves=20,
)


#: deeper than any JSON decoder's recursion limit (CPython's is 1,000), and small enough for
#: hypothesis to print a failing example (it warns, an error here, beyond 30 kB)
MAX_DEPTH = 2000


def deep(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


RAW_BODIES = st.one_of(
    st.integers(min_value=1, max_value=MAX_DEPTH).map(deep),
    st.integers(min_value=1, max_value=MAX_DEPTH).map(lambda n: b"[" * n + b"]" * n),
    st.binary(max_size=200),
    st.sampled_from((b"", b"{", b'"\\u0000"', b'{"ean": "\\u0000"}', b"\xff\xfe", b"1" * 5000)),
)
#: a valid body per JSON operation ({ean}, {gas_ean} and {now} filled in per world): the fuzzer
#: breaks one or two of its fields, so the rest passes validation and the hostile value travels
#: on into the services and PostgreSQL
VALID_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/v1/admin/meters"): {
        "ean": "{new_ean}",
        "commodity": "electricity",
        "meter_id": "{new_meter}",
        "customer_id": "carol",
        "contract_start": "{now}",
    },
    ("PATCH", "/v1/admin/meters/{ean}"): {"contract_end": "{now}", "end_reason": "move-out"},
    ("POST", "/v1/admin/connections/{ean}/meter-exchange"): {
        "meter_id": "{new_meter}",
        "at": "{now}",
    },
    ("POST", "/v1/admin/contracts"): {
        "ean": "{ean}",
        "customer_id": "bob",
        "start": "{now}",
        "end": None,
        "previous_end_reason": "move-out",
    },
    ("PATCH", "/v1/admin/contracts/{id}"): {"end": "{now}", "end_reason": "switch"},
    ("POST", "/v1/admin/devices"): {"meter_ids": ["E0000000000000001"]},
    ("PATCH", "/v1/admin/devices/{id}"): {"meter_ids": ["E0000000000000001"]},
    ("POST", "/v1/admin/consents"): {
        "ean": "{ean}",
        "customer_id": "alice",
        "purpose": "dynamic-tariff-billing",
        "notice_version": "v1",
        "expires_at": None,
        "granted_at": "{now}",
        "channel": "phone",
    },
    ("POST", "/v1/admin/consents/{id}/end"): {"reason": "revoked", "at": "{now}"},
    ("PUT", "/v1/me/connections/{ean}/level"): {"level": "daily"},
    ("POST", "/v1/me/consents"): {
        "ean": "{gas_ean}",
        "purpose": "energy-insights",
        "notice_version": "v1",
        "expires_at": None,
        "channel": "portal",
    },
    ("POST", "/v1/admin/clients"): {
        "name": "crm",
        "granularities": ["P1D"],
        "purposes": ["dynamic-tariff-billing"],
        "webhook_url": "https://crm.example.nl/hook",
    },
}
#: numbers of fresh EANs and meter ids, so a template does not just conflict with the last one
FRESH = itertools.count(10)
FIELD = st.sampled_from(FIELDS)
HOSTILE_VALUES = st.one_of(SCALARS, JSON_VALUES, st.sampled_from(EDGE_STRINGS))


#: characters slipped into an otherwise valid string (PostgreSQL refuses NUL in text)
SLIPPED = st.sampled_from(("\x00", "\u202e", "\ufffd", "'", '"', "\\", "%", "\n", "\x7f", "é"))


@st.composite
def nearly_valid(draw: st.DrawFn, valid: str) -> str:
    """``valid`` with a hostile character slipped in, or its year at the edge of the calendar."""
    if valid[:4].isdigit() and draw(st.booleans()):
        return draw(st.sampled_from(("0001", "0000", "9999", "1970"))) + valid[4:]
    i = draw(st.integers(min_value=0, max_value=len(valid)))
    return valid[:i] + draw(SLIPPED) + valid[i:]


@st.composite
def broken_bodies(draw: st.DrawFn, template: dict[str, Any]) -> dict[str, Any]:
    """``template`` with one to three fields replaced by hostile values (or extra fields)."""
    body = dict(template)
    # mostly the template's own fields: an unknown one is refused before anything is read
    keys = st.one_of(st.sampled_from(list(template)), st.sampled_from(list(template)), FIELD)
    for key in draw(st.lists(keys, min_size=1, max_size=3)):
        valid = body.get(key)
        if isinstance(valid, str) and draw(st.booleans()):
            body[key] = draw(nearly_valid(valid))
        else:
            body[key] = draw(HOSTILE_VALUES)
    return body


def as_json(value: Any) -> bytes:
    return json.dumps(value).encode()


JSON_BODIES = st.one_of(JSON_VALUES.map(as_json), RAW_BODIES)


def fill(path: str, world: World) -> str:
    ids = world.ids()
    return (
        path.replace("{ean}", ids["ean"])
        .replace("consents/{id}", f"consents/{ids['consent']}")
        .replace("devices/{id}", f"devices/{ids['device']}")
        .replace("clients/{id}", f"clients/{ids['client']}")
        .replace("{id}", ids["consent"])
    )


@FUZZ
@given(operation=st.sampled_from(JSON_OPERATIONS), body=JSON_BODIES)
async def test_json_bodies(world: World, operation: tuple[str, str, str], body: bytes) -> None:
    method, path, credential = operation
    await send(
        world,
        method,
        fill(path, world),
        data=body,
        headers={**world.credentials[credential], "Content-Type": "application/json"},
    )
    await still_serves(world)


@FUZZ
@given(data=st.data(), operation=st.sampled_from(JSON_OPERATIONS))
async def test_json_fields(
    world: World, data: st.DataObject, operation: tuple[str, str, str]
) -> None:
    method, path, credential = operation
    n = next(FRESH)
    template = json.loads(
        json.dumps(VALID_BODIES[method, path])
        .replace("{ean}", world.ean)
        .replace("{gas_ean}", make_ean(2))
        .replace("{new_ean}", make_ean(n))
        .replace("{new_meter}", f"E{n:016d}")
        .replace("{now}", dt.datetime.now(dt.UTC).isoformat())
    )
    body = data.draw(broken_bodies(template))
    await send(
        world,
        method,
        fill(path, world),
        data=as_json(body),
        headers={**world.credentials[credential], "Content-Type": "application/json"},
    )
    await still_serves(world)


# -- headers -----------------------------------------------------------------------------------

#: every operation of the document: (method, path, credential)
OPERATIONS = sorted(
    (
        method.upper(),
        path,
        # public operations declare no security requirement (``security: []``)
        next(iter((op.get("security") or [{}])[0]), "none").removesuffix("Token"),
    )
    for path, ops in DOC["paths"].items()
    for method, op in ops.items()
)
HEADER_TEXT = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E),
    max_size=60,
)
AUTHORIZATION = st.one_of(
    HEADER_TEXT,
    st.sampled_from(
        (
            "Bearer",
            "Bearer ",
            "bearer x",
            "BEARER x",
            "Basic dXNlcjpwdw==",
            "Bearer a b",
            "Bearer " + "A" * 9000,
            "Bearer \t x",
        )
    ),
    HEADER_TEXT.map(lambda t: "Bearer " + t),
)
CONTENT_TYPES = st.one_of(
    st.sampled_from(
        (
            "application/json",
            "text/plain",
            "application/octet-stream",
            "application/json; charset=latin-1",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/merge-patch+json",
            'text/plain; charset="',
            ";",
            "",
        )
    ),
    HEADER_TEXT,
)
ENCODINGS = st.one_of(
    st.sampled_from(("gzip", "deflate", "br", "zstd", "identity", "compress", "gzip, gzip", "")),
    HEADER_TEXT,
)


@FUZZ
@given(
    operation=st.sampled_from(OPERATIONS),
    authorization=st.one_of(st.none(), AUTHORIZATION),
    ctype=st.one_of(st.none(), CONTENT_TYPES),
    encoding=st.one_of(st.none(), ENCODINGS),
    body=st.one_of(st.none(), JSON_BODIES),
)
async def test_headers(
    world: World,
    operation: tuple[str, str, str],
    authorization: str | None,
    ctype: str | None,
    encoding: str | None,
    body: bytes | None,
) -> None:
    method, path, credential = operation
    headers = dict(world.credentials[credential])
    for name, value in (
        ("Authorization", authorization),
        ("Content-Type", ctype),
        ("Content-Encoding", encoding),
    ):
        if value is not None:
            headers[name] = value
    await send(world, method, fill(path, world), headers=headers, data=body)
    await still_serves(world)


# -- query parameters and path segments ----------------------------------------------------------

QUERY_NAMES = sorted(
    {
        p["name"]
        for ops in DOC["paths"].values()
        for op in ops.values()
        for p in op.get("parameters", [])
        if p["in"] == "query"
    }
)
#: numbers and times at the edges of their types, drawn more often than arbitrary text
QUERY_EDGES = st.sampled_from(
    [v for v in EDGE_STRINGS if v[:1].isdigit() or v[:1] == "-"]
    + ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59+00:00", "20260101", "2026-W01"]
)
QUERY_VALUES = st.one_of(
    QUERY_EDGES,
    QUERY_EDGES,
    st.sampled_from(EDGE_STRINGS),
    st.integers(min_value=-(2**80), max_value=2**80).map(str),
    TEXT,
)


#: valid query parameters per GET operation that takes some: the fuzzer breaks one or two
VALID_QUERIES: dict[str, dict[str, str]] = {
    "/v1/readings": {"granularity": "P1D", "from": "2026-01-01", "to": "2026-02-01", "limit": "10"},
    "/v1/consents": {"changed_since": "2026-01-01T00:00:00Z", "limit": "10"},
    "/v1/me/permission-log": {"limit": "10"},
    "/v1/me/access-log": {"limit": "10", "before_seq": "100"},
    "/v1/me/export": {"format": "csv", "table": "p1d"},
    "/v1/me/consumption": {
        "ean": make_ean(1),  # the fuzz world's customer's connection
        "granularity": "P1D",
        "from": "2026-01-01",
        "to": "2026-02-01",
    },
}


@FUZZ
@given(
    data=st.data(),
    operation=st.sampled_from([op for op in OPERATIONS if op[1] in VALID_QUERIES]),
    accept=st.sampled_from(("application/json", "application/x-ndjson", "text/csv", "*/*", "x")),
)
async def test_query_parameters(
    world: World, data: st.DataObject, operation: tuple[str, str, str], accept: str
) -> None:
    method, path, credential = operation
    params = dict(VALID_QUERIES.get(path, {}))
    names = st.one_of(st.sampled_from(list(params)), st.sampled_from(QUERY_NAMES), TEXT)
    for name in data.draw(st.lists(names, min_size=1, max_size=3)):
        params[name] = data.draw(QUERY_VALUES)
    await send(
        world,
        method,
        fill(path, world),
        params=list(params.items()),
        headers={**world.credentials[credential], "Accept": accept},
    )
    await still_serves(world)


@FUZZ
@given(operation=st.sampled_from([op for op in OPERATIONS if "{" in op[1]]), segment=TEXT)
async def test_path_segments(world: World, operation: tuple[str, str, str], segment: str) -> None:
    method, path, credential = operation
    url = path.replace("{ean}", segment or "x").replace("{id}", segment or "x")
    # yarl percent-encodes what it must (NUL becomes %00, '/' stays a separator)
    await send(
        world,
        method,
        url,
        headers={**world.credentials[credential], "Content-Type": "application/json"},
        data=b"{}",
    )
    await still_serves(world)


# -- customer JWTs ------------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


CLAIM_VALUES = st.one_of(SCALARS, JSON_VALUES)
TIMES = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from((0, 2**63, -(2**63), 253402300800, 1e300, float("inf"))),
    st.builds(
        lambda d: int((dt.datetime.now(dt.UTC) + dt.timedelta(seconds=d)).timestamp()),
        st.integers(min_value=-86400, max_value=86400),
    ),
    CLAIM_VALUES,
)


@st.composite
def jwt_parts(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    """A JWT header and payload: usually near a valid dev token, with any member broken."""
    header = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "alg": st.one_of(
                    st.sampled_from(("EdDSA", "ES256", "HS256", "RS256", "none")), CLAIM_VALUES
                ),
                "kid": st.one_of(st.just("DEV"), CLAIM_VALUES),
                "typ": st.one_of(st.just("JWT"), CLAIM_VALUES),
                "crit": CLAIM_VALUES,
                "b64": CLAIM_VALUES,
                "jku": st.one_of(st.just("http://127.0.0.1:1/jwks"), CLAIM_VALUES),
                "x5u": CLAIM_VALUES,
                "jwk": CLAIM_VALUES,
            },
        )
    )
    payload = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "iss": st.one_of(st.just(DEV_ISSUER), CLAIM_VALUES),
                "aud": st.one_of(st.just("meterpoort"), st.just(["meterpoort"]), CLAIM_VALUES),
                "sub": st.one_of(st.just("alice"), st.sampled_from(EDGE_STRINGS), CLAIM_VALUES),
                "exp": TIMES,
                "nbf": TIMES,
                "iat": TIMES,
                "jti": CLAIM_VALUES,
            },
        )
    )
    return header, payload


@FUZZ
@given(
    parts=jwt_parts(),
    signing=st.sampled_from(("dev-key", "dev-key", "none", "garbage")),
    operation=st.sampled_from([op for op in OPERATIONS if op[2] == "customer"]),
)
async def test_jwts(
    world: World,
    parts: tuple[dict[str, Any], dict[str, Any]],
    signing: str,
    operation: tuple[str, str, str],
) -> None:
    header, payload = parts
    key = dev_customer_key(world.settings.data_dir)
    if header.get("kid") == "DEV":
        header["kid"] = dev_kid(key.public_key())
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    if signing == "dev-key":
        signature = key.sign(signing_input.encode())
    elif signing == "garbage":
        signature = random.Random(signing_input).randbytes(64)
    else:
        signature = b""
    token = f"{signing_input}.{b64(signature)}"
    method, path, _ = operation
    await send(
        world,
        method,
        fill(path, world),
        data=b"{}",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    await still_serves(world)


# -- every input that ever failed ---------------------------------------------------------------

JSON = {"Content-Type": "application/json"}


def jwt_with_header(header: str) -> dict[str, str]:
    """A customer bearer token whose JWT header is ``header`` (unsigned: it fails before)."""
    return {"Authorization": f"Bearer {b64(header.encode())}.{b64(b'{}')}.AA"}


#: (method, path, credential, headers, body, query): concrete requests found by the fuzzers of
#: this file and by schemathesis; ``{ean}``/``{id}`` are filled as in the fuzzers (in the body
#: too). Each once answered a 5xx or a 4xx that was not problem+json.
REGRESSIONS: list[tuple[str, str, str, dict[str, str], bytes, list[tuple[str, str]]]] = [
    # JSON nested deeper than the decoder's recursion limit: RecursionError
    ("PATCH", "/v1/admin/contracts/{id}", "admin", JSON, b"[" * 5000 + b"]" * 5000, []),
    # an integer literal of more than 4300 digits: ValueError from int()
    ("POST", "/v1/admin/meters", "admin", JSON, b"1" * 5000, []),
    # a Content-Encoding the body does not match, or one the server cannot decode:
    # ContentEncodingError while reading (500), or a protocol-level 400 in text/plain
    (
        "POST",
        "/v1/telegrams",
        "device",
        {"Content-Type": "text/plain", "Content-Encoding": "gzip"},
        b"/X\r\n!",
        [],
    ),
    ("POST", "/v1/admin/devices", "admin", {**JSON, "Content-Encoding": "deflate"}, b"{}", []),
    ("POST", "/v1/admin/devices", "admin", {**JSON, "Content-Encoding": "br"}, b"{}", []),
    # JWT headers PyJWT refuses with InvalidTokenError (not DecodeError) or a TypeError
    ("GET", "/v1/me/connections", "none", jwt_with_header('{"crit": true}'), b"", []),
    ("GET", "/v1/me/connections", "none", jwt_with_header('{"crit": [1]}'), b"", []),
    ("GET", "/v1/me/connections", "none", jwt_with_header('{"kid": 1}'), b"", []),
    ("GET", "/v1/me/connections", "none", jwt_with_header('{"kid": null}'), b"", []),
    ("GET", "/v1/me/connections", "none", jwt_with_header('{"alg": []}'), b"", []),
    # integers beyond int64 in query parameters: DataError from asyncpg
    ("GET", "/v1/me/access-log", "customer", {}, b"", [("before_seq", "9223372036854775808")]),
    # local dates at the edge of the calendar: OverflowError
    (
        "GET",
        "/v1/readings",
        "client",
        {},
        b"",
        [("granularity", "P1D"), ("from", "0001-01-01"), ("to", "2026-02-01")],
    ),
    ("GET", "/v1/consents", "client", {}, b"", [("changed_since", "0001-01-01")]),
    # ... and in JSON bodies (found by schemathesis)
    (
        "PATCH",
        "/v1/admin/contracts/{id}",
        "admin",
        JSON,
        b'{"end": "0001-01-01", "end_reason": "switch"}',
        [],
    ),
    (
        "POST",
        "/v1/admin/contracts",
        "admin",
        JSON,
        b'{"customer_id": "x", "ean": "", "start": "0529-03-29", "end": "0001-01-01"}',
        [],
    ),
    # a request line over aiohttp's 8190 bytes: a 400 in text/plain, echoing the input
    ("GET", "/metrics", "none", {}, b"", [("x", "x" * 9000)]),
    # a grant whose maximum lifetime ends after 9999: OverflowError in the consent domain
    (
        "POST",
        "/v1/admin/consents",
        "admin",
        JSON,
        b'{"ean": "{ean}", "customer_id": "alice", "purpose": "dynamic-tariff-billing",'
        b' "notice_version": "v1", "granted_at": "9999-12-31T00:00:00Z"}',
        [],
    ),
]


@pytest.mark.parametrize(("method", "path", "credential", "headers", "body", "query"), REGRESSIONS)
async def test_regressions(
    world: World,
    method: str,
    path: str,
    credential: str,
    headers: dict[str, str],
    body: bytes,
    query: list[tuple[str, str]],
) -> None:
    await send(
        world,
        method,
        fill(path, world),
        data=body.replace(b"{ean}", world.ean.encode()),
        params=query,
        headers={**world.credentials[credential], **headers},
    )
    await still_serves(world)
