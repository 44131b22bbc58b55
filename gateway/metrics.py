"""Prometheus metrics of the gateway, in one registry served at ``/metrics``.

Metric objects are module-level (the prometheus-client idiom) but live in ``REGISTRY``, not the
global default registry, so tests and tools can read exactly the gateway's series. Label values
are small closed sets (reasons, granularities): never EANs, meter ids or tokens.

``serve --workers N`` runs prometheus-client's multiprocess mode: the supervisor points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before it starts the workers, every worker's
values live in memory-mapped files there, and a scrape (whichever worker the kernel hands it to)
adds up all of them: counters and histograms are totals over the workers, including workers that
died and were replaced (a counter never goes back). Gauges say how they combine
(``multiprocess_mode``): pool sizes are summed over the live workers, values sampled from the
database take the most recent sample, ``meterpoort_worker_info`` has one series per live worker.
With one process (``--workers 1``, tests) it is the plain in-process registry.
"""

from __future__ import annotations

import os
from pathlib import Path

import asyncpg
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST

#: the environment variable prometheus-client's multiprocess mode reads (at import)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

REGISTRY = CollectorRegistry(auto_describe=True)

#: media type of the text exposition format
CONTENT_TYPE = CONTENT_TYPE_LATEST

WORKER_INFO = Gauge(
    "meterpoort_worker_info",
    "1 per live gateway worker process, labelled with its process id",
    # not "pid": multiprocess mode uses that label name itself
    ["worker_pid"],
    multiprocess_mode="livemostrecent",
    registry=REGISTRY,
)

# --- HTTP -------------------------------------------------------------------------------------
HTTP_REQUESTS = Counter(
    "meterpoort_http_requests_total",
    "HTTP requests answered, by route template, method and status code",
    ["route", "method", "status"],
    registry=REGISTRY,
)
HTTP_REQUEST_SECONDS = Histogram(
    "meterpoort_http_request_seconds",
    "Time to answer an HTTP request, by route template",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
PROBLEMS = Counter(
    "meterpoort_problems_total",
    "problem+json answers, by problem type slug",
    ["type"],
    registry=REGISTRY,
)
HTTP_CLIENT_ABORTS = Counter(
    "meterpoort_http_client_aborts_total",
    "Requests whose client closed the connection before the answer (e.g. mid-upload)",
    registry=REGISTRY,
)

# --- ingest (written by gateway.ingest) ---------------------------------------------------------
TELEGRAMS_RECEIVED = Counter(
    "meterpoort_telegrams_received_total",
    "Telegrams received from devices (accepted or not)",
    registry=REGISTRY,
)
TELEGRAMS_REJECTED = Counter(
    "meterpoort_telegrams_rejected_total",
    "Telegrams rejected, by reason",
    ["reason"],
    registry=REGISTRY,
)
READINGS_STORED = Counter(
    "meterpoort_readings_stored_total",
    "Period readings written (new or improved), by granularity",
    ["granularity"],
    registry=REGISTRY,
)
READINGS_WITHHELD = Counter(
    "meterpoort_readings_withheld_total",
    "Period readings the consent policy did not allow to store, by granularity",
    ["granularity"],
    registry=REGISTRY,
)
INGEST_BATCH_SIZE = Histogram(
    "meterpoort_ingest_batch_size",
    "Readings per database write batch",
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
    registry=REGISTRY,
)
DB_WRITE_SECONDS = Histogram(
    "meterpoort_db_write_seconds",
    "Time to write one batch of readings to PostgreSQL",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
    registry=REGISTRY,
)

# --- consent index (written by gateway.ingest.consent_index) -------------------------------------
# How long a grant or an end takes to reach every process (SPEC §6): a change recorded at time T
# (its granted_at/ended_at) is in this process's index from the applied time of the first reload
# whose newest loaded change is at or after T. Per process, hence "livemax" over workers.
CONSENT_INDEX_NEWEST_CHANGE = Gauge(
    "meterpoort_consent_index_newest_change_timestamp_seconds",
    "Unix time of the newest consent grant or end the consent index has loaded",
    multiprocess_mode="livemax",
    registry=REGISTRY,
)
CONSENT_INDEX_APPLIED = Gauge(
    "meterpoort_consent_index_applied_timestamp_seconds",
    "Unix time at which the consent index's latest reload was applied",
    multiprocess_mode="livemax",
    registry=REGISTRY,
)

# --- database pool (sampled by each worker every few seconds and at scrape time) --------------
POOL_SIZE = Gauge(
    "meterpoort_db_pool_size",
    "Connections open in the gateway's pools (summed over worker processes)",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
POOL_IN_USE = Gauge(
    "meterpoort_db_pool_in_use",
    "Pooled connections currently checked out (summed over worker processes)",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
POOL_MAX_SIZE = Gauge(
    "meterpoort_db_pool_max_size",
    "Configured maximum pool size (summed over worker processes)",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
DB_UNAVAILABLE = Counter(
    "meterpoort_db_unavailable_total",
    "Requests answered 503 because PostgreSQL was unreachable or the pool exhausted",
    registry=REGISTRY,
)

# --- registry -----------------------------------------------------------------------------------
CONNECTIONS_REGISTERED = Counter(
    "meterpoort_connections_registered_total",
    "Connections registered (API, CLI and CSV import)",
    registry=REGISTRY,
)
DEVICES_REGISTERED = Counter(
    "meterpoort_devices_registered_total", "Devices registered", registry=REGISTRY
)


def sample_pool(pool: asyncpg.Pool) -> None:
    """Set the pool gauges from ``pool`` (this process's share in multiprocess mode)."""
    size = pool.get_size()
    POOL_SIZE.set(size)
    POOL_IN_USE.set(size - pool.get_idle_size())
    POOL_MAX_SIZE.set(pool.get_max_size())


def render() -> bytes:
    """The metrics in the Prometheus text exposition format: this process's registry, or in
    multiprocess mode the sum over every worker's files."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)


def prepare_multiprocess(directory: Path) -> None:
    """Empty ``directory`` and point this process and the workers it starts from now on at it
    (call before starting them: prometheus-client reads the variable when it is imported)."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()
    os.environ[MULTIPROC_ENV] = str(directory)


def worker_gone(pid: int) -> None:
    """Drop the live-gauge files of a worker that exited (its counters stay in the totals)."""
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        _multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
