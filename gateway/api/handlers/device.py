"""``POST /v1/telegrams``: field devices push one or more raw telegrams (device bearer token)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway import metrics
from gateway.api.appkeys import INGEST_KEY, SETTINGS_KEY
from gateway.api.auth import device_of
from gateway.api.http import json_body_response, json_response, read_body
from gateway.errors import (
    BadRequestError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
    ValidationError,
)
from gateway.ingest.pipeline import split_body

#: media types a telegram body may be sent as (octet-stream: raw serial bytes, latin-1)
ACCEPTED_TYPES = frozenset(("text/plain", "application/octet-stream"))

#: bytes of rejections an answer may always hold; beyond, at most as many as the body had, so
#: a body of tiny junk frames never earns an answer many times its size (SPEC §6)
REJECTIONS_MIN_BUDGET = 4096
#: a rejection's detail is cut to this many characters (it may quote a line of the telegram)
DETAIL_MAX = 200


def rejection_report(rejected: list[dict[str, Any]], body_bytes: int) -> dict[str, Any]:
    """``rejected`` as listed in an answer: entries while they fit the budget, then only how
    many more there were by reason (``rejected_omitted``, ``rejected_by_reason``)."""
    budget = max(REJECTIONS_MIN_BUDGET, body_bytes)
    listed: list[dict[str, Any]] = []
    for entry in rejected:
        detail = entry["detail"]
        if len(detail) > DETAIL_MAX:
            entry = {**entry, "detail": detail[: DETAIL_MAX - 1] + "…"}
        # the entry's JSON size, near enough: its two strings plus keys and punctuation
        budget -= len(entry["reason"]) + len(entry["detail"]) + 48
        if budget < 0:
            break
        listed.append(entry)
    report: dict[str, Any] = {"rejected": listed}
    if len(listed) < len(rejected):
        by_reason: dict[str, int] = {}
        for entry in rejected:
            by_reason[entry["reason"]] = by_reason.get(entry["reason"], 0) + 1
        report["rejected_omitted"] = len(rejected) - len(listed)
        report["rejected_by_reason"] = by_reason
    return report


class TelegramsRejectedError(ValidationError):
    """Every telegram of the body was rejected (422); the outcome is in the problem's members."""

    def __init__(self, rejected: list[dict[str, Any]], body_bytes: int) -> None:
        reasons = sorted({r["reason"] for r in rejected})
        super().__init__(
            f"all {len(rejected)} telegram(s) rejected ({', '.join(reasons)}); nothing stored"
        )
        self.report = rejection_report(rejected, body_bytes)

    def extensions(self) -> dict[str, Any]:
        return {"accepted": 0, **self.report}


async def post_telegrams(request: web.Request) -> web.Response:
    """Ingest the body's telegrams; answer ``{accepted, rejected:[{index, reason, detail}]}``
    after every reading to be stored has been committed."""
    state = request.app[INGEST_KEY]
    # on its way to the writer: a flush gathering requests waits for this one (BatchWriter)
    with state.writer.arriving():
        device = await device_of(request)
        if request.content_type not in ACCEPTED_TYPES:
            raise UnsupportedMediaTypeError(
                f"expected raw telegrams as text/plain, got {request.content_type!r}"
            )
        # aiohttp enforces client_max_size (413) while reading
        body = await read_body(request)
    limit = request.app[SETTINGS_KEY].max_telegrams_per_request
    parts = split_body(body, limit)
    if not parts:
        raise BadRequestError("the body holds no telegram")
    if len(parts) > limit:
        raise PayloadTooLargeError(
            f"the body holds more than {limit} telegrams; send at most {limit} per request"
        )
    result = await state.ingest(parts, device.meter_ids)
    metrics.TELEGRAMS_RECEIVED.inc(len(parts))
    if result.dst_flag_mismatches:
        metrics.TELEGRAM_DST_FLAG_MISMATCH.inc(result.dst_flag_mismatches)
    for rejection in result.rejected:
        metrics.TELEGRAMS_REJECTED_BY(rejection["reason"]).inc()
    for granularity, count in result.withheld.items():
        metrics.READINGS_WITHHELD_BY(granularity.value).inc(count)
    if not result.accepted:
        raise TelegramsRejectedError(result.rejected, len(body))
    if not result.rejected:
        # the common answer, formatted as json.dumps would (no encoder run per request)
        return json_body_response(b'{"accepted": %d, "rejected": []}' % result.accepted)
    return json_response(
        {"accepted": result.accepted, **rejection_report(result.rejected, len(body))}
    )
