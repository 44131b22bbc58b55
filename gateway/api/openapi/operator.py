"""The operators' operations (health, metrics, this document): response models and entries
(handlers: ``gateway.api.handlers.operator``)."""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict

from gateway.api.openapi.common import Out
from gateway.api.openapi.spec import JSON, Operation, Response, problems

TAG: Final = "operator"


class Health(Out):
    """The process answers."""

    status: Literal["ok"]


class Ready(Out):
    """The database answered."""

    status: Literal["ready"]


class OpenApiDocument(BaseModel):
    """An OpenAPI 3.1 document (its own schema is the OpenAPI specification's)."""

    model_config = ConfigDict(extra="allow")

    openapi: str
    info: dict[str, Any]
    paths: dict[str, Any]


OPERATIONS: Final[list[Operation]] = [
    Operation(
        "GET",
        "/healthz",
        "getHealth",
        TAG,
        "Liveness",
        responses={200: Response("the process answers", {JSON: Health})},
    ),
    Operation(
        "GET",
        "/readyz",
        "getReadiness",
        TAG,
        "Readiness: the database answers within 2 seconds and no shutdown has begun",
        responses={200: Response("ready", {JSON: Ready})},
        problems=problems(503),
    ),
    Operation(
        "GET",
        "/metrics",
        "getMetrics",
        TAG,
        "Prometheus metrics (of every worker with `--workers`)",
        responses={
            200: Response(
                "Prometheus text exposition format 0.0.4",
                {"text/plain": {"type": "string"}},
            )
        },
    ),
    Operation(
        "GET",
        "/openapi.json",
        "getOpenApiDocument",
        TAG,
        "This document",
        responses={200: Response("OpenAPI 3.1", {JSON: OpenApiDocument})},
    ),
    Operation(
        "GET",
        "/docs",
        "getApiDocs",
        TAG,
        "This document as a web page (no scripts)",
        responses={200: Response("HTML", {"text/html": {"type": "string"}})},
    ),
]
