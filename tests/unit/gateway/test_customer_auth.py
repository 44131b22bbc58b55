"""Customer JWT checks: every failure mode, including algorithm confusion.

Keys are generated per test and written to ``tmp_path`` (PEM and JWKS files); the JWKS-over-HTTP
path is covered in tests/integration/test_keys_and_tokens.py.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import secrets
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)

from gateway.api.customer_auth import (
    DEV_ISSUER,
    CustomerAuthConfig,
    CustomerAuthenticator,
)
from gateway.cli.token import mint_dev_token, parse_ttl
from gateway.errors import AuthenticationError, ConfigurationError, ValidationError
from gateway.tokens import generate_token

ISSUER = "https://login.energie-zuid.example"
AUDIENCE = "meterpoort"


def pem(key: Any) -> bytes:
    data: bytes = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    return data


def write_pem(tmp_path: Path, key: Any, name: str) -> Path:
    path = tmp_path / name
    path.write_bytes(pem(key))
    return path


def claims(**changes: Any) -> dict[str, Any]:
    now = int(dt.datetime.now(dt.UTC).timestamp())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "cust-42",
        "iat": now,
        "exp": now + 600,
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    head = b64(json.dumps(header).encode())
    body = b64(json.dumps(payload).encode())
    return f"{head}.{body}.{b64(signature)}"


@pytest.fixture
def ed_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def pem_auth(tmp_path: Path, ed_key: Ed25519PrivateKey) -> CustomerAuthenticator:
    path = write_pem(tmp_path, ed_key, "idp.pem")
    return CustomerAuthenticator(
        CustomerAuthConfig(issuer=ISSUER, pem_files=(path,), data_dir=tmp_path)
    )


async def refused(auth: CustomerAuthenticator, token: str, match: str) -> None:
    with pytest.raises(AuthenticationError, match=match):
        await auth.authenticate(token)


async def test_valid_eddsa_token_gives_the_customer_id(
    pem_auth: CustomerAuthenticator, ed_key: Ed25519PrivateKey
) -> None:
    token = jwt.encode(claims(), ed_key, algorithm="EdDSA", headers={"kid": "whatever-idp-kid"})
    assert await pem_auth.authenticate(token) == "cust-42"
    token = jwt.encode(claims(sub="other"), ed_key, algorithm="EdDSA")  # no kid at all
    assert await pem_auth.authenticate(token) == "other"


async def test_valid_es256_token_from_a_jwks_file(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    rsa_jwk = json.loads(
        jwt.algorithms.RSAAlgorithm.to_jwk(rsa.generate_private_key(65537, 2048).public_key())
    )
    jwks = {"keys": [{**rsa_jwk, "kid": "rsa-1"}, {**jwk, "kid": "ec-1", "use": "sig"}]}
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks))
    auth = CustomerAuthenticator(
        CustomerAuthConfig(issuer=ISSUER, jwks_file=path, data_dir=tmp_path)
    )
    token = jwt.encode(claims(), key, algorithm="ES256", headers={"kid": "ec-1"})
    assert await auth.authenticate(token) == "cust-42"
    # the RSA key of the set is ignored, not trusted
    rsa_key = rsa.generate_private_key(65537, 2048)
    await refused(
        auth,
        jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "rsa-1"}),
        "algorithm 'RS256' is not accepted",
    )
    await refused(
        auth,
        jwt.encode(claims(), key, algorithm="ES256", headers={"kid": "ec-2"}),
        "key id 'ec-2' is unknown",
    )


async def test_expiry_with_30_seconds_of_skew(
    pem_auth: CustomerAuthenticator, ed_key: Ed25519PrivateKey
) -> None:
    now = int(dt.datetime.now(dt.UTC).timestamp())
    inside = jwt.encode(claims(iat=now - 600, exp=now - 10), ed_key, algorithm="EdDSA")
    assert await pem_auth.authenticate(inside) == "cust-42"
    expired = jwt.encode(claims(iat=now - 600, exp=now - 45), ed_key, algorithm="EdDSA")
    await refused(pem_auth, expired, "customer token expired")


async def test_not_yet_valid(pem_auth: CustomerAuthenticator, ed_key: Ed25519PrivateKey) -> None:
    now = int(dt.datetime.now(dt.UTC).timestamp())
    soon = jwt.encode(claims(nbf=now + 10), ed_key, algorithm="EdDSA")
    assert await pem_auth.authenticate(soon) == "cust-42"
    later = jwt.encode(claims(nbf=now + 120), ed_key, algorithm="EdDSA")
    await refused(pem_auth, later, "not valid yet")


async def test_wrong_audience_and_issuer(
    pem_auth: CustomerAuthenticator, ed_key: Ed25519PrivateKey
) -> None:
    await refused(
        pem_auth,
        jwt.encode(claims(aud="another-service"), ed_key, algorithm="EdDSA"),
        "not for this service",
    )
    # a list containing our audience is fine (RFC 7519 §4.1.3)
    listed = jwt.encode(claims(aud=["portal", AUDIENCE]), ed_key, algorithm="EdDSA")
    assert await pem_auth.authenticate(listed) == "cust-42"
    await refused(
        pem_auth,
        jwt.encode(claims(iss="https://evil.example"), ed_key, algorithm="EdDSA"),
        "issuer is not trusted",
    )


@pytest.mark.parametrize("claim", ["exp", "iss", "aud", "sub"])
async def test_required_claims(
    pem_auth: CustomerAuthenticator, ed_key: Ed25519PrivateKey, claim: str
) -> None:
    token = jwt.encode(claims(**{claim: None}), ed_key, algorithm="EdDSA")
    await refused(pem_auth, token, f"lacks the '{claim}' claim")


@pytest.mark.parametrize("sub", ["", "   ", "x" * 129, "a\nb"])
async def test_unusable_subjects(
    pem_auth: CustomerAuthenticator, ed_key: Ed25519PrivateKey, sub: str
) -> None:
    await refused(pem_auth, jwt.encode(claims(sub=sub), ed_key, algorithm="EdDSA"), "'sub'")


async def test_non_string_subject(
    pem_auth: CustomerAuthenticator, ed_key: Ed25519PrivateKey
) -> None:
    with pytest.raises(AuthenticationError):
        await pem_auth.authenticate(jwt.encode(claims(sub=42), ed_key, algorithm="EdDSA"))


async def test_bad_signature(pem_auth: CustomerAuthenticator) -> None:
    stranger = Ed25519PrivateKey.generate()
    await refused(
        pem_auth,
        jwt.encode(claims(), stranger, algorithm="EdDSA"),
        "signature does not verify",
    )


async def test_altered_payload_breaks_the_signature(
    pem_auth: CustomerAuthenticator, ed_key: Ed25519PrivateKey
) -> None:
    head, _body, sig = jwt.encode(claims(), ed_key, algorithm="EdDSA").split(".")
    forged = f"{head}.{b64(json.dumps(claims(sub='someone-else')).encode())}.{sig}"
    await refused(pem_auth, forged, "signature does not verify")


async def test_alg_none_is_refused(pem_auth: CustomerAuthenticator) -> None:
    for alg in ("none", "None", "NONE"):
        await refused(pem_auth, raw_token({"alg": alg, "typ": "JWT"}, claims()), "not accepted")
    await refused(pem_auth, raw_token({"typ": "JWT"}, claims()), "algorithm None")


async def test_hs256_with_the_public_key_as_secret_is_refused(
    pem_auth: CustomerAuthenticator, ed_key: Ed25519PrivateKey
) -> None:
    # the classic confusion: HMAC keyed with the verifier's own public key bytes
    header = {"alg": "HS256", "typ": "JWT"}
    unsigned = raw_token(header, claims()).rsplit(".", 1)[0]
    mac = hmac.new(pem(ed_key), unsigned.encode(), hashlib.sha256).digest()
    await refused(pem_auth, f"{unsigned}.{b64(mac)}", "'HS256' is not accepted")


async def test_rs256_is_refused(pem_auth: CustomerAuthenticator) -> None:
    key = rsa.generate_private_key(65537, 2048)
    await refused(pem_auth, jwt.encode(claims(), key, algorithm="RS256"), "'RS256'")


async def test_algorithm_must_match_the_key(tmp_path: Path, ed_key: Ed25519PrivateKey) -> None:
    # an ES256 token can never be checked with an Ed25519 key, whatever its header says
    ec_key = ec.generate_private_key(ec.SECP256R1())
    auth = CustomerAuthenticator(
        CustomerAuthConfig(
            issuer=ISSUER, pem_files=(write_pem(tmp_path, ed_key, "ed.pem"),), data_dir=tmp_path
        )
    )
    await refused(
        auth, jwt.encode(claims(), ec_key, algorithm="ES256"), "ES256 does not match its key"
    )


async def test_opaque_device_and_client_tokens_are_not_customer_tokens(
    pem_auth: CustomerAuthenticator,
) -> None:
    for token in (generate_token(), secrets.token_hex(32), "a.b"):
        await refused(pem_auth, token, "not a customer token")


async def test_malformed_jwts(pem_auth: CustomerAuthenticator) -> None:
    for token in ("a.b.c", "..", "eyJhbGciOiJFZERTQSJ9.%%%.x", b64(b"[1,2]") + ".e30.AA"):
        await refused(pem_auth, token, "malformed customer token|not accepted")


async def test_nothing_configured_refuses_every_token(tmp_path: Path) -> None:
    auth = CustomerAuthenticator(CustomerAuthConfig(data_dir=tmp_path))
    token = jwt.encode(claims(), Ed25519PrivateKey.generate(), algorithm="EdDSA")
    await refused(auth, token, "no identity provider keys are configured")
    assert not (tmp_path / "dev-customer-key.pem").exists()


async def test_dev_tokens_only_in_dev_mode(tmp_path: Path, ed_key: Ed25519PrivateKey) -> None:
    token = mint_dev_token(tmp_path, "alice", AUDIENCE, parse_ttl("5m"))
    assert jwt.get_unverified_header(token)["alg"] == "EdDSA"
    dev = CustomerAuthenticator(CustomerAuthConfig(dev_mode=True, data_dir=tmp_path))
    assert await dev.authenticate(token) == "alice"
    prod = CustomerAuthenticator(
        CustomerAuthConfig(
            issuer=ISSUER, pem_files=(write_pem(tmp_path, ed_key, "idp.pem"),), data_dir=tmp_path
        )
    )
    await refused(prod, token, "signature does not verify")
    # the dev key cannot speak for the identity provider, even in dev mode
    both = CustomerAuthenticator(
        CustomerAuthConfig(
            issuer=ISSUER,
            pem_files=(tmp_path / "idp.pem",),
            dev_mode=True,
            data_dir=tmp_path,
        )
    )
    assert await both.authenticate(token) == "alice"
    assert await both.authenticate(jwt.encode(claims(), ed_key, algorithm="EdDSA")) == "cust-42"
    dev_key_path = tmp_path / "dev-customer-key.pem"
    dev_key = load_pem_private_key(dev_key_path.read_bytes(), None)
    assert isinstance(dev_key, Ed25519PrivateKey)
    kid = jwt.get_unverified_header(token)["kid"]
    impostor = jwt.encode(claims(), dev_key, algorithm="EdDSA", headers={"kid": kid})
    await refused(both, impostor, "issuer is not trusted")
    # and an IdP-signed token claiming the dev issuer is refused
    fake_dev = jwt.encode(claims(iss=DEV_ISSUER), ed_key, algorithm="EdDSA")
    await refused(both, fake_dev, "issuer is not trusted")
    # a dev token for another audience
    other = mint_dev_token(tmp_path, "alice", "elsewhere", parse_ttl("5m"))
    await refused(dev, other, "not for this service")


def test_configuration_errors(tmp_path: Path) -> None:
    ed = write_pem(tmp_path, Ed25519PrivateKey.generate(), "ed.pem")
    with pytest.raises(ConfigurationError, match="CUSTOMER_JWT_ISSUER"):
        CustomerAuthenticator(CustomerAuthConfig(pem_files=(ed,), data_dir=tmp_path))
    with pytest.raises(ConfigurationError, match="reserved"):
        CustomerAuthenticator(
            CustomerAuthConfig(issuer=DEV_ISSUER, pem_files=(ed,), data_dir=tmp_path)
        )
    rsa_pem = write_pem(tmp_path, rsa.generate_private_key(65537, 2048), "rsa.pem")
    with pytest.raises(ConfigurationError, match="Ed25519 or EC P-256"):
        CustomerAuthenticator(
            CustomerAuthConfig(issuer=ISSUER, pem_files=(rsa_pem,), data_dir=tmp_path)
        )
    p384 = write_pem(tmp_path, ec.generate_private_key(ec.SECP384R1()), "p384.pem")
    with pytest.raises(ConfigurationError, match="Ed25519 or EC P-256"):
        CustomerAuthenticator(
            CustomerAuthConfig(issuer=ISSUER, pem_files=(p384,), data_dir=tmp_path)
        )
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key")
    with pytest.raises(ConfigurationError, match="not a usable PEM public key"):
        CustomerAuthenticator(
            CustomerAuthConfig(issuer=ISSUER, pem_files=(garbage,), data_dir=tmp_path)
        )
    with pytest.raises(ConfigurationError, match="cannot read"):
        CustomerAuthenticator(
            CustomerAuthConfig(
                issuer=ISSUER, pem_files=(tmp_path / "missing.pem",), data_dir=tmp_path
            )
        )
    bad_jwks = tmp_path / "jwks.json"
    bad_jwks.write_text(json.dumps({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "AA"}]}))
    with pytest.raises(ConfigurationError, match="no 'kid'"):
        CustomerAuthenticator(
            CustomerAuthConfig(issuer=ISSUER, jwks_file=bad_jwks, data_dir=tmp_path)
        )
    bad_jwks.write_text(json.dumps({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k"}]}))
    with pytest.raises(ConfigurationError, match="kid 'k'"):
        CustomerAuthenticator(
            CustomerAuthConfig(issuer=ISSUER, jwks_file=bad_jwks, data_dir=tmp_path)
        )
    bad_jwks.write_text("[]")
    with pytest.raises(ConfigurationError, match="not a JWK Set"):
        CustomerAuthenticator(
            CustomerAuthConfig(issuer=ISSUER, jwks_file=bad_jwks, data_dir=tmp_path)
        )


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("15m", 900), ("1h", 3600), ("7d", 604800), ("120", 120)]
)
def test_parse_ttl(text: str, seconds: int) -> None:
    assert parse_ttl(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "h", "-1h", "1w", "0s", "31d", "1.5h"])
def test_parse_ttl_refusals(text: str) -> None:
    with pytest.raises(ValidationError, match="--ttl"):
        parse_ttl(text)
