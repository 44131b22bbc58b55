"""``python -m p1_reader forward``: P1 source → spool → ``POST {gateway}/v1/telegrams``.

Two tasks share one :class:`~p1_reader.spool.Spool`:

reader → spool
    telegrams from the P1 source — a serial port, a network dongle (``--port URL``, see
    :mod:`p1_reader.sources`) or ``--input FILE|-`` — are thinned (see below) and appended;
    the spool fsyncs per appended batch or once a second (``--fsync``).
spool → gateway
    the oldest telegrams are posted in batches (``text/plain``, telegrams back to back, bearer
    token) and acknowledged in the spool only after a ``200`` answer: at-least-once, in order
    (the gateway is idempotent, so a batch resent after a lost response costs nothing).

Thinning: minimising what leaves the house is a feature. By default only the first telegram of
every 15-minute period (the gateway keeps the earliest reading of each period, so that one is all
it stores), the first of every minute, and every telegram whose gas capture time enters a new hour
are spooled and sent; ``--send-all`` sends everything.

Answers (SPEC §5):

========================== ===============================================================
``200``                    ``{accepted, rejected:[{index, reason, detail}]}``: rejected
                           telegrams are permanent failures, logged by reason (never their
                           content); the whole batch is acknowledged
``413``                    the batch is halved until it fits; a single telegram that is
                           still too large is given up (logged and counted)
``400``/``422``            the batch is halved to isolate the telegram the gateway refuses;
                           a single refused telegram is given up (logged and counted)
``401``/``403``            the token is refused: keep spooling, retry rarely (``--auth-retry``)
other 4xx                  a configuration error (wrong URL…): keep spooling, retry rarely
``408``/``429``/``503``    wait ``Retry-After`` (seconds or an HTTP date), else back off
5xx, network, timeout      exponential backoff with full jitter, capped (``--backoff-max``)
========================== ===============================================================

SIGTERM/SIGINT: stop reading, write what was read to the spool and fsync it, let a request in
flight finish (a few seconds at most) and exit; whatever was not acknowledged stays spooled.

This module is the loop and its reactions to those answers, the telegram sources and the CLI.
Sorting an HTTP answer into one of the rows above is :mod:`p1_reader.gateway_client`'s job, the
thinning decision :mod:`p1_reader.thinning`'s and the on-disk queue :mod:`p1_reader.spool`'s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import logging
import os
import random
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from p1_reader import spool as spool_mod
from p1_reader.cliargs import (
    add_key_arguments,
    add_source_arguments,
    parse_duration,
    parse_size,
)
from p1_reader.errors import P1Error
from p1_reader.framing import Framer
from p1_reader.gateway_client import GatewayClient, Outcome, OutcomeKind, tls_context
from p1_reader.reader import P1Reader
from p1_reader.spool import Spool, SpoolRecord
from p1_reader.telegram import Telegram
from p1_reader.thinning import TelegramMark, Thinner, mark_of, mark_telegram

log = logging.getLogger(__name__)

TOKEN_ENV = "P1_READER_TOKEN"
GATEWAY_ENV = "P1_READER_GATEWAY"
CA_BUNDLE_ENV = "P1_READER_CA_BUNDLE"
CLIENT_CERT_ENV = "P1_READER_CLIENT_CERT"
CLIENT_KEY_ENV = "P1_READER_CLIENT_KEY"


# --------------------------------------------------------------------------------------------
# Configuration and statistics


@dataclass(frozen=True, slots=True)
class ForwarderConfig:
    """Everything the sender needs; durations in seconds."""

    gateway: str
    token: str
    batch_size: int = 100
    batch_interval: float = 5.0
    send_all: bool = False
    request_timeout: float = 30.0
    backoff_initial: float = 1.0
    backoff_max: float = 300.0
    #: wait after 401/403 or a configuration error (other 4xx) before trying again
    auth_retry: float = 600.0
    #: longest Retry-After honoured (a gateway asking for more is asked again after this)
    retry_after_max: float = 3600.0
    ca_bundle: str | None = None
    #: mutual TLS: the device's certificate (PEM) and its key (PEM; None: in the certificate file)
    client_cert: str | None = None
    client_key: str | None = None
    #: on stop, how long a request in flight may take to finish
    stop_grace: float = 5.0
    #: INFO summary every this many seconds (0 = never)
    stats_interval: float = 900.0

    @property
    def endpoint(self) -> str:
        return self.gateway.rstrip("/") + "/v1/telegrams"


@dataclass(slots=True)
class ForwarderStats:
    """Counters since start (logged periodically; tests read them)."""

    read: int = 0
    thinned: int = 0
    spooled: int = 0
    requests: int = 0
    delivered: int = 0
    accepted: int = 0
    rejected: int = 0
    #: telegrams given up because the gateway refused them as a whole request (413/400 alone)
    refused: int = 0
    failures: int = 0
    rejected_reasons: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Retry timing


def backoff_delay(attempt: int, *, initial: float, cap: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform(0, min(cap, initial·2^attempt))."""
    ceiling = min(cap, initial * (2 ** min(attempt, 32)))
    return rng.uniform(0.0, ceiling)


