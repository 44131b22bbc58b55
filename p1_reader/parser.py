"""DSMR P1 telegram parser — the hot path: one pass over the lines, dict lookups, integer maths.

:func:`parse_telegram` accepts DSMR 2.2, 3, 4.x, 5.0.x, Belgian e-MUCS 1.7/2.x, Luxembourg
Smarty plaintext and the AT/HU/IE/SE variants; non-DSMR OBIS telegrams such as the EasyMeter Q3D
parse as generic OBIS telegrams (every line in ``objects``, named fields where codes match).

Rules (each decided here, in one place):

Framing
    The telegram starts at the first ``/`` (bytes before it are ignored) and ends at the first
    ``!``; the rest of that line is the CRC field and anything after it is ignored (gateways
    append counters and 0xFF padding). Input over :data:`MAX_TELEGRAM_BYTES` raises
    :class:`TooLargeError`; no ``/`` raises :class:`FrameError`. A missing ``!`` is accepted only
    for a telegram that needs no CRC (see below) whose last line is complete (ends with a line
    feed), as in DSMR 2.2 captures cut after the data; otherwise :class:`FrameError`.
    Bytes are decoded as latin-1, so corrupted bytes (0xFF, NUL, 0xB3) never fail decoding; they
    only matter where they land. Line ends are CRLF (LF-only input is accepted).

CRC (``require_crc``)
    A CRC present on the ``!`` line (1-4 hex digits, either case: ``!B9F`` = 0x0B9F) is always
    computed over ``/``..``!`` inclusive (CRC-16/ARC).
    ``None`` (default): a present CRC must match, else :class:`ChecksumError` with both values.
    An absent CRC is accepted only when the telegram does not claim DSMR 4+: it has no
    ``1-3:0.2.8`` of version 40 or higher (DSMR 4.0 introduced both the object and the CRC)
    and no Belgian ``0-0:96.1.4``. The header's fifth character is NOT used: ``/XXX5`` is the
    IEC 62056-21 baud-rate letter (9600 Bd) and DSMR 2.2/3 meters send it too (``/ISk5\\2MT382``).
    ``True``: a matching CRC is required. ``False``: never raises for the CRC; ``crc_valid``
    still reports the outcome (True/False, None when absent).

Values
    Every line is kept raw in ``objects[code]`` (values as sent, split at ``)(``; the split is
    done lazily on first read, see :class:`p1_reader.telegram.RawObjects`). Codes are
    normalised (:func:`p1_reader.obis.normalise_code`); typos are kept as sent. A line starting
    with ``(`` continues the previous object (DSMR 2.2/3 gas value on the next line); a line
    without a closing ``)`` is joined with following lines that hold no ``(`` (a text message
    broken by CRLF). Lines with no ``(`` are ignored, unless they start with the code of an
    energy register (then :class:`ValueFormatError`).
    Registers we interpret must be exact or the telegram is rejected: an energy register or
    M-Bus reading whose number or unit cannot be read raises :class:`ValueFormatError` naming
    the line and code; an empty ``()`` register reads as absent (None). kWh with any number of
    decimals becomes Wh by string arithmetic (``003808.351`` → 3808351); digits below the
    smallest unit (EasyMeter's 7-decimal kWh) are truncated, as a register display does.
    The same full code twice with different values, for a code we interpret, raises
    :class:`ValueFormatError`; otherwise the first occurrence is kept.
    Energy registers are read on channel B=0 (``1-0:1.8.1``) when it carries any; otherwise on
    the one other channel B that carries them (the Sagemcom XT211 sends ``1-1:1.8.1``). Energy
    registers on two channels B and none on B=0 raise :class:`AmbiguousRegistersError`.

Timestamps
    The parser never raises for a timestamp. An unset, placeholder or malformed telegram or
    capture time becomes None (see :mod:`p1_reader.timestamps`) while the raw text stays in
    ``objects``; callers that must have a time use :func:`telegram_timestamp_or_raise`. Times
    follow the zone rules; ``Telegram.dst_flag_mismatch`` says that the telegram time's or an
    M-Bus capture time's S/W flag contradicted the calendar (the time is right regardless).
"""

from __future__ import annotations

from binascii import unhexlify
from collections import Counter
from collections.abc import Mapping
from datetime import datetime
from itertools import islice, repeat
from operator import itemgetter
from typing import Final

