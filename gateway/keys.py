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

Key rotation: the operator puts a new key in place and moves the old one into the retired-keys
directory (``retired_signing_keys_dir``, default ``<data_dir>/retired-keys``; ``python -m gateway
keys rotate`` does both). Every ``*.pem`` there is a retired key, as its private half (PKCS#8,
mode 0600) or only its public half (SPKI). New signatures always use the current key. A retired
key stays in the JWKS, marked ``"retired": true``, so receipts and webhooks it signed keep
verifying for as long as the operator keeps its file. A retired key's PRIVATE half also keeps the
readings cursors and ``changed_since`` sync tokens it sealed valid (they are HMACs under a key
derived from the private key, ``gateway.storage.readings_query.cursor_key``); with only the public
half left, those tokens are refused with a 400 and the client starts its sync again. Removing a
file withdraws the key (after a compromise: see docs/operations.md).

Settings read here: ``signing_key_file``, ``retired_signing_keys_dir``, ``data_dir``. Receipts
themselves are issued by ``gateway.services.receipts``.
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
    load_pem_public_key,
)

from consent.receipts import key_id, public_jwk, sign_receipt
from gateway.errors import ConfigurationError
from gateway.settings import Settings

#: receipt and webhook signing key, generated in the data directory unless configured
SIGNING_KEY_FILE = "signing-key.pem"
#: dev customer-token key, generated in the data directory by the token CLI (or dev-mode serve)
DEV_CUSTOMER_KEY_FILE = "dev-customer-key.pem"
#: retired signing keys, in the data directory unless ``retired_signing_keys_dir`` is set
RETIRED_KEYS_DIR = "retired-keys"

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


@dataclass(frozen=True, slots=True)
class RetiredKey:
    """A signing key that signs nothing new but still verifies what it signed: always its public
    half; its private half too when the operator kept it (old cursors and sync tokens)."""

    public_key: Ed25519PublicKey
    private_key: Ed25519PrivateKey | None
    path: Path

    @property
    def kid(self) -> str:
        return key_id(self.public_key)


def retired_keys_dir(settings: Settings) -> Path:
    """Where retired signing keys live: ``retired_signing_keys_dir``, else the data directory's."""
    configured: Path | None = settings.retired_signing_keys_dir
    if configured is not None:
        return Path(configured)
    return Path(settings.data_dir) / RETIRED_KEYS_DIR


def _load_retired(path: Path) -> RetiredKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read retired key file {path}: {exc.strerror}") from exc
    if b"PRIVATE KEY" in data:
        # a private half signs: the same rules as the current key's file
        _check_private_mode(path)
        private = _load_ed25519(path)
        return RetiredKey(private.public_key(), private, path)
    try:
        public = load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(
            f"retired key file {path} is neither an unencrypted PEM private key nor a PEM "
            f"public key: {exc}"
        ) from exc
    if not isinstance(public, Ed25519PublicKey):
        raise ConfigurationError(
            f"retired key file {path} holds a {type(public).__name__}, not Ed25519"
        )
    return RetiredKey(public, None, path)


def retired_keys(settings: Settings, current: Ed25519PrivateKey) -> tuple[RetiredKey, ...]:
    """The retired signing keys (``*.pem`` in ``retired_keys_dir``, by file name), without the
    current key (a copy left there by mistake) and without duplicates; the private half wins
    over a public-only copy of the same key. ConfigurationError for a file that is no Ed25519
    key or a private one others can read: a start fails rather than dropping a key silently."""
    directory = retired_keys_dir(settings)
    if not directory.is_dir():
        return ()
    current_kid = key_id(current.public_key())
    found: dict[str, RetiredKey] = {}
    for path in sorted(directory.glob("*.pem")):
        key = _load_retired(path)
        if key.kid == current_kid:
            continue
        known = found.get(key.kid)
        if known is None or (known.private_key is None and key.private_key is not None):
            found[key.kid] = key
    return tuple(found.values())


