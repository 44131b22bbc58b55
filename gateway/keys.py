"""Key material: the Ed25519 key that signs consent receipts and webhooks, and the dev key that
signs customer tokens minted by ``python -m gateway token customer``.

Each key is read from a configured PEM file, or else from the data directory, where it is
generated on first use (``<data_dir>/signing-key.pem``, ``<data_dir>/dev-customer-key.pem``;
PKCS#8, unencrypted, mode 0600). Generation is race-free across worker processes: the key is
written to a private temporary file and hard-linked into place, so the first process wins and the
others read its key. A generated key whose file has become readable by group or others is
refused (like ssh does), because whoever reads it can forge receipts.

The served JWKS (``GET /v1/keys``) holds the signing key's public half; key ids are RFC 7638
thumbprints, so they stay the same across restarts for as long as the key file does. Each JWK also
says what the key signs (``signs``: ``consent-receipts``, ``webhooks``) and, on a key that signs
webhooks, carries its Standard Webhooks form (``whpk``: ``whpk_`` + standard base64 of the raw
32-byte key), which any Standard Webhooks ``v1a`` verifier takes as is. RFC 7517 §4 lets a JWK
carry members of its own; JWK consumers ignore the ones they do not know.

Settings read here: ``signing_key_file``, ``data_dir``. Receipts themselves are issued by
``gateway.services.receipts``.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

from consent.receipts import key_id, public_jwk, sign_receipt
from gateway.errors import ConfigurationError
from gateway.settings import Settings

#: receipt and webhook signing key, generated in the data directory unless configured
SIGNING_KEY_FILE = "signing-key.pem"
#: dev customer-token key, generated in the data directory by the token CLI (or dev-mode serve)
DEV_CUSTOMER_KEY_FILE = "dev-customer-key.pem"

#: the prefix of a Standard Webhooks public key ("whpk_" + base64 of the raw Ed25519 key)
WHPK_PREFIX = "whpk_"
#: values of a served JWK's ``signs`` member
SIGNS_RECEIPTS = "consent-receipts"
SIGNS_WEBHOOKS = "webhooks"


def _check_private_mode(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigurationError(
            f"key file {path} is accessible to group or others (mode {mode:04o}); "
            f"run: chmod 600 {path}"
        )


def _load_ed25519(path: Path) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read key file {path}: {exc.strerror}") from exc
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(
            f"key file {path} is not an unencrypted PEM private key: {exc}"
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigurationError(f"key file {path} holds a {type(key).__name__}, not Ed25519")
    return key


def load_or_create_ed25519(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in ``path``; generated there (mode 0600) when it does not exist.

    ConfigurationError when the file is unreadable, not an Ed25519 PEM key, or readable by group
    or others.
    """
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        # O_EXCL + 0600 at creation: the key is never readable by others, not even briefly
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(pem)
                out.flush()
                os.fsync(out.fileno())
            # link() fails when another process created the key meanwhile: theirs is kept
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            tmp.unlink()
    _check_private_mode(path)
    return _load_ed25519(path)


def signing_key(settings: Settings) -> Ed25519PrivateKey:
    """The receipt/webhook signing key: ``signing_key_file`` if set, else the data directory's."""
    configured: Path | str | None = settings.signing_key_file
    if configured is not None:
        # an operator-provided file (e.g. a mounted secret): its permissions are theirs to set
        return _load_ed25519(Path(configured))
    return load_or_create_ed25519(Path(settings.data_dir) / SIGNING_KEY_FILE)


def standard_webhooks_public_key(public_key: Ed25519PublicKey) -> str:
    """The key as Standard Webhooks serializes an asymmetric public key: ``whpk_`` followed by
    the standard (padded, ``+/``) base64 of its raw 32 bytes; not base64url like a JWK's ``x``."""
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return WHPK_PREFIX + base64.b64encode(raw).decode("ascii")


def dev_customer_key(data_dir: Path) -> Ed25519PrivateKey:
    """The dev customer-token key of ``data_dir`` (generated on first use)."""
    return load_or_create_ed25519(Path(data_dir) / DEV_CUSTOMER_KEY_FILE)


@dataclass(frozen=True, slots=True)
class KeyRing:
    """The gateway's signing key and what it serves about it."""

    signing_key: Ed25519PrivateKey

    @property
    def signing_kid(self) -> str:
        return key_id(self.signing_key.public_key())

    @property
    def public_keys(self) -> list[Ed25519PublicKey]:
        return [self.signing_key.public_key()]

    @property
    def webhook_signing_keys(self) -> tuple[Ed25519PrivateKey, ...]:
        """The keys each webhook is signed with (a ``webhook-signature`` lists one signature per
        key, so a rotation could sign with the old and the new key for a while; today: one)."""
        return (self.signing_key,)

    def jwks(self) -> dict[str, Any]:
        """The JWK Set served at ``GET /v1/keys`` (public halves only), each key marked with
        what it signs and, for webhook keys, its Standard Webhooks ``whpk_`` form."""
        webhook_kids = {key_id(k.public_key()) for k in self.webhook_signing_keys}
        keys: list[dict[str, Any]] = []
        for public in self.public_keys:
            jwk = public_jwk(public)
            jwk["signs"] = [SIGNS_RECEIPTS]
            if jwk["kid"] in webhook_kids:
                jwk["signs"].append(SIGNS_WEBHOOKS)
                jwk["whpk"] = standard_webhooks_public_key(public)
            keys.append(jwk)
        return {"keys": keys}

    def sign(self, receipt: Mapping[str, Any]) -> dict[str, Any]:
        """A signed receipt document for ``receipt``."""
        return sign_receipt(receipt, self.signing_key, self.signing_kid)

    def secret_material(self) -> bytes:
        """The raw private key, for deriving keys of other uses (e.g. readings page cursors)."""
        return self.signing_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
