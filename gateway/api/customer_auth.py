"""Customer authentication: bearer JWTs from the supplier's identity provider (SPEC §5).

A customer token is a JWS-signed JWT with ``sub`` = the customer id, checked with PyJWT:

* algorithms: **EdDSA (Ed25519) and ES256 only**. The algorithm used to verify comes from the
  trusted *key*, never from the token; the token's ``alg`` must merely agree. That closes the
  classic confusions (``alg: none``; ``HS256`` with a public key used as the HMAC secret; RS*).
* keys: PEM public-key files, a JWKS file, and/or a JWKS URL fetched over HTTP and cached
  (``kid`` selects the key; an unknown ``kid`` triggers at most one refresh per
  ``JWKS_MIN_REFRESH_S``, so a flood of made-up kids cannot hammer the identity provider).
  JWKS keys other than Ed25519 and P-256 are ignored.
* claims: ``exp``, ``iss``, ``aud`` and ``sub`` are required; ``nbf``/``iat`` are checked when
  present; clock skew of ``leeway_s`` (30 s) either way.
* dev mode (``METERPOORT_DEV_MODE=1`` only): tokens minted by ``python -m gateway token customer``
  (issuer ``meterpoort-dev``, signed with ``<data_dir>/dev-customer-key.pem``) are accepted too.

Device and client tokens are opaque random strings, not JWTs: one presented on a customer endpoint
gets a 401 saying it is not a customer token. Every refusal is an AuthenticationError (401) whose
detail says why; tokens and customer ids are never logged.

Settings read (proposed fields of ``gateway.settings.Settings``, defaults applying until it
declares them): ``customer_jwt_issuer``, ``customer_jwt_audience``, ``customer_jwt_keys``,
``customer_jwks_file``, ``customer_jwks_url``, ``customer_jwks_cache_s``, plus ``dev_mode`` and
``data_dir``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp
import jwt
from aiohttp import web
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from consent.receipts import key_id
from gateway.api.http import bearer_token
from gateway.errors import AuthenticationError, ConfigurationError, ServiceUnavailableError
from gateway.keys import dev_customer_key
from gateway.settings import Settings

log = logging.getLogger(__name__)

Alg = Literal["EdDSA", "ES256"]
#: the only JWS algorithms a customer token may use
ALLOWED_ALGORITHMS: frozenset[str] = frozenset(("EdDSA", "ES256"))
#: issuer of tokens minted by ``python -m gateway token customer``
DEV_ISSUER = "meterpoort-dev"
DEFAULT_AUDIENCE = "meterpoort"
#: clock skew tolerated on exp / nbf / iat
LEEWAY_S = 30.0
#: an unknown kid refreshes the JWKS at most this often
JWKS_MIN_REFRESH_S = 30.0
JWKS_FETCH_TIMEOUT_S = 5.0
JWKS_MAX_BYTES = 256 * 1024
#: longest customer id accepted (the consent store's limit)
MAX_CUSTOMER_ID_LEN = 128

PublicKey = Ed25519PublicKey | EllipticCurvePublicKey

#: What PyJWT can raise on a hostile token besides its own errors: RecursionError from json.loads
#: on a deeply nested header or payload, OverflowError from int() on a claim like ``exp: 1e400``,
#: ValueError and TypeError from claims of the wrong type. All of them mean "not a valid token".
_UNREADABLE = (jwt.PyJWTError, RecursionError, OverflowError, ValueError, TypeError)


@dataclass(frozen=True, slots=True)
class TrustedKey:
    """A key customer tokens may be signed with, the algorithm it implies, and the issuer whose
    tokens it verifies."""

    key: PublicKey
    alg: Alg
    issuer: str
    kid: str | None
    source: str


def trusted_key(key: object, issuer: str, kid: str | None, source: str) -> TrustedKey:
    """``key`` with the one algorithm it may verify: EdDSA for Ed25519, ES256 for EC P-256;
    ValueError for any other kind of key."""
    if isinstance(key, Ed25519PublicKey):
        return TrustedKey(key, "EdDSA", issuer, kid, source)
    if isinstance(key, EllipticCurvePublicKey) and isinstance(key.curve, SECP256R1):
        return TrustedKey(key, "ES256", issuer, kid, source)
    raise ValueError(
        f"{source}: customer token keys must be Ed25519 or EC P-256 public keys, "
        f"not {type(key).__name__}"
    )


def load_pem_key(path: Path, issuer: str) -> TrustedKey:
    """A trusted key from a PEM public-key file (any ``kid`` in a token may use it)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read customer token key {path}: {exc.strerror}") from exc
    try:
        return trusted_key(load_pem_public_key(data), issuer, None, str(path))
    except (ValueError, UnsupportedAlgorithm) as exc:  # not PEM, or a kind of key we don't trust
        raise ConfigurationError(f"{path} is not a usable PEM public key: {exc}") from exc


