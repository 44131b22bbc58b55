"""Every route of the gateway, in one table: the only place that registers handlers.

Grouped by audience (SPEC §5): operators, field devices, data clients, customers, the admin API.
A handler module holds the handlers of one audience (``gateway.api.handlers``: operator, public,
device, data_client, customer, admin); which path reaches which handler is decided here.
"""

from __future__ import annotations

from aiohttp import web

from gateway.api import portal
from gateway.api.handlers import admin, customer, data_client, device, operator, public


def setup_routes(app: web.Application) -> None:
    """Register every route of the gateway on ``app``."""
    app.router.add_routes(
        [
            # operators
            web.get("/healthz", operator.healthz),
            web.get("/readyz", operator.readyz),
            web.get("/metrics", operator.metrics_endpoint),
            web.get("/openapi.json", operator.openapi_json),
            web.get("/docs", operator.docs),
            # anyone: the keys that verify receipts and webhooks
            web.get("/v1/keys", public.get_keys),
            # field devices
            web.post("/v1/telegrams", device.post_telegrams),
            # data clients (billing systems)
            web.get("/v1/readings", data_client.get_readings),
            web.get("/v1/consents", data_client.get_consents),
            # customers
            web.get("/v1/me/connections", customer.get_connections),
            web.put("/v1/me/connections/{ean}/level", customer.put_level),
            web.post("/v1/me/consents", customer.grant_consent),
            web.post("/v1/me/consents/{id}/revoke", customer.revoke_consent),
            web.get("/v1/me/permission-log", customer.get_permission_log),
            web.get("/v1/me/access-log", customer.get_access_log),
            web.get("/v1/me/consumption", customer.get_consumption),
            web.get("/v1/me/export", customer.export),
            web.post("/v1/me/erasure", customer.request_erasure),
            *(web.get(path, portal.serve_asset) for path in portal.ASSETS),
            # the admin API
            web.post("/v1/admin/meters", admin.add_meter),
            web.get("/v1/admin/meters/{ean}", admin.get_meter),
            web.patch("/v1/admin/meters/{ean}", admin.end_meter_contract),
            web.get("/v1/admin/connections/{ean}", admin.get_connection),
            web.post("/v1/admin/connections/{ean}/meter-exchange", admin.exchange_meter),
            web.post("/v1/admin/contracts", admin.add_contract),
            web.patch("/v1/admin/contracts/{id}", admin.end_contract),
            web.post("/v1/admin/devices", admin.add_device),
            web.get("/v1/admin/devices", admin.list_devices),
            web.patch("/v1/admin/devices/{id}", admin.rebind_device),
            web.post("/v1/admin/devices/{id}/revoke", admin.revoke_device),
            web.post("/v1/admin/consents", admin.add_consent),
            web.post("/v1/admin/consents/{id}/end", admin.end_consent),
            web.post("/v1/admin/clients", admin.add_client),
            web.get("/v1/admin/clients", admin.list_clients),
            web.get("/v1/admin/clients/{id}", admin.get_client),
            web.post("/v1/admin/clients/{id}/rotate", admin.rotate_client),
            web.post("/v1/admin/clients/{id}/revoke", admin.revoke_client),
        ]
    )