from . import obis
from .crc import crc16_arc
from .errors import (
    AmbiguousRegistersError,
    ChecksumError,
    FrameError,
    TimestampError,
    TooLargeError,
    ValueFormatError,
)
from .telegram import MbusDevice, RawObjects, Telegram
from .timestamps import TstReading, parse_tst_checked, parse_tst_or_raise

__all__ = [
    "MAX_TELEGRAM_BYTES",
    "decode_equipment_id",
    "mbus_device",
    "parse_telegram",
    "telegram_timestamp_or_raise",
]

#: largest telegram accepted (DSMR.md §1: no maximum is specified; real ones reach ~1.7 KB)
MAX_TELEGRAM_BYTES: Final = 8192

_HEX: Final = "0123456789abcdefABCDEF"
_HEX_B: Final = _HEX.encode()
_PRINTABLE_ASCII: Final = bytes(range(0x20, 0x7F))
_POW10: Final[tuple[int, ...]] = tuple(10**i for i in range(10))
#: the tariff indicators meters send (``_tariff`` reads any other): one look-up, no calls
_TARIFFS: Final[dict[str, int]] = {f"{n:04d}": n for n in range(1, 5)}

# Raw code as sent → normalised code. Codes repeat in every telegram, so normalisation costs one
# dict lookup per line. Bounded: garbage codes from corrupted input cannot grow it without limit.
_CODES_MAX: Final = 4096


class _CodeCache(dict[str, str]):
    def __missing__(self, raw: str) -> str:
        if len(self) >= _CODES_MAX:
            self.clear()
        code = self[raw] = obis.normalise_code(raw)
        return code


_codes: Final = _CodeCache()

# Equipment ids repeat in every telegram of a meter: cache the hex decoding. Sized for a
# gateway whose every worker sees every meter of a fleet of tens of thousands (with their gas
# meters); when full the oldest quarter goes (insertion order), not everything, so a fleet that
# fits stays cached and junk ids from corrupted input cannot grow it.
_IDS_MAX: Final = 1 << 16
_IDS_EVICT: Final = _IDS_MAX // 4
_ids: dict[str, str] = {}

_REGISTER_CODES: Final = tuple(code for code, _ in obis.ENERGY_REGISTERS)
_NO_REGISTERS: Final[list[int | None]] = [None] * len(_REGISTER_CODES)
_CHANNEL_CODES: Final = frozenset(obis.CHANNEL_OF_ENERGY_CODE)
_MBUS: Final = tuple(
    (ch, t, ids, readings, legacy, frozenset((t, *ids, *readings, legacy)))
    for ch in obis.MBUS_CHANNELS
    for t, ids, readings, legacy in [obis.mbus_codes(ch)]
)
_MBUS_CODES: Final = frozenset().union(*(m[-1] for m in _MBUS))
_NO_TIME: Final[TstReading] = (None, False)


