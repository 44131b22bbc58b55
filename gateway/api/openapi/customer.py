"""The customer API's paths (``/v1/me/...``) in /openapi.json."""

from __future__ import annotations

from typing import Any, Final, get_args

from pydantic import BaseModel

from consent.levels import Level
from consent.model import Channel, EndReason, OnRevoke
from gateway.api.handlers.customer import LOG_PAGE_MAX, ConsentGrantIn, LevelIn
from gateway.api.openapi.data_client import READING
from gateway.services import registry
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


_TIME: Final = {"type": "string", "format": "date-time"}
_OPEN_TIME: Final = {"type": ["string", "null"], "format": "date-time"}
#: why a contract ended (SPEC §3a)
_CONTRACT_END_REASONS: Final = get_args(registry.EndReason)
#: why a consent ended: its own reasons, and the end of its contract (with the contract's reason)
_CONSENT_END_REASONS: Final = list(
    dict.fromkeys([*(r.value for r in EndReason), *_CONTRACT_END_REASONS])
)
_CONSENT_SCHEMA: Final = {
    "type": "object",
    "properties": {
        "consent_id": {"type": "string", "format": "uuid"},
        "ean": {"type": "string"},
        "contract_id": {
            "type": "string",
            "format": "uuid",
            "description": "the supply contract the consent belongs to; it ends with it",
        },
        "customer_id": {"type": "string"},
        "purpose": {"type": "string"},
        "data_class": {"type": "string"},
        "notice_version": {"type": "string"},
        "channel": {"enum": [c.value for c in Channel]},
        "granted_at": _TIME,
        "expires_at": _OPEN_TIME,
        "ended_at": _OPEN_TIME,
        "end_reason": {"enum": [*_CONSENT_END_REASONS, None]},
        "status": {"enum": list(dict.fromkeys(["active", "expired", *_CONSENT_END_REASONS]))},
        "on_revoke": {"enum": [*(o.value for o in OnRevoke), None]},
    },
    "required": ["consent_id", "ean", "contract_id", "purpose", "granted_at", "status"],
}
#: one of the customer's supply contracts (a connection as the customer sees it, SPEC §3a)
_CONTRACT_ENTRY: Final = {
    "type": "object",
    "properties": {
        "ean": {"type": "string"},
        "contract_id": {"type": "string", "format": "uuid"},
        "commodity": {"enum": sorted(registry.COMMODITIES)},
        "meter_id": {
            "type": ["string", "null"],
            "description": "the meter installed last within the contract",
        },
        "level": {"enum": [level.value for level in Level]},
        "contract_start": _TIME,
        "contract_end": {**_OPEN_TIME, "description": "exclusive; null: open-ended"},
        "end_reason": {"enum": [*_CONTRACT_END_REASONS, None]},
    },
    "required": [
        "ean",
        "contract_id",
        "commodity",
        "meter_id",
        "level",
        "contract_start",
        "contract_end",
        "end_reason",
    ],
}
_CONNECTIONS: Final = {
    "type": "object",
    "properties": {
        "customer_id": {"type": "string"},
        "connections": {
            "type": "array",
            "description": "one entry per supply contract, ended ones included, by EAN and start",
            "items": {
                "type": "object",
                "allOf": [
                    _CONTRACT_ENTRY,
                    {
                        "type": "object",
                        "properties": {
                            "current": {
                                "type": "boolean",
                                "description": "in force now: the only contracts a level can "
                                "be set or a consent granted on",
                            },
                            "consents": {
                                "type": "array",
                                "description": "the consents of this contract",
                                "items": _CONSENT_SCHEMA,
                            },
                        },
                        "required": ["current", "consents"],
                    },
                ],
            },
        },
        "purposes": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "description": {"type": "string"},
                    "on_revoke": {"enum": [o.value for o in OnRevoke]},
                },
            },
        },
        "max_consent_lifetime_days": {"type": "integer"},
    },
    "required": ["customer_id", "connections", "purposes", "max_consent_lifetime_days"],
}
#: commodity → the registers (CSV columns after measured_at) of its reading tables
_REGISTERS: Final = {t.commodity: t.registers for t in READING_TABLES.values()}
_EXPORT: Final = {
    "type": "object",
    "properties": {
        "format": {"const": "meterpoort-export-1"},
        "customer_id": {"type": "string"},
        "generated_at": _TIME,
        "connections": {"type": "array", "items": _CONTRACT_ENTRY},
        "consents": {
            "type": "array",
            "items": {
                "allOf": [
                    _CONSENT_SCHEMA,
                    {"type": "object", "properties": {"receipt": {"type": "object"}}},
                ]
            },
        },
        "permission_log": {"type": "array", "items": {"type": "object"}},
        "access_log": {"type": "array", "items": {"type": "object"}},
        "readings": {
            "type": "object",
            "description": "reading table → the readings measured inside your contracts",
            "additionalProperties": {"type": "array", "items": READING},
        },
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
            "summary": "Your supply contracts (current and ended) with their connection, level "
            "and consents",
            "security": _CUSTOMER,
            "responses": {
                "200": _ok("one entry per contract, and the configured purposes", _CONNECTIONS),
                **_problems(401, 503),
            },
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
    "/v1/me/consumption": {
        "get": {
            "summary": "Your consumption per period on one of your connections (the portal's "
            "charts)",
            "description": "Computed from your stored readings inside your contracts' windows "
            "(SPEC §3a): a period's amount is the increase from its reading (the earliest "
            "measured in the period, SPEC §3) to the next period's. Periods without both "
            "readings, or with a meter exchange between them, are left out (gaps). The read is "
            "in your access log.",
            "security": _CUSTOMER,
            "parameters": [
                {"name": "ean", "in": "query", "required": True, "schema": {"type": "string"}},
                {
                    "name": "granularity",
                    "in": "query",
                    "required": True,
                    "schema": {"enum": ["P1M", "P1D", "PT1H", "PT15M"]},
                    "description": "PT15M for electricity, PT1H for gas",
                },
                *(
                    {
                        "name": name,
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string"},
                        "description": "RFC 3339 with an offset, or YYYY-MM-DD (local midnight); "
                        + text,
                    }
                    for name, text in (
                        ("from", "periods starting at or after it"),
                        (
                            "to",
                            "periods starting before it (at most 31 days of interval, 400 "
                            "of daily periods)",
                        ),
                    )
                ),
            ],
            "responses": {
                "200": _ok(
                    "amounts per period, gaps left out",
                    {
                        "type": "object",
                        "properties": {
                            "ean": {"type": "string"},
                            "commodity": {"enum": sorted(registry.COMMODITIES)},
                            "granularity": {"enum": ["P1M", "P1D", "PT1H", "PT15M"]},
                            "from": _TIME,
                            "to": _TIME,
                            "unit": {"enum": ["Wh", "dm3"]},
                            "periods": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "properties": {
                                        "period_start": _TIME,
                                        "period_end": _TIME,
                                        "contract_id": {"type": "string", "format": "uuid"},
                                        "measured_from": _TIME,
                                        "measured_to": _TIME,
                                        "import_wh": {"type": "integer", "minimum": 0},
                                        "export_wh": {"type": "integer", "minimum": 0},
                                        "volume_dm3": {"type": "integer", "minimum": 0},
                                    },
                                    "required": ["period_start", "period_end", "contract_id"],
                                },
                            },
                            "interval": {
                                "type": ["object", "null"],
                                "description": "first and last period of your stored interval "
                                "readings on the connection (null: none)",
                                "properties": {
                                    "granularity": {"enum": ["PT1H", "PT15M"]},
                                    "first": _TIME,
                                    "last": _TIME,
                                },
                            },
                        },
                        "required": ["ean", "commodity", "granularity", "unit", "periods"],
                    },
                ),
                **_problems(401, 404, 422, 503),
            },
        }
    },
    "/v1/me/export": {
        "get": {
            "summary": "Everything held about you: JSON, or one reading table as CSV",
            "description": "Readings of your contracts' windows only (SPEC §3a), each with its "
            "`contract_id` and `customer_id`. CSV header: `ean,contract_id,customer_id,"
            "commodity,granularity,period_start,measured_at,` then the table's registers ("
            + "; ".join(f"{c}: `{','.join(r)}`" for c, r in _REGISTERS.items())
            + ").",
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
                        "application/json": {"schema": _EXPORT},
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
