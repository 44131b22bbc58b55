"""The OpenAPI 3.1 document served at ``/openapi.json`` and rendered at ``/docs``, generated
from the models of the requests and responses.

Where things are (one module per audience, as in ``gateway.api.handlers`` and the tags):

* ``operator``, ``public``, ``device``, ``data_client``, ``customer`` (and the portal's files),
  ``admin``: each holds the response models of its audience's operations (pydantic, beside the
  operation entries that use them) and ``OPERATIONS``, one ``spec.Operation`` per route with its
  operationId, parameters, request model, responses and problem statuses;
* ``common``: models several audiences answer with (``Problem``, ``Reading``, ``Consent``);
* ``spec``: the ``Operation`` type and ``assemble``, which turns operations into the document
  (models → ``components/schemas`` via pydantic, ``$ref`` everywhere).

Request schemas are the models the handlers validate with, so they cannot drift; response models
are checked against real answers by ``tests/integration/test_openapi_conformance.py`` (every
operation, every status it answers there), and schemathesis checks fuzzed ones.

Adding an operation: register the route in ``gateway.api.routes``, add its response model(s)
and an ``Operation`` to its audience's module, then add the real requests that reach it to the
conformance test's ``SCENARIOS`` (the test fails until every operation is exercised).
"""

from __future__ import annotations

import functools
from typing import Any, Final

from gateway.api.openapi import admin, common, customer, data_client, device, operator, public
from gateway.api.openapi.spec import Operation, assemble

#: every operation, in the order of the document (and of ``/docs``)
OPERATIONS: Final[list[Operation]] = [
    *operator.OPERATIONS,
    *public.OPERATIONS,
    *device.OPERATIONS,
    *data_client.OPERATIONS,
    *customer.OPERATIONS,
    *customer.PORTAL_OPERATIONS,
    *admin.OPERATIONS,
]

TAGS: Final = [
    {"name": operator.TAG, "description": "Health, readiness, metrics and this document."},
    {"name": public.TAG, "description": "Anyone, no credential: the verification keys."},
    {
        "name": device.TAG,
        "description": "Field devices (P1 dongles, gateways) push raw DSMR telegrams with "
        "their device token.",
    },
    {
        "name": data_client.TAG,
        "description": "Data clients (the supplier's billing system, other recipients) pull "
        "readings and consent changes with their client token.",
    },
    {
        "name": customer.TAG,
        "description": "Customers, with a JWT of the supplier's identity provider: their "
        "connections, consents, logs, export and erasure, and the portal that uses them.",
    },
    {
        "name": admin.TAG,
        "description": "The supplier's back office, with the admin token: connections, "
        "contracts, meters, devices, consents given elsewhere, data clients.",
    },
]

#: devices and data clients on a gateway configured for mutual TLS (``gateway.api.auth``)
MUTUAL_TLS_TEXT: Final = (
    "; where the gateway is set up for mutual TLS, the connection must also present a client "
    "certificate issued by its client CA (401 `client-certificate-required` otherwise)"
)

SECURITY_SCHEMES: Final = {
    "adminToken": {"type": "http", "scheme": "bearer", "description": "METERPOORT_ADMIN_TOKEN"},
    "deviceToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "token from POST /v1/admin/devices" + MUTUAL_TLS_TEXT,
    },
    "clientToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "token from POST /v1/admin/clients (billing, other recipients)"
        + MUTUAL_TLS_TEXT,
    },
    "customerToken": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "JWT from the supplier's identity provider (EdDSA or ES256); `sub` is "
        "the customer id",
    },
}


def _base() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Meterpoort",
            "version": "1",
            "description": "Smart-meter consent and data-access gateway. Errors are RFC 9457 "
            "problem+json with stable `type` URIs under https://meterpoort.nl/problems/. Times "
            "are RFC 3339 in UTC (`Z`).",
        },
        # relative: the document is served by the gateway it describes, so paths resolve
        # against wherever it was fetched from (behind a reverse proxy or on a test port too);
        # an absolute URL would need the public base URL, which is optional
        "servers": [{"url": "/", "description": "the gateway serving this document"}],
        "tags": TAGS,
        "components": {"securitySchemes": SECURITY_SCHEMES},
    }


@functools.cache
def document() -> dict[str, Any]:
    """The OpenAPI document (built once per process)."""
    return assemble(OPERATIONS, base=_base(), problem=common.Problem)
