"""The field devices' operation (``POST /v1/telegrams``, device token): its response models and
entry (handler: ``gateway.api.handlers.device``).

The handler keeps building its answer as a dict (the ingest hot path); the conformance test
validates real answers against ``TelegramResult``.
"""

from __future__ import annotations

from typing import Final, Literal

from pydantic import Field

from gateway.api.handlers.device import DETAIL_MAX
from gateway.api.openapi.common import Out, Problem
from gateway.api.openapi.spec import (
    JSON,
    TOKEN_OR_CERTIFICATE_401,
    Operation,
    Response,
    problems,
)

TAG: Final = "device"


class Rejection(Out):
    """A telegram that was not stored, and why."""

    index: int = Field(ge=0, description="its position in the body, from 0")
    reason: str = Field(
        description="stable code, e.g. `bad-crc`, `meter-not-bound` (no meter of the telegram "
        "is bound to this device), `unknown-meter` (the meter was installed on no connection "
        "at the measured time), `no-contract` (no supply contract was in force on its "
        "connection then), `clock-unset`, `future-timestamp`, `too-old`"
    )
    detail: str = Field(max_length=DETAIL_MAX)


class TelegramResult(Out):
    """The outcome per telegram. Rejections are listed while they fit a byte budget (the
    larger of 4 KiB and the body's size); the rest are only counted."""

    accepted: int = Field(ge=0)
    rejected: list[Rejection]
    rejected_omitted: int | None = Field(
        default=None, ge=1, description="rejections not listed (only when some were left out)"
    )
    rejected_by_reason: dict[str, int] | None = Field(
        default=None, description="reason → count of every rejection (only with the above)"
    )


class TelegramsRejected(Problem):
    """422 when every telegram was rejected: the problem with the outcome's members."""

    accepted: Literal[0]
    rejected: list[Rejection]
    rejected_omitted: int | None = Field(default=None, ge=1)
    rejected_by_reason: dict[str, int] | None = None


OPERATIONS: Final[list[Operation]] = [
    Operation(
        "POST",
        "/v1/telegrams",
        "postTelegrams",
        TAG,
        "Push one or more raw DSMR telegrams (back to back)",
        description="Per-telegram outcome, answered once every reading to store is committed. "
        "Idempotent: a repeated telegram is accepted again without changing stored readings. "
        "`application/octet-stream` is taken as raw serial bytes (latin-1).",
        security="deviceToken",
        request={
            "text/plain": {"type": "string"},
            "application/octet-stream": {"type": "string", "format": "binary"},
        },
        responses={
            200: Response("outcome per telegram (at least one accepted)", {JSON: TelegramResult})
        },
        problems=problems(
            400,
            401,
            413,
            415,
            422,
            503,
            says={
                400: "the body holds no telegram, or its framing is broken",
                401: TOKEN_OR_CERTIFICATE_401,
                413: "the body is over the size limit or holds more telegrams than allowed",
                422: "every telegram was rejected; nothing stored (`TelegramsRejected`)",
            },
        ),
        problem_bodies={422: TelegramsRejected},
    ),
]
