"""OBIS codes the parser turns into named Telegram fields — the domain knowledge, as data.

Every line of a telegram is kept raw in ``Telegram.objects`` under its full ``A-B:C.D.E`` code;
only the codes below are interpreted. Per-version differences (see shared/DSMR.md §3):

==================  ==========================  =============================================
what                code(s)                     where / quirks
==================  ==========================  =============================================
P1 version          1-3:0.2.8                   DSMR 4.0+ (``40``, ``42``, ``50``); absent in
                                                DSMR 2.2/3, E.ON HU, Fluvius e-MUCS 1.x
BE version          0-0:96.1.4                  Fluvius e-MUCS (``50217``, ``50221``)
telegram time       0-0:1.0.0                   DSMR 4+; ``YYMMDDhhmmssX``, X = S/W
E-meter id          0-0:96.1.1                  hex-encoded ASCII; fallbacks below for HU
                                                (0-0:96.1.0), LU Smarty (0-0:42.0.0), Q3D
energy registers    1-0:1.8.1 .. 1-0:2.8.2      kWh with 3 decimals; AT: integer ``Wh``;
                                                on another channel B where B=0 has none
                                                (XT211 ``1-1:1.8.1``)
totals              1-0:1.8.0, 1-0:2.8.0        LU, AT, HU, SE, Q3D
tariff              0-0:96.14.0                 NL 1 = low, 2 = normal; BE swapped
M-Bus device type   0-n:24.1.0                  3 gas, 4 heat, 6 warm water, 7 water
M-Bus id            0-n:96.1.0 / 0-n:96.1.1     NL / BE (e-MUCS puts M-Bus ids on 96.1.1)
M-Bus reading       0-n:24.2.1 / 0-n:24.2.3     (TST)(value*unit); BE gas on 24.2.3 (not
                                                temperature corrected), water on 24.2.1
M-Bus reading 2.2   0-n:24.3.0 + next line      (TST12)(status)(period)(n)(obis)(unit), the
                                                value alone in parentheses on the NEXT line
==================  ==========================  =============================================

Code variants normalised to ``A-B:C.D.E`` before lookup: surrounding whitespace, a value group
F of 255 written ``*255`` (EasyMeter Q3D) or as a sixth group ``.255`` (DSMR 4.2.2 spec example).
Other F values are NOT dropped (``*01`` is a previous billing period, a different quantity).
"""

from __future__ import annotations

from typing import Final

VERSION: Final = "1-3:0.2.8"
BE_VERSION: Final = "0-0:96.1.4"
TIMESTAMP: Final = "0-0:1.0.0"
TARIFF: Final = "0-0:96.14.0"

#: equipment id of the electricity meter, first present (and non-empty) code wins
METER_ID_CODES: Final = (
    "0-0:96.1.1",  # DSMR 2.2 .. 5, e-MUCS, IE
    "0-0:96.1.0",  # E.ON HU (no 96.1.1)
    "0-0:42.0.0",  # LU Smarty: COSEM logical device name, e.g. "SAG1030790002574"
    "0-0:96.1.255",  # EasyMeter Q3D serial number (sent as 0-0:96.1.255*255)
)

#: energy register code → Telegram field (integer Wh)
ENERGY_REGISTERS: Final = (
    ("1-0:1.8.1", "import_t1_wh"),
    ("1-0:1.8.2", "import_t2_wh"),
    ("1-0:2.8.1", "export_t1_wh"),
    ("1-0:2.8.2", "export_t2_wh"),
    ("1-0:1.8.0", "import_total_wh"),
    ("1-0:2.8.0", "export_total_wh"),
)


def energy_codes(channel: int) -> tuple[str, ...]:
    """The energy register codes of channel B = ``channel``, in ENERGY_REGISTERS order."""
    return tuple(f"1-{channel}:{code[4:]}" for code, _ in ENERGY_REGISTERS)


