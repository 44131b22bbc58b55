"""Prometheus metrics of the gateway, in one registry served at ``/metrics``.

Metric objects are module-level (the prometheus-client idiom) but live in ``REGISTRY``, not the
global default registry, so tests and tools can read exactly the gateway's series. Label values
are small closed sets (reasons, granularities): never EANs, meter ids or tokens.

With ``serve --workers N`` every worker process has its own registry; a scrape reaches one worker
(the kernel spreads connections over SO_REUSEPORT sockets), so counters are per process — each
worker labels its series with ``worker`` via ``WORKER_INFO``.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

REGISTRY = CollectorRegistry(auto_describe=True)

#: media type of the text exposition format
CONTENT_TYPE = CONTENT_TYPE_LATEST

WORKER_INFO = Info(
    "meterpoort_worker", "Identity of the gateway process serving this scrape", registry=REGISTRY
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

# --- database pool (sampled at scrape time by gateway.handlers.ops) ---------------------------
POOL_SIZE = Gauge(
    "meterpoort_db_pool_size", "Connections open in this process's pool", registry=REGISTRY
)
POOL_IN_USE = Gauge(
    "meterpoort_db_pool_in_use", "Pooled connections currently checked out", registry=REGISTRY
)
POOL_MAX_SIZE = Gauge(
    "meterpoort_db_pool_max_size", "Configured maximum pool size", registry=REGISTRY
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


def render() -> bytes:
    """The registry in the Prometheus text exposition format."""
    return generate_latest(REGISTRY)
