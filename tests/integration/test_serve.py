"""``python -m gateway serve`` on a fresh machine (embedded PostgreSQL), operator endpoints,
the OpenAPI document, and the 503 mapping of database outages."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.api.middleware import make_metrics_middleware, make_problem_middleware
from tests.support import free_port
from tests.support.serving import (
    get,
    get_retrying,
    scraped,
    start_serve,
    stop,
    wait_ready,
    worker_pids,
)

PROBLEM = "application/problem+json"


def test_serve_from_scratch_with_embedded_postgres(serve_dir: Path) -> None:
    proc, base = start_serve(serve_dir)
    try:
        wait_ready(base, proc)
        status, _, body = get(base + "/healthz")
        assert status == 200 and json.loads(body) == {"status": "ok"}

        status, headers, body = get(base + "/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        text = body.decode()
        assert "meterpoort_db_pool_size " in text
        assert 'meterpoort_http_requests_total{method="GET",route="/readyz",status="200"}' in text

        status, headers, body = get(base + "/openapi.json")
        assert status == 200
        doc = json.loads(body)
        assert doc["openapi"].startswith("3.") and "/v1/admin/meters" in doc["paths"]

        status, headers, body = get(base + "/docs")
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assert b"/v1/admin/meters/{ean}" in body and b"<script" not in body

        status, headers, body = get(base + "/no/such/thing")
        assert status == 404 and headers["Content-Type"].startswith(PROBLEM)
        assert json.loads(body)["type"] == "https://meterpoort.nl/problems/not-found"

        req = urllib.request.Request(
            base + "/v1/admin/devices",
            method="POST",
            data=b'{"meter_ids": ["E1"]}',
            headers={
                "Authorization": "Bearer smoke-admin-token",
                "Content-Type": "application/json",
            },
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 201 and "token" in json.loads(resp.read())
    finally:
        if proc.poll() is None:
            started = time.monotonic()
            out, err = stop(proc)
            assert time.monotonic() - started < 20
        else:
            out, err = proc.communicate()
            raise AssertionError(f"serve died: {err}")
    for where in ("/docs", "/metrics", "/portal", "/v1/"):
        assert f"{base}{where}" in out, out
    assert "Traceback" not in err
    # structured logs: every stderr line is one JSON object
    for line in err.splitlines():
        assert isinstance(json.loads(line), dict), line
    # the embedded server was stopped with the gateway
    assert not (serve_dir / "var" / "pg" / "postmaster.pid").exists()


def test_serve_with_two_workers_on_one_port_restarts_a_dead_worker(serve_dir: Path) -> None:
    proc, base = start_serve(serve_dir, "--workers", "2")
    try:
        wait_ready(base, proc)
        pids = worker_pids(base, 2)
        assert len(pids) == 2 and proc.pid not in pids
        assert {c.pid for c in psutil.Process(proc.pid).children()} >= pids

        # one scrape counts the requests of every worker (fresh connections spread over both)
        series = 'meterpoort_http_requests_total{method="GET",route="/openapi.json",status="200"}'
        for _ in range(30):
            assert get(base + "/openapi.json")[0] == 200
        assert scraped(base, series) == 30
        pool_max = scraped(base, "meterpoort_db_pool_max_size")
        assert pool_max == 2 * 10 and scraped(base, "meterpoort_db_pool_size") > 0  # two pools

        # a worker killed outright (OOM killer, crash): the other keeps serving and the
        # supervisor starts a replacement
        victim = min(pids)
        os.kill(victim, signal.SIGKILL)
        assert get_retrying(base + "/healthz") == 200
        fresh = worker_pids(base, 2, timeout=60, gone=frozenset({victim}))
        assert victim not in fresh and len(fresh) == 2, (pids, fresh)
        # the dead worker's requests still count: a counter never goes back
        assert scraped(base, series) == 30
        assert proc.poll() is None
    finally:
        if proc.poll() is None:
            _, err = stop(proc)
            assert f"(pid {victim}) exited with -9" in err and "restarting" in err
    assert not (serve_dir / "var" / "pg" / "postmaster.pid").exists()


def _die_at_once(settings: Any, index: int, restarted: bool = False) -> None:
    """A worker that fails right after its start (stands in for a broken deployment)."""
    raise SystemExit(3)


def test_workers_that_keep_dying_at_start_stop_serve(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from gateway.cli import serve
    from gateway.settings import Settings

    monkeypatch.setattr(serve, "_worker_main", _die_at_once)
    monkeypatch.setattr(serve, "WORKER_MAX_FAST_FAILS", 3)
    settings = Settings(workers=2, port=free_port())
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="gateway"):
        assert serve._run_workers(settings) == 1
    # restarted with backoff (0.5 s, 1 s) before giving up
    assert time.monotonic() - started >= 1.5
    restarts = [r for r in caplog.records if "restarting in" in r.getMessage()]
    assert len(restarts) == 2 * 2, [r.getMessage() for r in caplog.records]
    assert any("3 times in a row" in r.getMessage() for r in caplog.records)


async def test_openapi_lists_every_route(gateway_client: TestClient[Any, Any]) -> None:
    resp = await gateway_client.get("/openapi.json")
    doc = await resp.json()
    app = gateway_client.app
    assert app is not None
    registered: set[tuple[str, str]] = set()
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        path = route.resource.canonical if route.resource is not None else ""
        assert path in doc["paths"], path
        assert route.method.lower() in doc["paths"][path], (route.method, path)
        registered.add((route.method.lower(), path))
    # and nothing else: every operation of the document is a route
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert documented == registered


async def test_docs_page_shows_every_parameter(gateway_client: TestClient[Any, Any]) -> None:
    resp = await gateway_client.get("/docs")
    assert resp.status == 200 and resp.content_type == "text/html"
    page = await resp.text()

    def operation(operation_id: str) -> str:
        start = page.index(f"<article id='{operation_id}'")
        return page[start : page.index("</article>", start)]

    readings = operation("listReadings")
    assert "<code class='m'>GET</code> <code>/v1/readings</code>" in readings
    assert "<td><code>granularity</code></td><td>query</td><td>yes</td>" in readings
    assert "<td><code>ean</code></td><td>query</td><td>no</td>" in readings
    assert "href='#schema-ReadingsAnswer'" in readings and "application/x-ndjson" in readings
    meter = operation("getMeter")
    assert "<td><code>ean</code></td><td>path</td><td>yes</td>" in meter
    assert "pattern <code>^[0-9]{18}$</code>" in meter
    # request bodies and responses per status, linked to their schemas
    registered_meter = operation("registerMeter")
    assert "Request body (required)" in registered_meter
    assert "href='#schema-ConnectionIn'" in registered_meter
    assert "<td>409</td>" in registered_meter and "href='#schema-Problem'" in registered_meter
    assert "id='schema-Reading'" in page and "<main>" in page and "<script" not in page


async def test_readyz_and_database_outage_answer_503_with_retry_after(
    postgres_server_url: str,
) -> None:
    # a pool on a port where nothing listens: every query fails to connect
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    pool = await asyncpg.create_pool(dead, min_size=0, max_size=1)

    async def query(request: web.Request) -> web.Response:
        await pool.fetchval("SELECT 1")
        return web.Response(text="unreachable")

    async def restarting(request: web.Request) -> web.Response:
        raise asyncpg.CannotConnectNowError("the database system is starting up")

    async def bug(request: web.Request) -> web.Response:
        raise KeyError("secret-internal-detail")

    app = web.Application(
        middlewares=[make_metrics_middleware(True, []), make_problem_middleware(7, 1024)]
    )
    app.router.add_get("/q", query)
    app.router.add_get("/r", restarting)
    app.router.add_get("/bug", bug)
    async with TestClient(TestServer(app)) as client:
        for path in ("/q", "/r"):
            resp = await client.get(path)
            assert resp.status == 503 and resp.headers["Retry-After"] == "7"
            data = await resp.json(content_type=PROBLEM)
            assert data["type"] == "https://meterpoort.nl/problems/database-unavailable"
        resp = await client.get("/bug")
        assert resp.status == 500
        text = await resp.text()
        assert "secret-internal-detail" not in text and "KeyError" not in text
        assert (await resp.json(content_type=PROBLEM))["type"].endswith("/internal-error")
    await pool.close()


def test_serve_on_a_busy_port_says_so(database_url: str, serve_dir: Path) -> None:
    """A port already taken is reported as a listening problem, not as database trouble."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "DATABASE_URL": database_url, "METERPOORT_RETENTION_ENABLED": "false"}
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway",
                "serve",
                "--port",
                str(port),
                "--data-dir",
                str(serve_dir),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    assert "cannot listen for HTTP" in result.stderr
    assert "database" not in result.stderr.splitlines()[-1]


def test_workers_stop_when_their_supervisor_is_killed_outright(serve_dir: Path) -> None:
    """SIGKILL of the supervisor passes no signal on: its workers kept the port and served,
    unsupervised, until someone found and killed them. Now each worker notices it was
    re-parented and shuts down by itself."""
    proc, base = start_serve(serve_dir, "--workers", "2")
    try:
        wait_ready(base, proc)
        pids = worker_pids(base, 2)
        workers = [psutil.Process(pid) for pid in pids]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        _, alive = psutil.wait_procs(workers, timeout=30)
        assert not alive, f"workers still running after their supervisor died: {alive}"
        # the workers held the other ends of the pipes: closed now, so this returns
        _, err = proc.communicate(timeout=10)
        assert "the supervisor" in err and "is gone" in err
    finally:
        if proc.poll() is None:
            stop(proc)
        # the embedded server was the supervisor's: nobody is left to stop it
        pidfile = serve_dir / "var" / "pg" / "postmaster.pid"
        if pidfile.exists():
            postmaster = psutil.Process(int(pidfile.read_text().split()[0]))
            postmaster.terminate()
            postmaster.wait(timeout=30)