def keys_from_jwks(data: Any, issuer: str, source: str) -> list[TrustedKey]:
    """The usable keys of a JWK Set: signature keys of type OKP/Ed25519 or EC/P-256.

    Other keys (RSA, symmetric, encryption keys) are skipped and logged: an identity provider
    commonly publishes several kinds and we only trust two. Keys without ``kid`` are refused
    because a JWKS exists to be selected from by ``kid``.
    """
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError(f"{source}: not a JWK Set (an object with a 'keys' array)")
    keys: list[TrustedKey] = []
    for index, jwk_data in enumerate(data["keys"]):
        if not isinstance(jwk_data, dict):
            raise ValueError(f"{source}: keys[{index}] is not an object")
        kty, crv, use = jwk_data.get("kty"), jwk_data.get("crv"), jwk_data.get("use", "sig")
        kid = jwk_data.get("kid")
        supported = (kty, crv) in (("OKP", "Ed25519"), ("EC", "P-256"))
        if (
            not supported
            or use != "sig"
            or jwk_data.get("alg") not in (None, *ALLOWED_ALGORITHMS)
            or "d" in jwk_data  # private key material has no business in a published set
        ):
            log.info(
                "ignoring a JWKS key that cannot sign customer tokens",
                extra={"source": source, "kty": kty, "crv": crv, "use": use},
            )
            continue
        if not isinstance(kid, str) or not kid:
            raise ValueError(f"{source}: keys[{index}] has no 'kid'")
        try:
            parsed = jwt.PyJWK(jwk_data).key
        except jwt.PyJWTError as exc:
            raise ValueError(f"{source}: keys[{index}] (kid {kid!r}) is invalid: {exc}") from exc
        keys.append(trusted_key(parsed, issuer, kid, f"{source} kid {kid!r}"))
    return keys


@dataclass(frozen=True, slots=True)
class CustomerAuthConfig:
    """Where customer-token keys come from and which claims they must carry."""

    audience: str = DEFAULT_AUDIENCE
    #: the identity provider's ``iss``; required when any of its keys are configured
    issuer: str | None = None
    pem_files: tuple[Path, ...] = ()
    jwks_file: Path | None = None
    jwks_url: str | None = None
    jwks_cache_s: float = 300.0
    #: an unknown kid refreshes the JWKS at most this often
    jwks_min_refresh_s: float = JWKS_MIN_REFRESH_S
    dev_mode: bool = False
    data_dir: Path = Path("./var")
    leeway_s: float = LEEWAY_S

    @classmethod
    def from_settings(cls, settings: Settings) -> CustomerAuthConfig:
        """The configuration in ``settings`` (see the module docstring for the field names)."""
        return cls(
            audience=settings.customer_jwt_audience,
            issuer=settings.customer_jwt_issuer,
            pem_files=tuple(settings.customer_jwt_keys),
            jwks_file=settings.customer_jwks_file,
            jwks_url=settings.customer_jwks_url,
            jwks_cache_s=settings.customer_jwks_cache_s,
            dev_mode=settings.dev_mode,
            data_dir=Path(settings.data_dir),
        )


