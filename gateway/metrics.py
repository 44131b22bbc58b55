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

Process metrics (``process_*``: CPU, memory, file descriptors, start time) are per process, and
prometheus-client's multiprocess files cannot hold them. With one process they come from its
ProcessCollector (with ``python_info`` and ``python_gc_*``). With ``--workers N`` the worker that
answers the scrape reads ``/proc/<pid>`` of every live worker (the pids ``meterpoort_worker_info``
lists) and labels each series ``worker_pid``, as ``meterpoort_worker_info`` is: a scrape then
shows every worker, not whichever one the kernel picked. The supervisor itself only forks and
waits, so it is left out. ``python_gc_*`` is left out there too: the scraping worker could only
report its own collector, which would jump between workers from scrape to scrape.
``meterpoort_build_info`` (1, labelled with the version and Python) is computed at scrape time
in both modes.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Generic, TypeVar

import asyncpg
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

#: the environment variable prometheus-client's multiprocess mode reads (at import)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

REGISTRY = CollectorRegistry(auto_describe=True)
#: the gauge with one series per live worker, whose ``worker_pid`` labels name the workers
WORKER_INFO_NAME = "meterpoort_worker_info"


def _version() -> str:
    try:
        return importlib.metadata.version("meterpoort")
    except importlib.metadata.PackageNotFoundError:  # a checkout on PYTHONPATH, not installed
        return "unknown"


class BuildInfoCollector(Collector):
    """``meterpoort_build_info``: 1, labelled with the installed version and the Python version
    (a collector, not a Gauge: constant per process, it needs no multiprocess file)."""

    def __init__(self) -> None:
        self._labels = [_version(), platform.python_version()]

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "meterpoort_build_info",
            "1, labelled with the gateway's version and the Python version it runs on",
            labels=["version", "python_version"],
        )
        family.add_metric(self._labels, 1.0)
        yield family


BUILD_INFO = BuildInfoCollector()
# one process: the standard process, platform and GC collectors, in the gateway's registry
REGISTRY.register(BUILD_INFO)
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    REGISTRY.register(_collector)

WORKER_RESTARTS = Counter(
    "meterpoort_worker_restarts_total",
    "Worker processes the supervisor started again after one exited (serve --workers N)",
    registry=REGISTRY,
)

#: media type of the text exposition format
CONTENT_TYPE = CONTENT_TYPE_LATEST

WORKER_INFO = Gauge(
    WORKER_INFO_NAME,
    "1 per live gateway worker process, labelled with its process id",
    # not "pid": multiprocess mode uses that label name itself
    ["worker_pid"],
    multiprocess_mode="livemostrecent",
    registry=REGISTRY,
)

_M = TypeVar("_M", bound=MetricWrapperBase)


class Children(Generic[_M]):
    """The labelled series of one metric, memoised by label values.

    ``metric.labels(...)`` validates, joins and looks its labels up under a lock on every call;
    on the per-request path (several series per single-telegram request) that was a tenth of
    the gateway's own time per request. A child, once made, is the same object prometheus-client
    keeps, so incrementing it is what ``labels(...).inc()`` does. At most ``MAX`` label
    combinations are memoised (label values are closed sets; past it, ``labels`` is called).
    """

    MAX = 1024

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: _M) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], _M] = {}

    def __call__(self, *labels: str) -> _M:
        child = self._children.get(labels)
        if child is None:
            child = self._metric.labels(*labels)
            if len(self._children) < self.MAX:
                self._children[labels] = child
        return child


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
HTTP_REQUESTS_BY = Children(HTTP_REQUESTS)
HTTP_REQUEST_SECONDS_BY = Children(HTTP_REQUEST_SECONDS)
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
TELEGRAM_DST_FLAG_MISMATCH = Counter(
    "meterpoort_telegram_dst_flag_mismatch_total",
    "Telegrams whose S/W (summer/winter time) flag contradicts the calendar; their times follow"
    " the calendar (a meter's faulty flag, not its clock)",
    registry=REGISTRY,
)
TELEGRAMS_REJECTED_BY = Children(TELEGRAMS_REJECTED)
READINGS_STORED_BY = Children(READINGS_STORED)
READINGS_WITHHELD_BY = Children(READINGS_WITHHELD)
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
DB_UP = Gauge(
    "meterpoort_db_up",
    "1 when PostgreSQL answered a query at the latest scrape, 0 when it did not",
    multiprocess_mode="livemostrecent",
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

# --- consent, exports, retention ------------------------------------------------------------------
CONSENT_EVENTS = Counter(
    "meterpoort_consent_events_total",
    "Consent events recorded (granted, ended: by the customer, a contract end, an expiry)",
    ["kind"],
    registry=REGISTRY,
)
READINGS_EXPORTED = Counter(
    "meterpoort_readings_exported_total",
    "Readings handed to data clients by GET /v1/readings, by format (json, ndjson, csv)",
    ["format"],
    registry=REGISTRY,
)
RETENTION_RUNS = Counter(
    "meterpoort_retention_runs_total",
    "Runs of the retention job by outcome (ok; skipped: another process held the lock; failed)",
    ["outcome"],
    registry=REGISTRY,
)
RETENTION_LAST_SUCCESS = Gauge(
    "meterpoort_retention_last_success_timestamp_seconds",
    "Unix time of the latest retention run that completed (0: none since start)",
    # "max", not live: the process that ran it may have exited since
    multiprocess_mode="max",
    registry=REGISTRY,
)
# every series exists from the start: rate() and the alert rules need them before the first event
for _kind in ("granted", "ended"):
    CONSENT_EVENTS.labels(_kind)
for _format in ("json", "ndjson", "csv"):
    READINGS_EXPORTED.labels(_format)
for _outcome in ("ok", "skipped", "failed"):
    RETENTION_RUNS.labels(_outcome)


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
        registry.register(_WorkersCollector())
        return generate_latest(registry)
    return generate_latest(REGISTRY)


class _WorkersCollector(Collector):
    """Multiprocess mode: every worker's metrics from the shared files, the process metrics of
    every live worker labelled ``worker_pid``, ``python_info`` and ``meterpoort_build_info``."""

    def collect(self) -> Iterable[Metric]:
        shared = CollectorRegistry()
        _multiprocess.MultiProcessCollector(shared)  # type: ignore[no-untyped-call]
        families = list(shared.collect())
        pids = sorted(
            {
                sample.labels["worker_pid"]
                for family in families
                if family.name == WORKER_INFO_NAME
                for sample in family.samples
                if sample.value == 1
            }
        )
        yield from families
        yield from _per_worker(pids)
        yield from PLATFORM_COLLECTOR.collect()
        yield from BUILD_INFO.collect()


def _per_worker(pids: list[str]) -> Iterable[Metric]:
    """The ``process_*`` families of the processes ``pids``, one series per process labelled
    ``worker_pid`` (a worker that exited meanwhile is left out: its /proc entry is gone)."""
    merged: dict[str, Metric] = {}
    for pid in pids:
        collector = ProcessCollector(pid=functools.partial(str, pid), registry=None)
        for family in collector.collect():
            into = merged.get(family.name)
            if into is None:
                into = merged[family.name] = Metric(family.name, family.documentation, family.type)
            for sample in family.samples:
                labels = {**sample.labels, "worker_pid": pid}
                into.add_sample(sample.name, labels, sample.value)
    return merged.values()


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
