"""Data clients over real HTTP and PostgreSQL: the token is shown once and stored hashed, rotation
retires the old token, revocation locks the client out, every change is audited; and the CLI."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.cli import clients as clients_cli
from gateway.services.clients import KIND_TOKEN_REVOKE
from gateway.settings import Settings
from gateway.tokens import hash_token

HttpClient = TestClient[web.Request, web.Application]
PROBLEM = "application/problem+json"


@pytest.fixture
async def http(gateway_app: web.Application) -> AsyncIterator[HttpClient]:
    client: HttpClient = TestClient(TestServer(gateway_app, host="127.0.0.1", port=0))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


async def _problem(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    assert resp.content_type == PROBLEM
    data: dict[str, Any] = await resp.json(content_type=PROBLEM)
    return data


BILLING = {
    "name": "billing",
    "granularities": ["P1D", "PT15M", "P1D"],
    "purposes": ["dynamic-tariff-billing"],
    "webhook_url": "https://billing.example.nl/hooks/consent",
}


async def _add(http: HttpClient, admin_headers: dict[str, str], body: dict[str, Any]) -> Any:
    resp = await http.post("/v1/admin/clients", json=body, headers=admin_headers)
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def _can_read(http: HttpClient, token: str) -> int:
    resp = await http.get(
        "/v1/consents",
        params={"changed_since": "2024-01-01T00:00:00Z"},
        headers={"Authorization": f"Bearer {token}"},
    )
    await resp.read()
    return resp.status


async def test_token_is_shown_once_and_stored_as_its_hash(
    http: HttpClient, admin_headers: dict[str, str], pool: asyncpg.Pool
) -> None:
    created = await _add(http, admin_headers, BILLING)
    token = created["token"]
    client_id = uuid.UUID(created["client_id"])
    assert len(token) >= 43
    assert created["granularities"] == ["P1D", "PT15M"]  # de-duplicated
    assert created["purposes"] == ["dynamic-tariff-billing"]
    assert created["webhook_url"] == BILLING["webhook_url"]

    row = await pool.fetchrow("SELECT * FROM clients WHERE client_id = $1", client_id)
    assert row is not None and row["token_hash"] == hash_token(token)
    # the token itself is nowhere in the row
    assert all(token not in str(v) for v in dict(row).values())

    # later reads show the client without its token
    resp = await http.get(f"/v1/admin/clients/{client_id}", headers=admin_headers)
    shown = await resp.json()
    assert resp.status == 200 and "token" not in shown and shown["name"] == "billing"
    resp = await http.get("/v1/admin/clients", headers=admin_headers)
    listed = await resp.json()
    assert [c["client_id"] for c in listed["clients"]] == [str(client_id)]
    assert "token" not in json.dumps(listed)

    assert await _can_read(http, token) == 200
    audit = await pool.fetch("SELECT kind, actor, detail FROM audit_log ORDER BY seq")
    # the consent pull is a read of personal data: in the access log, under the client
    assert [(a["kind"], a["actor"]) for a in audit] == [
        ("token.create", "admin"),
        ("data.read", f"client:{client_id}"),
    ]
    assert audit[0]["detail"]["client_id"] == str(client_id)
    assert token not in json.dumps(audit[0]["detail"])


async def test_rotation_retires_the_old_token(
    http: HttpClient, admin_headers: dict[str, str], pool: asyncpg.Pool
) -> None:
    created = await _add(http, admin_headers, BILLING)
    old = created["token"]
    assert await _can_read(http, old) == 200  # and now cached in this process
    resp = await http.post(
        f"/v1/admin/clients/{created['client_id']}/rotate", headers=admin_headers
    )
    assert resp.status == 200, await resp.text()
    rotated = await resp.json()
    new = rotated["token"]
    assert new != old and rotated["client_id"] == created["client_id"]
    assert rotated["rotated_at"] is not None
    assert await _can_read(http, old) == 401
    assert await _can_read(http, new) == 200
    kinds = [r["kind"] for r in await pool.fetch("SELECT kind FROM audit_log ORDER BY seq")]
    # one access-log row per read let in (old token, then new), none for the refused one
    assert kinds == ["token.create", "data.read", "token.create", "data.read"]


async def test_revocation_locks_the_client_out(
    http: HttpClient, admin_headers: dict[str, str], pool: asyncpg.Pool
) -> None:
    created = await _add(http, admin_headers, BILLING)
    token = created["token"]
    assert await _can_read(http, token) == 200
    cid = created["client_id"]
    resp = await http.post(f"/v1/admin/clients/{cid}/revoke", headers=admin_headers)
    assert resp.status == 200
    assert (await resp.json())["revoked_at"] is not None
    assert await _can_read(http, token) == 401
    resp = await http.get(
        "/v1/readings",
        params={"granularity": "P1D", "from": "2024-01-01", "to": "2024-02-01"},
        headers={"Authorization": f"Bearer {token}"},
    )
    await _problem(resp, 401)
    # a revoked client stays revoked
    await _problem(await http.post(f"/v1/admin/clients/{cid}/rotate", headers=admin_headers), 409)
    await _problem(await http.post(f"/v1/admin/clients/{cid}/revoke", headers=admin_headers), 409)
    kinds = [r["kind"] for r in await pool.fetch("SELECT kind FROM audit_log ORDER BY seq")]
    assert kinds == ["token.create", "data.read", KIND_TOKEN_REVOKE]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"granularities": ["PT5M"]}, "granularities"),
        ({"granularities": []}, "granularities"),
        ({"purposes": ["marketing"]}, "purposes"),
        ({"webhook_url": "ftp://x.example"}, "webhook_url"),
        ({"name": "  "}, "name"),
        ({"token": "chosen"}, "token"),
    ],
)
async def test_invalid_clients_are_refused_naming_the_field(
    http: HttpClient, admin_headers: dict[str, str], change: dict[str, Any], field: str
) -> None:
    body = {**BILLING, **change}
    data = await _problem(
        await http.post("/v1/admin/clients", json=body, headers=admin_headers), 422
    )
    assert field in {e["loc"][1] for e in data["errors"]}


async def test_client_admin_needs_the_admin_token(http: HttpClient) -> None:
    await _problem(await http.post("/v1/admin/clients", json=BILLING), 401)
    created_elsewhere = str(uuid.uuid4())
    bad = {"Authorization": "Bearer not-the-admin"}
    await _problem(
        await http.post(f"/v1/admin/clients/{created_elsewhere}/rotate", headers=bad), 401
    )


async def test_unknown_clients_are_404(http: HttpClient, admin_headers: dict[str, str]) -> None:
    for path in (f"/v1/admin/clients/{uuid.uuid4()}/rotate", "/v1/admin/clients/nope/revoke"):
        await _problem(await http.post(path, headers=admin_headers), 404)


async def test_a_client_token_is_not_an_admin_token(
    http: HttpClient, admin_headers: dict[str, str]
) -> None:
    created = await _add(http, admin_headers, BILLING)
    headers = {"Authorization": f"Bearer {created['token']}"}
    await _problem(await http.post("/v1/admin/clients", json=BILLING, headers=headers), 401)


def _cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="admin_command", required=True)
    clients_cli.add_admin_parser(sub)
    return parser.parse_args(argv)


async def _run_cli(argv: list[str], settings: Settings) -> Any:
    args = _cli(argv)
    out = io.StringIO()

    def run() -> int:
        with contextlib.redirect_stdout(out):
            code: int = args.func(args, settings)
        return code

    assert await asyncio.to_thread(run) == 0
    return json.loads(out.getvalue())


async def test_cli_adds_rotates_and_revokes(gateway_settings: Settings, pool: asyncpg.Pool) -> None:
    created = await _run_cli(
        [
            "clients", "add", "--name", "billing", "--granularity", "P1D",
            "--granularity", "PT15M", "--purpose", "dynamic-tariff-billing",
            "--webhook-url", "https://billing.example.nl/hook",
        ],
        gateway_settings,
    )  # fmt: skip
    cid = uuid.UUID(created["client_id"])
    row = await pool.fetchrow("SELECT * FROM clients WHERE client_id = $1", cid)
    assert row is not None and row["token_hash"] == hash_token(created["token"])
    assert list(row["granularities"]) == ["P1D", "PT15M"]

    rotated = await _run_cli(["clients", "rotate", str(cid)], gateway_settings)
    assert rotated["token"] != created["token"]
    assert await pool.fetchval("SELECT token_hash FROM clients") == hash_token(rotated["token"])

    revoked = await _run_cli(["clients", "revoke", str(cid)], gateway_settings)
    assert revoked["revoked_at"] is not None and "token" not in revoked
    listed = await _run_cli(["clients", "list"], gateway_settings)
    assert [c["client_id"] for c in listed["clients"]] == [str(cid)]


def test_cli_refuses_an_unknown_purpose(capsys: pytest.CaptureFixture[str]) -> None:
    # a usage error naming the configured purposes, before any database work
    with pytest.raises(SystemExit) as exited:
        _cli(["clients", "add", "--name", "x", "--granularity", "P1D", "--purpose", "spam"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "argument --purpose: invalid choice: 'spam'" in err and "energy-insights" in err
