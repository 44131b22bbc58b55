"""Telegram → JSON-able dict, shared by ``read``, ``decode`` and ``forward``.

Only registers and identities go out: actual power values (``1-0:1.7.0``/``2.7.0`` and the
per-phase objects) reveal what happens inside a home second by second and are never emitted
(privacy rule in COMMON.md), nor is the raw ``objects`` map.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from p1_reader.telegram import MbusDevice, Telegram


def rfc3339(moment: datetime | None) -> str | None:
    """RFC 3339 UTC with a ``Z`` suffix (``2024-03-31T01:00:00Z``), or None."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment.isoformat()} cannot be written as UTC")
    utc = moment.astimezone(UTC)
    text = utc.strftime("%Y-%m-%dT%H:%M:%S")
    if utc.microsecond:
        text += f".{utc.microsecond:06d}".rstrip("0")
    return text + "Z"


def mbus_to_dict(device: MbusDevice) -> dict[str, Any]:
    """One M-Bus channel as a dict."""
    return {
        "channel": device.channel,
        "device_type": device.device_type,
        "meter_id": device.meter_id,
        "measured_at": rfc3339(device.measured_at),
        "value": device.value,
        "unit": device.unit,
    }


def telegram_to_dict(telegram: Telegram) -> dict[str, Any]:
    """The JSON shape of a telegram (registers in Wh, times in UTC; no power values)."""
    return {
        "meter_id": telegram.meter_id,
        "timestamp": rfc3339(telegram.timestamp),
        "header": telegram.header,
        "version": telegram.version,
        "import_t1_wh": telegram.import_t1_wh,
        "import_t2_wh": telegram.import_t2_wh,
        "export_t1_wh": telegram.export_t1_wh,
        "export_t2_wh": telegram.export_t2_wh,
        "import_total_wh": telegram.import_total_wh,
        "export_total_wh": telegram.export_total_wh,
        "tariff": telegram.tariff,
        "mbus": [mbus_to_dict(device) for device in telegram.mbus],
    }


def telegram_to_json(telegram: Telegram) -> str:
    """One compact JSON line (no trailing newline)."""
    return json.dumps(telegram_to_dict(telegram), ensure_ascii=False, separators=(",", ":"))