# --------------------------------------------------------------------------------------------
# The forwarder


class Forwarder:
    """Reads telegrams into a spool and delivers the spool to the gateway."""

    def __init__(
        self,
        config: ForwarderConfig,
        spool: Spool,
        *,
        rng: random.Random | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if config.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, not {config.batch_size}")
        self.config = config
        self.spool = spool
        self.stats = ForwarderStats()
        self._rng = rng or random.Random()
        self._wall_clock = wall_clock
        self._thinner = Thinner(per_minute=True)
        self._incoming: list[tuple[bytes, Telegram | None, float]] = []
        self._incoming_event = asyncio.Event()
        self._spooled_event = asyncio.Event()
        self._stop_event = asyncio.Event()
        self._reader_done = False
        self._batch_limit = config.batch_size
        self._successes_since_shrink = 0
        self._attempt = 0
        self._outage: str | None = None
        self._outage_since = 0.0

    # ------------------------------------------------------------------ control

    def stop(self) -> None:
        """Ask for a graceful stop (signal handlers call this)."""
        if not self._stop_event.is_set():
            log.info("stopping: spooling what was read, finishing the request in flight")
        self._stop_event.set()

    @property
    def stopping(self) -> bool:
        return self._stop_event.is_set()

    async def run(
        self,
        source: AsyncIterator[tuple[bytes, Telegram | None]],
        *,
        exit_when_drained: bool = False,
    ) -> None:
        """Forward until stopped; with ``exit_when_drained``, also stop once the source has
        ended and the spool is empty (``--input`` files)."""
        client = GatewayClient(
            self.config.endpoint,
            self.config.token,
            request_timeout=self.config.request_timeout,
            ca_bundle=self.config.ca_bundle,
            client_cert=self.config.client_cert,
            client_key=self.config.client_key,
            wall_clock=self._wall_clock,
        )
        if self.config.endpoint.startswith("http://"):
            log.warning(
                "gateway %s is plain HTTP: telegrams travel unencrypted", self.config.gateway
            )
        async with client:
            reader = asyncio.create_task(self._read(source), name="p1-forward-read")
            writer = asyncio.create_task(self._write(), name="p1-forward-spool")
            sender = asyncio.create_task(
                self._send_loop(client, exit_when_drained), name="p1-forward-send"
            )
            background = [asyncio.create_task(self._housekeeping(), name="p1-forward-stats")]
            try:
                stop_wait = asyncio.create_task(self._stop_event.wait())
                watched = {stop_wait, sender, reader}
                while True:
                    done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
                    if reader in done and reader.exception() is None and not (done - {reader}):
                        # the input ended normally: keep delivering the spool
                        watched.discard(reader)
                        continue
                    break
                stop_wait.cancel()
                self._stop_event.set()
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
                # the writer drains what the reader handed over, then returns (stop is set)
                self._incoming_event.set()
                await writer
                if not sender.done():
                    try:
                        await asyncio.wait_for(asyncio.shield(sender), self.config.stop_grace)
                    except TimeoutError:
                        log.warning(
                            "request still in flight after %.1f s; leaving it spooled",
                            self.config.stop_grace,
                        )
                        sender.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await sender
                sender.result()
            finally:
                for task in (reader, writer, sender, *background):
                    task.cancel()
                for task in (reader, writer, sender, *background):
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                self.spool.sync()
        self._log_summary()

    # ------------------------------------------------------------------ reader → spool

    async def _read(self, source: AsyncIterator[tuple[bytes, Telegram | None]]) -> None:
        try:
            async for data, telegram in source:
                self._incoming.append((data, telegram, self._wall_clock()))
                self._incoming_event.set()
        finally:
            self._reader_done = True
            self._incoming_event.set()
            log.info("input closed after %d telegrams", self.stats.read + len(self._incoming))

    async def _write(self) -> None:
        """Move telegrams handed over by the reader into the spool, in batches."""
        while True:
            await self._incoming_event.wait()
            self._incoming_event.clear()
            if self._incoming:
                batch, self._incoming = self._incoming, []
                self._spool(batch)
            if self._stop_event.is_set() or (self._reader_done and not self._incoming):
                return

    def _spool(self, batch: list[tuple[bytes, Telegram | None, float]]) -> None:
        keep: list[bytes] = []
        for data, telegram, arrived in batch:
            self.stats.read += 1
            if not self.config.send_all:
                if telegram is not None:
                    mark: TelegramMark | None = mark_of(telegram, arrived=arrived)
                else:
                    mark = mark_telegram(data, arrived=arrived)
                if not self._thinner.keep(mark):
                    self.stats.thinned += 1
                    continue
            keep.append(data)
        if keep:
            self.stats.spooled += self.spool.append_batch(keep)
            self._spooled_event.set()

    # ------------------------------------------------------------------ spool → gateway

    async def _send_loop(self, client: GatewayClient, exit_when_drained: bool) -> None:
        loop = asyncio.get_running_loop()
        last_send = -float("inf")
        while not self._stop_event.is_set():
            pending = self.spool.pending
            if pending == 0:
                if exit_when_drained and self._reader_done and not self._incoming:
                    log.info("input ended and spool delivered: done")
                    return
                self._spooled_event.clear()
                await self._wait(self._spooled_event, None)
                continue
            due = last_send + self.config.batch_interval - loop.time()
            if pending < self._batch_limit and due > 0 and not self._reader_done:
                self._spooled_event.clear()
                await self._wait(self._spooled_event, due)
                continue
            records = self.spool.peek(self._batch_limit)
            last_send = loop.time()
            outcome = await self._post(client, records)
            await self._handle(outcome, records)

    async def _wait(self, event: asyncio.Event, limit: float | None) -> None:
        """Wait for ``event`` or a stop, at most ``limit`` seconds."""
        waiters = {
            asyncio.ensure_future(event.wait()),
            asyncio.ensure_future(self._stop_event.wait()),
        }
        try:
            await asyncio.wait(waiters, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _sleep(self, delay: float) -> None:
        """Sleep ``delay`` seconds unless stopped first."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_event.wait(), timeout=delay)

    async def _post(self, client: GatewayClient, records: list[SpoolRecord]) -> Outcome:
        body = b"".join(r.data for r in records)
        self.stats.requests += 1
        return await client.post(body)

    async def _handle(self, outcome: Outcome, records: list[SpoolRecord]) -> None:
        config = self.config
        if outcome.kind is OutcomeKind.DELIVERED:
            # checked here, not in the client: only the loop knows how many telegrams it sent
            answered = outcome.accepted + len(outcome.rejected) + outcome.omitted
            if answered != len(records):
                log.warning(
                    "gateway answered for %d telegrams, %d were sent", answered, len(records)
                )
            self._recovered()
            for index, reason, detail in outcome.rejected:
                seq = records[index].seq if 0 <= index < len(records) else -1
                self.stats.rejected_reasons[reason] = self.stats.rejected_reasons.get(reason, 0) + 1
                # the reason and the gateway's detail only: never the telegram itself
                log.warning(
                    "gateway rejected telegram %d (batch index %d): %s: %s",
                    seq,
                    index,
                    reason,
                    detail,
                )
            self.stats.accepted += outcome.accepted
            self.stats.rejected += len(outcome.rejected) + outcome.omitted
            self._acknowledge(records)
            self._successes_since_shrink += 1
            if self._batch_limit < config.batch_size and self._successes_since_shrink >= 20:
                self._batch_limit = min(config.batch_size, self._batch_limit * 2)
                self._successes_since_shrink = 0
            return
        if outcome.kind in (OutcomeKind.TOO_LARGE, OutcomeKind.REFUSED):
            self._recovered()
            if len(records) > 1:
                self._batch_limit = max(1, len(records) // 2)
                self._successes_since_shrink = 0
                log.warning(
                    "gateway answered %d (%s) to %d telegrams; retrying in batches of %d",
                    outcome.status,
                    outcome.detail,
                    len(records),
                    self._batch_limit,
                )
                return
            self.stats.refused += 1
            log.error(
                "gateway answered %d (%s) to telegram %d alone; giving it up",
                outcome.status,
                outcome.detail,
                records[0].seq,
            )
            self._acknowledge(records)
            return
        self.stats.failures += 1
        if outcome.kind in (OutcomeKind.AUTH, OutcomeKind.CONFIG, OutcomeKind.TLS):
            if outcome.kind is OutcomeKind.TLS:
                what = f"TLS with the gateway failed: {outcome.detail}"
            elif outcome.kind is OutcomeKind.AUTH:
                what = f"gateway refused the device token: {outcome.status} {outcome.detail}"
            else:
                what = (
                    "gateway refused the request (check --gateway): "
                    f"{outcome.status} {outcome.detail}"
                )
            self._outage_started(
                f"{outcome.kind.value}-{outcome.status}",
                f"{what}; keeping telegrams in the spool ({self.spool.pending} pending) and "
                f"retrying every {config.auth_retry:g} s",
                logging.ERROR,
            )
            await self._sleep(config.auth_retry)
            return
        # transient: honour Retry-After, else back off with full jitter
        if outcome.retry_after is not None:
            delay = min(outcome.retry_after, config.retry_after_max)
        else:
            delay = backoff_delay(
                self._attempt, initial=config.backoff_initial, cap=config.backoff_max, rng=self._rng
            )
            self._attempt += 1
        what = f"{outcome.status} {outcome.detail}" if outcome.status else outcome.detail
        self._outage_started(
            "transient",
            f"gateway unavailable ({what}); {self.spool.pending} telegrams spooled, retrying",
            logging.WARNING,
        )
        log.debug("retrying in %.2f s (%s)", delay, what)
        await self._sleep(delay)

    def _acknowledge(self, records: list[SpoolRecord]) -> None:
        self.spool.ack_through(records[-1].seq)
        self.stats.delivered += len(records)

    def _outage_started(self, key: str, message: str, level: int) -> None:
        # one line per outage episode, not one per attempt
        if self._outage != key:
            log.log(level, "%s", message)
            if self._outage is None:
                self._outage_since = time.monotonic()
            self._outage = key

    def _recovered(self) -> None:
        if self._outage is not None:
            log.info(
                "gateway reachable again after %.0f s; %d telegrams pending",
                time.monotonic() - self._outage_since,
                self.spool.pending,
            )
        self._outage = None
        self._attempt = 0

    # ------------------------------------------------------------------ housekeeping

    async def _housekeeping(self) -> None:
        last_stats = time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            if self.spool.fsync_policy == "every-second":
                self.spool.sync_if_due()
            interval = self.config.stats_interval
            if interval and time.monotonic() - last_stats >= interval:
                last_stats = time.monotonic()
                self._log_summary()

    def _log_summary(self) -> None:
        s, spool_stats = self.stats, self.spool.stats
        log.info(
            "read %d, thinned %d, spooled %d, delivered %d (accepted %d, rejected %d, refused "
            "%d) in %d requests, %d failed; spool: %d pending, %d bytes, %d dropped",
            s.read,
            s.thinned,
            s.spooled,
            s.delivered,
            s.accepted,
            s.rejected,
            s.refused,
            s.requests,
            s.failures,
            self.spool.pending,
            self.spool.size_bytes,
            spool_stats.dropped,
        )


# --------------------------------------------------------------------------------------------
# Sources


async def file_source(
    path: str, *, follow: bool = False, chunk_size: int = 65536
) -> AsyncIterator[tuple[bytes, Telegram | None]]:
    """Telegrams framed from a file, a FIFO or stdin (``-``).

    A thread does the blocking reads (a FIFO's open blocks until a writer appears; regular files
    cannot be polled); it is a daemon so that a read blocked on an idle FIFO never keeps the
    process alive. ``follow``: at end of file keep polling for more (a growing file).
    Telegrams whose CRC does not match are skipped and counted.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(maxsize=64)

    def hand_over(item: bytes | BaseException | None) -> bool:
        try:
            asyncio.run_coroutine_threadsafe(queue.put(item), loop).result()
        except RuntimeError:
            # the event loop is gone: nobody is left to read, the thread just ends
            return False
        return True

    def pump() -> None:
        try:
            stream: io.BufferedReader = (
                sys.stdin.buffer if path == "-" else open(path, "rb")  # type: ignore[assignment]
            )
        except OSError as exc:
            hand_over(exc)
            return
        try:
            while True:
                chunk = stream.read1(chunk_size)
                if not chunk:
                    if follow:
                        time.sleep(0.2)
                        continue
                    break
                if not hand_over(chunk):
                    return
        except OSError as exc:
            hand_over(exc)
            return
        finally:
            if stream is not sys.stdin.buffer:
                stream.close()
        hand_over(None)

    threading.Thread(target=pump, name=f"p1-input-{path}", daemon=True).start()
    framer = Framer(plaintext=True, encrypted=False)
    bad = 0
    while True:
        item = await queue.get()
        if isinstance(item, BaseException):
            raise P1Error(f"cannot read input {path}: {item}") from item
        # None: the input ended, which completes a last telegram lacking its final line end
        for frame in framer.feed(item) if item is not None else framer.finish():
            if frame.crc_ok is False:
                bad += 1
                log.warning("input %s: telegram with a wrong CRC skipped (%d so far)", path, bad)
                continue
            yield frame.data, None
        if item is None:
            break


async def port_source(
    reader: P1Reader,
) -> AsyncIterator[tuple[bytes, Telegram | None]]:
    """Validated telegrams (with their parse) from a reader's source (serial port, network
    dongle), reconnecting forever with the reader's backoff."""
    async with contextlib.aclosing(reader.telegrams()) as items:
        async for data, telegram in items:
            yield data, telegram


async def serial_source(
    port: str, profile: str, *, key: bytes | None, auth_key: bytes | None
) -> AsyncIterator[tuple[bytes, Telegram | None]]:
    """Validated telegrams (with their parse) from ``port``, reconnecting forever."""
    async for item in port_source(P1Reader(port, profile, key=key, auth_key=auth_key)):
        yield item


# --------------------------------------------------------------------------------------------
# CLI


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``forward``: P1 source (or file) → spool → gateway."""
    parser = subparsers.add_parser(
        "forward",
        help="forward telegrams from a P1 port or network dongle to the gateway, spooling "
        "them on disk",
        description=(
            "Read telegrams from a P1 port, a network dongle (socket://, rfc2217:// or a "
            "HomeWizard's http:// URL) or a file, keep them in an on-disk spool and post them "
            "to the gateway in batches; nothing is lost while the gateway is unreachable. "
            f"The token can also come from ${TOKEN_ENV}, the gateway URL from ${GATEWAY_ENV}."
        ),
    )
    src = parser.add_mutually_exclusive_group(required=True)
    add_source_arguments(parser, port_group=src)
    src.add_argument(
        "--input", metavar="FILE", help="read a telegram byte stream from FILE (or - for stdin)"
    )
    parser.add_argument(
        "--follow", action="store_true", help="--input: keep reading a growing file at its end"
    )
    add_key_arguments(parser)
    parser.add_argument(
        "--gateway",
        default=os.environ.get(GATEWAY_ENV),
        help=f"gateway base URL, e.g. https://gateway.example (default ${GATEWAY_ENV})",
    )
    token = parser.add_mutually_exclusive_group()
    token.add_argument("--token", help=f"device token (prefer --token-file or ${TOKEN_ENV})")
    token.add_argument("--token-file", metavar="FILE", help="file holding the device token")
    parser.add_argument(
        "--spool-dir", default="./p1-spool", metavar="DIR", help="spool directory (./p1-spool)"
    )
    parser.add_argument(
        "--spool-max-bytes",
        type=parse_size,
        default=spool_mod.DEFAULT_MAX_BYTES,
        metavar="SIZE",
        help="spool size limit (default 256MiB)",
    )
    parser.add_argument(
        "--spool-full",
        choices=spool_mod.FULL_POLICIES,
        default="thin",
        help="what to drop when the spool is full (default thin: keep the first telegram of "
        "each 15-minute period)",
    )
    parser.add_argument(
        "--fsync",
        choices=spool_mod.FSYNC_POLICIES,
        default="batch",
        help="fsync the spool per appended batch (default) or at most once a second",
    )
    parser.add_argument("--batch-size", type=int, default=100, help="telegrams per request (100)")
    parser.add_argument(
        "--batch-interval",
        type=parse_duration,
        default=5.0,
        metavar="DURATION",
        help="send at least this often when telegrams are pending (default 5s)",
    )
    parser.add_argument(
        "--ca-bundle",
        metavar="FILE",
        default=os.environ.get(CA_BUNDLE_ENV),
        help=f"CA certificates (PEM) to trust for the gateway, e.g. a private CA (default "
        f"${CA_BUNDLE_ENV}; else the system's)",
    )
    parser.add_argument(
        "--client-cert",
        metavar="FILE",
        default=os.environ.get(CLIENT_CERT_ENV),
        help=f"mutual TLS: this device's certificate (PEM; default ${CLIENT_CERT_ENV})",
    )
    parser.add_argument(
        "--client-key",
        metavar="FILE",
        default=os.environ.get(CLIENT_KEY_ENV),
        help=f"its private key (PEM, unencrypted; default ${CLIENT_KEY_ENV}; else in the "
        "--client-cert file)",
    )
    parser.add_argument(
        "--send-all",
        action="store_true",
        help="send every telegram (default: first of each 15 minutes and of each minute)",
    )
    parser.add_argument(
        "--timeout",
        type=parse_duration,
        default=30.0,
        metavar="DURATION",
        help="request timeout (default 30s)",
    )
    parser.add_argument(
        "--backoff-initial",
        type=parse_duration,
        default=1.0,
        metavar="DURATION",
        help="first backoff step after a failure (default 1s)",
    )
    parser.add_argument(
        "--backoff-max",
        type=parse_duration,
        default=300.0,
        metavar="DURATION",
        help="backoff cap (default 5m)",
    )
    parser.add_argument(
        "--auth-retry",
        type=parse_duration,
        default=600.0,
        metavar="DURATION",
        help="retry interval after the gateway refused the token (default 10m)",
    )
    parser.add_argument(
        "--stats-interval",
        type=parse_duration,
        default=900.0,
        metavar="DURATION",
        help="log a summary this often (default 15m; 0 = never)",
    )
    parser.add_argument(
        "--exit-when-drained",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="exit once the input ended and the spool is delivered (default: on with --input)",
    )
    parser.set_defaults(func=run_forward)


def _read_token(args: argparse.Namespace) -> str:
    if args.token_file:
        try:
            token = Path(args.token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise P1Error(f"cannot read token file {args.token_file}: {exc}") from exc
    else:
        token = args.token or os.environ.get(TOKEN_ENV, "")
    token = token.strip()
    if not token:
        raise P1Error(f"no device token: use --token-file, --token or ${TOKEN_ENV}")
    return token


def config_from_args(args: argparse.Namespace) -> ForwarderConfig:
    """Build the sender configuration from parsed ``forward`` arguments."""
    if not args.gateway:
        raise P1Error(f"no gateway URL: use --gateway or ${GATEWAY_ENV}")
    if not args.gateway.startswith(("http://", "https://")):
        raise P1Error(f"gateway URL must start with https:// (or http://): {args.gateway!r}")
    # the TLS files are checked now: a typo fails the start, before the spool opens
    tls_context(args.ca_bundle, args.client_cert, args.client_key)
    return ForwarderConfig(
        gateway=args.gateway,
        token=_read_token(args),
        batch_size=args.batch_size,
        batch_interval=args.batch_interval,
        send_all=args.send_all,
        request_timeout=args.timeout,
        backoff_initial=args.backoff_initial,
        backoff_max=args.backoff_max,
        auth_retry=args.auth_retry,
        ca_bundle=args.ca_bundle,
        client_cert=args.client_cert,
        client_key=args.client_key,
        stats_interval=args.stats_interval,
    )


async def _forward_main(args: argparse.Namespace, config: ForwarderConfig) -> int:
    spool = Spool(
        args.spool_dir,
        max_bytes=args.spool_max_bytes,
        full_policy=args.spool_full,
        fsync=args.fsync,
        marker=mark_telegram,
    )
    try:
        forwarder = Forwarder(config, spool)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, forwarder.stop)
        if args.input is not None:
            source = file_source(args.input, follow=args.follow)
            drained = args.exit_when_drained if args.exit_when_drained is not None else True
        else:
            try:
                reader = P1Reader(
                    args.port,
                    args.profile,
                    key=args.key,
                    auth_key=args.auth_key,
                    poll_interval=args.poll_interval,
                )
            except ValueError as exc:
                raise P1Error(str(exc)) from exc
            source = port_source(reader)
            drained = bool(args.exit_when_drained)
        try:
            await forwarder.run(source, exit_when_drained=drained)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
    finally:
        spool.close()
    return 0


def run_forward(args: argparse.Namespace) -> int:
    """Entry point of ``forward``."""
    try:
        config = config_from_args(args)
        return asyncio.run(_forward_main(args, config))
    except P1Error as exc:
        log.error("%s", exc)
        return 2


__all__: Sequence[str] = (
    "Forwarder",
    "ForwarderConfig",
    "ForwarderStats",
    "add_parser",
    "backoff_delay",
    "file_source",
    "port_source",
    "serial_source",
)
