"""Observability of a served gateway: the access log and ``X-Request-Id``, the process and build
metrics of ``/metrics`` (one process and ``--workers 2``), and the drain: ``/readyz`` answers 503
from SIGTERM on while the listener still serves, then the process exits 0."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import logging
import os
import re
import signal
import time
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from gateway.api.app import create_app
from gateway.cli.serve import JsonFormatter
from gateway.jobs.retention import RETENTION_LOCK_KEY, retention_loop
from gateway.settings import RetentionSettings, Settings
from gateway.supervisor import background
from tests.conftest import GatewayTestServer
from tests.support import free_port, make_ean
from tests.support.serving import get, get_retrying, start_serve, stop, wait_ready, worker_pids

Client = TestClient[web.Request, web.Application]
PROBLEM = "application/problem+json"
UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The access-log records so far, as ``serve`` writes them (one JSON object each)."""
    formatter = JsonFormatter()
    return [json.loads(formatter.format(r)) for r in caplog.records if r.name == "gateway.access"]


async def test_access_log_names_the_route_template_and_echoes_the_request_id(
    gateway_client: Client, admin_headers: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    ean = make_ean(4242)
    caplog.set_level(logging.INFO, logger="gateway.access")

    # a client's plain id is kept; the path's EAN and the query string stay out of the log
    resp = await gateway_client.get(
        f"/v1/admin/meters/{ean}?note=private-query-value",
        headers={**admin_headers, "X-Request-Id": "trace-0001.abc:x_y"},
    )
    assert resp.status == 404 and resp.content_type == PROBLEM
    assert resp.headers["X-Request-Id"] == "trace-0001.abc:x_y"
    (line,) = access_lines(caplog)
    assert line["logger"] == "gateway.access"
    assert {k: line[k] for k in ("method", "route", "status", "request_id", "client")} == {
        "method": "GET",
        "route": "/v1/admin/meters/{ean}",
        "status": 404,
        "request_id": "trace-0001.abc:x_y",
        "client": "127.0.0.1",
    }
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
    text = json.dumps(line)
    assert ean not in text and "private-query-value" not in text
    assert admin_headers["Authorization"].split()[1] not in text

    # ids that are not plain short tokens are replaced by a fresh UUID4, on errors too
    for bad in ("has spaces in it", "x" * 129, "ünïcode", "a;b=c", ""):
        caplog.clear()
        resp = await gateway_client.get("/no/such/thing", headers={"X-Request-Id": bad})
        assert resp.status == 404 and resp.content_type == PROBLEM
        rid = resp.headers["X-Request-Id"]
        assert UUID4.fullmatch(rid), (bad, rid)
        (line,) = access_lines(caplog)
        assert line["request_id"] == rid and line["route"] == "unmatched"

    # without one, every answer gets its own
    ids = set()
    for _ in range(3):
        resp = await gateway_client.get("/healthz")
        assert resp.status == 200
        ids.add(resp.headers["X-Request-Id"])
    assert len(ids) == 3 and all(UUID4.fullmatch(i) for i in ids)


async def test_access_log_follows_forwarded_for_only_from_trusted_proxies(
    gateway_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    forwarded = {"X-Forwarded-For": "203.0.113.7"}
    seen = []
    for trusted in ([], [ip_network("127.0.0.1/32")]):
        settings = gateway_settings.model_copy(update={"trusted_proxies": trusted})
        async with TestClient(GatewayTestServer(create_app(settings), host="127.0.0.1")) as c:
            caplog.clear()
            assert (await c.get("/healthz", headers=forwarded)).status == 200
            seen.append(access_lines(caplog)[0]["client"])
    assert seen == ["127.0.0.1", "203.0.113.7"]


async def test_access_log_off_keeps_the_request_id(
    gateway_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    app = create_app(gateway_settings.model_copy(update={"access_log": False}))
    async with TestClient(GatewayTestServer(app, host="127.0.0.1")) as client:
        resp = await client.get("/healthz", headers={"X-Request-Id": "keep-me"})
        assert resp.status == 200 and resp.headers["X-Request-Id"] == "keep-me"
        resp = await client.get("/no/such/thing")
        assert resp.status == 404 and UUID4.fullmatch(resp.headers["X-Request-Id"])
    assert access_lines(caplog) == []


async def test_a_request_aiohttp_cannot_parse_gets_a_request_id(gateway_client: Client) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway_client.port)
    try:
        writer.write(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Request-Id: raw-1\r\nBad Header\r\n\r\n"
        )
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head = answer.split(b"\r\n\r\n", 1)[0].decode()
    assert re.match(r"HTTP/1\.[01] 400 ", head) and PROBLEM in head, head
    # its headers did not parse, so the id is a fresh one
    found = re.search(r"(?im)^X-Request-Id: (\S+)\r?$", head)
    assert found and UUID4.fullmatch(found[1]), head


def families(body: bytes) -> dict[str, list[Sample]]:
    """The samples of a scrape by family name (counters without ``_total``)."""
    return {f.name: f.samples for f in text_string_to_metric_families(body.decode())}


def check_build_info(found: dict[str, list[Sample]]) -> None:
    (build,) = found["meterpoort_build_info"]
    assert build.value == 1
    assert build.labels["version"] == importlib.metadata.version("meterpoort")
    assert re.fullmatch(r"3\.\d+\.\d+", build.labels["python_version"])
    assert found["python_info"]


def test_served_process_metrics_access_log_and_drain(serve_dir: Path) -> None:
    """One process: process_* and build info on /metrics; on SIGTERM /readyz turns 503 while
    /healthz still answers, then the process exits 0; every request has its access-log line."""
    proc, base = start_serve(serve_dir, env={"METERPOORT_SHUTDOWN_DRAIN_S": "4"})
    try:
        wait_ready(base, proc)
        status, _, body = get(base + "/metrics")
        assert status == 200
        found = families(body)
        check_build_info(found)
        (rss,) = found["process_resident_memory_bytes"]
        assert rss.value > 10e6 and "worker_pid" not in rss.labels
        assert found["process_cpu_seconds"][0].value > 0
        assert found["process_open_fds"][0].value > 0
        assert found["python_gc_objects_collected"]
        assert [s.value for s in found["meterpoort_db_up"]] == [1.0]

        status, headers, _ = get(base + "/healthz", {"X-Request-Id": "served-1"})
        assert status == 200 and headers["X-Request-Id"] == "served-1"

        proc.send_signal(signal.SIGTERM)
        draining = _drain_answers(base)
        assert proc.poll() is None  # still serving: the drain period has not run out
    finally:
        _, err = stop(proc)
    _check_drained(draining, err, workers=1)
    lines = [json.loads(line) for line in err.splitlines()]
    access = [line for line in lines if line["logger"] == "gateway.access"]
    served = [line for line in access if line["request_id"] == "served-1"]
    assert len(served) == 1 and served[0]["route"] == "/healthz" and served[0]["status"] == 200
    assert any(line["route"] == "/readyz" and line["status"] == 503 for line in access)


def test_served_workers_report_every_worker_and_count_restarts(serve_dir: Path) -> None:
    """``--workers 2``: process_* per live worker (labelled worker_pid), build info once, a
    restarted worker counted; SIGTERM reaches both workers through the supervisor, which drain
    and exit, and serve exits 0."""
    proc, base = start_serve(serve_dir, "--workers", "2", env={"METERPOORT_SHUTDOWN_DRAIN_S": "4"})
    try:
        wait_ready(base, proc)
        pids = worker_pids(base, 2)
        assert len(pids) == 2
        found = families(get(base + "/metrics")[2])
        check_build_info(found)
        assert "python_gc_objects_collected" not in found  # per process only: see gateway.metrics
        for name in ("process_resident_memory_bytes", "process_cpu_seconds", "process_open_fds"):
            assert {int(s.labels["worker_pid"]) for s in found[name]} == pids, name
        assert [
            s.value for s in found["meterpoort_worker_restarts"] if s.name.endswith("_total")
        ] == [0]

        victim = min(pids)
        os.kill(victim, signal.SIGKILL)
        assert get_retrying(base + "/healthz") == 200
        fresh = worker_pids(base, 2, timeout=60, gone=frozenset({victim}))
        assert len(fresh) == 2 and victim not in fresh
        found = families(get(base + "/metrics")[2])
        assert [
            s.value for s in found["meterpoort_worker_restarts"] if s.name.endswith("_total")
        ] == [1]
        assert {
            int(s.labels["worker_pid"]) for s in found["process_resident_memory_bytes"]
        } == fresh

        proc.send_signal(signal.SIGTERM)
        draining = _drain_answers(base)
        assert proc.poll() is None
    finally:
        _, err = stop(proc)
    _check_drained(draining, err, workers=2)


def _drain_answers(base: str) -> list[tuple[int, str, int]]:
    """After SIGTERM: (/readyz status, its content type, /healthz status), polled on fresh
    connections (spread over the workers) until /readyz said 503 ten times in a row."""
    answers: list[tuple[int, str, int]] = []
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        status, headers, body = get(base + "/readyz")
        health = get(base + "/healthz")[0]
        answers.append((status, headers.get("Content-Type", ""), health))
        if status == 503:
            assert json.loads(body)["type"] == "https://meterpoort.nl/problems/service-unavailable"
        if len(answers) >= 10 and all(a[0] == 503 for a in answers[-10:]):
            break
        time.sleep(0.05)
    return answers


def _check_drained(answers: list[tuple[int, str, int]], err: str, workers: int) -> None:
    # ten 503s in a row: every worker says so (new connections land on either)
    assert len(answers) >= 10 and all(a[0] == 503 for a in answers[-10:]), answers
    assert all(a[1].startswith(PROBLEM) for a in answers[-10:]), answers
    assert all(a[2] == 200 for a in answers), answers  # the listener kept serving meanwhile
    assert err.count("draining: /readyz answers 503") == workers, err


def _sample(name: str, **labels: str) -> float:
    from gateway import metrics

    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


async def test_retention_runs_are_counted_and_the_last_success_stamped(
    pool: asyncpg.Pool, database_url: str
) -> None:
    """The metrics MeterpoortRetentionFailing reads: ok runs stamp the time, a run that finds
    the lock taken is 'skipped', one that cannot reach the database is 'failed'."""
    fast = RetentionSettings(first_run_delay_s=0, run_every_s=0.05)

    async def runs_until(outcome: str, job_pool: asyncpg.Pool) -> None:
        before = _sample("meterpoort_retention_runs_total", outcome=outcome)
        async with background("retention-test", retention_loop(job_pool, fast, 2.0, 40)):
            for _ in range(1500):  # 30 s
                if _sample("meterpoort_retention_runs_total", outcome=outcome) > before:
                    return
                await asyncio.sleep(0.02)
        raise AssertionError(f"no {outcome} retention run counted")

    started = time.time()
    await runs_until("ok", pool)
    assert _sample("meterpoort_retention_last_success_timestamp_seconds") >= started

    async with pool.acquire() as holder:  # another process holds the retention lock
        await holder.execute("SELECT pg_advisory_lock($1)", RETENTION_LOCK_KEY)
        stamped = _sample("meterpoort_retention_last_success_timestamp_seconds")
        await runs_until("skipped", pool)
        assert _sample("meterpoort_retention_last_success_timestamp_seconds") == stamped
        await holder.execute("SELECT pg_advisory_unlock($1)", RETENTION_LOCK_KEY)

    dead = await asyncpg.create_pool(
        f"postgresql://postgres@127.0.0.1:{free_port()}/postgres", min_size=0, max_size=1
    )
    try:
        await runs_until("failed", dead)
    finally:
        await dead.close()
