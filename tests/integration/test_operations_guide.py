"""docs/operations.md stays true: every SQL query of its data-breach runbook is read from the
guide and run with ``psql`` (the embedded package's, as the guide says) against a real database
holding a small world, and answers what the guide says it answers. Also: a ``lock_timeout`` in
``DATABASE_URL`` (the guide's advice for ``migrate``) reaches the session.

The world: a billing client that paged and synced alice's metered connection; alice's second
connection (never read); bob's connection (never read); another client that read nothing.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.api.app import create_app
from gateway.cli.token import mint_dev_token
from gateway.settings import Settings
from gateway.storage import db, dump
from tests.support import make_ean
from tests.support.billing_world import NOW, World, build, page, sync

Client = TestClient[web.Request, web.Application]
GUIDE = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
RUNBOOK_RE = re.compile(r"```sql\n-- runbook: ([a-z-]+)\n(.*?)```", re.DOTALL)
QUERIES = {
    "reads-by-credential",
    "exposed-customers",
    "exposed-readings",
    "admin-actions",
    "everyone-registered",
}


def runbook() -> dict[str, str]:
    return {name: sql for name, sql in RUNBOOK_RE.findall(GUIDE.read_text(encoding="utf-8"))}


def psql(database_url: str, sql: str, **variables: str) -> list[dict[str, str]]:
    """The guide's command line: ``psql URL -X --csv -v ON_ERROR_STOP=1 -v name=value … -f``."""
    argv = [str(dump.client_binary("psql")), database_url, "-X", "--csv", "-v", "ON_ERROR_STOP=1"]
    for name, value in variables.items():
        argv += ["-v", f"{name}={value}"]
    done = subprocess.run(
        [*argv, "-f", "-"], input=sql, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return list(csv.DictReader(io.StringIO(done.stdout)))


@pytest.fixture
async def world(
    gateway_settings: Settings, admin_headers: dict[str, str]
) -> AsyncIterator[tuple[World, Client]]:
    settings = gateway_settings.model_copy(update={"dev_mode": True})
    mint_dev_token(settings.data_dir, "warm-up", "meterpoort", dt.timedelta(minutes=1))
    http: Client = TestClient(TestServer(create_app(settings), host="127.0.0.1", port=0))
    await http.start_server()
    try:
        w = await build(http, settings, admin_headers, "http://127.0.0.1:9/hook")
        resp = await http.post(
            "/v1/admin/meters",
            json={
                "ean": make_ean(73),
                "commodity": "electricity",
                "meter_id": "E73",
                "customer_id": "bob",
                "contract_start": (NOW - dt.timedelta(days=30)).isoformat(),
            },
            headers=admin_headers,
        )
        assert resp.status == 201, await resp.text()
        resp = await http.post(
            "/v1/admin/clients",
            json={"name": "insights", "granularities": ["P1D"], "purposes": []},
            headers=admin_headers,
        )
        assert resp.status == 201, await resp.text()
        # the billing client's two reads: a page of one reading, a sync pull of everything
        assert (await page(http, w)).status == 200
        resp = await sync(http, w, "0")
        assert resp.status == 200 and await resp.text()
        yield w, http
    finally:
        await http.close()


def window(**variables: str) -> dict[str, str]:
    hour = dt.timedelta(hours=1)
    return {
        "since": (NOW - hour).isoformat(),
        "until": (NOW + hour).isoformat(),
        **variables,
    }


async def test_every_runbook_query_answers_what_the_guide_says(
    world: tuple[World, Client], database_url: str, pool: asyncpg.Pool
) -> None:
    w, _ = world
    queries = runbook()
    assert set(queries) == QUERIES  # a new query in the guide needs its check here
    billing = f"client:{w.client_id}"
    async with pool.acquire() as conn:
        stored = await conn.fetchval(
            "SELECT count(*) FROM readings_e_pt15m WHERE ean = $1", int(w.readings_ean)
        )
    assert stored >= 3

    def run(name: str, **variables: str) -> list[dict[str, str]]:
        return psql(database_url, queries[name], **variables)

    # 1: the two reads of the billing client, in order; none outside the window or by others
    reads = await asyncio.to_thread(run, "reads-by-credential", **window(actor=billing))
    assert [(r["kind"], r["granularity"], r["connections"]) for r in reads] == [
        ("data.read", "PT15M", "1"),
        ("data.read", "PT15M", "1"),
    ]
    assert [(r["readings"], r["sync_pull"]) for r in reads] == [
        ("1", "false"),
        (str(stored), "true"),
    ]
    assert int(reads[0]["seq"]) < int(reads[1]["seq"])
    earlier = window(actor=billing, until=(NOW - dt.timedelta(hours=1)).isoformat())
    assert await asyncio.to_thread(run, "reads-by-credential", **earlier) == []
    assert (
        await asyncio.to_thread(run, "reads-by-credential", **window(actor="client:nobody")) == []
    )

    # 2: alice, through the one connection that was read; not her other one, not bob
    exposed = await asyncio.to_thread(run, "exposed-customers", **window(actor=billing))
    assert [(r["customer_id"], r["ean"], r["what"], r["reads"]) for r in exposed] == [
        ("alice", w.readings_ean, "PT15M", "2")
    ]

    # 3: every stored reading of that connection (the sync pull named no range)
    readings = await asyncio.to_thread(run, "exposed-readings", **window(actor=billing))
    assert [(r["ean"], r["granularity"], int(r["readings"])) for r in readings] == [
        (w.readings_ean, "PT15M", stored)
    ]

    # 4: the administrator registered meters and issued both clients' tokens
    actions = await asyncio.to_thread(run, "admin-actions", **window())
    kinds = [a["kind"] for a in actions]
    assert kinds.count("token.create") >= 2 and "registry.change" in kinds
    assert any(w.client_id in a["detail"] for a in actions if a["kind"] == "token.create")

    # 5: everyone registered, with what is stored about them
    everyone = await asyncio.to_thread(run, "everyone-registered")
    assert [
        (r["customer_id"], r["connections"], r["had_interval_consent"], int(r["interval_readings"]))
        for r in everyone
    ] == [("alice", "2", "t", stored), ("bob", "1", "f", 0)]


async def test_lock_timeout_in_the_database_url_reaches_the_session(database_url: str) -> None:
    with_timeout = f"{database_url}{'&' if '?' in database_url else '?'}lock_timeout=1500ms"
    conn = await db.connect(with_timeout)
    try:
        assert await conn.fetchval("SHOW lock_timeout") == "1500ms"
    finally:
        await conn.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERPOORT_")}
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "gateway", "migrate"],
        env={**env, "DATABASE_URL": with_timeout},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
