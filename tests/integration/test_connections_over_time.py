"""One EAN over time (SPEC §3a), end to end through the public HTTP API on a real PostgreSQL:

1. customer A moves in;
2. A gives interval consent and data flows from A's dongle;
3. A moves out at T;
4. customer B moves in at T on the same EAN;
5. the meter is exchanged while B lives there (B's dongle is rebound to the new meter);
6. B switches to another supplier;
7. A's dongle replays its spool late: readings measured before T.

Then every reading must belong to the contract in force when it was measured, A and B each see
exactly their own readings, consents and logs, B never sees interval data of A's consent, and
billing sees both, each reading with its contract and customer.

The story runs in the recent past (days, so that daily periods are distinct), so A's consent is
recorded as given by phone with its real grant time (``POST /v1/admin/consents``): the customer
portal can only grant "now".
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.api.app import create_app
from gateway.cli.token import mint_dev_token
from gateway.jsonenc import rfc3339
from gateway.settings import Settings
from tests.support import make_ean
from tests.support.telegram_builder import build_telegram

Client = TestClient[web.Request, web.Application]
AMS = ZoneInfo("Europe/Amsterdam")
UTC = dt.UTC
EAN = make_ean(77)
PURPOSE = "dynamic-tariff-billing"  # keeps its data after the consent ends


@dataclass
class World:
    client: Client
    settings: Settings
    admin: dict[str, str]

    def customer(self, customer_id: str) -> dict[str, str]:
        token = mint_dev_token(
            self.settings.data_dir, customer_id, "meterpoort", dt.timedelta(minutes=10)
        )
        return {"Authorization": f"Bearer {token}"}

    async def call(
        self, method: str, path: str, headers: dict[str, str], status: int = 200, **kw: Any
    ) -> Any:
        resp = await self.client.request(method, path, headers=headers, **kw)
        text = await resp.text()
        assert resp.status == status, f"{method} {path}: {resp.status} {text}"
        return json.loads(text) if text else None

    async def billing_client(self) -> str:
        """A billing client reading daily and interval data of PURPOSE; its token."""
        data = await self.call(
            "POST",
            "/v1/admin/clients",
            self.admin,
            201,
            json={"name": "billing", "granularities": ["P1D", "PT15M"], "purposes": [PURPOSE]},
        )
        token: str = data["token"]
        return token

    async def move_in(self, ean: str, meter_id: str, customer_id: str, start: str) -> Any:
        """A connection with its first contract and meter (the /v1/admin/meters shorthand)."""
        return await self.call(
            "POST",
            "/v1/admin/meters",
            self.admin,
            201,
            json={
                "ean": ean,
                "commodity": "electricity",
                "meter_id": meter_id,
                "customer_id": customer_id,
                "contract_start": start,
            },
        )

    async def phone_consent(self, customer_id: str, granted_at: dt.datetime) -> Any:
        """A PURPOSE consent on EAN given by phone at ``granted_at`` (the admin API)."""
        return await self.call(
            "POST",
            "/v1/admin/consents",
            self.admin,
            201,
            json={
                "ean": EAN,
                "customer_id": customer_id,
                "purpose": PURPOSE,
                "notice_version": "v1",
                "channel": "phone",
                "granted_at": rfc3339(granted_at),
            },
        )

    async def device(self, *meter_ids: str) -> tuple[str, dict[str, str]]:
        data = await self.call(
            "POST", "/v1/admin/devices", self.admin, 201, json={"meter_ids": list(meter_ids)}
        )
        return data["device_id"], {
            "Authorization": f"Bearer {data['token']}",
            "Content-Type": "text/plain",
        }

    async def push(self, device: dict[str, str], meter_id: str, *times: dt.datetime) -> Any:
        body = b"".join(
            build_telegram(meter_id, t, import_wh=(1_000 + i, 2_000 + i))
            for i, t in enumerate(times)
        )
        resp = await self.client.post("/v1/telegrams", data=body, headers=device)
        assert resp.status in (200, 422), await resp.text()
        return await resp.json()

    async def billing(self, token: str, granularity: str, **params: str) -> list[dict[str, Any]]:
        query = {"granularity": granularity, "from": "2020-01-01", "to": "2030-01-01", **params}
        resp = await self.client.get(
            "/v1/readings",
            params=query,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/x-ndjson"},
        )
        text = await resp.text()
        assert resp.status == 200, text
        return [json.loads(line) for line in text.splitlines()]


@pytest.fixture
async def world(gateway_settings: Settings, admin_headers: dict[str, str]) -> AsyncIterator[World]:
    settings = gateway_settings.model_copy(update={"dev_mode": True})
    mint_dev_token(settings.data_dir, "warm-up", "meterpoort", dt.timedelta(minutes=1))
    client: Client = TestClient(TestServer(create_app(settings), host="127.0.0.1", port=0))
    await client.start_server()
    try:
        yield World(client, settings, admin_headers)
    finally:
        await client.close()


def local_midnight(days_ago: int) -> dt.datetime:
    day = (dt.datetime.now(AMS) - dt.timedelta(days=days_ago)).date()
    return dt.datetime(day.year, day.month, day.day, tzinfo=AMS).astimezone(UTC)


def day_of(t: dt.datetime) -> dt.date:
    return t.astimezone(AMS).date()


def measured(reading: dict[str, Any]) -> dt.datetime:
    return dt.datetime.fromisoformat(reading["measured_at"])


async def test_move_out_move_in_meter_exchange_switch_and_late_spool(world: World) -> None:
    w = world
    d = {n: local_midnight(20 - n) for n in range(0, 21)}  # d[0] 20 days ago … d[20] today
    at = lambda n, h=0, m=5: d[n] + dt.timedelta(hours=h, minutes=m)  # noqa: E731
    billing = await w.billing_client()

    # 1. A moves in (the shorthand: connection, first contract, meter M1); a plain date is
    # local midnight
    moved_in = await w.move_in(EAN, "M1", "anna", day_of(d[0]).isoformat())
    contract_a = moved_in["contract_id"]
    assert moved_in["contract_start"] == rfc3339(d[0])
    device_a_id, device_a = await w.device("M1")

    # 2. A consents (by phone, a day after moving in) and data flows: two telegrams a day
    consent = await w.phone_consent("anna", d[1])
    assert consent["contract_id"] == contract_a
    a_live = [at(n, h) for n in range(1, 6) for h in (0, 12)]
    result = await w.push(device_a, "M1", *a_live)
    assert result["accepted"] == len(a_live) and result["rejected"] == []

    # 3. A moves out at T = d10 (plain date), 4. B moves in at T
    t_move = d[10]
    ended = await w.call(
        "PATCH",
        f"/v1/admin/contracts/{contract_a}",
        w.admin,
        json={"end": day_of(t_move).isoformat(), "end_reason": "move-out"},
    )
    assert ended["end"] == rfc3339(t_move) and ended["end_reason"] == "move-out"
    # B cannot start before A's end: a 409 naming A's contract, nothing changed
    clash = await w.call(
        "POST",
        "/v1/admin/contracts",
        w.admin,
        409,
        json={"ean": EAN, "customer_id": "bert", "start": rfc3339(at(9))},
    )
    assert contract_a in clash["detail"]
    contract_b = (
        await w.call(
            "POST",
            "/v1/admin/contracts",
            w.admin,
            201,
            json={"ean": EAN, "customer_id": "bert", "start": rfc3339(t_move)},
        )
    )["contract_id"]
    device_b_id, device_b = await w.device("M1")
    b_m1 = [at(n, 6) for n in (10, 11, 12)]
    assert (await w.push(device_b, "M1", *b_m1))["accepted"] == 3

    # 5. meter exchange at d13: M1 leaves, M2 arrives; B's dongle is rebound to M2
    history = await w.call(
        "POST",
        f"/v1/admin/connections/{EAN}/meter-exchange",
        w.admin,
        json={"meter_id": "M2", "at": rfc3339(d[13])},
    )
    assert [(m["meter_id"], m["installed_until"]) for m in history["meters"]] == [
        ("M1", rfc3339(d[13])),
        ("M2", None),
    ]
    rebound = await w.call(
        "PATCH", f"/v1/admin/devices/{device_b_id}", w.admin, json={"meter_ids": ["M2"]}
    )
    assert rebound["meter_ids"] == ["M2"]
    refused = await w.push(device_b, "M1", at(13, 6))  # no longer bound to this dongle
    assert [r["reason"] for r in refused["rejected"]] == ["meter-not-bound"]
    b_m2 = [at(n, 6) for n in (13, 14)]
    assert (await w.push(device_b, "M2", *b_m2))["accepted"] == 2
    # M1 measured after its removal belongs nowhere
    late_m1 = await w.push(device_a, "M1", at(14, 6))
    assert [r["reason"] for r in late_m1["rejected"]] == ["unknown-meter"]

    # 6. B switches to another supplier at d15: nothing after it is stored
    switched = await w.call(
        "PATCH",
        f"/v1/admin/contracts/{contract_b}",
        w.admin,
        json={"end": rfc3339(d[15]), "end_reason": "switch"},
    )
    assert switched["end_reason"] == "switch"
    after_switch = await w.push(device_b, "M2", at(16, 6))
    assert [r["reason"] for r in after_switch["rejected"]] == ["no-contract"]

    # 7. A's dongle replays its spool late: measured before T, after the move
    a_spool = [at(n, 7) for n in range(6, 10)]
    assert (await w.push(device_a, "M1", *a_spool))["accepted"] == len(a_spool)

    # --- every reading with the contract in force when it was measured ---------------------
    daily = await w.billing(billing, "P1D")
    owner = {contract_a: "anna", contract_b: "bert"}
    for r in daily:
        t = measured(r)
        expected = contract_a if t < t_move else contract_b
        assert (r["contract_id"], r["customer_id"]) == (expected, owner[expected]), r
        assert t < d[15], "nothing measured after the switch-out is stored"
    days_a = {day_of(measured(r)) for r in daily if r["customer_id"] == "anna"}
    days_b = {day_of(measured(r)) for r in daily if r["customer_id"] == "bert"}
    assert days_a == {day_of(d[n]) for n in range(1, 10)}  # live days and the late spool
    assert days_b == {day_of(d[n]) for n in range(10, 15)}  # both meters
    # billing filters by customer and by contract
    assert {r["customer_id"] for r in await w.billing(billing, "P1D", customer_id="bert")} == {
        "bert"
    }
    only_a = await w.billing(billing, "P1D", contract_id=contract_a)
    assert {r["contract_id"] for r in only_a} == {contract_a} and len(only_a) == 9

    # interval data only under A's consent, only while it ran; the late spool came after the
    # consent ended with the move-out, so it adds none
    interval = await w.billing(billing, "PT15M")
    assert sorted(measured(r) for r in interval) == a_live
    assert {r["contract_id"] for r in interval} == {contract_a}

    # --- what each customer sees ----------------------------------------------------------
    anna, bert = w.customer("anna"), w.customer("bert")
    for who, contract, reason in ((anna, contract_a, "move-out"), (bert, contract_b, "switch")):
        mine = await w.call("GET", "/v1/me/connections", who)
        [entry] = mine["connections"]
        assert (entry["contract_id"], entry["end_reason"], entry["current"]) == (
            contract,
            reason,
            False,
        )
    anna_view = await w.call("GET", "/v1/me/connections", anna)
    [anna_consent] = anna_view["connections"][0]["consents"]
    assert anna_consent["end_reason"] == "move-out"
    assert anna_consent["ended_at"] == rfc3339(t_move)
    bert_view = await w.call("GET", "/v1/me/connections", bert)
    assert bert_view["connections"][0]["consents"] == []

    export_a = await w.call("GET", "/v1/me/export", anna)
    export_b = await w.call("GET", "/v1/me/export", bert)
    for export, lo, hi, contract in (
        (export_a, d[0], t_move, contract_a),
        (export_b, t_move, d[15], contract_b),
    ):
        for table, rows in export["readings"].items():
            for r in rows:
                assert lo <= measured(r) < hi, (table, r)
                assert r["contract_id"] == contract
    assert len(export_a["readings"]["readings_e_p1d"]) == 9
    assert len(export_a["readings"]["readings_e_pt15m"]) == len(a_live)
    assert len(export_b["readings"]["readings_e_p1d"]) == 5
    assert export_b["readings"]["readings_e_pt15m"] == []  # never A's consent data
    assert export_b["consents"] == []

    # permission logs: A's consent is A's alone
    log_a = await w.call("GET", "/v1/me/permission-log", anna)
    assert [(e["event"], e.get("reason")) for e in log_a["entries"]] == [
        ("ended", "move-out"),
        ("granted", None),
    ]
    log_b = await w.call("GET", "/v1/me/permission-log", bert)
    assert log_b["entries"] == []

    # access log: a billing read of B's time only is B's to see, not A's
    await w.billing(billing, "P1D", **{"from": rfc3339(t_move), "to": rfc3339(d[15])})
    reads_a = [e for e in (await w.call("GET", "/v1/me/access-log", anna))["entries"]]
    reads_b = [e for e in (await w.call("GET", "/v1/me/access-log", bert))["entries"]]

    def starts(entries: list[dict[str, Any]]) -> set[dt.datetime]:
        return {dt.datetime.fromisoformat(e["from"]) for e in entries if e.get("from")}

    assert t_move in starts(reads_b)
    assert t_move not in starts(reads_a)

    # the registry keeps the whole story
    story = await w.call("GET", f"/v1/admin/connections/{EAN}", w.admin)
    assert [(k["customer_id"], k["end_reason"]) for k in story["contracts"]] == [
        ("anna", "move-out"),
        ("bert", "switch"),
    ]
    assert device_a_id != device_b_id

    # A erases: A's interval data goes, A's billing data stays under the fiscal hold, and
    # nothing of B's time is touched
    erased = await w.call("POST", "/v1/me/erasure", anna)
    assert erased["erased"]["readings_e_pt15m"] == len(a_live)
    assert await w.billing(billing, "PT15M") == []
    after = await w.billing(billing, "P1D")
    assert sorted(after, key=measured) == sorted(daily, key=measured)
    export_b_after = await w.call("GET", "/v1/me/export", bert)
    assert export_b_after["readings"] == export_b["readings"]


async def test_bad_registry_input_names_the_conflict_and_changes_nothing(world: World) -> None:
    w = world
    other = make_ean(78)
    for ean, meter in ((EAN, "M1"), (other, "M9")):
        await w.move_in(ean, meter, "anna", "2024-01-01")
    before = await w.call("GET", f"/v1/admin/connections/{EAN}", w.admin)
    [contract] = before["contracts"]
    # an overlapping contract: 409 naming the contract it overlaps
    clash = await w.call(
        "POST",
        "/v1/admin/contracts",
        w.admin,
        409,
        json={"ean": EAN, "customer_id": "bert", "start": "2024-06-01"},
    )
    assert contract["contract_id"] in clash["detail"]
    # an exchange to a meter installed elsewhere: 409 naming that EAN
    busy = await w.call(
        "POST",
        f"/v1/admin/connections/{EAN}/meter-exchange",
        w.admin,
        409,
        json={"meter_id": "M9", "at": "2024-06-01"},
    )
    assert other in busy["detail"]
    # an end before the start: 422 on the field
    early = await w.call(
        "PATCH",
        f"/v1/admin/contracts/{contract['contract_id']}",
        w.admin,
        422,
        json={"end": "2023-06-01", "end_reason": "move-out"},
    )
    assert early["errors"][0]["loc"] == ["end"]
    # an unknown contract, an id that is no id, an unknown end reason, a contract on an
    # unknown connection
    await w.call(
        "PATCH",
        "/v1/admin/contracts/00000000-0000-0000-0000-000000000000",
        w.admin,
        404,
        json={"end": "2025-01-01", "end_reason": "move-out"},
    )
    await w.call(
        "PATCH",
        "/v1/admin/contracts/nope",
        w.admin,
        404,
        json={"end": "2025-01-01", "end_reason": "move-out"},
    )
    await w.call(
        "PATCH",
        f"/v1/admin/contracts/{contract['contract_id']}",
        w.admin,
        422,
        json={"end": "2025-01-01", "end_reason": "bored"},
    )
    await w.call(
        "POST",
        "/v1/admin/contracts",
        w.admin,
        404,
        json={"ean": make_ean(79), "customer_id": "bert", "start": "2024-06-01"},
    )
    # a time that is neither RFC 3339 with an offset nor a date: 422 naming the field
    naive = await w.call(
        "POST",
        "/v1/admin/contracts",
        w.admin,
        422,
        json={"ean": EAN, "customer_id": "bert", "start": "2024-06-01T00:00:00"},
    )
    assert naive["errors"][0]["loc"] == ["body", "start"]
    assert await w.call("GET", f"/v1/admin/connections/{EAN}", w.admin) == before


async def test_a_revoked_device_is_refused_at_once_in_every_process(world: World) -> None:
    w = world
    await w.move_in(EAN, "M1", "anna", "2024-01-01")
    device_id, device = await w.device("M1")
    second: Client = TestClient(TestServer(create_app(w.settings), host="127.0.0.1", port=0))
    await second.start_server()
    try:
        now = dt.datetime.now(UTC)
        body = build_telegram("M1", now - dt.timedelta(minutes=1))
        # both processes know (and cache) the device
        for client in (w.client, second):
            resp = await client.post("/v1/telegrams", data=body, headers=device)
            assert resp.status == 200, await resp.text()
        listed = await w.call("GET", "/v1/admin/devices", w.admin)
        assert [x["device_id"] for x in listed["devices"]] == [device_id]
        assert "token" not in json.dumps(listed)
        revoked = await w.call("POST", f"/v1/admin/devices/{device_id}/revoke", w.admin)
        assert revoked["revoked_at"] is not None
        # the answering process refuses it before the answer; the other within its
        # notification latency (far below its 30-second cache lifetime)
        resp = await w.client.post("/v1/telegrams", data=body, headers=device)
        assert resp.status == 401
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while True:
            resp = await second.post("/v1/telegrams", data=body, headers=device)
            if resp.status == 401:
                break
            assert resp.status == 200 and loop.time() < deadline, "revocation did not arrive"
            await asyncio.sleep(0.02)
    finally:
        await second.close()


async def test_a_move_registered_late_hands_the_readings_since_to_the_new_tenant(
    world: World,
) -> None:
    """The move happened at T, the supplier learns of it days later: B's contract from T with
    ``previous_end_reason`` ends A's at T in the same transaction. The daily readings measured
    since T were B's consumption and become B's; A's interval data after T goes."""
    w = world
    d = {n: local_midnight(10 - n) for n in range(0, 11)}
    billing = await w.billing_client()
    contract_a = (await w.move_in(EAN, "M1", "anna", rfc3339(d[0])))["contract_id"]
    await w.phone_consent("anna", d[1])
    _, device = await w.device("M1")
    pushed = [d[n] + dt.timedelta(minutes=5) for n in range(1, 9)]
    assert (await w.push(device, "M1", *pushed))["accepted"] == len(pushed)
    t_move = d[5]
    contract_b = await w.call(
        "POST",
        "/v1/admin/contracts",
        w.admin,
        201,
        json={
            "ean": EAN,
            "customer_id": "bert",
            "start": rfc3339(t_move),
            "previous_end_reason": "move-out",
        },
    )
    story = await w.call("GET", f"/v1/admin/connections/{EAN}", w.admin)
    assert [(k["contract_id"], k["end"], k["end_reason"]) for k in story["contracts"]] == [
        (contract_a, rfc3339(t_move), "move-out"),
        (contract_b["contract_id"], None, None),
    ]
    daily = await w.billing(billing, "P1D")
    assert [(measured(r), r["customer_id"]) for r in sorted(daily, key=measured)] == [
        (t, "anna" if t < t_move else "bert") for t in pushed
    ]
    interval = await w.billing(billing, "PT15M")
    assert sorted(measured(r) for r in interval) == [t for t in pushed if t < t_move]
