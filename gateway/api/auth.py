"""Who is calling: the admin token, device and client tokens, customer JWTs.

Each function takes the request and answers the caller or raises AuthenticationError (401).
Token look-ups go through the app's ``Credentials`` (``gateway.storage.credentials``), customer
tokens through its ``CustomerAuthenticator``. Comparisons of secrets are constant-time.

Mutual TLS (``tls_client_ca_file``): devices and data clients must also have presented a
client certificate in the TLS handshake, checked here for both before their token is looked at.
The handshake (``gateway.api.tls``) already refused any certificate the CA does not verify, so a
certificate present is a verified one. It is not bound to one device or client: the certificate
shows the caller holds a key the operator's CA issued (its machine is one of the fleet), the
token says which device or client it is. Binding them (subject CN = device id) would tie the
CA's issuing to the registry's ids; an operator who wants that per-device revocation revokes the
token. Customers and the admin API are not asked: browsers of the customer portal carry no
client certificate.

Every check passes the app's ``AuthThrottle`` (``gateway.api.throttle``) first, and reports its
failures to it: a caller with too many recent failures gets TooManyRequestsError (429) before its
token is looked at.
"""

from __future__ import annotations

import hashlib
import hmac

from aiohttp import web

from gateway.api.appkeys import CREDENTIALS_KEY, CUSTOMER_AUTH_KEY, SETTINGS_KEY, THROTTLE_KEY
from gateway.api.http import bearer_token
from gateway.errors import AuthenticationError, ClientCertificateRequiredError
from gateway.storage.credentials import Client, Device
from gateway.tokens import hash_token


def check_admin(request: web.Request) -> None:
    """Raise AuthenticationError unless the request carries the configured admin token."""
    settings = request.app[SETTINGS_KEY]
    token = bearer_token(request)
    if settings.admin_token is None:
        raise AuthenticationError("the admin API is disabled: METERPOORT_ADMIN_TOKEN is not set")
    throttle = request.app[THROTTLE_KEY]
    throttle.admit(request, token)
    expected = settings.admin_token.get_secret_value().encode("utf-8")
    # compare digests so the comparison time depends on neither token's length
    if not hmac.compare_digest(hash_token(token), hashlib.sha256(expected).digest()):
        throttle.failed(request, token)
        raise AuthenticationError("invalid admin token")


def check_client_certificate(request: web.Request) -> None:
    """With mutual TLS configured, raise ClientCertificateRequiredError unless the connection
    presented a (verified) client certificate."""
    if request.app[SETTINGS_KEY].tls_client_ca_file is None:
        return
    # "peercert" is the verified certificate, or None when the client sent none (CERT_OPTIONAL)
    if not request.get_extra_info("peercert"):
        raise ClientCertificateRequiredError(
            "this endpoint needs a client certificate issued by the gateway's client CA, "
            "presented in the TLS handshake, in addition to the bearer token"
        )


async def device_of(request: web.Request) -> Device:
    """The active device of the request's bearer token; AuthenticationError otherwise (also
    without a client certificate where mutual TLS is configured)."""
    check_client_certificate(request)
    token = bearer_token(request)
    throttle = request.app[THROTTLE_KEY]
    throttle.admit(request, token)
    device = await request.app[CREDENTIALS_KEY].device(token)
    if device is None:
        throttle.failed(request, token)
        raise AuthenticationError("unknown or revoked device token")
    return device


async def client_of(request: web.Request) -> Client:
    """The active data client of the request's bearer token; AuthenticationError otherwise
    (also without a client certificate where mutual TLS is configured)."""
    check_client_certificate(request)
    token = bearer_token(request)
    throttle = request.app[THROTTLE_KEY]
    throttle.admit(request, token)
    client = await request.app[CREDENTIALS_KEY].client(token)
    if client is None:
        throttle.failed(request, token)
        raise AuthenticationError("unknown or revoked client token")
    return client


async def customer_id_for(request: web.Request) -> str:
    """The authenticated customer's id for ``request`` (401 AuthenticationError otherwise)."""
    token = bearer_token(request)
    throttle = request.app[THROTTLE_KEY]
    throttle.admit(request, token)
    try:
        return await request.app[CUSTOMER_AUTH_KEY].authenticate(token)
    except AuthenticationError:
        throttle.failed(request, token)
        raise
