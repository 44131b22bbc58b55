"""The public operation (``GET /v1/keys``, no authentication): its response models and entry
(handler: ``gateway.api.handlers.public``)."""

from __future__ import annotations

from typing import Final, Literal

from pydantic import Field

from gateway.api.openapi.common import Out
from gateway.api.openapi.spec import JSON, Operation, Response

TAG: Final = "public"


class Jwk(Out):
    """An RFC 8037 Ed25519 public key."""

    kty: Literal["OKP"]
    crv: Literal["Ed25519"]
    x: str = Field(description="public key, base64url")
    kid: str = Field(description="RFC 7638 thumbprint; a signature's `kid` names its key")
    use: Literal["sig"]
    alg: Literal["EdDSA"]
    key_ops: list[Literal["verify"]]
    signs: list[Literal["consent-receipts", "webhooks"]] = Field(
        description="what the key's signatures are on"
    )
    whpk: str | None = Field(
        default=None,
        pattern="^whpk_[A-Za-z0-9+/]{43}=$",
        description="on a key that signs webhooks: the key in the Standard Webhooks form "
        "(`whpk_` + standard base64 of the raw 32 bytes), for any `v1a` verifier",
    )
    retired: Literal[True] | None = Field(
        default=None,
        description="present on a key that signs nothing new since a key rotation: it still "
        "verifies the receipts and webhooks it signed; the key without it signs from now on",
    )


class JwkSet(Out):
    """The keys that verify consent receipts and webhooks: the current key first, then the
    retired ones (a rotated key stays listed, marked `retired`, while what it signed matters)."""

    keys: list[Jwk]


OPERATIONS: Final[list[Operation]] = [
    Operation(
        "GET",
        "/v1/keys",
        "getKeys",
        TAG,
        "Public keys that verify consent receipts and webhooks",
        description="A JWK Set of Ed25519 (OKP) keys; a signature's `kid` names its key. "
        "Receipt signatures are over the receipt's canonical JSON (sorted keys, no whitespace, "
        "UTF-8). Webhooks are signed the Standard Webhooks way (`webhook-signature: v1a,…` over "
        "`{webhook-id}.{webhook-timestamp}.{body}`) by the key whose `signs` lists `webhooks` and "
        "that is not `retired`. Cacheable for 5 minutes.",
        responses={200: Response("JWK Set", {JSON: JwkSet})},
    ),
]
