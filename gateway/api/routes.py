"""Every route of the gateway, in one table: the only place that registers handlers.

Grouped by audience (SPEC §5): operators, field devices, data clients, customers, the admin API.
A handler module holds handlers only; which path reaches which handler is decided here.
"""

from __future__ import annotations

from aiohttp import web

from gateway.api import portal
from gateway.api.handlers import admin, clients, consents, keys, me, ops, readings, telegrams


def setup_routes(app: web.Application) -> None:
    """Register every route of the gateway on ``app``."""
    app.router.add_routes(
        [
            # operators
            web.get("/healthz", ops.healthz),
            web.get("/readyz", ops.readyz),
            web.get("/metrics", ops.metrics_endpoint),
            web.get("/openapi.json", ops.openapi_json),
            web.get("/docs", ops.docs),
            # anyone: the keys that verify receipts and webhooks
            web.get("/v1/keys", keys.get_keys),
            # field devices
            web.post("/v1/telegrams", telegrams.post_telegrams),
            # data clients (billing systems)
            web.get("/v1/readings", readings.get_readings),
            web.get("/v1/consents", readings.get_consents),
            # customers
            web.get("/v1/me/connections", me.get_connections),
            web.put("/v1/me/connections/{ean}/level", me.put_level),
            web.post("/v1/me/consents", me.grant_consent),
            web.post("/v1/me/consents/{id}/revoke", me.revoke_consent),
            web.get("/v1/me/permission-log", me.get_permission_log),
            web.get("/v1/me/access-log", me.get_access_log),
            web.get("/v1/me/export", me.export),
            web.post("/v1/me/erasure", me.request_erasure),
            *(web.get(path, portal.serve_asset) for path in portal.ASSETS),
            # the admin API
            web.post("/v1/admin/meters", admin.add_meter),
            web.get("/v1/admin/meters/{ean}", admin.get_meter),
            web.patch("/v1/admin/meters/{ean}", admin.end_meter_contract),
            web.post("/v1/admin/devices", admin.add_device),
            web.post("/v1/admin/consents", consents.add_consent),
            web.post("/v1/admin/consents/{id}/end", consents.end_consent),
            web.post("/v1/admin/clients", clients.add_client),
            web.get("/v1/admin/clients", clients.list_clients),
            web.get("/v1/admin/clients/{id}", clients.get_client),
            web.post("/v1/admin/clients/{id}/rotate", clients.rotate_client),
            web.post("/v1/admin/clients/{id}/revoke", clients.revoke_client),
        ]
    )
