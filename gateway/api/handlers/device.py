"""``POST /v1/telegrams``: field devices push one or more raw telegrams (device bearer token)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway import metrics
from gateway.api.appkeys import INGEST_KEY
from gateway.api.auth import device_of
from gateway.api.http import json_response, read_body
from gateway.errors import (
    BadRequestError,
    UnsupportedMediaTypeError,
    ValidationError,
)
from gateway.ingest.pipeline import split_body

#: media types a telegram body may be sent as (octet-stream: raw serial bytes, latin-1)
ACCEPTED_TYPES = frozenset(("text/plain", "application/octet-stream"))


class TelegramsRejectedError(ValidationError):
    """Every telegram of the body was rejected (422); the outcome is in the problem's members."""

    def __init__(self, rejected: list[dict[str, Any]]) -> None:
        reasons = sorted({r["reason"] for r in rejected})
        super().__init__(
            f"all {len(rejected)} telegram(s) rejected ({', '.join(reasons)}); nothing stored"
        )
        self.rejected = rejected

    def extensions(self) -> dict[str, Any]:
        return {"accepted": 0, "rejected": self.rejected}


async def post_telegrams(request: web.Request) -> web.Response:
    """Ingest the body's telegrams; answer ``{accepted, rejected:[{index, reason, detail}]}``
    after every reading to be stored has been committed."""
    state = request.app[INGEST_KEY]
    device = await device_of(request)
    if request.content_type not in ACCEPTED_TYPES:
        raise UnsupportedMediaTypeError(
            f"expected raw telegrams as text/plain, got {request.content_type!r}"
        )
    # aiohttp enforces client_max_size (413) while reading
    body = await read_body(request)
    parts = split_body(body)
    if not parts:
        raise BadRequestError("the body holds no telegram")
    now_s = int(state.clock())
    result = state.pipeline.process(parts, device.meter_ids, now_s)
    metrics.TELEGRAMS_RECEIVED.inc(len(parts))
    for rejection in result.rejected:
        metrics.TELEGRAMS_REJECTED.labels(rejection["reason"]).inc()
    for granularity, count in result.withheld.items():
        metrics.READINGS_WITHHELD.labels(granularity.value).inc(count)
    if result.rows:
        await state.writer.write(result.batch)
    if not result.accepted:
        raise TelegramsRejectedError(result.rejected)
    return json_response({"accepted": result.accepted, "rejected": result.rejected})