def parse_telegram(data: bytes | str, *, require_crc: bool | None = None) -> Telegram:
    """Parse one DSMR telegram (``/`` header .. ``!CRC``) into a :class:`Telegram`.

    ``require_crc``: None = required for DSMR 4+ telegrams, True = always, False = never
    (see the module docstring for the exact rule). Raises :class:`FrameError` (not a telegram),
    :class:`TooLargeError`, :class:`ChecksumError` or :class:`ValueFormatError`.
    """
    if isinstance(data, str):
        try:
            raw = data.encode("latin-1")
        except UnicodeEncodeError as exc:
            raise FrameError(
                f"character {data[exc.start]!r} at offset {exc.start} cannot be a telegram byte;"
                " pass telegrams as bytes"
            ) from exc
    elif isinstance(data, bytes):
        raw = data
    else:
        raw = bytes(data)
    if len(raw) > MAX_TELEGRAM_BYTES:
        raise TooLargeError(f"telegram of {len(raw)} bytes exceeds {MAX_TELEGRAM_BYTES} bytes")
    start = raw.find(b"/")
    if start < 0:
        raise FrameError("no '/' header: not a DSMR telegram")
    end = raw.find(b"!", start)

    crc_valid: bool | None = None
    crc_present = False
    if end >= 0:
        nl = raw.find(b"\n", end)
        field = (raw[end + 1 : nl] if nl >= 0 else raw[end + 1 :]).strip()
        if field:
            crc_present = True
            if len(field) > 4 or field.strip(_HEX_B):
                if require_crc is not False:
                    raise ChecksumError(f"CRC field {field!r} after '!' is not 1-4 hex digits")
                crc_valid = False
            else:
                expected = int(field, 16)
                actual = crc16_arc(memoryview(raw)[start : end + 1])
                crc_valid = expected == actual
                if not crc_valid and require_crc is not False:
                    raise ChecksumError(
                        f"CRC mismatch: telegram says {expected:04X}, computed {actual:04X} over"
                        f" {end + 1 - start} bytes from '/' to '!'"
                    )
        frame = raw[start:end]
    else:
        frame = raw[start:]
    text = frame.decode("latin-1")  # one character per byte: offsets are the same in both

    # ``values``: code → raw value text ('v1)(v2'), what the named fields are read from.
    # ``objects`` (the public per-line map) is split from it lazily: most consumers never read it.
    # Three ways to split, fastest first: a known layout (the same codes at the same offsets as
    # an earlier telegram: every telegram of a meter after its first), the bulk split of a
    # well-formed telegram, the line-by-line split that tolerates every quirk.
    bad: dict[str, int] | None = None
    objects: Mapping[str, list[str]]
    known = _match_layout(text, frame)
    if known is not None:
        header, values, objects = known
    elif (fast := _objects_fast(text)) is not None:
        header, values = fast
        objects = RawObjects(values)
        if values:
            _learn_layout(text, header)
    else:
        header, listed, bad = _objects_robust(text)
        objects = listed
        # exact inverse of the robust split for every code we interpret (unclosed values of
        # interpreted codes are rejected below, before any field is read)
        values = {code: ")(".join(parts) for code, parts in listed.items()}

    if not crc_present:
        must = require_crc is True or (require_crc is None and _claims_dsmr4(values))
        if must:
            if end < 0:
                raise FrameError("no '!' end line: telegram truncated")
            raise ChecksumError("CRC missing after '!' but required for DSMR 4+ telegrams")
        if end < 0 and not (values and text.endswith("\n")):
            raise FrameError("no '!' end line and the last line is incomplete: truncated")

    if bad:
        for code, lineno in bad.items():
            if code in obis.INTERPRETED_CODES:
                raise ValueFormatError(f"line {lineno}: {code}: value has no closing ')'")

    get = values.get
    # A second value '(a)(b)' on these lines is rare: one short ')(' scan, then _first if so.
    version = get(obis.VERSION)
    if version is not None and ")(" in version:
        version = _first(version)
    stamp = get(obis.TIMESTAMP)
    if stamp is not None and ")(" in stamp:
        stamp = _first(stamp)
    timestamp, dst_flag_mismatch = _NO_TIME if stamp is None else parse_tst_checked(stamp)
    tariff_raw = get(obis.TARIFF)
    tariff = None if tariff_raw is None else _TARIFFS.get(tariff_raw) or _tariff(_first(tariff_raw))
    meter_id: str | None = None
    for code in obis.METER_ID_CODES:
        first = get(code)
        if first:
            if ")(" in first:
                first = _first(first)
                if not first:
                    continue
            meter_id = _ids.get(first) or decode_equipment_id(first)
            break

    regs = _registers(values, _REGISTER_CODES, text)
    if regs[0] is None and regs[4] is None and regs == _NO_REGISTERS:  # T1 or total: B=0
        regs = _channel_registers(values, text)

    mbus: tuple[MbusDevice, ...] = ()
    present = _MBUS_CODES.intersection(values)  # one C-level pass; usually 0-3 codes
    if present:
        devices = []
        for ch, type_code, id_codes, reading_codes, legacy_code, channel_codes in _MBUS:
            if channel_codes.isdisjoint(present):
                continue
            device, flag_wrong = _mbus_device(
                ch, values, type_code, id_codes, reading_codes, legacy_code, text
            )
            if device is not None:
                devices.append(device)
            if flag_wrong:
                dst_flag_mismatch = True
        mbus = tuple(devices)

    # positional: keyword passing of 15 fields costs measurably more on the hot path
    return Telegram(
        header.rstrip("\r"),  # header
        version or None,  # version
        timestamp,
        meter_id,
        regs[0],  # import_t1_wh
        regs[1],  # import_t2_wh
        regs[2],  # export_t1_wh
        regs[3],  # export_t2_wh
        regs[4],  # import_total_wh
        regs[5],  # export_total_wh
        tariff,
        mbus,
        objects,
        crc_valid,
        dst_flag_mismatch,
    )


