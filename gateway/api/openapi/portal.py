"""The portal's paths (``/portal`` and its files) in /openapi.json."""

from __future__ import annotations

from typing import Any


def _asset_doc(summary: str, media: str) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "tags": ["portal"],
            "responses": {
                "200": {
                    "description": summary,
                    "content": {media: {"schema": {"type": "string"}}},
                },
                "304": {"description": "not modified (If-None-Match matched the ETag)"},
            },
        }
    }


#: merged into /openapi.json (gateway.api.openapi.MODULE_PATHS)
OPENAPI_PATHS: dict[str, Any] = {
    "/portal": {
        "get": {
            **_asset_doc("The customer portal page", "text/html")["get"],
            "description": "Connections and their data level, interval-data consents (grant and "
            "revoke, with the notice text), the permission and access logs, and a data export. "
            "Static: the page calls /v1/me/* with the customer token it receives in the URL "
            "fragment (`/portal#token=…`, never sent to the server) or that is pasted in.",
        }
    },
    "/portal/portal.js": _asset_doc("Script of the customer portal", "text/javascript"),
    "/portal/portal.css": _asset_doc("Stylesheet of the customer portal", "text/css"),
}
