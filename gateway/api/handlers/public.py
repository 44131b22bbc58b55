"""``GET /v1/keys``: the public keys that verify consent receipts and webhooks, as a JWK Set.

Anyone may fetch it (no authentication): a receipt is only worth something if its holder can
check it without asking us. Each key is an RFC 8037 OKP/Ed25519 JWK whose ``kid`` (its RFC 7638
thumbprint) matches the ``kid`` of the signatures it verifies, with two members of our own (see
``gateway.keys``): ``signs`` (``consent-receipts``, ``webhooks``) and ``whpk``, the ``whpk_`` form a
Standard Webhooks verifier is configured with; retired keys (after a rotation) follow the current
one, marked ``"retired": true``.
"""

from __future__ import annotations

from aiohttp import web

from gateway.api.appkeys import KEYRING_KEY
from gateway.api.http import json_response

#: seconds clients may cache the key set (a rotated key is served beside the new one meanwhile)
KEYS_MAX_AGE_S = 300


async def get_keys(request: web.Request) -> web.Response:
    """The JWK Set of the receipt and webhook signing keys."""
    resp = json_response(request.app[KEYRING_KEY].jwks())
    resp.headers["Cache-Control"] = f"public, max-age={KEYS_MAX_AGE_S}"
    return resp