def _registers(values: dict[str, str], codes: tuple[str, ...], text: str) -> list[int | None]:
    """The six energy registers (ENERGY_REGISTERS order) read from ``codes``, in Wh."""
    get = values.get
    # The common case '003808.351*kWh': Wh = the digits without the dot; isdecimal() on
    # everything but the dot and unit also rules out a second value ')('.
    regs: list[int | None] = []
    for code in codes:
        value = get(code)
        if value is None:
            regs.append(None)
        elif (
            len(value) > 8
            and value[-8] == "."
            and value.endswith("*kWh")
            and (digits := value[:-8] + value[-7:-4]).isdecimal()
            and len(digits) <= REGISTER_DIGITS
        ):
            regs.append(int(digits))
        else:
            regs.append(_energy_wh(value.split(")("), code, text))
    return regs


def _channel_registers(values: dict[str, str], text: str) -> list[int | None]:
    """No register on B=0: the registers of the one other channel B that carries them (all
    None when none does); :class:`AmbiguousRegistersError` when two channels do."""
    present = _CHANNEL_CODES.intersection(values)  # one C-level pass; usually empty
    if not present:
        return _NO_REGISTERS
    channels = sorted({obis.CHANNEL_OF_ENERGY_CODE[code] for code in present})
    if len(channels) > 1:
        raise AmbiguousRegistersError(
            "energy registers on channels "
            + " and ".join(f"1-{channel}:" for channel in channels)
            + " (none on 1-0:): which are the meter's cannot be told"
        )
    return _registers(values, obis.ENERGY_CHANNELS[channels[0]], text)


def telegram_timestamp_or_raise(telegram: Telegram) -> datetime:
    """The telegram's ``0-0:1.0.0`` time, or :class:`TimestampError` saying why there is none
    (absent, meter clock not set, not a valid DSMR timestamp)."""
    if telegram.timestamp is not None:
        return telegram.timestamp
    values = telegram.objects.get(obis.TIMESTAMP)
    raw = values[0] if values else None
    if raw is None:
        raise TimestampError(f"telegram has no timestamp ({obis.TIMESTAMP})")
    return parse_tst_or_raise(raw, what=f"telegram timestamp {obis.TIMESTAMP}")


def mbus_device(telegram: Telegram, device_type: int) -> MbusDevice | None:
    """The M-Bus device of ``device_type`` (3 gas, 4 heat, 7 water) that has a reading.

    Matches by device type, not channel number (gas is not always on channel 1, and meters
    report dead channels such as ``0-1:24.2.1(700101010000W)(00000000)``): the first channel
    with a capture time wins, else the first channel of that type.
    """
    fallback: MbusDevice | None = None
    for device in telegram.mbus:
        if device.device_type == device_type:
            if device.measured_at is not None and device.value is not None:
                return device
            if fallback is None:
                fallback = device
    return fallback


def decode_equipment_id(raw: str) -> str:
    """An equipment id hex-decoded when it is hex-encoded printable ASCII, else as sent.

    ``4530303334…`` → ``E0034…``; ``ADC3100000158491`` (hex, but not of printable ASCII),
    ``00000000000000`` (DSMR 2.2) and ``serienummer`` stay as they are.
    """
    hit = _ids.get(raw)
    if hit is not None:
        return hit
    result = raw
    try:
        # strict, unlike bytes.fromhex: no blanks, even length, ASCII hex digits only
        decoded = unhexlify(raw)
    except ValueError:  # binascii.Error is one
        pass
    else:
        if not decoded.translate(None, _PRINTABLE_ASCII):  # nothing outside ' '..'~'
            result = decoded.decode("ascii")
    if len(_ids) >= _IDS_MAX:
        for old in list(islice(_ids, _IDS_EVICT)):
            del _ids[old]
    _ids[raw] = result
    return result


# --- helpers (cold or per-telegram, not per-line) --------------------------------------------


def _first(rest: str) -> str:
    """The first value of a raw value text ``'v1)(v2'``."""
    sep = rest.find(")(")
    return rest if sep < 0 else rest[:sep]


def _claims_dsmr4(values: dict[str, str]) -> bool:
    """True when the telegram says it is DSMR 4+ (and so must carry a CRC)."""
    version = values.get(obis.VERSION)
    return obis.claims_dsmr4(
        None if version is None else _first(version), obis.BE_VERSION in values
    )


