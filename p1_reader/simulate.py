"""``python -m p1_reader simulate``: synthetic, realistic DSMR 5 meters for demos and load tests.

Each :class:`SimulatedMeter` is an Iskra-AM550-like DSMR 5 electricity meter, optionally with a gas
meter on M-Bus channel 1:

* registers only go up: import/export T1/T2 in Wh, gas in dm³;
* Dutch tariff switching: tariff 1 (low) from 23:00 to 07:00 local time and all weekend, tariff 2
  (normal) otherwise (public holidays are not modelled);
* actual power follows a daily household profile with noise; some meters have solar panels and
  export around noon;
* the gas meter captures its register every 5 minutes (DSMR 5 ``0-1:24.2.1`` carries that capture
  time, not the telegram time);
* timestamps are Europe/Amsterdam local time with the right ``S``/``W`` flag, also across the DST
  changes (the repeated October hour is told apart by the flag);
* a telegram every ``interval`` seconds (10 by default), each meter at its own phase within it.

Meter ids depend only on the meter index (``E0000000000000001``, gas ``G0000000000000001``), so a
gateway registry can be seeded to match; whether a meter has gas depends on the seed and index
(``meter_ids`` lists them). The Python API (:class:`SimulatedMeter`, :func:`make_meters`,
:func:`generate`, :func:`batches`) lets benchmarks build request bodies without the CLI.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import random
import sys
import time
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

import aiohttp

from p1_reader.cliargs import parse_duration
from p1_reader.crc import crc16_arc
from p1_reader.timestamps import LOCAL_TZ

log = logging.getLogger(__name__)

GAS_CAPTURE_SECONDS = 300
DEFAULT_INTERVAL = 10
HEADER = b"/ISK5\\2M550T-1012\r\n\r\n1-3:0.2.8(50)\r\n"


def meter_id(index: int) -> str:
    """Electricity meter equipment id of meter ``index`` (``E`` + 16 digits)."""
    return f"E{index:016d}"


def gas_meter_id(index: int) -> str:
    """Gas meter equipment id of meter ``index`` (``G`` + 16 digits)."""
    return f"G{index:016d}"


def has_gas(index: int, *, seed: int, gas_fraction: float) -> bool:
    """Whether meter ``index`` has a gas meter: a cheap deterministic hash of seed and index."""
    return zlib.crc32(f"gas:{seed}:{index}".encode()) / 2**32 < gas_fraction


def meter_ids(
    count: int, *, seed: int = 1, gas_fraction: float = 0.8, first: int = 1
) -> list[tuple[str, str | None]]:
    """(electricity id, gas id or None) of meters ``first`` .. ``first + count - 1``."""
    return [
        (meter_id(i), gas_meter_id(i) if has_gas(i, seed=seed, gas_fraction=gas_fraction) else None)
        for i in range(first, first + count)
    ]


def is_low_tariff(local: datetime) -> bool:
    """NL: tariff 1 (low) 23:00–07:00 on weekdays and all day on Saturday and Sunday."""
    return local.weekday() >= 5 or local.hour >= 23 or local.hour < 7


@dataclass(frozen=True, slots=True)
class _Tick:
    """Everything about one second that is shared by all meters sending in it."""

    epoch: int
    tst: bytes  # YYMMDDhhmmssX
    low_tariff: bool
    hour: float  # local hour of day with fraction
    day_of_year: int


_tick_cache: dict[int, _Tick] = {}


def _tick(epoch: int) -> _Tick:
    hit = _tick_cache.get(epoch)
    if hit is not None:
        return hit
    local = datetime.fromtimestamp(epoch, LOCAL_TZ)
    flag = "S" if local.dst() else "W"
    tst = (
        f"{local.year % 100:02d}{local.month:02d}{local.day:02d}"
        f"{local.hour:02d}{local.minute:02d}{local.second:02d}{flag}"
    ).encode("ascii")
    tick = _Tick(
        epoch,
        tst,
        is_low_tariff(local),
        local.hour + local.minute / 60 + local.second / 3600,
        local.timetuple().tm_yday,
    )
    if len(_tick_cache) > 100_000:
        _tick_cache.clear()
    _tick_cache[epoch] = tick
    return tick


def _kwh(wh: int) -> bytes:
    return b"%06d.%03d*kWh" % (wh // 1000, wh % 1000)


def _kw(watts: int) -> bytes:
    return b"%02d.%03d*kW" % (watts // 1000, watts % 1000)


class SimulatedMeter:
    """One simulated household; :meth:`telegram_at` advances it and formats a telegram.

    Times passed to :meth:`telegram_at` must not decrease. Energy is integrated from the power at
    each telegram over the time since the previous one, so registers grow with the power shown.
    """

    def __init__(
        self,
        index: int,
        *,
        seed: int = 1,
        gas_fraction: float = 0.8,
        solar_fraction: float = 0.3,
        interval: int = DEFAULT_INTERVAL,
    ) -> None:
        rng = random.Random(seed * 1_000_003 + index)
        self.index = index
        self.meter_id = meter_id(index)
        self.gas_id = (
            gas_meter_id(index) if has_gas(index, seed=seed, gas_fraction=gas_fraction) else None
        )
        self.interval = interval
        #: second within the interval at which this meter sends (meters are not synchronised)
        self.phase = rng.randrange(interval) if interval > 1 else 0
        self._rng = rng
        self._id_line = b"0-0:96.1.1(" + self.meter_id.encode().hex().upper().encode() + b")\r\n"
        self._gas_lines = (
            b"0-1:24.1.0(003)\r\n0-1:96.1.0("
            + self.gas_id.encode().hex().upper().encode()
            + b")\r\n"
            if self.gas_id
            else b""
        )
        # registers in Wh / dm3, plausible starting values for a few years old meter
        self.import_wh = [rng.randrange(2_000_000, 20_000_000) for _ in range(2)]
        self.export_wh = [0, 0]
        self.gas_dm3 = rng.randrange(1_000_000, 9_000_000) if self.gas_id else 0
        self._base_w = rng.uniform(120, 400)
        self._peak_w = rng.uniform(600, 2500)
        self._solar_w = rng.uniform(2000, 5000) if rng.random() < solar_fraction else 0.0
        self._gas_dm3_per_hour = rng.uniform(40, 160)  # heating season average
        self._frac_wh = 0.0
        self._frac_dm3 = 0.0
        self._last: int | None = None
        self._gas_capture: int | None = None
        self._gas_captured_dm3 = self.gas_dm3

    def power_w(self, tick: _Tick) -> int:
        """Net power in W at ``tick`` (positive: import, negative: export)."""
        h = tick.hour
        # two household peaks (morning, evening) on a base load, with noise
        use = self._base_w
        use += self._peak_w * 0.4 * math.exp(-(((h - 7.5) / 1.2) ** 2))
        use += self._peak_w * math.exp(-(((h - 19.0) / 2.0) ** 2))
        use *= self._rng.uniform(0.7, 1.3)
        if self._solar_w and 6.0 < h < 20.0:
            season = 0.35 + 0.65 * math.sin(math.pi * tick.day_of_year / 366)
            sun = math.sin(math.pi * (h - 6.0) / 14.0)
            use -= self._solar_w * season * sun * self._rng.uniform(0.6, 1.0)
        return int(use)

    def _gas_rate(self, tick: _Tick) -> float:
        """Gas flow in dm3 per hour: heating in the cold season, morning and evening."""
        winter = 0.25 + 0.75 * abs(math.cos(math.pi * tick.day_of_year / 366))
        daily = 0.3 + 1.4 * (7 <= tick.hour < 9 or 17 <= tick.hour < 22)
        return self._gas_dm3_per_hour * winter * daily

    def telegram_at(self, epoch: int) -> bytes:
        """Advance to Unix time ``epoch`` and return the telegram the meter sends then."""
        tick = _tick(epoch)
        last = self._last
        if last is not None and epoch < last:
            raise ValueError(f"meter {self.meter_id}: time went back from {last} to {epoch}")
        dt = self.interval if last is None else epoch - last
        self._last = epoch
        power = self.power_w(tick)
        tariff = 0 if tick.low_tariff else 1
        energy = abs(power) * dt / 3600 + self._frac_wh
        whole = int(energy)
        self._frac_wh = energy - whole
        if power >= 0:
            self.import_wh[tariff] += whole
        else:
            self.export_wh[tariff] += whole
        parts = [
            HEADER,
            b"0-0:1.0.0(",
            tick.tst,
            b")\r\n",
            self._id_line,
            b"1-0:1.8.1(",
            _kwh(self.import_wh[0]),
            b")\r\n1-0:1.8.2(",
            _kwh(self.import_wh[1]),
            b")\r\n1-0:2.8.1(",
            _kwh(self.export_wh[0]),
            b")\r\n1-0:2.8.2(",
            _kwh(self.export_wh[1]),
            b")\r\n0-0:96.14.0(000",
            b"1" if tariff == 0 else b"2",
            b")\r\n1-0:1.7.0(",
            _kw(max(power, 0)),
            b")\r\n1-0:2.7.0(",
            _kw(max(-power, 0)),
            b")\r\n0-0:96.7.21(00004)\r\n0-0:96.7.9(00002)\r\n1-0:99.97.0(0)(0-0:96.7.19)\r\n"
            b"1-0:32.32.0(00002)\r\n1-0:32.36.0(00000)\r\n0-0:96.13.0()\r\n1-0:32.7.0(",
            b"%05.1f*V" % (230.0 + self._rng.uniform(-4.0, 4.0)),
            b")\r\n1-0:31.7.0(",
            b"%03d*A" % min(abs(power) // 230, 999),
            b")\r\n1-0:21.7.0(",
            _kw(max(power, 0)),
            b")\r\n1-0:22.7.0(",
            _kw(max(-power, 0)),
            b")\r\n",
        ]
        if self.gas_id:
            parts.append(self._gas_lines)
            parts.append(self._gas_line(tick, dt))
        parts.append(b"!")
        body = b"".join(parts)
        return body + b"%04X\r\n" % crc16_arc(body)

    def _gas_line(self, tick: _Tick, dt: int) -> bytes:
        volume = self._gas_rate(tick) * dt / 3600 + self._frac_dm3
        whole = int(volume)
        self._frac_dm3 = volume - whole
        self.gas_dm3 += whole
        capture = tick.epoch - tick.epoch % GAS_CAPTURE_SECONDS
        if capture != self._gas_capture:
            # the M-Bus value only changes at a capture; in between the last capture is repeated
            self._gas_capture = capture
            self._gas_captured_dm3 = self.gas_dm3
        v = self._gas_captured_dm3
        return b"0-1:24.2.1(%s)(%05d.%03d*m3)\r\n" % (_tick(capture).tst, v // 1000, v % 1000)


def make_meters(
    count: int,
    *,
    seed: int = 1,
    gas_fraction: float = 0.8,
    solar_fraction: float = 0.3,
    interval: int = DEFAULT_INTERVAL,
    first: int = 1,
) -> list[SimulatedMeter]:
    """Meters ``first`` .. ``first + count - 1``, deterministic for a seed."""
    return [
        SimulatedMeter(
            i,
            seed=seed,
            gas_fraction=gas_fraction,
            solar_fraction=solar_fraction,
            interval=interval,
        )
        for i in range(first, first + count)
    ]


def generate(
    meters: Sequence[SimulatedMeter],
    start: datetime | int,
    duration: float | None,
) -> Iterator[bytes]:
    """Telegrams of all ``meters`` from ``start`` for ``duration`` seconds (None: forever), in
    time order; each meter sends every ``interval`` seconds at its own phase."""
    return (telegram for _, telegram in generate_timed(meters, start, duration))


def generate_timed(
    meters: Sequence[SimulatedMeter],
    start: datetime | int,
    duration: float | None,
) -> Iterator[tuple[int, bytes]]:
    """As :func:`generate`, with the Unix time each telegram is sent at."""
    if not meters:
        return
    t0 = int(start.timestamp()) if isinstance(start, datetime) else int(start)
    interval = meters[0].interval
    if any(m.interval != interval for m in meters):
        raise ValueError("all meters of one generator must share the interval")
    by_phase: dict[int, list[SimulatedMeter]] = {}
    for meter in meters:
        by_phase.setdefault(meter.phase, []).append(meter)
    end = None if duration is None else t0 + duration
    t = t0
    while end is None or t < end:
        for meter in by_phase.get(t % interval, ()):
            yield t, meter.telegram_at(t)
        t += 1


def batches(telegrams: Iterable[bytes], batch_size: int) -> Iterator[tuple[int, bytes]]:
    """Group telegrams into request bodies: (telegram count, body)."""
    chunk: list[bytes] = []
    for telegram in telegrams:
        chunk.append(telegram)
        if len(chunk) >= batch_size:
            yield len(chunk), b"".join(chunk)
            chunk = []
    if chunk:
        yield len(chunk), b"".join(chunk)


# --------------------------------------------------------------------------------------------
# CLI


def parse_start(text: str) -> datetime:
    """ISO date/time; without an offset it is Europe/Amsterdam local time."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO date/time: {text!r}") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=LOCAL_TZ)
    return moment


