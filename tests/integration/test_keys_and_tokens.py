"""Signing keys, ``GET /v1/keys``, signed consent receipts, customer tokens over real HTTP, the
JWKS-over-HTTP key source, and ``python -m gateway token customer`` as a subprocess.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime as dt
import json
import os
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from consent.model import EndReason
from gateway import keys
from gateway.api.app import create_app
from gateway.api.appkeys import CUSTOMER_AUTH_KEY, KEYRING_KEY
from gateway.api.auth import customer_id_for
from gateway.api.customer_auth import CustomerAuthConfig, CustomerAuthenticator
from gateway.api.http import json_response
from gateway.errors import AuthenticationError, ConfigurationError, ServiceUnavailableError
from gateway.services import consents as consent_store
from gateway.services.receipts import issue_receipt
from gateway.settings import Settings
from tests.support import make_ean

Client = TestClient[web.Request, web.Application]
ISSUER = "https://login.energie-zuid.example"


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


async def whoami(request: web.Request) -> web.Response:
    return json_response({"customer_id": await customer_id_for(request)})


def wired_app(settings: Settings) -> web.Application:
    """create_app plus a probe route that answers with the authenticated customer id."""
    app = create_app(settings)
    app.router.add_get("/test/whoami", whoami)
    return app


async def serve(app: web.Application) -> Client:
    client: Client = TestClient(TestServer(app, host="127.0.0.1", port=0))
    await client.start_server()
    return client


@pytest.fixture
async def client(gateway_settings: Settings) -> AsyncIterator[Client]:
    c = await serve(wired_app(gateway_settings))
    try:
        yield c
    finally:
        await c.close()


# ---------------------------------------------------------------------------------------------
# keys and GET /v1/keys


async def test_keys_are_served_as_a_jwks(client: Client) -> None:
    resp = await client.get("/v1/keys")  # no Authorization: anyone may fetch them
    assert resp.status == 200
    assert resp.content_type == "application/json"
    assert "max-age" in resp.headers["Cache-Control"]
    jwks = await resp.json()
    [jwk] = jwks["keys"]
    assert set(jwk) == {"kty", "crv", "x", "kid", "use", "alg", "key_ops", "signs", "whpk"}
    assert (jwk["kty"], jwk["crv"], jwk["use"], jwk["key_ops"]) == (
        "OKP",
        "Ed25519",
        "sig",
        ["verify"],
    )
    raw = b64url_decode(jwk["x"])
    assert len(raw) == 32
    # one key signs both; webhook receivers take its Standard Webhooks form (standard base64)
    assert jwk["signs"] == ["consent-receipts", "webhooks"]
    assert jwk["whpk"] == "whpk_" + base64.b64encode(raw).decode()


async def test_signing_key_is_generated_once_private_and_stable(
    gateway_settings: Settings,
) -> None:
    path = gateway_settings.data_dir / keys.SIGNING_KEY_FILE
    assert not path.exists()
    first = keys.KeyRing(keys.signing_key(gateway_settings))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    pem = path.read_bytes()
    # a "restart": a new app on the same data directory serves the same key
    clients = [await serve(wired_app(gateway_settings)) for _ in range(2)]
    try:
        served = [await (await c.get("/v1/keys")).json() for c in clients]
    finally:
        for c in clients:
            await c.close()
    assert served[0] == served[1] == first.jwks()
    assert path.read_bytes() == pem
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []
    # a key file others can read is refused, not used
    path.chmod(0o644)
    with pytest.raises(ConfigurationError, match="chmod 600"):
        keys.signing_key(gateway_settings)
    path.chmod(0o600)
    # a configured key file wins over the data directory's
    other = gateway_settings.data_dir / "configured.pem"
    keys.load_or_create_ed25519(other)
    configured = gateway_settings.model_copy(
        update={"data_dir": Path("/nonexistent"), "signing_key_file": other}
    )
    assert keys.KeyRing(keys.signing_key(configured)).signing_kid != first.signing_kid
    garbage = gateway_settings.data_dir / "garbage.pem"
    garbage.write_text("nope")
    with pytest.raises(ConfigurationError, match="not an unencrypted PEM private key"):
        keys.signing_key(configured.model_copy(update={"signing_key_file": garbage}))


async def test_concurrent_first_use_creates_one_key(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from gateway.keys import load_or_create_ed25519;"
        "from consent.receipts import key_id;"
        "print(key_id(load_or_create_ed25519(Path(sys.argv[1])).public_key()))"
    )
    target = tmp_path / "race" / "signing-key.pem"
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, str(target), stdout=asyncio.subprocess.PIPE
        )
        for _ in range(4)
    ]
    outs = [(await p.communicate())[0].decode().strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len(set(outs)) == 1 and outs[0]
    assert sorted(p.name for p in target.parent.iterdir()) == ["signing-key.pem"]
    assert stat.S_IMODE(target.parent.stat().st_mode) == 0o700


# ---------------------------------------------------------------------------------------------
# receipts verified with nothing but the served JWKS and the cryptography package


def independent_verify(document_text: str, jwks_text: str) -> dict[str, Any]:
    """What a customer's own tool would do: parse, pick the JWK by kid, check Ed25519."""
    doc = json.loads(document_text)
    [jwk] = [k for k in json.loads(jwks_text)["keys"] if k["kid"] == doc["signature"]["kid"]]
    public = Ed25519PublicKey.from_public_bytes(b64url_decode(jwk["x"]))
    message = json.dumps(
        doc["receipt"], sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")
    public.verify(b64url_decode(doc["signature"]["value"]), message)
    receipt: dict[str, Any] = doc["receipt"]
    return receipt


async def test_grant_and_revoke_receipts_verify_with_the_served_keys(
    client: Client,
    pool: asyncpg.Pool,
    gateway_settings: Settings,
    admin_headers: dict[str, str],
) -> None:
    ean = make_ean(31)
    meter = {
        "ean": ean,
        "commodity": "electricity",
        "meter_id": "E0031000000000031",
        "customer_id": "cust-31",
        "contract_start": "2024-01-01T00:00:00+01:00",
    }
    resp = await client.post("/v1/admin/meters", json=meter, headers=admin_headers)
    assert resp.status == 201, await resp.text()
    async with pool.acquire() as conn:
        granted = await consent_store.create_consent(
            conn,
            ean=ean,
            customer_id="cust-31",
            purpose="energy-insights",
            notice_version="2025-01",
        )
        ended = await consent_store.end_consent(conn, granted["consent_id"], EndReason.REVOKED)
    ring = client.app[KEYRING_KEY]
    grant_doc = issue_receipt(ring, gateway_settings, granted, "electricity")
    revoke_doc = issue_receipt(ring, gateway_settings, ended, "electricity")

    jwks_text = await (await client.get("/v1/keys")).text()
    grant = independent_verify(json.dumps(grant_doc), jwks_text)
    revoke = independent_verify(json.dumps(revoke_doc), jwks_text)
    assert grant["status"] == "granted" and grant["piiPrincipalId"] == "cust-31"
    assert grant["consent_id"] == revoke["consent_id"] == str(granted["consent_id"])
    assert revoke["status"] == "revoked" and revoke["end_reason"] == "revoked"
    assert revoke["consentTimestamp"] >= grant["consentTimestamp"]
    assert grant["publicKey"].endswith(f"/v1/keys#{grant_doc['signature']['kid']}")
    assert grant["services"][0]["purposes"][0]["piiCategory"] == ["interval electricity PT15M"]

    # tampering with any top-level field (or the signature) breaks verification
    for name, value in revoke_doc["receipt"].items():
        forged = copy.deepcopy(revoke_doc)
        forged["receipt"][name] = "tampered" if not isinstance(value, str) else value + " "
        with pytest.raises(InvalidSignature):
            independent_verify(json.dumps(forged), jwks_text)
    nested = copy.deepcopy(revoke_doc)
    nested["receipt"]["services"][0]["purposes"][0]["consentType"] = "IMPLIED"
    with pytest.raises(InvalidSignature):
        independent_verify(json.dumps(nested), jwks_text)
    swapped = copy.deepcopy(revoke_doc)
    swapped["signature"] = grant_doc["signature"]
    with pytest.raises(InvalidSignature):
        independent_verify(json.dumps(swapped), jwks_text)


# ---------------------------------------------------------------------------------------------
# customer tokens over HTTP


async def test_customer_endpoint_answers_401_problems(
    gateway_settings: Settings, tmp_path: Path
) -> None:
    idp = Ed25519PrivateKey.generate()
    pem = tmp_path / "idp.pem"
    pem.write_bytes(idp.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    app = wired_app(gateway_settings)
    # trust the identity provider's key: replace the app's authenticator before start
    app[CUSTOMER_AUTH_KEY] = CustomerAuthenticator(
        CustomerAuthConfig(issuer=ISSUER, pem_files=(pem,), data_dir=gateway_settings.data_dir)
    )
    c = await serve(app)
    try:
        now = int(dt.datetime.now(dt.UTC).timestamp())
        good = jwt.encode(
            {"iss": ISSUER, "aud": "meterpoort", "sub": "cust-7", "exp": now + 60}, idp, "EdDSA"
        )
        resp = await c.get("/test/whoami", headers={"Authorization": f"Bearer {good}"})
        assert resp.status == 200 and (await resp.json()) == {"customer_id": "cust-7"}
        expired = jwt.encode(
            {"iss": ISSUER, "aud": "meterpoort", "sub": "cust-7", "exp": now - 120}, idp, "EdDSA"
        )
        cases = {
            None: "missing Authorization",
            f"Bearer {expired}": "expired",
            "Bearer " + "A" * 43: "not a customer token",
            "Basic dXNlcjpwdw==": "malformed Authorization",
        }
        for header, detail in cases.items():
            headers = {} if header is None else {"Authorization": header}
            resp = await c.get("/test/whoami", headers=headers)
            assert resp.status == 401
            assert resp.content_type == "application/problem+json"
            problem = await resp.json()
            assert detail in problem["detail"]
            assert problem["type"].endswith("/unauthorized")
    finally:
        await c.close()


class JwksServer:
    """A real HTTP server publishing a JWK Set, counting fetches."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.hits = 0
        self.status = 200
        app = web.Application()
        app.router.add_get("/jwks.json", self.handle)
        self.server = TestServer(app, host="127.0.0.1", port=0)

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        if self.status != 200:
            return web.Response(status=self.status)
        return web.json_response({"keys": self.keys})

    def publish(self, key: Ed25519PrivateKey, kid: str) -> None:
        jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(key.public_key()))
        self.keys.append({**jwk, "kid": kid, "use": "sig"})

    @property
    def url(self) -> str:
        return str(self.server.make_url("/jwks.json"))


@pytest.fixture
async def jwks_server() -> AsyncIterator[JwksServer]:
    server = JwksServer()
    await server.server.start_server()
    try:
        yield server
    finally:
        await server.server.close()


def idp_token(key: Ed25519PrivateKey, kid: str, sub: str = "cust-9") -> str:
    now = int(dt.datetime.now(dt.UTC).timestamp())
    claims = {"iss": ISSUER, "aud": "meterpoort", "sub": sub, "exp": now + 60}
    return jwt.encode(claims, key, "EdDSA", headers={"kid": kid})


async def test_jwks_url_is_cached_refreshed_on_rotation_and_rate_limited(
    jwks_server: JwksServer, tmp_path: Path
) -> None:
    k1, k2, k3 = (Ed25519PrivateKey.generate() for _ in range(3))
    jwks_server.publish(k1, "k1")
    auth = CustomerAuthenticator(
        CustomerAuthConfig(
            issuer=ISSUER, jwks_url=jwks_server.url, data_dir=tmp_path, jwks_min_refresh_s=0
        )
    )
    try:
        assert await auth.authenticate(idp_token(k1, "k1")) == "cust-9"
        assert await auth.authenticate(idp_token(k1, "k1", "cust-10")) == "cust-10"
        assert jwks_server.hits == 1  # cached
        jwks_server.publish(k2, "k2")  # rotation: a new kid appears
        assert await auth.authenticate(idp_token(k2, "k2")) == "cust-9"
        assert jwks_server.hits == 2
        # the provider goes down: keys fetched before keep working
        jwks_server.status = 500
        with pytest.raises(AuthenticationError, match="key id 'k3' is unknown"):
            await auth.authenticate(idp_token(k3, "k3"))
        assert jwks_server.hits == 3
        assert await auth.authenticate(idp_token(k1, "k1")) == "cust-9"
    finally:
        await auth.close()

    # with the default rate limit, made-up kids do not each cost a fetch
    limited = CustomerAuthenticator(
        CustomerAuthConfig(issuer=ISSUER, jwks_url=jwks_server.url, data_dir=tmp_path)
    )
    jwks_server.status = 200
    try:
        hits = jwks_server.hits
        assert await limited.authenticate(idp_token(k1, "k1")) == "cust-9"
        for n in range(5):
            with pytest.raises(AuthenticationError, match="is unknown"):
                await limited.authenticate(idp_token(k3, f"made-up-{n}"))
        assert jwks_server.hits == hits + 1
    finally:
        await limited.close()


async def test_unreachable_jwks_url_is_a_503_not_a_401(
    jwks_server: JwksServer, tmp_path: Path
) -> None:
    jwks_server.status = 503
    auth = CustomerAuthenticator(
        CustomerAuthConfig(issuer=ISSUER, jwks_url=jwks_server.url, data_dir=tmp_path)
    )
    try:
        key = Ed25519PrivateKey.generate()
        with pytest.raises(ServiceUnavailableError, match="cannot be fetched"):
            await auth.authenticate(idp_token(key, "k1"))
        # within the refresh interval the provider is not asked again
        with pytest.raises(ServiceUnavailableError):
            await auth.authenticate(idp_token(key, "k1"))
        assert jwks_server.hits == 1
    finally:
        await auth.close()


# ---------------------------------------------------------------------------------------------
# python -m gateway token customer


def token_cli(*args: str) -> list[str]:
    """The command line of ``python -m gateway token …``."""
    return [sys.executable, "-m", "gateway", *args]


async def run_cli(tmp_path: Path, *args: str, **env: str) -> tuple[int, str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("METERPOORT_")}
    proc = await asyncio.create_subprocess_exec(
        *token_cli(*args),
        cwd=tmp_path,  # no stray .env
        env={**clean, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_token_cli_prints_a_bare_token_trusted_only_in_dev_mode(
    tmp_path: Path, gateway_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "dev"
    database = gateway_settings.database_dsn()
    assert database is not None
    key_file = data_dir / keys.DEV_CUSTOMER_KEY_FILE

    # no dev key yet: a key of its own would sign tokens no gateway trusts
    code, out, err = await run_cli(
        tmp_path, "token", "customer", "alice", "--data-dir", str(data_dir), DATABASE_URL=database
    )
    assert (code, out) == (1, "")
    assert f"no dev customer key {key_file}" in err and "METERPOORT_DEV_MODE=1" in err
    assert not key_file.exists()

    # a dev-mode gateway creates the key (its authenticator, as serve builds it)
    dev_settings = gateway_settings.model_copy(update={"data_dir": data_dir, "dev_mode": True})
    await CustomerAuthenticator(CustomerAuthConfig.from_settings(dev_settings)).close()
    code, out, err = await run_cli(
        tmp_path, "token", "customer", "alice", "--data-dir", str(data_dir), DATABASE_URL=database
    )
    assert code == 0, err
    assert out.endswith("\n") and out.count("\n") == 1
    token = out.strip()
    assert token.count(".") == 2 and " " not in token
    assert "METERPOORT_DEV_MODE=1" in err  # the hint goes to stderr, never stdout
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    assert 3500 < exp - dt.datetime.now(dt.UTC).timestamp() <= 3600

    # METERPOORT_DEV_MODE=1 → the authenticator built from settings trusts the dev key
    monkeypatch.setenv("METERPOORT_DEV_MODE", "1")
    dev_settings = Settings(data_dir=data_dir)
    assert dev_settings.dev_mode
    dev = CustomerAuthenticator(CustomerAuthConfig.from_settings(dev_settings))
    assert await dev.authenticate(token) == "alice"
    monkeypatch.delenv("METERPOORT_DEV_MODE")
    off = CustomerAuthenticator(CustomerAuthConfig.from_settings(Settings(data_dir=data_dir)))
    with pytest.raises(AuthenticationError):
        await off.authenticate(token)

    # a second run reuses the key; --ttl is honoured
    code, out2, err = await run_cli(
        tmp_path,
        "token",
        "customer",
        "bob",
        "--data-dir",
        str(data_dir),
        "--ttl",
        "5m",
        METERPOORT_DEV_MODE="1",
        DATABASE_URL=database,
    )
    assert code == 0 and err == ""
    assert await dev.authenticate(out2.strip()) == "bob"
    claims = jwt.decode(out2.strip(), options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 300 and claims["iss"] == "meterpoort-dev"

    # over HTTP: a dev-mode gateway on that data directory accepts it, a normal one does not
    for dev_mode, status in ((True, 200), (False, 401)):
        settings = gateway_settings.model_copy(update={"data_dir": data_dir, "dev_mode": dev_mode})
        c = await serve(wired_app(settings))
        try:
            resp = await c.get("/test/whoami", headers={"Authorization": f"Bearer {token}"})
            assert resp.status == status
            if status == 200:
                assert await resp.json() == {"customer_id": "alice"}
        finally:
            await c.close()

    code, out, err = await run_cli(tmp_path, "token", "customer", "carol", "--ttl", "1w")
    assert code == 2 and out == "" and "argument --ttl" in err and "unit s, m, h or d" in err