def _tariff(raw: str) -> int | None:
    # S4 '0001'/'0002' (HU up to 0004). Non-DSMR encodings such as '5431' (hex "T1", ESR5
    # meters) are not tariff numbers: None, the raw text stays in objects.
    if not raw.isdecimal() or len(raw) > 4:
        return None
    value = int(raw)
    return value if value <= 99 else None


def _scaled(number: str, decimals: int) -> int | None:
    """Decimal string → integer in units of 10**-decimals, exactly; None if not a number.

    ``'003808.351'``, 3 → 3808351; ``'1'``, 3 → 1000; ``'52185.7825309'``, 3 → 52185782
    (digits below the unit are truncated). Only plain digits and one inner dot are accepted.
    """
    dot = number.find(".")
    if dot < 0:
        if not number.isdecimal():
            return None
        return int(number) * _POW10[decimals]
    digits = number[:dot] + number[dot + 1 :]
    frac = len(number) - dot - 1
    if dot == 0 or frac == 0 or not digits.isdecimal():
        return None
    if frac <= decimals:
        return int(digits) * _POW10[decimals - frac]
    return int(digits[: len(digits) - (frac - decimals)])


#: a register is a counter of at most 18 digits in its smallest unit (Wh, dm³): a meter's
#: physical range (DSMR's F9(3,3) has 9), and within a signed 64-bit integer, so a CRC-valid
#: telegram cannot carry a value no store can hold (it would fail a whole shared write batch)
REGISTER_DIGITS: Final = 18
_REGISTER_LIMIT: Final = 10**REGISTER_DIGITS


def _in_range(value: int, code: str, text: str) -> int:
    if value >= _REGISTER_LIMIT:
        raise ValueFormatError(
            f"line {_line_number(text, code)}: {code}: the register has more than"
            f" {REGISTER_DIGITS} digits"
        )
    return value


def _energy_wh(values: list[str], code: str, text: str) -> int | None:
    value = values[0]
    if not value and len(values) == 1:
        return None  # '()': the meter has no such register
    star = value.find("*")
    decimals = obis.ENERGY_UNIT_DECIMALS.get(value[star + 1 :].lower()) if star >= 0 else None
    if len(values) != 1 or decimals is None:
        raise ValueFormatError(
            f"line {_line_number(text, code)}: {code}: {'(' + ')('.join(values) + ')'!r} is"
            " not one energy value with a kWh/Wh unit"
        )
    wh = _scaled(value[:star], decimals)
    if wh is None:
        raise ValueFormatError(
            f"line {_line_number(text, code)}: {code}: {value!r} is not a decimal number"
        )
    return _in_range(wh, code, text)


def _mbus_device(
    channel: int,
    values: dict[str, str],
    type_code: str,
    id_codes: tuple[str, ...],
    reading_codes: tuple[str, ...],
    legacy_code: str,
    text: str,
) -> tuple[MbusDevice | None, bool]:
    """The device on one channel, None when the channel says nothing (e.g. only
    ``96.1.1()``); and whether its capture time's S/W flag contradicts the calendar."""
    get = values.get
    type_raw = get(type_code)
    device_type: int | None = None
    if type_raw:
        type_raw = _first(type_raw)
        device_type = int(type_raw) if type_raw.isdecimal() else None
    meter_id: str | None = None
    for code in id_codes:
        raw_id = get(code)
        if raw_id and (raw_id := _first(raw_id)):
            meter_id = _ids.get(raw_id) or decode_equipment_id(raw_id)
            break

    stamp: str | None = None
    number: str | None = None
    unit: str | None = None
    source = legacy_code
    for code in reading_codes:
        rest = get(code)
        if rest is not None:
            source = code
            parts = rest.split(")(")
            if len(parts) == 2:  # (TST)(value*unit); other shapes such as '(0)' are no reading
                stamp, value = parts
                star = value.find("*")
                number, unit = (value, None) if star < 0 else (value[:star], value[star + 1 :])
            break
    else:
        rest = get(legacy_code)
        # (TST12)(status)(period)(n)(obis)(unit) + next line (value)
        parts = [] if rest is None else rest.split(")(")
        if len(parts) >= 7:
            stamp, unit, number = parts[0], parts[5], parts[6]

    measured_at, flag_wrong = _NO_TIME if stamp is None else parse_tst_checked(stamp)
    if not number:
        if device_type is None and meter_id is None and stamp is None:
            return None, flag_wrong
        return MbusDevice(channel, device_type, meter_id, measured_at, None, None), flag_wrong
    if unit:
        spec = obis.MBUS_UNITS.get(unit) or obis.MBUS_UNITS.get(unit.lower())
        if spec is None:
            raise ValueFormatError(
                f"line {_line_number(text, source)}: {source}: unknown unit {unit!r}"
            )
    elif device_type is None or device_type in obis.VOLUME_DEVICE_TYPES:
        spec = obis.MBUS_UNITS["m3"]  # unit-less value on a gas/water channel: m3
    else:
        return MbusDevice(channel, device_type, meter_id, measured_at, None, None), flag_wrong
    # the common case: 'ddddd.ddd' m3 → dm3 is the digits without the dot
    if (
        spec[1] == 3
        and len(number) > 4
        and number[-4] == "."
        and (digits := number[:-4] + number[-3:]).isdecimal()
        and len(digits) <= REGISTER_DIGITS
    ):
        device = MbusDevice(channel, device_type, meter_id, measured_at, int(digits), spec[0])
        return device, flag_wrong
    amount = _scaled(number, spec[1])
    if amount is None:
        raise ValueFormatError(
            f"line {_line_number(text, source)}: {source}: {number!r} is not a decimal number"
        )
    return MbusDevice(
        channel, device_type, meter_id, measured_at, _in_range(amount, source, text), spec[0]
    ), flag_wrong