@dataclass(frozen=True, slots=True)
class Rotation:
    """What ``rotate_signing_key`` did."""

    old_kid: str
    new_kid: str
    retired_path: Path


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rotate_signing_key(settings: Settings) -> Rotation:
    """Retire the data directory's signing key and put a new one in its place.

    The old key is first hard-linked into the retired-keys directory as ``<kid>.pem`` (so it is
    never missing from both places), then a new key, written privately beside it, replaces
    ``signing-key.pem`` with one ``rename`` (so a process starting meanwhile reads the old key or
    the new one, never a partial file). Running gateways keep the key they loaded until they are
    restarted. ConfigurationError when ``signing_key_file`` is set (the operator provides that
    file; the guide says how to rotate it) or when the data directory holds no signing key (a
    mistyped ``--data-dir`` must not look like a rotation).
    """
    if settings.signing_key_file is not None:
        raise ConfigurationError(
            f"signing_key_file is set ({settings.signing_key_file}): that key is provided by you; "
            f"put the new key there and the old one into {retired_keys_dir(settings)} "
            "(docs/operations.md, key rotation)"
        )
    path = Path(settings.data_dir) / SIGNING_KEY_FILE
    if not path.exists():
        raise ConfigurationError(f"no signing key to rotate: {path} does not exist")
    _check_private_mode(path)
    old = _load_ed25519(path)
    old_kid = key_id(old.public_key())
    retired_dir = retired_keys_dir(settings)
    retired_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    retired_path = retired_dir / f"{old_kid}.pem"
    try:
        os.link(path, retired_path)
    except FileExistsError:
        if retired_path.read_bytes() != path.read_bytes():
            raise ConfigurationError(
                f"{retired_path} exists and holds another file than {path}; move it away first"
            ) from None
    _fsync_dir(retired_dir)
    new = Ed25519PrivateKey.generate()
    pem = new.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return Rotation(old_kid, key_id(new.public_key()), retired_path)


def standard_webhooks_public_key(public_key: Ed25519PublicKey) -> str:
    """The key as Standard Webhooks serializes an asymmetric public key: ``whpk_`` followed by
    the standard (padded, ``+/``) base64 of its raw 32 bytes; not base64url like a JWK's ``x``."""
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return WHPK_PREFIX + base64.b64encode(raw).decode("ascii")


def dev_customer_key(data_dir: Path) -> Ed25519PrivateKey:
    """The dev customer-token key of ``data_dir`` (generated on first use)."""
    return load_or_create_ed25519(Path(data_dir) / DEV_CUSTOMER_KEY_FILE)


def key_ring(settings: Settings) -> KeyRing:
    """The installation's key ring: the current signing key and the retired ones."""
    current = signing_key(settings)
    return KeyRing(current, retired_keys(settings, current))


@dataclass(frozen=True, slots=True)
class KeyRing:
    """The gateway's signing key, its retired predecessors, and what it serves about them."""

    signing_key: Ed25519PrivateKey
    retired: tuple[RetiredKey, ...] = ()

    @property
    def signing_kid(self) -> str:
        return key_id(self.signing_key.public_key())

    @property
    def public_keys(self) -> list[Ed25519PublicKey]:
        """The current key's public half first, then the retired keys'."""
        return [self.signing_key.public_key(), *(k.public_key for k in self.retired)]

    @property
    def webhook_signing_keys(self) -> tuple[Ed25519PrivateKey, ...]:
        """The keys each webhook is signed with: the current key only (a ``webhook-signature``
        could list one signature per key; a retired key signs nothing new, see
        docs/operations.md for how recipients move to the new key)."""
        return (self.signing_key,)

    def jwks(self) -> dict[str, Any]:
        """The JWK Set served at ``GET /v1/keys`` (public halves only), current key first, each
        key marked with what it signs (a retired key: what it signed, and ``"retired": true``)
        and with its Standard Webhooks ``whpk_`` form (every key here signs or signed webhooks)."""
        keys: list[dict[str, Any]] = []
        for n, public in enumerate(self.public_keys):
            jwk = public_jwk(public)
            jwk["signs"] = [SIGNS_RECEIPTS, SIGNS_WEBHOOKS]
            jwk["whpk"] = standard_webhooks_public_key(public)
            if n > 0:
                jwk["retired"] = True
            keys.append(jwk)
        return {"keys": keys}

    def sign(self, receipt: Mapping[str, Any]) -> dict[str, Any]:
        """A signed receipt document for ``receipt``."""
        return sign_receipt(receipt, self.signing_key, self.signing_kid)

    def secret_material(self) -> bytes:
        """The raw private key, for deriving keys of other uses (e.g. readings page cursors)."""
        return _raw_private(self.signing_key)

    def retired_secret_material(self) -> list[bytes]:
        """The raw private keys of the retired keys that kept theirs: what cursors and sync
        tokens sealed before a rotation are checked with."""
        return [_raw_private(k.private_key) for k in self.retired if k.private_key is not None]


def _raw_private(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
