"""Thinning: which telegrams are worth keeping, judged by a small mark of each (pure).

Minimising what leaves the house is a feature, and a full spool has to choose what to give up;
both ask the same question, so both use the :class:`Thinner` here: the forwarder before it spools
a telegram, the spool's ``thin`` policy when it rewrites full segments. A :class:`TelegramMark`
is all thinning looks at (meter, telegram time, gas capture times); :func:`mark_of` and
:func:`mark_telegram` derive it from a parsed or a raw telegram.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from p1_reader.errors import P1Error
from p1_reader.parser import parse_telegram
from p1_reader.telegram import Telegram

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TelegramMark:
    """What thinning needs to know about a telegram: who measured what, when.

    ``timestamp`` is the telegram's own time (``0-0:1.0.0``) and ``gas`` the M-Bus capture times,
    all as Unix seconds (UTC). ``None``/empty when the telegram does not carry them.
    """

    meter_id: str | None
    timestamp: int | None
    gas: tuple[tuple[str, int], ...] = ()


#: 15 minutes and 1 hour in seconds. Europe/Amsterdam has whole-hour UTC offsets (+01:00, +02:00),
#: so its quarter-hour and hour boundaries coincide with UTC ones and flooring Unix time is exact;
#: only days and months (which thinning does not use) need the zone.
QUARTER = 900
HOUR = 3600
MINUTE = 60


@dataclass(slots=True)
class Thinner:
    """Decides, telegram by telegram in arrival order, which telegrams are worth keeping.

    The gateway stores, per period (P1M, P1D, PT1H, PT15M), the reading with the earliest measured
    time, so the first telegram of every 15-minute period of a meter is all it needs for
    electricity; gas readings change with the M-Bus capture time, so a telegram is also kept when
    a gas capture time enters a new hour. ``per_minute`` additionally keeps the first telegram of
    every minute (the forwarder's default, for a livelier picture at the gateway).

    A telegram that cannot be judged (no mark, no timestamp, as in DSMR 2.2/3) is kept: deciding
    what is redundant is not worth losing something the gateway could use.
    """

    per_minute: bool = False
    _quarter: dict[str, int] = field(default_factory=dict)
    _minute: dict[str, int] = field(default_factory=dict)
    _gas_hour: dict[str, int] = field(default_factory=dict)

    def keep(self, mark: TelegramMark | None) -> bool:
        """Return True when the telegram described by ``mark`` must be kept."""
        if mark is None or mark.timestamp is None:
            keep = True
        else:
            meter = mark.meter_id or ""
            ts = mark.timestamp
            quarter = ts // QUARTER
            # "!=" rather than ">": a meter clock set back starts new periods the gateway wants
            keep = self._quarter.get(meter) != quarter
            self._quarter[meter] = quarter
            if self.per_minute:
                minute = ts // MINUTE
                keep = keep or self._minute.get(meter) != minute
                self._minute[meter] = minute
        if mark is not None:
            for gas_id, captured in mark.gas:
                hour = captured // HOUR
                if self._gas_hour.get(gas_id) != hour:
                    keep = True
                    self._gas_hour[gas_id] = hour
        return keep


def select_kept(marks: Iterable[TelegramMark | None], *, per_minute: bool = False) -> list[bool]:
    """Thin a sequence of telegrams (oldest first): for each, whether :class:`Thinner` keeps it."""
    thinner = Thinner(per_minute=per_minute)
    return [thinner.keep(mark) for mark in marks]


#: raw telegram bytes → their mark (None: cannot be judged, so kept); the spool takes one so
#: that it can thin what it stores without knowing how telegrams are parsed
Marker = Callable[[bytes], "TelegramMark | None"]


def _epoch(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp())


def mark_of(telegram: Telegram, *, arrived: float | None = None) -> TelegramMark:
    """The thinning mark of a parsed telegram.

    A telegram without a usable timestamp (DSMR 2.2/3, unset clock) is judged by ``arrived``
    (Unix time it was read) when given, so such meters are thinned by arrival time.
    """
    timestamp = _epoch(telegram.timestamp)
    if timestamp is None and arrived is not None:
        timestamp = int(arrived)
    gas: list[tuple[str, int]] = []
    for device in telegram.mbus:
        captured = _epoch(device.measured_at)
        if captured is not None:
            gas.append((device.meter_id or f"{telegram.meter_id or ''}/{device.channel}", captured))
    return TelegramMark(telegram.meter_id, timestamp, tuple(gas))


def mark_telegram(data: bytes, *, arrived: float | None = None) -> TelegramMark | None:
    """Parse ``data`` (CRC not enforced) and return its mark; None when it does not parse."""
    try:
        telegram = parse_telegram(data, require_crc=False)
    except P1Error as exc:
        log.debug("thinning: telegram does not parse (%s)", exc.reason)
        if arrived is None:
            return None
        return TelegramMark(None, int(arrived))
    return mark_of(telegram, arrived=arrived)