def _line_number(text: str, needle: str) -> int:
    """1-based line number (header = 1) of the first line starting with ``needle``; 0 when not
    found. Error path only."""
    for number, line in enumerate(text.splitlines(), start=1):
        if line.lstrip().startswith(needle):
            return number
    return 0


# --- layouts: the split of a telegram whose lines sit where an earlier one's did -------------
#
# A meter sends the same lines in the same order with fixed-width values (registers, times and
# ids are zero padded), so its telegrams differ only in the digits inside the parentheses. Once
# a header + length has been seen twice, the offsets of its line seams (``)CRLF`` + code + ``(``)
# are kept. A later telegram with the same header and length whose seams read the same and that
# has no other line feed is split by cutting values at those offsets (one C-level itemgetter
# call, no per-line split, no dict of every line). The seams are compared all at once: the
# frame read as one big integer, masked to the seam bytes (three C calls, whatever the number
# of lines). Every other telegram takes the bulk split, so the result is identical by
# construction: the seams pin every line end and code, and counting line feeds proves there is
# no other line (a CRLF inside a value would be one). Meters of one model share layouts; a
# changed text message or power-failure log length is a new key. Bounded: cleared when full.

_LAYOUTS_MAX: Final = 512
#: header + length → layout; None marks a key seen once (a layout is built on the second sight)
_layouts: dict[tuple[str, int], _Layout | None] = {}

#: codes whose values the parser reads (named fields, the DSMR 4 CRC rule)
_READ_CODES: Final = obis.INTERPRETED_CODES | {obis.BE_VERSION}


