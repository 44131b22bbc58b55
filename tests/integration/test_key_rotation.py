"""Signing-key rotation on real gateways (real HTTP, real PostgreSQL, a real webhook receiver):
key A signs a receipt, a readings cursor, a sync token and webhooks; ``python -m gateway keys
rotate`` (a subprocess) retires A and puts B in place; a gateway started afterwards

* publishes B first and A marked ``retired`` in ``/v1/keys``, so A's receipt still verifies;
* still takes A's cursor and A's sync token (A's private half is kept in ``retired-keys/``);
* signs new receipts and webhooks with B only (B's ``whpk`` verifies them, A's does not).

Then what the operations guide says about cutting back: with only A's public half left, A's
receipt still verifies but A's cursor and token are refused (400, the client starts again); with A
removed, A's receipt no longer verifies with the served keys. And the CLI's refusals.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)

from consent.receipts import b64url_decode, canonical_json
from gateway import keys
from gateway.api.app import create_app
from gateway.cli.token import mint_dev_token
from gateway.errors import ConfigurationError
from gateway.settings import Settings, WebhookSettings
from tests.support.billing_world import PURPOSE, build, page, sync
from tests.support.standard_webhooks import (
    WebhookVerificationError,
    public_key_from_whpk,
    verify_webhook,
)

Client = TestClient[web.Request, web.Application]
PROBLEM = "application/problem+json"
FAST = WebhookSettings(
    timeout_s=2.0, backoff_base_s=0.05, backoff_cap_s=0.2, poll_interval_s=0.02, lease_margin_s=1.0
)


@dataclass
class Receiver:
    url: str = ""
    deliveries: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.deliveries.append((dict(request.headers), await request.read()))
        return web.Response(status=204)

    async def wait_for(self, count: int) -> None:
        deadline = time.monotonic() + 20
        while len(self.deliveries) < count:
            assert time.monotonic() < deadline, f"{len(self.deliveries)} of {count} delivered"
            await asyncio.sleep(0.02)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    rec.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        yield rec
    finally:
        await runner.cleanup()


@pytest.fixture
def settings(gateway_settings: Settings) -> Settings:
    s = gateway_settings.model_copy(update={"dev_mode": True, "webhook": FAST})
    # the dev customer key exists before the app's authenticator looks for it
    mint_dev_token(s.data_dir, "warm-up", "meterpoort", dt.timedelta(minutes=1))
    return s


async def start(settings: Settings) -> Client:
    client: Client = TestClient(TestServer(create_app(settings), host="127.0.0.1", port=0))
    await client.start_server()
    return client


def rotate(data_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERPOORT_")}
    env.pop("DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "gateway", "keys", "rotate", "--data-dir", str(data_dir), *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


async def jwks(client: Client) -> list[dict[str, Any]]:
    resp = await client.get("/v1/keys")
    assert resp.status == 200
    found: list[dict[str, Any]] = (await resp.json())["keys"]
    return found


def verifies(document: dict[str, Any], served: list[dict[str, Any]]) -> bool:
    """A customer's own check: the served JWK named by the signature's kid verifies it."""
    matching = [k for k in served if k["kid"] == document["signature"]["kid"]]
    if not matching:
        return False
    public = Ed25519PublicKey.from_public_bytes(b64url_decode(matching[0]["x"]))
    public.verify(
        b64url_decode(document["signature"]["value"]), canonical_json(document["receipt"])
    )
    return True


def webhook_verifies(delivery: tuple[dict[str, str], bytes], whpk: str) -> bool:
    try:
        verify_webhook(delivery[0], delivery[1], [public_key_from_whpk(whpk)], now=time.time())
    except WebhookVerificationError:
        return False
    return True


def check_files(data_dir: Path, retired: Path) -> None:
    """Modes after a rotation: both keys private, the retired directory too, no leftovers."""
    assert stat.S_IMODE(retired.stat().st_mode) == 0o600
    assert stat.S_IMODE(retired.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((data_dir / keys.SIGNING_KEY_FILE).stat().st_mode) == 0o600
    assert sorted(p.name for p in data_dir.iterdir() if p.name.endswith(".tmp")) == []


def keep_public_half(path: Path) -> None:
    """What the guide tells an operator to do once old cursors and tokens may stop working."""
    private = load_pem_private_key(path.read_bytes(), password=None)
    path.unlink()
    path.write_bytes(
        private.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )


async def test_rotation_keeps_what_the_old_key_signed_valid_and_signs_anew(
    settings: Settings, receiver: Receiver, admin_headers: dict[str, str]
) -> None:
    # --- key A signs ----------------------------------------------------------------------
    http = await start(settings)
    try:
        w = await build(http, settings, admin_headers, receiver.url)
        [key_a] = await jwks(http)
        resp = await http.post(
            "/v1/me/consents",
            json={"ean": w.consent_ean, "purpose": PURPOSE, "notice_version": "v3"},
            headers=w.alice,
        )
        assert resp.status == 201, await resp.text()
        granted = await resp.json()
        receipt_a = granted["receipt"]
        consent_id = granted["consent"]["consent_id"]
        assert receipt_a["signature"]["kid"] == key_a["kid"]
        resp = await page(http, w)
        assert resp.status == 200, await resp.text()
        first = await resp.json()
        cursor_a = first["next_cursor"]
        assert len(first["readings"]) == 1 and cursor_a
        resp = await sync(http, w, "0")
        assert resp.status == 200, await resp.text()
        token_a = resp.headers["Meterpoort-Changed-Token"]
        everything = [json.loads(line) for line in (await resp.text()).splitlines()]
        assert len(everything) >= 3
        # the paper consent and alice's grant, both announced to the billing client
        await receiver.wait_for(2)
        assert all(webhook_verifies(d, key_a["whpk"]) for d in receiver.deliveries)
    finally:
        await http.close()

    # --- the operator rotates ------------------------------------------------------------
    done = rotate(settings.data_dir)
    assert done.returncode == 0, done.stderr
    rotation = json.loads(done.stdout)
    assert rotation["old_kid"] == key_a["kid"] != rotation["new_kid"]
    retired = Path(rotation["retired_path"])
    assert retired == settings.data_dir / "retired-keys" / f"{key_a['kid']}.pem"
    check_files(settings.data_dir, retired)

    # --- key B signs, A still verifies ---------------------------------------------------
    http = await start(settings)
    try:
        key_b, old = await jwks(http)
        assert key_b["kid"] == rotation["new_kid"] and "retired" not in key_b
        assert old["kid"] == key_a["kid"] and old["retired"] is True
        assert old["x"] == key_a["x"] and old["whpk"] == key_a["whpk"]
        assert verifies(receipt_a, [key_b, old])
        # A's cursor goes on where it stopped; A's token gives what changed since (nothing)
        resp = await page(http, w, cursor=cursor_a)
        assert resp.status == 200, await resp.text()
        second = await resp.json()
        assert second["readings"][0]["period_start"] == everything[1]["period_start"]
        resp = await sync(http, w, token_a)
        assert resp.status == 200, await resp.text()
        assert await resp.text() == ""
        token_b = resp.headers["Meterpoort-Changed-Token"]
        # B's own cursor and token work too
        resp = await page(http, w, cursor=second["next_cursor"])
        assert resp.status == 200, await resp.text()
        assert (await sync(http, w, token_b)).status == 200
        # new receipts: B's kid; new webhooks: B's whpk, not A's
        resp = await http.post(f"/v1/me/consents/{consent_id}/revoke", headers=w.alice)
        assert resp.status == 200, await resp.text()
        receipt_b = (await resp.json())["receipt"]
        assert receipt_b["signature"]["kid"] == key_b["kid"]
        assert verifies(receipt_b, [key_b])
        await receiver.wait_for(3)
        after = receiver.deliveries[2]
        assert json.loads(after[1])["kind"] == "consent.ended"
        assert webhook_verifies(after, key_b["whpk"])
        assert not webhook_verifies(after, key_a["whpk"])
        assert after[0]["Meterpoort-Key-Id"] == key_b["kid"]
    finally:
        await http.close()

    # --- only A's public half kept: receipts verify, A's cursors and tokens do not -------
    keep_public_half(retired)
    http = await start(settings)
    try:
        served = await jwks(http)
        assert [k["kid"] for k in served] == [key_b["kid"], key_a["kid"]]
        assert verifies(receipt_a, served)
        for resp in (await page(http, w, cursor=cursor_a), await sync(http, w, token_a)):
            assert resp.status == 400 and resp.content_type == PROBLEM
        assert (await sync(http, w, token_b)).status == 200
    finally:
        await http.close()

    # --- A withdrawn: its receipts no longer verify with the served keys ------------------
    retired.unlink()  # noqa: ASYNC240  (a test step, nothing else runs)
    http = await start(settings)
    try:
        served = await jwks(http)
        assert [k["kid"] for k in served] == [key_b["kid"]]
        assert not verifies(receipt_a, served)
        assert verifies(receipt_b, served)
    finally:
        await http.close()


def test_rotate_refuses_what_it_cannot_rotate_safely(tmp_path: Path) -> None:
    # a mistyped data directory: an error naming the key file, nothing created
    missing = tmp_path / "typo"
    done = rotate(missing)
    assert done.returncode == 1 and f"{missing / keys.SIGNING_KEY_FILE}" in done.stderr
    assert not missing.exists()
    # a key readable by others is refused, as at start
    data = tmp_path / "var"
    keys.load_or_create_ed25519(data / keys.SIGNING_KEY_FILE)
    (data / keys.SIGNING_KEY_FILE).chmod(0o644)
    done = rotate(data)
    assert done.returncode == 1 and "chmod 600" in done.stderr
    (data / keys.SIGNING_KEY_FILE).chmod(0o600)
    # an operator-provided key file is theirs to replace
    env_file = {"METERPOORT_SIGNING_KEY_FILE": str(data / keys.SIGNING_KEY_FILE)}
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "keys", "rotate", "--data-dir", str(data)],
        capture_output=True,
        text=True,
        env={**os.environ, **env_file},
        timeout=60,
        check=False,
    )
    assert done.returncode == 1 and "signing_key_file is set" in done.stderr
    # two rotations retire both earlier keys; the listing names them
    kids = [json.loads(rotate(data).stdout)["old_kid"] for _ in range(2)]
    listing = subprocess.run(
        [sys.executable, "-m", "gateway", "keys", "list", "--data-dir", str(data)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    shown = json.loads(listing.stdout)
    assert sorted(k["kid"] for k in shown["retired"]) == sorted(kids)
    assert all(k["private_half"] for k in shown["retired"])
    assert shown["current"] not in kids


async def test_a_bad_retired_key_file_fails_the_start(gateway_settings: Settings) -> None:
    retired = gateway_settings.data_dir / keys.RETIRED_KEYS_DIR
    keys.load_or_create_ed25519(retired / "a.pem")
    (retired / "a.pem").chmod(0o640)
    with pytest.raises(ConfigurationError, match="chmod 600"):
        create_app(gateway_settings)
    (retired / "a.pem").chmod(0o600)
    (retired / "b.pem").write_text("not a key")
    with pytest.raises(ConfigurationError, match="neither"):
        create_app(gateway_settings)
