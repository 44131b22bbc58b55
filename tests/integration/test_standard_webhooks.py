"""Standard Webhooks (``v1a``, Ed25519) deliveries checked the way a third-party receiver checks
them: a customer grants and revokes a consent over the real customer API, the gateway's own
webhook worker POSTs the events to a real aiohttp receiver on 127.0.0.1, and the receiver verifies
each request with an independent verifier written from the specification
(``tests.support.standard_webhooks``), trusting only the ``whpk_`` key fetched from
``GET /v1/keys`` over HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from consent.receipts import b64url_decode
from gateway.api.app import create_app
from gateway.cli.token import mint_dev_token
from gateway.jobs.webhooks import verify as verify_deprecated_headers
from gateway.settings import Settings, WebhookSettings
from tests.support import make_ean
from tests.support.standard_webhooks import (
    WebhookVerificationError,
    public_key_from_whpk,
    verify_webhook,
)

Client = TestClient[web.Request, web.Application]
PURPOSE = "dynamic-tariff-billing"
FAST = WebhookSettings(
    timeout_s=2.0, backoff_base_s=0.05, backoff_cap_s=0.2, poll_interval_s=0.02, lease_margin_s=1.0
)


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes
    status: int


@dataclass
class Receiver:
    """Records every request; the first request of all is refused with 503 (to see a retry)."""

    url: str = ""
    deliveries: list[Delivery] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        status = 503 if not self.deliveries else 204
        self.deliveries.append(Delivery(dict(request.headers), await request.read(), status))
        return web.Response(status=status)

    def accepted(self) -> list[Delivery]:
        return [d for d in self.deliveries if d.status == 204]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        yield rec
    finally:
        await runner.cleanup()


@pytest.fixture
async def gateway(gateway_settings: Settings) -> AsyncIterator[tuple[Client, Settings]]:
    settings = gateway_settings.model_copy(update={"dev_mode": True, "webhook": FAST})
    # the dev customer key exists before the app's authenticator looks for it
    mint_dev_token(settings.data_dir, "warm-up", "meterpoort", dt.timedelta(minutes=1))
    client: Client = TestClient(TestServer(create_app(settings), host="127.0.0.1", port=0))
    await client.start_server()
    try:
        yield client, settings
    finally:
        await client.close()


async def wait_for(receiver: Receiver, accepted: int, within_s: float = 20.0) -> None:
    deadline = time.monotonic() + within_s
    while len(receiver.accepted()) < accepted:
        assert time.monotonic() < deadline, f"{len(receiver.accepted())} of {accepted} delivered"
        await asyncio.sleep(0.02)


async def webhook_key_from_keys_endpoint(client: Client) -> Ed25519PublicKey:
    """What a receiver configures once: the ``whpk_`` of the key that signs webhooks."""
    resp = await client.get("/v1/keys")
    assert resp.status == 200
    jwks = await resp.json()
    [jwk] = [k for k in jwks["keys"] if "webhooks" in k.get("signs", [])]
    assert jwk["whpk"].startswith("whpk_")
    key = public_key_from_whpk(jwk["whpk"])
    # the same key as the JWK's x (base64url there, standard base64 in whpk_)
    assert key.public_bytes_raw() == b64url_decode(jwk["x"])
    return key


def fails(
    headers: dict[str, str], body: bytes, key: Ed25519PublicKey, now: float, match: str
) -> None:
    with pytest.raises(WebhookVerificationError, match=match):
        verify_webhook(headers, body, [key], now=now)


async def test_real_deliveries_verify_as_standard_webhooks_and_forgeries_do_not(
    gateway: tuple[Client, Settings], receiver: Receiver, admin_headers: dict[str, str]
) -> None:
    client, settings = gateway
    resp = await client.post(
        "/v1/admin/clients",
        json={
            "name": "billing",
            "granularities": ["P1D"],
            "purposes": [PURPOSE],
            "webhook_url": receiver.url,
        },
        headers=admin_headers,
    )
    assert resp.status == 201, await resp.text()
    ean = make_ean(41)
    resp = await client.post(
        "/v1/admin/meters",
        json={
            "ean": ean,
            "commodity": "electricity",
            "meter_id": "E41",
            "customer_id": "alice",
            "contract_start": (dt.datetime.now(dt.UTC) - dt.timedelta(days=30)).isoformat(),
        },
        headers=admin_headers,
    )
    assert resp.status == 201, await resp.text()
    token = mint_dev_token(settings.data_dir, "alice", "meterpoort", dt.timedelta(minutes=10))
    alice = {"Authorization": f"Bearer {token}"}
    resp = await client.post(
        "/v1/me/consents",
        json={"ean": ean, "purpose": PURPOSE, "notice_version": "v3"},
        headers=alice,
    )
    assert resp.status == 201, await resp.text()
    consent_id = (await resp.json())["consent"]["consent_id"]
    resp = await client.post(f"/v1/me/consents/{consent_id}/revoke", headers=alice)
    assert resp.status == 200, await resp.text()

    await wait_for(receiver, accepted=2)
    key = await webhook_key_from_keys_endpoint(client)
    now = time.time()

    # every request, the refused first attempt too, verifies; ids are the events' ids
    ids = [verify_webhook(d.headers, d.body, [key], now=now) for d in receiver.deliveries]
    events = [json.loads(d.body) for d in receiver.deliveries]
    assert ids == [e["event_id"] for e in events]
    granted, ended = (json.loads(d.body) for d in receiver.accepted())
    assert (granted["kind"], ended["kind"]) == ("consent.granted", "consent.ended")
    assert granted["data"]["consent_id"] == ended["data"]["consent_id"] == consent_id
    assert ended["data"]["end_reason"] == "revoked"
    assert granted["event_id"] != ended["event_id"]
    # the retry of the refused attempt carries the same webhook-id, its own timestamp header
    first, retry = receiver.deliveries[0], receiver.deliveries[1]
    assert first.status == 503 and retry.status == 204
    assert first.headers["webhook-id"] == retry.headers["webhook-id"] == granted["event_id"]
    assert first.body == retry.body
    for d in receiver.deliveries:
        assert abs(int(d.headers["webhook-timestamp"]) - now) < 60
        assert d.headers["Content-Type"] == "application/json"
        # one gateway key today: one v1a signature, standard (padded) base64 of 64 bytes
        [entry] = d.headers["webhook-signature"].split(" ")
        version, _, encoded = entry.partition(",")
        assert version == "v1a" and len(base64.b64decode(encoded, validate=True)) == 64

    headers, body = receiver.accepted()[1].headers, receiver.accepted()[1].body
    timestamp = int(headers["webhook-timestamp"])

    # a tampered body, or the same JSON re-serialised with spaces, does not verify
    fails(headers, body.replace(b'"revoked"', b'"expired"'), key, now, "no v1a signature")
    fails(headers, json.dumps(json.loads(body)).encode(), key, now, "no v1a signature")
    # another id: the other event's, or one with the separator in it
    fails({**headers, "webhook-id": granted["event_id"]}, body, key, now, "no v1a signature")
    dotted = f"{headers['webhook-id']}.{timestamp}"
    fails({**headers, "webhook-id": dotted}, body, key, now, "bad webhook-id")
    # a stale request: replayed later than the tolerance, or re-dated to look fresh
    fails(headers, body, key, timestamp + 301.0, "outside the tolerance")
    redated = {**headers, "webhook-timestamp": str(timestamp + 400)}
    fails(redated, body, key, timestamp + 400.0, "no v1a signature")
    # a signature by another key over exactly the signed content, and the real signature
    # checked against another key
    other = Ed25519PrivateKey.generate()
    content = f"{headers['webhook-id']}.{timestamp}.".encode() + body
    forged = "v1a," + base64.b64encode(other.sign(content)).decode()
    verify_webhook({**headers, "webhook-signature": forged}, body, [other.public_key()], now=now)
    fails({**headers, "webhook-signature": forged}, body, key, now, "no v1a signature")
    fails(headers, body, other.public_key(), now, "no v1a signature")
    # the header is a list: a forged entry beside the real one does no harm, a v1 (HMAC) entry
    # is skipped by an Ed25519 receiver
    listed = {**headers, "webhook-signature": f"v1,AAAA {forged} {headers['webhook-signature']}"}
    assert verify_webhook(listed, body, [key], now=now) == ended["event_id"]

    # the deprecated Meterpoort headers are still sent and still verify (removed in 0.3.0)
    assert headers["Meterpoort-Event-Id"] == headers["webhook-id"]
    assert headers["Meterpoort-Timestamp"] == headers["webhook-timestamp"]
    verify_deprecated_headers(
        key,
        timestamp=headers["Meterpoort-Timestamp"],
        signature=headers["Meterpoort-Signature"],
        body=body,
        now=now,
    )