class _Layout:
    """Where the seams and values of one telegram layout sit (see above). Immutable."""

    __slots__ = ("codes", "expected", "glued", "glued_read", "mask", "newlines", "raw", "read")

    def __init__(self, text: str, h: int, b: int) -> None:
        # text passed _objects_fast: every line feed ends a ')' CRLF line, every line after the
        # header (and one optional blank line) is CODE(...) or a '(...)' continuation of it.
        n = len(text)
        seams: list[slice] = []
        codes: list[str] = []
        spans: list[list[int]] = []  # [start, end) of each code's raw value text
        glued: set[str] = set()
        pos = b
        while pos < n:
            eol = text.find("\r\n", pos)
            if text[pos] == "(":  # continuation: the value runs on over this line
                seams.append(slice(pos - 3, pos + 1))
                glued.add(codes[-1])
                spans[-1][1] = eol - 1
            else:
                p = text.find("(", pos)
                seams.append(slice(pos - 3 if codes else h, p + 1))
                codes.append(_codes[text[pos:p]])
                spans.append([p + 1, eol - 1])
            pos = eol + 2
        seams.append(slice(n - 3, n))
        read = [i for i, code in enumerate(codes) if code in _READ_CODES]
        mask = bytearray(n)
        for seam in seams:
            mask[seam] = b"\xff" * (seam.stop - seam.start)
        #: the seam bytes as an integer mask over int.from_bytes(frame, "little"), and what
        #: the frame & mask must equal
        self.mask = int.from_bytes(mask, "little")
        self.expected = int.from_bytes(text.encode("latin-1"), "little") & self.mask
        dummy = slice(0, 0)  # itemgetter of one item would return it bare, not in a tuple
        self.newlines = text.count("\n")
        #: code → line index, in line order: the keys of Telegram.objects
        self.codes = {code: i for i, code in enumerate(codes)}
        self.raw = (tuple(codes), itemgetter(*(slice(*span) for span in spans), dummy))
        read_codes = tuple(codes[i] for i in read)
        self.read = (
            read_codes,
            itemgetter(*(slice(*spans[i]) for i in read), dummy, dummy),
            dict.fromkeys(read_codes, ""),
        )
        self.glued = frozenset(glued)
        self.glued_read = tuple(glued & _READ_CODES)

    def raw_values(self, text: str) -> dict[str, str]:
        """code → raw value text of every line (``Telegram.objects``, on first read)."""
        codes, cut = self.raw
        values = dict(zip(codes, cut(text), strict=False))
        for code in self.glued:
            values[code] = values[code].replace(")\r\n(", ")(")
        return values


def _match_layout(text: str, frame: bytes) -> tuple[str, dict[str, str], RawObjects] | None:
    """(header, code → raw value text of the codes the parser reads, objects) when ``text``
    (``frame`` decoded) has a known layout, else None."""
    h = text.find("\r\n")
    header = text[:h]
    layout = _layouts.get((header, len(text)))
    if (
        layout is None
        or h < 0
        or int.from_bytes(frame, "little") & layout.mask != layout.expected
        or text.count("\n") != layout.newlines
    ):
        return None
    codes, cut, keys = layout.read
    # copying a dict of the same keys and setting their values skips dict(zip())'s resizes
    values = keys.copy()
    values.update(zip(codes, cut(text), strict=False))
    for code in layout.glued_read:
        values[code] = values[code].replace(")\r\n(", ")(")
    return header, values, RawObjects.deferred(layout.codes, layout.raw_values, text)


def _learn_layout(text: str, header: str) -> None:
    """Note the layout of a telegram that passed the bulk split; build it on its second sight
    (a stream of one-off layouts costs one dict entry each, not a layout)."""
    key = (header, len(text))
    if key not in _layouts:
        if len(_layouts) >= _LAYOUTS_MAX:
            _layouts.clear()
        _layouts[key] = None
        return
    h = len(header)
    b = h + 4 if text.startswith("\r\n", h + 2) else h + 2
    _layouts[key] = _Layout(text, h, b)


def _objects_fast(text: str) -> tuple[str, dict[str, str]] | None:
    """Split a well-formed telegram into (header, code → raw value text) with C-level bulk
    operations; the raw text is what sat between the line's outer parentheses (``'v1)(v2'``).

    Well-formed: CRLF line ends, at most one blank line after the header, every data line
    ``CODE(...)`` ending in ``)``, no continuation lines, no duplicate codes. Anything else
    returns None and the caller takes :func:`_objects_robust`. Per-line Python bytecode costs
    more than the whole rest of the parse, hence map/dict instead of a for loop; values are not
    split into lists here (that allocation per line was half the parse), see ``RawObjects``.
    """
    h = text.find("\r\n")
    if h < 0:
        return None
    b = h + 4 if text.startswith("\r\n", h + 2) else h + 2
    body = text[b:]
    values = _split_lines(body)
    if values is None:
        return None
    if "" in values:
        # a line starting with '(': DSMR 2.2/3 gas '0-1:24.3.0(...)(m3)' CRLF '(00001.001)', the
        # value line continues the object. Glue it on and split again (rare: old meters only).
        if body[:1] == "(":
            return None  # nothing to continue
        values = _split_lines(body.replace(")\r\n(", ")("))
        if values is None or "" in values:
            return None
    # Codes the robust path would normalise: blanks or control bytes around a code, a value
    # group F '*255' / '.255'. One join of the ~40 keys, then C-level scans of a short string.
    codes = "|".join(values) + "|"
    if "255|" in codes or " " in codes or not codes.isprintable():
        count = len(values)
        values = {_codes[code]: rest for code, rest in values.items()}
        if len(values) != count:
            return None  # duplicates after normalisation
    return text[:h], values