@dataclass(slots=True)
class _RemoteJwks:
    url: str
    issuer: str
    cache_s: float
    min_refresh_s: float
    keys: list[TrustedKey] = field(default_factory=list)
    fetched_at: float | None = None
    attempted_at: float = float("-inf")
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class CustomerAuthenticator:
    """Checks customer tokens against the configured keys (see the module docstring)."""

    def __init__(self, config: CustomerAuthConfig) -> None:
        self.config = config
        self._static: list[TrustedKey] = []
        idp_configured = bool(config.pem_files or config.jwks_file or config.jwks_url)
        if idp_configured and not config.issuer:
            raise ConfigurationError(
                "customer token keys are configured but METERPOORT_CUSTOMER_JWT_ISSUER is not"
            )
        if config.issuer == DEV_ISSUER:
            raise ConfigurationError(f"issuer {DEV_ISSUER!r} is reserved for dev tokens")
        issuer = config.issuer or ""
        for path in config.pem_files:
            self._static.append(load_pem_key(path, issuer))
        if config.jwks_file is not None:
            try:
                data = json.loads(config.jwks_file.read_text(encoding="utf-8"))
                self._static.extend(keys_from_jwks(data, issuer, str(config.jwks_file)))
            except OSError as exc:
                raise ConfigurationError(
                    f"cannot read JWKS file {config.jwks_file}: {exc.strerror}"
                ) from exc
            except ValueError as exc:  # JSON errors and JWK Set shape
                raise ConfigurationError(f"bad JWKS file {config.jwks_file}: {exc}") from exc
        if config.dev_mode:
            dev = dev_customer_key(config.data_dir).public_key()
            self._static.append(trusted_key(dev, DEV_ISSUER, dev_kid(dev), "dev key"))
        self._remote = (
            None
            if config.jwks_url is None
            else _RemoteJwks(
                config.jwks_url, issuer, config.jwks_cache_s, config.jwks_min_refresh_s
            )
        )
        self._session: aiohttp.ClientSession | None = None

    @property
    def configured(self) -> bool:
        """True when some key can verify customer tokens."""
        return bool(self._static) or self._remote is not None

    async def close(self) -> None:
        """Close the HTTP session used for the JWKS URL."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def customer_id_for(self, request: web.Request) -> str:
        """The customer id (``sub``) of the request's bearer token; AuthenticationError if none."""
        return await self.authenticate(bearer_token(request))

    async def authenticate(self, token: str) -> str:
        """The customer id of a valid customer token; AuthenticationError (401) otherwise."""
        if token.count(".") != 2:
            # device and client tokens are opaque url-safe strings without dots
            raise AuthenticationError(
                "not a customer token: customer endpoints take a JWT from the identity provider"
            )
        try:
            # also refuses a 'crit' header naming an extension PyJWT does not implement
            header = jwt.get_unverified_header(token)
        except _UNREADABLE as exc:
            raise AuthenticationError(self._describe(exc)) from exc
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ALLOWED_ALGORITHMS:
            shown = repr(alg)[:32] if isinstance(alg, str) else type(alg).__name__
            raise AuthenticationError(
                f"customer token algorithm {shown} is not accepted (EdDSA or ES256 only)"
            )
        if not self.configured:
            raise AuthenticationError(
                "customer tokens are not accepted: no identity provider keys are configured"
            )
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise AuthenticationError("malformed customer token: 'kid' is not a string")
        candidates = await self._candidates(kid)
        usable = [k for k in candidates if k.alg == alg]
        if not usable:
            if candidates:
                raise AuthenticationError(
                    f"customer token algorithm {alg} does not match its key ({candidates[0].alg})"
                )
            known = None if kid is None else kid[:64]
            raise AuthenticationError(f"customer token key id {known!r} is unknown")
        for key in usable:
            try:
                claims = jwt.decode(
                    token,
                    key.key,
                    algorithms=[key.alg],
                    audience=self.config.audience,
                    issuer=key.issuer,
                    leeway=self.config.leeway_s,
                    options={"require": ["exp", "iss", "aud", "sub"]},
                )
            except jwt.InvalidSignatureError:
                continue  # another key (e.g. a PEM key during rotation) may verify it
            except _UNREADABLE as exc:
                raise AuthenticationError(self._describe(exc)) from exc
            return _customer_id(claims)
        raise AuthenticationError("customer token signature does not verify")

    async def _candidates(self, kid: str | None) -> list[TrustedKey]:
        remote = await self._remote_keys(refresh=False)
        keyed = [*self._static, *remote]
        if kid is None:
            return keyed
        found = [k for k in keyed if k.kid == kid]
        if not found and self._remote is not None:
            # a new key at the identity provider (rotation): look again, rate-limited
            found = [k for k in await self._remote_keys(refresh=True) if k.kid == kid]
        if not found:
            # PEM keys carry no kid; identity providers put one in every token anyway
            found = [k for k in self._static if k.kid is None]
        return found

    async def _remote_keys(self, refresh: bool) -> list[TrustedKey]:
        remote = self._remote
        if remote is None:
            return []
        now = time.monotonic()
        fresh = remote.fetched_at is not None and now - remote.fetched_at < remote.cache_s
        if fresh and not refresh:
            return remote.keys
        if now - remote.attempted_at < remote.min_refresh_s:
            if remote.fetched_at is None:  # the last attempt failed moments ago
                raise ServiceUnavailableError(
                    "the identity provider's keys cannot be fetched; retry later"
                )
            return remote.keys
        async with remote.lock:
            if remote.attempted_at > now:  # another request fetched while we waited
                return remote.keys
            remote.attempted_at = time.monotonic()
            try:
                remote.keys = keys_from_jwks(await self._fetch(remote.url), remote.issuer, "JWKS")
                remote.fetched_at = time.monotonic()
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                log.warning(
                    "cannot refresh the identity provider's JWKS (%s: %s)",
                    type(exc).__name__,
                    exc,
                )
                if remote.fetched_at is None:
                    raise ServiceUnavailableError(
                        "the identity provider's keys cannot be fetched; retry later"
                    ) from exc
                # keep verifying with the keys fetched before: an IdP hiccup is no reason to
                # log every customer out
        return remote.keys

    async def _fetch(self, url: str) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=JWKS_FETCH_TIMEOUT_S)
            )
        async with self._session.get(url, headers={"Accept": "application/json"}) as resp:
            if resp.status != 200:
                raise ValueError(f"JWKS URL answered HTTP {resp.status}")
            body = await resp.content.read(JWKS_MAX_BYTES + 1)
            if len(body) > JWKS_MAX_BYTES:
                raise ValueError(f"JWKS larger than {JWKS_MAX_BYTES} bytes")
            return json.loads(body)

    def _describe(self, exc: Exception) -> str:
        if isinstance(exc, jwt.ExpiredSignatureError):
            return "customer token expired"
        if isinstance(exc, jwt.ImmatureSignatureError):
            return "customer token is not valid yet (nbf or iat in the future)"
        if isinstance(exc, jwt.InvalidAudienceError):
            return f"customer token is not for this service (audience {self.config.audience!r})"
        if isinstance(exc, jwt.InvalidIssuerError):
            return "customer token issuer is not trusted"
        if isinstance(exc, jwt.MissingRequiredClaimError):
            return f"customer token lacks the {exc.claim!r} claim"
        if isinstance(exc, jwt.DecodeError):
            return f"malformed customer token: {exc}"
        if isinstance(exc, jwt.PyJWTError):
            return f"invalid customer token: {exc}"
        # the messages of json and int() may quote the token's text
        return "malformed customer token"


def dev_kid(public_key: Ed25519PublicKey) -> str:
    """The ``kid`` of the dev key in dev tokens (its RFC 7638 thumbprint)."""
    return key_id(public_key)


def _customer_id(claims: Mapping[str, Any]) -> str:
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub.strip():
        raise AuthenticationError("customer token has an empty 'sub' (the customer id)")
    if len(sub) > MAX_CUSTOMER_ID_LEN or not sub.isprintable():
        raise AuthenticationError("customer token 'sub' is not a valid customer id")
    return sub
