"""The customer API's paths (``/v1/me/...``) in /openapi.json."""

from __future__ import annotations

from typing import Any, Final

from pydantic import BaseModel

from consent.model import EndReason
from gateway.api.handlers.customer import LOG_PAGE_MAX, ConsentGrantIn, LevelIn
from gateway.storage.schema import READING_TABLES

_CUSTOMER: Final[list[dict[str, list[str]]]] = [{"customerToken": []}]
_PROBLEM_REF: Final = {
    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
}
_PROBLEM_TEXT: Final = {
    400: "unreadable body",
    401: "missing or invalid customer token",
    404: "not one of your connections / consents",
    409: "conflict with the current state",
    415: "wrong media type",
    422: "invalid fields (listed in `errors`)",
    503: "database unavailable; retry after `Retry-After` seconds",
}


def _problems(*statuses: int) -> dict[str, Any]:
    return {str(s): {"description": _PROBLEM_TEXT[s], **_PROBLEM_REF} for s in statuses}


def _json_body(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "required": True,
        "content": {"application/json": {"schema": model.model_json_schema()}},
    }


def _ok(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema or {"type": "object"}}},
    }


_CONSENT_SCHEMA: Final = {
    "type": "object",
    "properties": {
        "consent_id": {"type": "string", "format": "uuid"},
        "ean": {"type": "string"},
        "purpose": {"type": "string"},
        "notice_version": {"type": "string"},
        "channel": {"enum": ["portal", "phone", "api"]},
        "granted_at": {"type": "string", "format": "date-time"},
        "expires_at": {"type": ["string", "null"], "format": "date-time"},
        "ended_at": {"type": ["string", "null"], "format": "date-time"},
        "end_reason": {"type": ["string", "null"]},
        "status": {"enum": ["active", "expired", "contract-ended", *(r.value for r in EndReason)]},
        "on_revoke": {"enum": ["keep", "delete", None]},
    },
}
_CONSENT_AND_RECEIPT: Final = {
    "type": "object",
    "properties": {
        "consent": _CONSENT_SCHEMA,
        "receipt": {
            "type": "object",
            "description": "signed consent receipt (Kantara v1.1 fields, Ed25519; keys at "
            "GET /v1/keys)",
        },
    },
    "required": ["consent", "receipt"],
}
_LOG_PARAMS: Final = [
    {
        "name": "limit",
        "in": "query",
        "schema": {"type": "integer", "minimum": 1, "maximum": LOG_PAGE_MAX},
    },
]
_EAN_PATH: Final = {
    "name": "ean",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[0-9]{18}$"},
}

#: the customer API's paths, merged into /openapi.json (gateway.api.openapi MODULE_PATHS)
OPENAPI_PATHS: Final[dict[str, Any]] = {
    "/v1/me/connections": {
        "get": {
            "summary": "Your connections with their level, contract period and consents",
            "security": _CUSTOMER,
            "responses": {"200": _ok("connections and configured purposes"), **_problems(401, 503)},
        }
    },
    "/v1/me/connections/{ean}/level": {
        "put": {
            "summary": "Set the remote-reading level of your connection (daily, monthly, none)",
            "description": "Lowering acts from now on: readings of granularities the new level "
            "does not allow, measured at or after the change, are deleted; earlier ones are kept "
            "under the billing retention (use POST /v1/me/erasure).",
            "security": _CUSTOMER,
            "parameters": [_EAN_PATH],
            "requestBody": _json_body(LevelIn),
            "responses": {
                "200": _ok("the new level"),
                **_problems(400, 401, 404, 409, 415, 422, 503),
            },
        }
    },
    "/v1/me/consents": {
        "post": {
            "summary": "Grant an interval-data consent on your connection",
            "security": _CUSTOMER,
            "requestBody": _json_body(ConsentGrantIn),
            "responses": {
                "201": _ok("the consent and its signed receipt", _CONSENT_AND_RECEIPT),
                **_problems(400, 401, 404, 409, 415, 422, 503),
            },
        }
    },
    "/v1/me/consents/{id}/revoke": {
        "post": {
            "summary": "Revoke your consent; effective before the answer",
            "security": _CUSTOMER,
            "parameters": [
                {
                    "name": "id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "format": "uuid"},
                }
            ],
            "responses": {
                "200": _ok("the ended consent and its signed receipt", _CONSENT_AND_RECEIPT),
                **_problems(401, 404, 409, 503),
            },
        }
    },
    "/v1/me/permission-log": {
        "get": {
            "summary": "Your permission log: grants, revocations, expiries, ends, level changes",
            "security": _CUSTOMER,
            "parameters": _LOG_PARAMS,
            "responses": {"200": _ok("entries, newest first"), **_problems(401, 422, 503)},
        }
    },
    "/v1/me/access-log": {
        "get": {
            "summary": "Who read which of your readings (client, time, granularity, period), "
            "and your exports",
            "security": _CUSTOMER,
            "parameters": [
                *_LOG_PARAMS,
                {"name": "before_seq", "in": "query", "schema": {"type": "integer", "minimum": 1}},
            ],
            "responses": {
                "200": _ok("entries, newest first; next_before_seq pages on"),
                **_problems(401, 422, 503),
            },
        }
    },
    "/v1/me/export": {
        "get": {
            "summary": "Everything held about you: JSON, or one reading table as CSV",
            "security": _CUSTOMER,
            "parameters": [
                {"name": "format", "in": "query", "schema": {"enum": ["json", "csv"]}},
                {
                    "name": "table",
                    "in": "query",
                    "schema": {"enum": list(READING_TABLES)},
                    "description": "required with format=csv",
                },
            ],
            "responses": {
                "200": {
                    "description": "streamed export (audited)",
                    "content": {
                        "application/json": {"schema": {"type": "object"}},
                        "text/csv": {"schema": {"type": "string"}},
                    },
                },
                **_problems(401, 422, 503),
            },
        }
    },
    "/v1/me/erasure": {
        "post": {
            "summary": "Erase what may be erased; the answer lists what was kept, why, until when",
            "security": _CUSTOMER,
            "responses": {"200": _ok("erased counts and kept items"), **_problems(401, 503)},
        }
    },
}