def _split_lines(body: str) -> dict[str, str] | None:
    """``'CODE(v1)(v2)' CRLF ...`` → {code: 'v1)(v2'}; None unless every line ends in ``)``
    CRLF, has a ``(`` and a code of its own (a duplicate code → None: the robust path keeps the
    first occurrence or rejects the telegram)."""
    items = body.split(")\r\n")
    # every LF belongs to a ')CRLF' line end (nothing after the last one)
    if items.pop() or body.count("\n") != len(items):
        return None
    try:
        # 'CODE(v1)(v2' → ['CODE', 'v1)(v2']: dict() takes each 2-list as a key/value pair
        values = dict(map(str.split, items, repeat("("), repeat(1)))
    except ValueError:
        # dict() refuses a 1-list: a line without '('. Not an error here: the robust path
        # decides what such a line means (ignored, or a register without value: rejected).
        return None
    return values if len(values) == len(items) else None


def _objects_robust(text: str) -> tuple[str, dict[str, list[str]], dict[str, int] | None]:
    """Line-by-line split tolerating every wire quirk (see the module docstring).

    Returns (header, objects, code → line number of values without a closing ')').
    """
    lines = text.split("\r\n") if "\r\n" in text else text.split("\n")
    objects: dict[str, list[str]] = {}
    codes = _codes
    prev: list[str] | None = None
    skipped = 1  # lines that create no object: the header, blank lines, continuations
    unclosed: str | None = None  # code of an object whose value has no ')' yet
    bad: dict[str, int] | None = None
    for number, line in enumerate(lines[1:], start=2):
        stripped = line.strip()
        if not stripped:
            skipped += 1
            continue
        if unclosed is not None and "(" not in stripped:
            # value broken over lines, e.g. a 96.13.0 text message with a CRLF inside
            skipped += 1
            joined = objects[unclosed][0] + stripped
            if joined.endswith(")"):
                objects[unclosed] = joined[:-1].split(")(")
                if bad is not None:
                    bad.pop(unclosed, None)
                unclosed = None
            else:
                objects[unclosed] = [joined]
            continue
        if stripped[0] == "(":
            # DSMR 2.2/3: 0-n:24.3.0(...)(m3) CRLF (00001.001): the value continues the object
            skipped += 1
            if prev is not None and stripped[-1] == ")":
                prev.extend(stripped[1:-1].split(")("))
                unclosed = None
            continue
        p = stripped.find("(")
        if p < 0:
            skipped += 1
            if stripped.startswith(_REGISTER_CODES) or stripped in _CHANNEL_CODES:
                raise ValueFormatError(f"line {number}: register line {stripped!r} has no value")
            continue  # not an object: ignored (documented)
        key = codes[stripped[:p]]
        if stripped[-1] == ")":
            prev = objects[key] = stripped[p + 1 : -1].split(")(")
            unclosed = None
        else:
            # no closing ')' at the end: keep the rest raw; it may continue on the next line
            prev = objects[key] = [stripped[p + 1 :]]
            unclosed = key
            if bad is None:
                bad = {}
            bad[key] = number
    if len(objects) != len(lines) - skipped:
        _resolve_duplicates(lines, objects)
    return lines[0].rstrip("\r"), objects, bad


def _resolve_duplicates(lines: list[str], objects: dict[str, list[str]]) -> None:
    """Some full code occurred more than once: keep the first occurrence, and reject the
    telegram when an interpreted code occurs with different values. Cold path."""
    entries: list[tuple[int, str, str]] = []  # (line number, code, '(values...)')
    for number, line in enumerate(lines[1:], start=2):
        stripped = line.strip()
        p = stripped.find("(")
        if p > 0:
            entries.append((number, _codes[stripped[:p]], stripped[p:]))
    counts = Counter(code for _, code, _ in entries)
    first: dict[str, str] = {}
    for number, code, rest in entries:
        if counts[code] < 2:
            continue
        seen = first.get(code)
        if seen is None:
            first[code] = rest
            if rest.endswith(")"):
                objects[code] = rest[1:-1].split(")(")
        elif seen != rest and code in obis.INTERPRETED_CODES:
            raise ValueFormatError(
                f"line {number}: {code} occurs twice with different values ({seen} and {rest})"
            )