#: the same registers on another channel B (OBIS B is one byte): some meters send theirs there
#: (Sagemcom XT211: ``1-1:1.8.1``). B=0 is read when it carries any; else the one channel that
#: does; two such channels in one telegram make it ambiguous (rejected)
ENERGY_CHANNELS: Final = {channel: energy_codes(channel) for channel in range(1, 256)}
#: every energy register code on a channel B other than 0 → its channel
CHANNEL_OF_ENERGY_CODE: Final = {
    code: channel for channel, codes in ENERGY_CHANNELS.items() for code in codes
}

#: energy unit (lower case; matched case-insensitively) → decimal places to shift into Wh
ENERGY_UNIT_DECIMALS: Final = {"kwh": 3, "wh": 0, "mwh": 6}

#: M-Bus unit (lower case) → (smallest unit stored, decimal places to shift into it)
MBUS_UNITS: Final = {
    "m3": ("dm3", 3),
    "m\xb3": ("dm3", 3),  # 'm³' in latin-1, sent by some Sagemcom meters
    "dm3": ("dm3", 0),
    "gj": ("kJ", 6),
    "mj": ("kJ", 3),
    "kj": ("kJ", 0),
    "mwh": ("Wh", 6),
    "kwh": ("Wh", 3),
    "wh": ("Wh", 0),
}

#: device types whose unit-less values are volumes in m3 (dead channels send ``(00000000)``,
#: Smarty water channels ``(00000.000)``): gas, warm water, water
VOLUME_DEVICE_TYPES: Final = frozenset({3, 6, 7})

#: DSMR 4.0 introduced the P1 version object ``1-3:0.2.8`` and the CRC together
CRC_FROM_VERSION: Final = 40


def claims_dsmr4(version: str | None, belgian: bool) -> bool:
    """True when a telegram says it is DSMR 4+ and so must carry a CRC: its first
    ``1-3:0.2.8`` value (``version``, None when absent) is 40 or higher or unreadable (fail
    towards checking), or it carries the Belgian ``0-0:96.1.4`` (``belgian``). The header's
    fifth character says nothing: ``/XXX5`` is the IEC 62056-21 baud-rate letter, sent by
    DSMR 2.2/3 meters too (``/ISk5\\2MT382``)."""
    if belgian:
        return True
    if version is None:
        return False
    return not version.isdecimal() or int(version) >= CRC_FROM_VERSION


#: M-Bus channels B (DSMR 5.0.2 §7.3: up to 4 devices)
MBUS_CHANNELS: Final = (1, 2, 3, 4)


def mbus_codes(channel: int) -> tuple[str, tuple[str, ...], tuple[str, ...], str]:
    """Codes of one M-Bus channel: (device type, id codes, reading codes, DSMR 2.2/3 reading).

    Reading codes are tried in order: 24.2.1 (NL, and BE water) before 24.2.3 (BE gas).
    """
    p = f"0-{channel}:"
    return (
        p + "24.1.0",
        (p + "96.1.0", p + "96.1.1"),
        (p + "24.2.1", p + "24.2.3"),
        p + "24.3.0",
    )


#: every code whose value feeds a named field: a duplicate of one of these with a different
#: value makes the telegram ambiguous and it is rejected
INTERPRETED_CODES: Final = frozenset(
    [VERSION, TIMESTAMP, TARIFF, *METER_ID_CODES]
    + [code for code, _ in ENERGY_REGISTERS]
    + list(CHANNEL_OF_ENERGY_CODE)
    + [
        code
        for ch in MBUS_CHANNELS
        for code in (
            mbus_codes(ch)[0],
            *mbus_codes(ch)[1],
            *mbus_codes(ch)[2],
            mbus_codes(ch)[3],
        )
    ]
)


def normalise_code(raw: str) -> str:
    """Return the ``A-B:C.D.E`` form of an OBIS code as written on the wire.

    Strips whitespace and a value group F of 255 (``*255`` or a sixth ``.255`` group); anything
    else, including typos like ``1-0:99:97.0``, is returned as sent.
    """
    code = raw.strip()
    if code.endswith("*255"):
        return code[:-4]
    if code.endswith(".255") and code.count(".", code.find(":") + 1) == 3:
        return code[:-4]
    return code
