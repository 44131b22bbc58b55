"""The parsed telegram: plain slotted dataclasses, built once per telegram on the hot path.

Registers are exact integers in the smallest unit (Wh, dm³, kJ); times are aware UTC datetimes.
Every OBIS object is also kept raw in ``objects`` (full ``A-B:C.D.E`` code → value strings), so
nothing a meter sent is lost to a consumer that needs more than the named fields.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

#: M-Bus device types (EN 13757-3) seen behind a P1 port.
DEVICE_TYPE_GAS = 3
DEVICE_TYPE_HEAT = 4
DEVICE_TYPE_WARM_WATER = 6
DEVICE_TYPE_WATER = 7


class RawObjects(Mapping[str, list[str]]):
    """``Telegram.objects`` as the parser hands it out: code → value strings, built lazily.

    The parser only needs ~15 of a telegram's ~40 objects; splitting every line's values into a
    list cost about half of a parse, and most consumers never read ``objects``. This mapping
    holds each code's raw value text (``'v1)(v2'``: what sat between the outer parentheses) and
    splits all of them the first time any value is read, so repeated reads return the same list
    objects. Keys, ``len`` and ``in`` need no split. Compares equal to a plain dict of the same
    content (``Mapping.__eq__``).

    :meth:`deferred` builds one whose raw texts are not even cut out of the telegram yet: the
    parser's layout cache knows the codes and where their values sit (see
    :mod:`p1_reader.parser`), and cuts them out on first read.
    """

    __slots__ = ("_keys", "_load", "_raw", "_source", "_split")

    def __init__(self, raw: dict[str, str]) -> None:
        #: code → raw value text; owned by this mapping (the parser builds one per telegram)
        self._raw: dict[str, str] | None = raw
        self._keys: Mapping[str, object] = raw
        self._load: Callable[[str], dict[str, str]] | None = None
        self._source = ""
        self._split: dict[str, list[str]] | None = None

    @classmethod
    def deferred(
        cls, keys: Mapping[str, object], load: Callable[[str], dict[str, str]], source: str
    ) -> RawObjects:
        """A mapping over ``keys`` (in their order) whose raw texts ``load(source)`` returns
        when a value is first read."""
        self = cls.__new__(cls)
        self._raw = None
        self._keys = keys
        self._load = load
        self._source = source
        self._split = None
        return self

    def _values(self) -> dict[str, list[str]]:
        split = self._split
        if split is None:
            raw = self._raw
            if raw is None:
                assert self._load is not None
                raw = self._raw = self._load(self._source)
                self._load = None
                self._source = ""
            split = self._split = {code: rest.split(")(") for code, rest in raw.items()}
        return split

    def __getitem__(self, code: str) -> list[str]:
        return self._values()[code]

    def __contains__(self, code: object) -> bool:
        return code in self._keys

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"RawObjects({self._values()!r})"


class MbusDevice(NamedTuple):
    """One M-Bus channel (gas, heat, water) as reported in a telegram.

    Immutable. A named tuple rather than a frozen dataclass: a frozen dataclass sets each field
    through ``object.__setattr__``, which made building the devices 6 % of a parse.
    """

    channel: int
    #: EN 13757-3 device type (3 gas, 4 heat, 7 water), None when the channel does not say
    device_type: int | None
    #: equipment id, hex-decoded when it is hex-encoded printable ASCII, else as sent
    meter_id: str | None
    #: capture time of the value (UTC); None when the meter sent an unset/invalid clock
    measured_at: datetime | None
    #: value as an exact integer in ``unit``; None when absent or unreadable
    value: int | None
    #: normalised smallest unit: ``dm3`` (m3, dm3), ``kJ`` = MJ·10⁻³ (GJ, MJ), ``Wh`` (kWh, MWh)
    unit: str | None


@dataclass(slots=True)
class Telegram:
    """A parsed DSMR telegram."""

    header: str
    #: ``1-3:0.2.8`` P1 version string (``40``, ``42``, ``50``...), None when not sent (DSMR 2.2/3)
    version: str | None = None
    #: telegram timestamp ``0-0:1.0.0`` in UTC (None when absent, e.g. DSMR 2.2/3)
    timestamp: datetime | None = None
    #: electricity meter equipment id ``0-0:96.1.1``, hex-decoded
    meter_id: str | None = None
    import_t1_wh: int | None = None
    import_t2_wh: int | None = None
    export_t1_wh: int | None = None
    export_t2_wh: int | None = None
    #: totals ``1-0:1.8.0`` / ``1-0:2.8.0`` where the meter sends them
    import_total_wh: int | None = None
    export_total_wh: int | None = None
    #: ``0-0:96.14.0`` tariff indicator as an int (NL: 1 low, 2 normal; BE swapped), None if absent
    tariff: int | None = None
    mbus: tuple[MbusDevice, ...] = ()
    #: every OBIS object: full code → the value strings between the parentheses, as sent
    #: (read-only; the parser gives a lazily split :class:`RawObjects`)
    objects: Mapping[str, list[str]] = field(default_factory=dict)
    #: True when a CRC was present and matched, None when the telegram carries no CRC
    crc_valid: bool | None = None
    #: True when the S/W flag of the telegram time or of an M-Bus capture time contradicts the
    #: calendar (``S`` in winter time, ``W`` in summer time, outside the repeated October hour
    #: where the flag decides). The times follow the calendar regardless; this is for counting.
    dst_flag_mismatch: bool = False
