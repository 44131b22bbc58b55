"""JSON encoding shared by every layer: RFC 3339 UTC times, UUIDs and sets.

The HTTP answers, the CLI's output, outbox payloads and webhook bodies all show times the same
way, so the encoder lives below all of them.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any


def rfc3339(value: dt.datetime) -> str:
    """An aware datetime as RFC 3339 in UTC with a ``Z`` suffix."""
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def json_default(value: Any) -> Any:
    """``json.dumps(default=...)``: datetimes as RFC 3339 UTC, UUIDs as text, sets sorted."""
    if isinstance(value, dt.datetime):
        return rfc3339(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, frozenset | set):
        return sorted(value)
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")


# one encoder for the process: json.dumps(default=...) builds a new JSONEncoder on every call
_ENCODER = json.JSONEncoder(default=json_default)


def dumps(value: Any) -> str:
    """``value`` as JSON text with the shared encoder."""
    return _ENCODER.encode(value)