def _duration_or_forever(text: str) -> float | None:
    if text.strip().lower() in ("forever", "inf", "0"):
        return None
    return parse_duration(text)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``simulate``: synthetic meters → stdout/file or a gateway."""
    parser = subparsers.add_parser(
        "simulate",
        help="synthetic DSMR 5 meters for demos and load tests",
        description=(
            "Simulate N DSMR 5 meters (electricity, most with gas) and write their telegrams "
            "to stdout/a file, or push them to a gateway in batches and report the rate and "
            "request latencies."
        ),
    )
    parser.add_argument("--meters", type=int, default=1, help="number of meters (1)")
    parser.add_argument(
        "--first-meter", type=int, default=1, metavar="I", help="index of the first meter (1)"
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="simulated seconds per real second; 0 = as fast as possible (1)",
    )
    parser.add_argument(
        "--start",
        type=parse_start,
        default=None,
        help="simulated start, ISO (local time unless an offset is given); default now",
    )
    parser.add_argument(
        "--duration",
        type=_duration_or_forever,
        default=86400.0,
        help="simulated time span, e.g. 1h, 1d, forever (1d)",
    )
    parser.add_argument("--interval", type=int, default=DEFAULT_INTERVAL, help="seconds (10)")
    parser.add_argument("--gas-fraction", type=float, default=0.8, help="meters with gas (0.8)")
    parser.add_argument(
        "--solar-fraction", type=float, default=0.3, help="meters with solar panels (0.3)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output", default="-", metavar="FILE", help="- for stdout (default)")
    parser.add_argument("--gateway", help="push to this gateway instead of writing telegrams")
    parser.add_argument("--token", help="device token for --gateway")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight (4)")
    parser.add_argument(
        "--list-meters",
        action="store_true",
        help="print the meter ids (JSON lines: meter_id, gas_id) and exit",
    )
    parser.set_defaults(func=run_simulate)


def _start_of(args: argparse.Namespace) -> datetime:
    if args.start is not None:
        start: datetime = args.start
        return start
    now = int(time.time())
    return datetime.fromtimestamp(now - now % args.interval, UTC)


def _pace(started: float, sim_elapsed: float, speed: float) -> float:
    """Seconds to wait until simulated time ``sim_elapsed`` is due."""
    if speed <= 0:
        return 0.0
    return started + sim_elapsed / speed - time.monotonic()


def _write_output(args: argparse.Namespace, meters: list[SimulatedMeter]) -> int:
    start = _start_of(args)
    t0 = int(start.timestamp())
    started = time.monotonic()
    count = 0
    with contextlib.ExitStack() as stack:
        out: IO[bytes]
        if args.output == "-":
            out = sys.stdout.buffer
        else:
            out = stack.enter_context(open(args.output, "wb"))
        for t, telegram in generate_timed(meters, start, args.duration):
            wait = _pace(started, t - t0, args.speed)
            if wait > 0:
                out.flush()
                time.sleep(wait)
            out.write(telegram)
            count += 1
        out.flush()
    log.info("wrote %d telegrams of %d meters", count, len(meters))
    return 0


@dataclass(slots=True)
class PushReport:
    """What a push run measured."""

    telegrams: int = 0
    requests: int = 0
    seconds: float = 0.0
    accepted: int = 0
    rejected: int = 0
    retries: int = 0
    failed_requests: int = 0
    latencies: list[float] | None = None
    statuses: Counter[int] | None = None
    reasons: Counter[str] | None = None

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies or [])

        def pct(p: float) -> float | None:
            if not lat:
                return None
            return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 2)

        return {
            "telegrams": self.telegrams,
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "telegrams_per_second": (
                round(self.telegrams / self.seconds, 1) if self.seconds else None
            ),
            "accepted": self.accepted,
            "rejected": self.rejected,
            "rejected_reasons": dict(self.reasons or {}),
            "retries": self.retries,
            "failed_requests": self.failed_requests,
            "statuses": {str(k): v for k, v in (self.statuses or {}).items()},
            "latency_ms": {"p50": pct(0.50), "p95": pct(0.95), "p99": pct(0.99), "max": pct(1.0)},
        }


async def push(
    gateway: str,
    token: str,
    bodies: Iterable[tuple[int, bytes, float]],
    *,
    concurrency: int = 4,
    max_retries: int = 5,
) -> PushReport:
    """POST ``(count, body, wait)`` items to ``{gateway}/v1/telegrams``, ``concurrency`` at a
    time; ``wait`` is how long to pause before the body is due (pacing). 429/503 and network
    errors are retried (``Retry-After`` honoured, else 1 s)."""
    report = PushReport(latencies=[], statuses=Counter(), reasons=Counter())
    assert report.latencies is not None and report.statuses is not None
    assert report.reasons is not None
    url = gateway.rstrip("/") + "/v1/telegrams"
    queue: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue(maxsize=concurrency * 2)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "text/plain"}

    async def worker(session: aiohttp.ClientSession) -> None:
        assert report.latencies is not None and report.statuses is not None
        assert report.reasons is not None
        while True:
            item = await queue.get()
            if item is None:
                return
            count, body = item
            for attempt in range(max_retries + 1):
                t = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        payload = await response.read()
                        status = response.status
                        retry_after = response.headers.get("Retry-After")
                except (aiohttp.ClientError, TimeoutError) as exc:
                    report.retries += 1
                    log.warning("push: %s (attempt %d)", exc, attempt + 1)
                    await asyncio.sleep(1.0)
                    continue
                report.latencies.append(time.perf_counter() - t)
                report.requests += 1
                report.statuses[status] += 1
                if status in (429, 503) and attempt < max_retries:
                    report.retries += 1
                    wait = float(retry_after) if retry_after and retry_after.isdigit() else 1.0
                    await asyncio.sleep(wait)
                    continue
                if status == 200:
                    answer = json.loads(payload)
                    report.accepted += int(answer.get("accepted", 0))
                    for rejection in answer.get("rejected", []):
                        report.rejected += 1
                        report.reasons[str(rejection.get("reason"))] += 1
                else:
                    report.failed_requests += 1
                    log.warning("push: %d %s", status, payload[:200].decode("utf-8", "replace"))
                break
            else:
                report.failed_requests += 1
            report.telegrams += count

    started = time.perf_counter()
    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        workers = [asyncio.create_task(worker(session)) for _ in range(concurrency)]
        try:
            for count, body, wait in bodies:
                if wait > 0:
                    await asyncio.sleep(wait)
                await queue.put((count, body))
            for _ in workers:
                await queue.put(None)
            await asyncio.gather(*workers)
        finally:
            for task in workers:
                task.cancel()
    report.seconds = time.perf_counter() - started
    return report


def _paced_bodies(
    args: argparse.Namespace, meters: list[SimulatedMeter]
) -> Iterator[tuple[int, bytes, float]]:
    start = _start_of(args)
    t0 = int(start.timestamp())
    started = time.monotonic()
    chunk: list[bytes] = []
    for t, telegram in generate_timed(meters, start, args.duration):
        chunk.append(telegram)
        if len(chunk) >= args.batch_size:
            yield len(chunk), b"".join(chunk), _pace(started, t - t0, args.speed)
            chunk = []
    if chunk:
        yield len(chunk), b"".join(chunk), 0.0


def run_simulate(args: argparse.Namespace) -> int:
    """Entry point of ``simulate``."""
    if args.meters < 1 or args.interval < 1 or args.batch_size < 1 or args.concurrency < 1:
        log.error("--meters, --interval, --batch-size and --concurrency must be at least 1")
        return 2
    if args.list_meters:
        for electricity, gas in meter_ids(
            args.meters, seed=args.seed, gas_fraction=args.gas_fraction, first=args.first_meter
        ):
            sys.stdout.write(json.dumps({"meter_id": electricity, "gas_id": gas}) + "\n")
        return 0
    meters = make_meters(
        args.meters,
        seed=args.seed,
        gas_fraction=args.gas_fraction,
        solar_fraction=args.solar_fraction,
        interval=args.interval,
        first=args.first_meter,
    )
    if args.gateway is None:
        try:
            return _write_output(args, meters)
        except BrokenPipeError:
            # the reader went away (``| head``): not an error of ours
            return 0
    if args.duration is None and args.speed <= 0:
        log.error("pushing forever as fast as possible never ends: give --duration or --speed")
        return 2
    if not args.token:
        log.error("--gateway needs --token")
        return 2
    report = asyncio.run(
        push(args.gateway, args.token, _paced_bodies(args, meters), concurrency=args.concurrency)
    )
    summary = report.summary()
    sys.stdout.write(json.dumps(summary) + "\n")
    log.info(
        "pushed %d telegrams in %.1f s: %s telegrams/s, latency p50 %s ms, p99 %s ms",
        report.telegrams,
        report.seconds,
        summary["telegrams_per_second"],
        summary["latency_ms"]["p50"],
        summary["latency_ms"]["p99"],
    )
    return 0 if report.failed_requests == 0 else 1


__all__ = [
    "PushReport",
    "SimulatedMeter",
    "add_parser",
    "batches",
    "gas_meter_id",
    "generate",
    "generate_timed",
    "has_gas",
    "is_low_tariff",
    "make_meters",
    "meter_id",
    "meter_ids",
    "push",
]
