"""The customer portal (``GET /portal``) in a real browser: Debian's chromium driven by
Playwright against the gateway on a real TCP port and the test's own PostgreSQL database.

The customer opens ``/portal#token=…`` (how the supplier's portal hands over the token), sees
their connections, grants a consent through the confirmation dialog, cancels and then confirms a
revocation, changes a level, reads the permission and access logs, downloads their data and
switches language — and after each step the database must say the same as the page. A
screenshot of the result is checked for real rendering and kept at /tmp/portal.png.

A customer who moved (SPEC §3a) sees one card per contract: the ended one read-only (window, end
reason, its consents' history, no grant, revoke or level controls), the current one editable.

Consumption charts: the meters are fed through real ingest, and the bars' accessible names (day
or quarter/hour, amounts in kWh/m³ per language) must equal the amounts computed here from the
stored readings, for the daily bars and a day's interval profile, in English and Dutch; gaps are
no bars; the bars and the day picker are driven with the keyboard. axe-core (npm, pinned in
tests/package.json) is injected and must report no violation, signed out and in, in both
languages, and with the charts drawn.

The browser is the distribution's (``scripts/install-browser``); Playwright's browser download is
never used. ``executable_path`` points at it.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from playwright.async_api import Browser, Page, async_playwright, expect

from gateway.api import portal
from gateway.api.app import create_app
from gateway.api.customer_auth import CustomerAuthConfig
from gateway.api.openapi import customer as portal_doc
from gateway.api.openapi.spec import paths_of
from gateway.cli.token import mint_dev_token
from gateway.services import clients, registry
from gateway.settings import Settings
from tests.support import insert_consent, make_ean
from tests.support.telegram_builder import build_telegram

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
STEP_MS = 20_000  # generous per-step limit on a loaded 2-core machine
SCREENSHOT = Path("/tmp/portal.png")
AMS = ZoneInfo("Europe/Amsterdam")
CUSTOMER = "klant-4711"
OTHER_CUSTOMER = "klant-0815"
BRAND_RGB = (11, 79, 138)  # --brand in portal.css: the banner
#: axe-core, pinned in tests/package.json and installed by `npm ci` (scripts/test)
AXE = Path(__file__).resolve().parents[1] / "node_modules" / "axe-core" / "axe.min.js"

Client = TestClient[web.Request, web.Application]


E_EAN, G_EAN, OTHER_EAN = make_ean(471), make_ean(472), make_ean(815)
MOVER = "klant-2025"  # moved out of MOVED_EAN into NEW_EAN
MOVED_EAN, NEW_EAN = make_ean(2501), make_ean(2502)
MOVED_AT = dt.datetime(2025, 1, 15, tzinfo=AMS)


@dataclass
class Portal:
    """The served gateway (dev mode: dev customer tokens are trusted) and how to reach it."""

    client: Client
    settings: Settings
    base: str
    requests: list[str] = field(default_factory=list)

    def token(self, customer_id: str) -> str:
        audience = CustomerAuthConfig.from_settings(self.settings).audience
        return mint_dev_token(
            Path(self.settings.data_dir), customer_id, audience, dt.timedelta(hours=1)
        )


@pytest.fixture
async def served(
    gateway_settings: Settings, admin_headers: dict[str, str]
) -> AsyncIterator[Portal]:
    settings = gateway_settings.model_copy(update={"dev_mode": True})
    app = create_app(settings)
    client: Client = TestClient(TestServer(app, host="127.0.0.1", port=0))
    await client.start_server()
    try:
        for ean, commodity, meter, customer in (
            (E_EAN, "electricity", "E0047114711", CUSTOMER),
            (G_EAN, "gas", "G0047114711", CUSTOMER),
            (OTHER_EAN, "gas", "G0008150815", OTHER_CUSTOMER),
        ):
            resp = await client.post(
                "/v1/admin/meters",
                headers=admin_headers,
                json={
                    "ean": ean,
                    "commodity": commodity,
                    "meter_id": meter,
                    "customer_id": customer,
                    "contract_start": "2024-03-01T00:00:00+01:00",
                },
            )
            assert resp.status == 201, await resp.text()
        yield Portal(client, settings, str(client.make_url("")).rstrip("/"))
    finally:
        await client.close()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    present = await asyncio.to_thread(Path(CHROMIUM).exists)
    assert present, f"{CHROMIUM} is missing: run scripts/install-browser"
    expect.set_options(timeout=STEP_MS)
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


async def new_page(
    browser: Browser, served: Portal, locale: str, errors: list[str], *, axe: bool = False
) -> Page:
    """A page in a fresh context (own storage) that records page errors, console errors and
    every URL it requests. ``axe``: the page's Content-Security-Policy lets the test inject
    axe-core (an inline script the policy refuses otherwise; the policy itself is checked in
    ``test_portal_is_served_with_strict_headers_and_documented``)."""
    context = await browser.new_context(
        locale=locale,
        timezone_id="Europe/Amsterdam",
        viewport={"width": 1100, "height": 900},
        accept_downloads=True,
        bypass_csp=axe,
    )
    context.set_default_timeout(STEP_MS)
    page = await context.new_page()
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    page.on(
        "console",
        lambda msg: (
            errors.append(f"console {msg.type}: {msg.text}")
            if msg.type in ("error", "warning")
            else None
        ),
    )
    page.on("request", lambda req: served.requests.append(req.url))
    return page


async def axe_violations(page: Page) -> list[dict[str, Any]]:
    """axe-core's violations on the page as it is now (every rule axe runs by default: WCAG
    2.x A/AA and best practices), each with the selectors of the offending nodes."""
    present = await asyncio.to_thread(AXE.exists)
    assert present, f"{AXE} is missing: run `npm ci` in tests/ (scripts/test does)"
    if not await page.evaluate("typeof window.axe === 'object'"):
        await page.add_script_tag(path=str(AXE))
    violations: list[dict[str, Any]] = await page.evaluate(
        """async () => {
            const result = await axe.run(document, { resultTypes: ["violations"] });
            return result.violations.map((v) => ({
                id: v.id,
                impact: v.impact,
                help: v.help,
                nodes: v.nodes.map((n) => n.target.join(" ")),
            }));
        }"""
    )
    return violations


# --- plain HTTP ----------------------------------------------------------------------------------


async def test_portal_is_served_with_strict_headers_and_documented(served: Portal) -> None:
    client = served.client
    resp = await client.get("/portal")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    page = await resp.text()
    assert '<html lang="nl">' in page
    csp = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp
    assert "frame-ancestors 'self'" in csp
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"

    # unchanged files revalidate with 304
    again = await client.get("/portal", headers={"If-None-Match": resp.headers["ETag"]})
    assert again.status == 304
    assert await again.read() == b""

    # the page's relative asset URLs resolve to served files
    for ref, ctype in (("portal/portal.js", "text/javascript"), ("portal/portal.css", "text/css")):
        assert f'"{ref}"' in page
        asset = await client.get("/" + ref)
        assert asset.status == 200, ref
        assert asset.content_type == ctype
        assert len(await asset.read()) > 1000

    # every portal route is in the portal's OpenAPI paths (merged into /openapi.json)
    app = web.Application()
    portal.install(app, served.settings)
    for path in portal.ASSETS:
        app.router.add_get(path, portal.serve_asset)
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        assert route.resource is not None
        path = route.resource.canonical
        assert route.method.lower() in paths_of(portal_doc.PORTAL_OPERATIONS)[path], path


# --- the browser ---------------------------------------------------------------------------------


async def test_sign_in_with_a_pasted_token_and_switch_language(
    served: Portal, browser: Browser
) -> None:
    errors: list[str] = []
    page = await new_page(browser, served, "nl-NL", errors)
    await page.goto(served.base + "/portal")

    # no token: the sign-in form, in Dutch (the browser's language)
    await expect(page.locator("html")).to_have_attribute("lang", "nl")
    await expect(page.get_by_role("heading", name="Aanmelden")).to_be_visible()
    await expect(page.locator("#content")).to_be_hidden()

    # the language switch changes every text and the lang attribute, and is remembered
    await page.get_by_label("Taal").select_option("en")
    await expect(page.locator("html")).to_have_attribute("lang", "en")
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert await page.title() == "Meterpoort – my meter data"
    await page.reload()
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()

    # a token that is no customer token: the API's problem detail in the alert region
    await page.get_by_label("Customer token").fill("not-a-token")
    await page.get_by_role("button", name="Use token").click()
    alert = page.get_by_role("alert")
    await expect(alert).to_contain_text("not a customer token")
    await expect(alert).to_contain_text("sign in again")
    assert await page.evaluate("sessionStorage.getItem('meterpoort.token')") is None
    assert any("401" in e for e in errors), errors  # the browser logs the refused request

    # another customer's valid token: their connection only
    errors.clear()
    await page.get_by_label("Customer token").fill(served.token(OTHER_CUSTOMER))
    await page.get_by_role("button", name="Use token").click()
    await expect(page.locator(f'article[data-ean="{OTHER_EAN}"]')).to_be_visible()
    await expect(page.locator("article.connection")).to_have_count(1)
    await expect(page.get_by_role("alert")).to_be_hidden()
    await expect(page.get_by_role("status")).to_have_text("Your data has been loaded.")

    # signing out forgets the token
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert await page.evaluate("sessionStorage.getItem('meterpoort.token')") is None
    assert errors == []
    await page.context.close()


async def test_customer_grants_revokes_and_downloads_in_the_portal(
    served: Portal, browser: Browser, pool: asyncpg.Pool
) -> None:
    errors: list[str] = []
    token = served.token(CUSTOMER)
    page = await new_page(browser, served, "en-GB", errors)
    await page.goto(f"{served.base}/portal#token={token}")

    # the token moved from the fragment to sessionStorage and never went into a URL
    elec = page.locator(f'article[data-ean="{E_EAN}"]')
    gas = page.locator(f'article[data-ean="{G_EAN}"]')
    await expect(elec.get_by_role("heading", level=3)).to_have_text(f"Electricity – EAN {E_EAN}")
    await expect(gas.get_by_role("heading", level=3)).to_have_text(f"Gas – EAN {G_EAN}")
    await expect(page.locator("article.connection")).to_have_count(2)  # not the other customer's
    assert "token" not in page.url
    assert await page.evaluate("sessionStorage.getItem('meterpoort.token')") == token
    await expect(elec.get_by_label("Daily readings (default)")).to_be_checked()
    await expect(elec).to_contain_text("You have not given any consent for this connection yet.")

    # --- grant: choose a purpose, read the notice, confirm in the dialog
    await elec.get_by_label("Purpose").select_option("dynamic-tariff-billing")
    await expect(elec.locator(".notice")).to_contain_text("my bill on a dynamic tariff")
    await elec.get_by_role("button", name="Give consent…").click()
    dialog = page.get_by_role("dialog")
    await expect(dialog).to_be_visible()
    await expect(dialog.get_by_role("heading")).to_have_text("Give consent?")
    await expect(dialog).to_contain_text(E_EAN)
    await expect(dialog).to_contain_text("my bill on a dynamic tariff")
    # the safe answer has the focus
    await expect(dialog.get_by_role("button", name="Cancel")).to_be_focused()
    await dialog.get_by_role("button", name="Yes, I consent").click()
    await expect(dialog).to_be_hidden()

    row = elec.locator("tr[data-consent-id]")
    await expect(row).to_have_count(1)
    await expect(row.locator(".consent-status")).to_have_text("Active")
    await expect(page.get_by_role("status")).to_contain_text(
        "Your consent for “Dynamic tariff” has been recorded."
    )
    await expect(page.get_by_role("button", name="Download receipt")).to_be_visible()
    consent_id = await row.get_attribute("data-consent-id")
    stored = await pool.fetchrow(
        "SELECT consent_id::text AS id, customer_id, purpose, notice_version, channel, ended_at"
        " FROM consents WHERE ean = $1",
        E_EAN,
    )
    assert stored is not None
    assert stored["id"] == consent_id
    assert (stored["customer_id"], stored["purpose"], stored["notice_version"]) == (
        CUSTOMER,
        "dynamic-tariff-billing",
        "v1",
    )
    assert stored["channel"] == "portal"
    assert stored["ended_at"] is None

    # --- revoke: Escape cancels (nothing changes), then confirm
    revoke = elec.get_by_role("button", name="Revoke consent for Dynamic tariff")
    await revoke.click()
    await expect(dialog).to_be_visible()
    await expect(dialog.get_by_role("heading")).to_have_text("Revoke consent?")
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()
    await expect(revoke).to_be_focused()
    ended = await pool.fetchval(
        "SELECT ended_at FROM consents WHERE consent_id = $1::uuid", consent_id
    )
    assert ended is None
    await revoke.click()
    await dialog.get_by_role("button", name="Yes, revoke").click()
    await expect(row.locator(".consent-status")).to_contain_text("Revoked on")
    await expect(revoke).to_have_count(0)
    await expect(page.get_by_role("status")).to_contain_text("has been revoked")
    stored = await pool.fetchrow(
        "SELECT ended_at, end_reason FROM consents WHERE consent_id = $1::uuid", consent_id
    )
    assert stored is not None
    assert stored["ended_at"] is not None
    assert stored["end_reason"] == "revoked"

    # --- the permission log shows both events, newest first, as the database has them
    log_rows = page.locator("#permission-log-table tbody tr")
    await expect(log_rows).to_have_count(2)
    await expect(log_rows.nth(0)).to_contain_text("Consent revoked")
    await expect(log_rows.nth(1)).to_contain_text("Consent given")
    await expect(log_rows.nth(1)).to_contain_text("Dynamic tariff")
    events = await pool.fetchval("SELECT count(*) FROM consent_events WHERE ean = $1", E_EAN)
    assert events == 2

    # --- an end date beyond the maximum lifetime: the API's problem detail, nothing stored
    await elec.get_by_label("Purpose").select_option("energy-insights")
    too_late = dt.datetime.now(AMS).date() + dt.timedelta(days=4 * 366)
    await elec.get_by_label("End date (optional)").fill(too_late.isoformat())
    await elec.get_by_role("button", name="Give consent…").click()
    await dialog.get_by_role("button", name="Yes, I consent").click()
    await expect(page.get_by_role("alert")).to_contain_text(
        "That did not work: expires_at is beyond the maximum consent lifetime"
    )
    assert await pool.fetchval("SELECT count(*) FROM consents WHERE ean = $1", E_EAN) == 1
    assert await page.evaluate("sessionStorage.getItem('meterpoort.token')") == token
    errors.remove(  # the browser logs the refused request
        "console error: Failed to load resource: the server responded with a status of 422 "
        "(Unprocessable Entity)"
    )

    # --- a second consent, with an end date (midnight, Dutch time, of the chosen day)
    until = dt.datetime.now(AMS).date() + dt.timedelta(days=30)
    await elec.get_by_label("End date (optional)").fill(until.isoformat())
    await elec.get_by_role("button", name="Give consent…").click()
    await dialog.get_by_role("button", name="Yes, I consent").click()
    await expect(elec.locator("tr.active .consent-status")).to_have_text("Active")
    await expect(page.get_by_role("alert")).to_be_hidden()  # a success clears the old error
    await expect(elec.get_by_role("heading", name="Consent for 15-minute")).to_be_focused()
    expires = await pool.fetchval(
        "SELECT expires_at FROM consents WHERE ean = $1 AND purpose = 'energy-insights'", E_EAN
    )
    assert expires == dt.datetime.combine(until, dt.time(0), AMS)

    # --- level: gas to monthly; interval consent is then not offered there
    await gas.get_by_label("Monthly readings only").check()
    await gas.get_by_role("button", name="Save choice").click()
    await expect(page.get_by_role("status")).to_contain_text(
        "Your choice has been saved: Monthly readings only."
    )
    await expect(gas).to_contain_text("only possible while daily readings are on")
    await expect(gas.get_by_label("Monthly readings only")).to_be_checked()
    assert await pool.fetchval("SELECT level FROM contracts WHERE ean = $1", G_EAN) == "monthly"
    await expect(log_rows).to_have_count(4)
    await expect(log_rows.nth(0)).to_contain_text("Meter reading choice: Monthly readings only")

    # --- download my data: a JSON file with what the database holds; the access log shows it
    async with page.expect_download() as download_info:
        await page.get_by_role("button", name="Download my data").click()
    download = await download_info.value
    assert download.suggested_filename.startswith("meterpoort-export-")
    assert download.suggested_filename.endswith(".json")
    saved = Path(await download.path())
    exported = json.loads(await asyncio.to_thread(saved.read_text, encoding="utf-8"))
    assert exported["customer_id"] == CUSTOMER
    assert sorted(k["ean"] for k in exported["connections"]) == sorted([E_EAN, G_EAN])
    reasons = {c["purpose"]: c["end_reason"] for c in exported["consents"]}
    assert reasons == {"dynamic-tariff-billing": "revoked", "energy-insights": None}
    # before it, the page's own reads for the two consumption charts (the customer reads their
    # daily readings: in their access log too)
    access_rows = page.locator("#access-log-table tbody tr")
    await expect(access_rows).to_have_count(3)
    await expect(access_rows.nth(0)).to_contain_text("You downloaded your data")
    for n in (1, 2):
        await expect(access_rows.nth(n)).to_contain_text("You viewed your daily readings")
    viewed = {await access_rows.nth(n).locator("td").nth(2).inner_text() for n in (1, 2)}
    assert viewed == {E_EAN, G_EAN}

    # --- the billing system pulls consent changes: that read shows in the access log too
    async with pool.acquire() as conn:
        billing = await clients.add_client(
            conn,
            clients.ClientIn(
                name="Billing", granularities=["P1D"], purposes=["dynamic-tariff-billing"]
            ),
        )
    resp = await served.client.get(
        "/v1/consents",
        params={"changed_since": "2024-01-01T00:00:00Z"},
        headers={"Authorization": f"Bearer {billing.token}"},
    )
    assert resp.status == 200, await resp.text()
    await page.reload()  # the session keeps the token
    # (the charts read again after the log was loaded: those reads show at the next load)
    await expect(access_rows).to_have_count(4)
    await expect(access_rows.nth(0)).to_contain_text("Consents requested by Billing")
    await expect(access_rows.nth(0)).to_contain_text(E_EAN)

    # --- styles applied; the screenshot shows a rendered page
    banner_bg = await page.locator(".banner").evaluate("e => getComputedStyle(e).backgroundColor")
    assert banner_bg == "rgb({}, {}, {})".format(*BRAND_RGB)
    png = await page.screenshot(path=str(SCREENSHOT), full_page=True)
    await check_rendered(browser, png)

    # --- Dutch on the same data, without reloading
    await page.get_by_label("Language").select_option("nl")
    await expect(page.locator("html")).to_have_attribute("lang", "nl")
    await expect(page.get_by_role("heading", name="Mijn aansluitingen")).to_be_visible()
    revoked_row = elec.locator(f'tr[data-consent-id="{consent_id}"]')
    await expect(revoked_row.locator(".consent-status")).to_contain_text("Ingetrokken op")
    await expect(log_rows.nth(0)).to_contain_text("Keuze meetgegevens: Alleen maandstanden")
    await expect(access_rows.nth(0)).to_contain_text("Toestemmingen opgevraagd door Billing")
    await page.screenshot(path=str(SCREENSHOT.with_name("portal-nl.png")), full_page=True)

    # the token travelled only in the Authorization header, never in a URL
    assert served.requests and not any(token in url for url in served.requests)
    assert errors == []
    await page.context.close()


async def check_rendered(browser: Browser, png: bytes) -> None:
    """The screenshot is a real render: a PNG of the page's size with many colours, a good
    share of non-white pixels, and the banner's brand colour."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert width == 1100 and height >= 900, (width, height)
    assert len(png) > 30_000, len(png)
    page = await browser.new_page()
    try:
        stats: dict[str, Any] = await page.evaluate(
            """async (src) => {
                const img = new Image();
                img.src = src;
                await img.decode();
                const canvas = document.createElement("canvas");
                canvas.width = img.width;
                canvas.height = img.height;
                const ctx = canvas.getContext("2d");
                ctx.drawImage(img, 0, 0);
                const data = ctx.getImageData(0, 0, img.width, img.height).data;
                const colours = new Set();
                let nonWhite = 0;
                let brand = 0;
                for (let i = 0; i < data.length; i += 4) {
                    const [r, g, b] = [data[i], data[i + 1], data[i + 2]];
                    colours.add((r << 16) | (g << 8) | b);
                    if (r < 240 || g < 240 || b < 240) nonWhite++;
                    if (r === 11 && g === 79 && b === 138) brand++;
                }
                return {colours: colours.size, nonWhite, brand, pixels: data.length / 4};
            }""",
            "data:image/png;base64," + base64.b64encode(png).decode("ascii"),
        )
    finally:
        await page.close()
    assert stats["colours"] >= 50, stats  # text anti-aliasing alone gives hundreds
    assert stats["nonWhite"] / stats["pixels"] > 0.05, stats
    assert stats["brand"] > 1100 * 40, stats  # the banner: full width, tens of pixels high


# --- contracts over time (SPEC §3a) --------------------------------------------------------------


async def contract_of(pool: asyncpg.Pool, ean: str, customer_id: str) -> dict[str, Any]:
    row = await pool.fetchrow(
        "SELECT contract_id::text AS id, contract_end, end_reason, level FROM contracts"
        " WHERE ean = $1 AND customer_id = $2 ORDER BY contract_start DESC LIMIT 1",
        ean,
        customer_id,
    )
    assert row is not None
    return dict(row)


async def expect_read_only(card: Any) -> None:
    """An ended contract's card: no form, no button, no input of any kind."""
    await expect(card.locator("form, button, input, select, textarea")).to_have_count(0)
    await expect(card.get_by_role("radio")).to_have_count(0)
    await expect(card.get_by_role("columnheader", name="Action")).to_have_count(0)


async def test_ended_contract_is_read_only_and_the_current_one_editable(
    served: Portal, browser: Browser, pool: asyncpg.Pool
) -> None:
    async with pool.acquire() as conn:
        await registry.add_connection(
            conn,
            registry.ConnectionIn(
                ean=MOVED_EAN,
                commodity="electricity",
                meter_id="E0020252501",
                customer_id=MOVER,
                contract_start=dt.datetime(2024, 3, 1, tzinfo=AMS),
            ),
        )
        old_consent = await insert_consent(
            conn,
            ean=MOVED_EAN,
            customer_id=MOVER,
            purpose="dynamic-tariff-billing",
            granted_at=dt.datetime(2024, 6, 1, 12, tzinfo=AMS),
            channel="portal",
        )
        await registry.end_current_contract(conn, MOVED_EAN, MOVED_AT, "move-out")
        await registry.add_connection(
            conn,
            registry.ConnectionIn(
                ean=NEW_EAN,
                commodity="gas",
                meter_id="G0020252502",
                customer_id=MOVER,
                contract_start=MOVED_AT,
            ),
        )
    moved = await contract_of(pool, MOVED_EAN, MOVER)
    new = await contract_of(pool, NEW_EAN, MOVER)
    assert moved["end_reason"] == "move-out" and new["end_reason"] is None

    errors: list[str] = []
    page = await new_page(browser, served, "en-GB", errors)
    await page.goto(f"{served.base}/portal#token={served.token(MOVER)}")

    # both contracts, each a card keyed by its contract; the current one first
    cards = page.locator("article.connection")
    await expect(cards).to_have_count(2)
    await expect(cards.nth(0)).to_have_attribute("data-contract-id", new["id"])
    await expect(cards.nth(1)).to_have_attribute("data-contract-id", moved["id"])
    ended = page.locator(f'article[data-contract-id="{moved["id"]}"]')
    current = page.locator(f'article[data-contract-id="{new["id"]}"]')
    await expect(ended).to_have_attribute("data-ean", MOVED_EAN)
    await expect(ended).to_have_attribute("data-state", "ended")
    await expect(current).to_have_attribute("data-state", "current")

    # --- the ended contract: marked, its window and end reason, its consents' history, no
    # controls at all
    await expect(ended.get_by_role("heading", level=3)).to_have_text(
        f"Electricity – EAN {MOVED_EAN} Ended"
    )
    await expect(
        page.get_by_role("article", name=f"Electricity – EAN {MOVED_EAN} Ended")
    ).to_be_visible()
    await expect(ended.locator(".badge")).to_have_text("Ended")
    facts = ended.locator("dl.facts")
    await expect(facts).to_contain_text("Contract from1 Mar 2024")
    await expect(facts).to_contain_text("Contract until15 Jan 2025")
    await expect(facts.locator(".end-reason")).to_have_text("Moved out")
    await expect(facts.locator(".level")).to_have_text("Daily readings (default)")
    await expect(ended).to_contain_text("This contract has ended")
    old_row = ended.locator(f'tr[data-consent-id="{old_consent}"]')
    await expect(old_row.locator(".consent-status")).to_have_text(
        "Ended: moved out on 15 Jan 2025, 00:00"
    )
    await expect(old_row.locator("summary")).to_have_text("version v1")  # the notice, readable
    await expect_read_only(ended)
    await expect(ended.get_by_text("Give a new consent")).to_have_count(0)

    # --- the current contract: level selector and grant form, no ended marker
    await expect(current.get_by_role("heading", level=3)).to_have_text(f"Gas – EAN {NEW_EAN}")
    await expect(current.locator(".badge")).to_have_count(0)
    await expect(current.get_by_label("Daily readings (default)")).to_be_checked()
    await expect(current).to_contain_text("You have not given any consent for this connection yet.")

    # grant on the current contract: the consent belongs to it
    await current.get_by_label("Purpose").select_option("energy-insights")
    await current.get_by_role("button", name="Give consent…").click()
    dialog = page.get_by_role("dialog")
    await expect(dialog).to_contain_text(NEW_EAN)
    await dialog.get_by_role("button", name="Yes, I consent").click()
    row = current.locator("tr[data-consent-id]")
    await expect(row.locator(".consent-status")).to_have_text("Active")
    consent_id = await row.get_attribute("data-consent-id")
    stored = await pool.fetchrow(
        "SELECT ean, contract_id::text AS contract_id, ended_at FROM consents"
        " WHERE consent_id = $1::uuid",
        consent_id,
    )
    assert stored is not None
    assert (stored["ean"], stored["contract_id"], stored["ended_at"]) == (NEW_EAN, new["id"], None)
    # the ended card is unchanged by the re-render
    await expect_read_only(ended)
    await expect(ended.locator("tr[data-consent-id]")).to_have_count(1)

    # revoke it again
    await current.get_by_role("button", name="Revoke consent for Energy insights").click()
    await dialog.get_by_role("button", name="Yes, revoke").click()
    await expect(row.locator(".consent-status")).to_contain_text("Revoked on")
    await expect(
        current.get_by_role("button", name="Revoke consent for Energy insights")
    ).to_have_count(0)
    assert (
        await pool.fetchval(
            "SELECT end_reason FROM consents WHERE consent_id = $1::uuid", consent_id
        )
        == "revoked"
    )

    # --- the logs cover the ended contract too
    log_rows = page.locator("#permission-log-table tbody tr")
    await expect(log_rows).to_have_count(4)
    await expect(page.locator("#permission-log-table")).to_contain_text(
        "Consent ended (Ended: moved out)"
    )
    await expect(page.locator("#permission-log-table")).to_contain_text(MOVED_EAN)

    # --- the export holds both contracts and the ended one's consent
    async with page.expect_download() as download_info:
        await page.get_by_role("button", name="Download my data").click()
    download = await download_info.value
    saved = Path(await download.path())
    exported = json.loads(await asyncio.to_thread(saved.read_text, encoding="utf-8"))
    by_contract = {k["contract_id"]: k for k in exported["connections"]}
    assert set(by_contract) == {moved["id"], new["id"]}
    assert by_contract[moved["id"]]["end_reason"] == "move-out"
    reasons = {c["consent_id"]: c["end_reason"] for c in exported["consents"]}
    assert reasons == {str(old_consent): "move-out", consent_id: "revoked"}

    # --- in Dutch
    await page.get_by_label("Language").select_option("nl")
    await expect(ended.locator(".badge")).to_have_text("Beëindigd")
    await expect(facts.locator(".end-reason")).to_have_text("Verhuisd")
    await expect(old_row.locator(".consent-status")).to_contain_text("Beëindigd: verhuisd op")
    await page.screenshot(path=str(SCREENSHOT.with_name("portal-moved.png")), full_page=True)

    assert errors == []
    await page.context.close()


async def test_two_contracts_on_one_connection_are_two_cards(
    served: Portal, browser: Browser, pool: asyncpg.Pool
) -> None:
    """The customer left and came back to the same EAN: two cards, only the new one editable."""
    async with pool.acquire() as conn:
        await registry.add_connection(
            conn,
            registry.ConnectionIn(
                ean=MOVED_EAN,
                commodity="electricity",
                meter_id="E0020252501",
                customer_id=MOVER,
                contract_start=dt.datetime(2024, 3, 1, tzinfo=AMS),
            ),
        )
        await registry.end_current_contract(conn, MOVED_EAN, MOVED_AT, "contract-ended")
        await registry.add_contract(
            conn,
            registry.ContractIn(
                ean=MOVED_EAN, customer_id=MOVER, start=MOVED_AT + dt.timedelta(days=30)
            ),
        )
    contracts = await pool.fetch(
        "SELECT contract_id::text AS id FROM contracts WHERE ean = $1 ORDER BY contract_start",
        MOVED_EAN,
    )
    old_id, new_id = (r["id"] for r in contracts)

    errors: list[str] = []
    page = await new_page(browser, served, "en-GB", errors)
    await page.goto(f"{served.base}/portal#token={served.token(MOVER)}")
    cards = page.locator(f'article[data-ean="{MOVED_EAN}"]')
    await expect(cards).to_have_count(2)
    old = page.locator(f'article[data-contract-id="{old_id}"]')
    new = page.locator(f'article[data-contract-id="{new_id}"]')
    await expect(old).to_have_attribute("data-state", "ended")
    await expect(new).to_have_attribute("data-state", "current")
    await expect(old.locator(".end-reason")).to_have_text("Contract ended")
    await expect_read_only(old)
    await expect(new.get_by_role("radio")).to_have_count(3)
    await expect(new.get_by_role("button", name="Give consent…")).to_be_visible()
    # every id in the page is unique (labels and headings point at the right card)
    duplicates = await page.evaluate(
        """() => {
            const ids = [...document.querySelectorAll("[id]")].map((e) => e.id);
            return ids.filter((id, i) => ids.indexOf(id) !== i);
        }"""
    )
    assert duplicates == []

    # the level of the new contract changes; the old one keeps its own
    await new.get_by_label("Monthly readings only").check()
    await new.get_by_role("button", name="Save choice").click()
    await expect(page.get_by_role("status")).to_contain_text("Monthly readings only")
    await expect(new.get_by_label("Monthly readings only")).to_be_checked()
    await expect(old.locator(".level")).to_have_text("Daily readings (default)")
    levels = await pool.fetch(
        "SELECT level FROM contracts WHERE ean = $1 ORDER BY contract_start", MOVED_EAN
    )
    assert [r["level"] for r in levels] == ["daily", "monthly"]
    assert errors == []
    await page.context.close()


# --- accessibility: axe-core in the real browser -------------------------------------------------


@pytest.mark.parametrize("lang", ["nl", "en"])
async def test_axe_finds_no_violations_signed_out_and_in(
    served: Portal, browser: Browser, lang: str
) -> None:
    errors: list[str] = []
    page = await new_page(browser, served, "nl-NL" if lang == "nl" else "en-GB", errors, axe=True)
    await page.goto(served.base + "/portal")
    await expect(page.locator("html")).to_have_attribute("lang", lang)
    await expect(page.locator("#signin")).to_be_visible()
    assert await axe_violations(page) == []

    # signed in: two current contracts (electricity, gas), each with a level form, a grant
    # form and a consumption chart area
    await page.evaluate(
        "(token) => { sessionStorage.setItem('meterpoort.token', token); }", served.token(CUSTOMER)
    )
    await page.reload()
    await expect(page.locator("article.connection")).to_have_count(2)
    await expect(page.locator(".usage .chart-area[aria-busy]")).to_have_count(0)
    assert await axe_violations(page) == []
    assert errors == []
    await page.context.close()


# --- consumption charts --------------------------------------------------------------------------

E_METER, G_METER = "E0047114711", "G0047114711"


def local_midnight(days_ago: int) -> dt.datetime:
    day = (dt.datetime.now(AMS) - dt.timedelta(days=days_ago)).date()
    return dt.datetime(day.year, day.month, day.day, tzinfo=AMS)


def day_of(t: dt.datetime) -> str:
    return t.astimezone(AMS).date().isoformat()


async def feed_meters(served: Portal, admin_headers: dict[str, str]) -> dict[int, dt.datetime]:
    """Interval consent on both connections (by phone, 12 days ago), then real ingest of the
    customer's dongle: a telegram a little after every local midnight of the last 10 days but
    one (day 4 has none), and on day 7 one every quarter of an hour but one (10:00). Registers
    grow by a different amount at every telegram. Returns the days ``d[0]`` … ``d[10]`` (today).
    """
    client = served.client
    for ean in (E_EAN, G_EAN):
        resp = await client.post(
            "/v1/admin/consents",
            headers=admin_headers,
            json={
                "ean": ean,
                "customer_id": CUSTOMER,
                "purpose": "energy-insights",
                "notice_version": "v1",
                "channel": "phone",
                "granted_at": local_midnight(12).isoformat(),
            },
        )
        assert resp.status == 201, await resp.text()
    resp = await client.post(
        "/v1/admin/devices", headers=admin_headers, json={"meter_ids": [E_METER, G_METER]}
    )
    assert resp.status == 201, await resp.text()
    device = {"Authorization": f"Bearer {(await resp.json())['token']}"}

    d = {n: local_midnight(10 - n) for n in range(11)}
    times = [d[n] + dt.timedelta(seconds=10) for n in range(10) if n != 4]
    times += [
        d[7] + dt.timedelta(minutes=15 * q, seconds=10)
        for q in range(1, 96)
        if q != 40  # 10:00
    ]
    times.sort()
    telegrams = []
    imported, exported, gas = 5_000_000, 200_000, 3_000_000
    captured: dict[dt.datetime, int] = {}
    for k, t in enumerate(times):
        imported += 40 + k * 37 % 160
        exported += k * 13 % 30
        hour = t.replace(minute=0, second=0)
        if hour not in captured:
            gas += 15 + k * 7 % 90
            captured[hour] = gas
        telegrams.append(
            build_telegram(
                E_METER,
                t,
                import_wh=(imported // 2, imported - imported // 2),
                export_wh=(exported - exported // 3, exported // 3),
                gas=(G_METER, hour, captured[hour]),
            )
        )
    resp = await client.post(
        "/v1/telegrams", data=b"".join(telegrams), headers={**device, "Content-Type": "text/plain"}
    )
    outcome = await resp.json()
    assert resp.status == 200 and outcome["rejected"] == [], outcome
    return d


def amount(value: int, lang: str, unit: str) -> str:
    """Wh or dm³ as the page shows them: kWh / m³ with three decimals, the language's decimal
    sign (no value in this test reaches a thousand, so no grouping)."""
    assert 0 <= value < 1_000_000
    text = f"{value // 1000}.{value % 1000:03d}"
    return (text.replace(".", ",") if lang == "nl" else text) + "\u00a0" + unit


async def stored_amounts(
    pool: asyncpg.Pool,
    table: str,
    ean: str,
    step: dt.timedelta | None,
    lo: dt.datetime,
    hi: dt.datetime,
) -> dict[dt.datetime, tuple[int, ...]]:
    """Consumption per period straight from the stored readings: the increase to the next
    period's reading (``step`` None: the next local day), for periods starting in [lo, hi)."""
    electricity = table.startswith("readings_e")
    columns = (
        "coalesce(import_t1_wh, 0) + coalesce(import_t2_wh, 0) AS a,"
        " coalesce(export_t1_wh, 0) + coalesce(export_t2_wh, 0) AS b"
        if electricity
        else "volume_dm3 AS a, 0 AS b"
    )
    rows = await pool.fetch(
        f"SELECT period_start, {columns} FROM {table} WHERE ean = $1 ORDER BY period_start",
        int(ean),
    )
    by_start = {r["period_start"]: (r["a"], r["b"]) for r in rows}
    out: dict[dt.datetime, tuple[int, ...]] = {}
    for start, (a, b) in by_start.items():
        if step is None:
            local = start.astimezone(AMS).date() + dt.timedelta(days=1)
            end = dt.datetime(local.year, local.month, local.day, tzinfo=AMS)
        else:
            end = start + step
        after = by_start.get(end)
        if after is None or not lo <= start < hi:
            continue
        out[start] = (after[0] - a, after[1] - b) if electricity else (after[0] - a,)
    return out


async def bar_names(chart: Any) -> list[tuple[str, str]]:
    """``(data-period, accessible name)`` of every bar of a chart, in order."""
    await expect(chart.locator(".bar").first).to_be_attached()
    names: list[list[str]] = await chart.locator(".bar").evaluate_all(
        "(bars) => bars.map((b) => [b.dataset.period, b.getAttribute('aria-label')])"
    )
    return [(period, name) for period, name in names]


async def browser_days(page: Page, lang: str, days: list[str]) -> list[str]:
    """How the browser writes these days in ``lang`` (its Intl, the date style of the page)."""
    texts: list[str] = await page.evaluate(
        """([days, loc]) => days.map((d) => new Intl.DateTimeFormat(loc, {
            dateStyle: "medium", timeZone: "Europe/Amsterdam",
        }).format(new Date(d + "T12:00:00Z")))""",
        [days, "nl-NL" if lang == "nl" else "en-GB"],
    )
    return texts


async def browser_times(page: Page, lang: str, instants: list[int]) -> list[str]:
    texts: list[str] = await page.evaluate(
        """([instants, loc]) => instants.map((ms) => new Intl.DateTimeFormat(loc, {
            hour: "2-digit", minute: "2-digit", timeZone: "Europe/Amsterdam",
        }).format(new Date(ms)))""",
        [instants, "nl-NL" if lang == "nl" else "en-GB"],
    )
    return texts


WORDS = {"en": ("import", "export"), "nl": ("afname", "teruglevering")}


async def expected_daily(
    page: Page, lang: str, amounts: dict[dt.datetime, tuple[int, ...]], unit: str
) -> list[tuple[str, str]]:
    days = [day_of(start) for start in amounts]
    texts = await browser_days(page, lang, days)
    out = []
    for day, text, values in zip(days, texts, amounts.values(), strict=True):
        out.append((day, f"{text}: {values_text(lang, values, unit)}"))
    return out


def values_text(lang: str, values: tuple[int, ...], unit: str) -> str:
    if len(values) == 1:
        return amount(values[0], lang, unit)
    imp, exp = WORDS[lang]
    return f"{imp} {amount(values[0], lang, unit)}, {exp} {amount(values[1], lang, unit)}"


async def expected_profile(
    page: Page,
    lang: str,
    day: dt.datetime,
    amounts: dict[dt.datetime, tuple[int, ...]],
    step: dt.timedelta,
    unit: str,
) -> list[tuple[str, str]]:
    (day_text,) = await browser_days(page, lang, [day_of(day)])
    starts = [int(s.timestamp() * 1000) for s in amounts]
    ends = [int((s + step).timestamp() * 1000) for s in amounts]
    begin = await browser_times(page, lang, starts)
    finish = await browser_times(page, lang, ends)
    return [
        (str(ms), f"{day_text} {b}\u2013{f}: {values_text(lang, values, unit)}")
        for ms, b, f, values in zip(starts, begin, finish, amounts.values(), strict=True)
    ]


async def date_field_order(page: Page) -> str:
    """The order in which this chromium's date fields take typed digits: ``"dmy"`` or
    ``"mdy"``. It follows the browser's own locale, not the page's language (Debian's chromium
    under a C locale lays out month/day/year whatever the context's locale), so a scratch page
    of the same context is asked once."""
    scratch = await page.context.new_page()
    try:
        await scratch.set_content('<input type="date" id="probe">')
        await scratch.focus("#probe")
        await scratch.keyboard.type("01022003")
        value = await scratch.eval_on_selector("#probe", "(e) => e.value")
    finally:
        await scratch.close()
    assert value in ("2003-02-01", "2003-01-02"), value
    return "dmy" if value == "2003-02-01" else "mdy"


async def type_day(page: Page, field: Any, day: dt.datetime) -> None:
    """Enter a day in a date field with the keyboard only, as a person would (the digits in
    the field's order), then Enter, which submits its form."""
    order = await date_field_order(page)
    local = day.astimezone(AMS)
    await field.focus()
    await page.keyboard.type(local.strftime("%d%m%Y" if order == "dmy" else "%m%d%Y"))
    await page.keyboard.press("Enter")


async def test_consumption_charts_match_the_stored_readings(
    served: Portal, browser: Browser, pool: asyncpg.Pool, admin_headers: dict[str, str]
) -> None:
    d = await feed_meters(served, admin_headers)
    week_ago, today = d[0], d[10]
    e_daily = await stored_amounts(pool, "readings_e_p1d", E_EAN, None, week_ago, today)
    g_daily = await stored_amounts(pool, "readings_g_p1d", G_EAN, None, week_ago, today)
    # gaps: no reading on day 4 (days 3 and 4 have no value), none yet today (day 9)
    assert [day_of(s) for s in e_daily] == [day_of(d[n]) for n in (0, 1, 2, 5, 6, 7, 8)]
    assert [day_of(s) for s in g_daily] == [day_of(d[n]) for n in (0, 1, 2, 5, 6, 7, 8)]
    quarter, hour = dt.timedelta(minutes=15), dt.timedelta(hours=1)
    e_profile = await stored_amounts(pool, "readings_e_pt15m", E_EAN, quarter, d[7], d[8])
    g_profile = await stored_amounts(pool, "readings_g_pt1h", G_EAN, hour, d[7], d[8])
    assert len(e_profile) == 96 - 2  # the quarters before and at 10:00 are gaps
    assert len(g_profile) == 24

    errors: list[str] = []
    page = await new_page(browser, served, "en-GB", errors, axe=True)
    await page.goto(f"{served.base}/portal#token={served.token(CUSTOMER)}")
    elec = page.locator(f'article[data-ean="{E_EAN}"]')
    gas = page.locator(f'article[data-ean="{G_EAN}"]')
    e_chart = elec.locator(".usage > .chart-area")
    g_chart = gas.locator(".usage > .chart-area")
    await expect(elec.get_by_role("heading", name="Consumption per day")).to_be_visible()

    # --- daily bars: one per day with a value, named with its day and values, in order
    assert await bar_names(e_chart) == await expected_daily(page, "en", e_daily, "kWh")
    assert await bar_names(g_chart) == await expected_daily(page, "en", g_daily, "m³")
    # a gap is no bar and a "no meter reading" row in the table, never a zero
    await e_chart.get_by_text("Show the values as a table").click()
    gap_row = e_chart.locator(f'tr[data-period="{day_of(d[4])}"]')
    await expect(gap_row).to_have_class("gap")
    await expect(gap_row.locator("td")).to_have_text("no meter reading")
    value_rows = e_chart.locator("tbody tr:not(.gap)")
    await expect(value_rows).to_have_count(len(e_daily))
    first_day, (imp, exp) = next(iter(e_daily.items()))
    await expect(e_chart.locator(f'tr[data-period="{day_of(first_day)}"] td')).to_have_text(
        [amount(imp, "en", "kWh"), amount(exp, "en", "kWh")]
    )
    # the text alternative: the chart's summary
    await expect(e_chart.locator(".summary")).to_contain_text(
        f"{len(e_daily)} of 92 periods have a value"
    )

    # --- keyboard: one tab stop per chart (the latest bar); arrows move, Enter opens the day
    e_bars = e_chart.locator(".bar")
    latest = e_bars.last
    await expect(latest).to_have_attribute("tabindex", "0")
    await expect(e_chart.locator('.bar[tabindex="0"]')).to_have_count(1)
    await latest.focus()
    await page.keyboard.press("ArrowLeft")
    day7_bar = e_chart.locator(f'.bar[data-period="{day_of(d[7])}"]')
    await expect(day7_bar).to_be_focused()
    await page.keyboard.press("Home")
    await expect(e_bars.first).to_be_focused()
    await page.keyboard.press("End")
    await expect(latest).to_be_focused()
    await page.keyboard.press("ArrowLeft")
    await page.keyboard.press("Enter")
    await expect(day7_bar).to_be_focused()
    e_profile_chart = elec.locator(".profile .chart-area")
    await expect(elec.get_by_label("Day", exact=True)).to_have_value(day_of(d[7]))
    assert await bar_names(e_profile_chart) == await expected_profile(
        page, "en", d[7], e_profile, quarter, "kWh"
    )

    # the day picker with the keyboard: a day without 15-minute values, then "Next day"
    await type_day(page, elec.get_by_label("Day", exact=True), d[6])
    await expect(elec.get_by_label("Day", exact=True)).to_have_value(day_of(d[6]))
    (d6_text,) = await browser_days(page, "en", [day_of(d[6])])
    await expect(e_profile_chart).to_have_text(
        f"There are no 15-minute or hourly values on {d6_text}."
    )
    await expect(elec.get_by_label("Day", exact=True)).to_be_focused()
    next_day = elec.get_by_role("button", name="Next day")
    for _ in range(8):  # through the field's segments, "Show day", "Previous day"
        await page.keyboard.press("Tab")
        if await next_day.evaluate("(b) => b === document.activeElement"):
            break
    await expect(next_day).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(elec.get_by_label("Day", exact=True)).to_have_value(day_of(d[7]))
    await expect(next_day).to_be_focused()
    assert await bar_names(e_profile_chart) == await expected_profile(
        page, "en", d[7], e_profile, quarter, "kWh"
    )

    # gas: the hourly profile of day 7 through its own day picker
    await type_day(page, gas.get_by_label("Day", exact=True), d[7])
    g_profile_chart = gas.locator(".profile .chart-area")
    assert await bar_names(g_profile_chart) == await expected_profile(
        page, "en", d[7], g_profile, hour, "m³"
    )
    assert await axe_violations(page) == []

    # --- in Dutch: the same numbers with a decimal comma, drawn from the answers the page has
    consumption_reads = [u for u in served.requests if "/v1/me/consumption" in u]
    await page.get_by_label("Language").select_option("nl")
    await expect(elec.get_by_role("heading", name="Verbruik per dag")).to_be_visible()
    await expect(e_chart.locator(".summary")).to_contain_text("van de 92 perioden")
    assert await bar_names(e_chart) == await expected_daily(page, "nl", e_daily, "kWh")
    assert await bar_names(g_chart) == await expected_daily(page, "nl", g_daily, "m³")
    assert await bar_names(e_profile_chart) == await expected_profile(
        page, "nl", d[7], e_profile, quarter, "kWh"
    )
    assert await bar_names(g_profile_chart) == await expected_profile(
        page, "nl", d[7], g_profile, hour, "m³"
    )
    assert [u for u in served.requests if "/v1/me/consumption" in u] == consumption_reads
    # the Dutch day picker, with the keyboard too
    await type_day(page, gas.get_by_label("Dag", exact=True), d[6])
    await expect(gas.get_by_label("Dag", exact=True)).to_have_value(day_of(d[6]))
    await gas.get_by_role("button", name="Volgende dag").press("Enter")
    assert await bar_names(g_profile_chart) == await expected_profile(
        page, "nl", d[7], g_profile, hour, "m³"
    )
    await e_chart.locator("details").evaluate("(e) => { e.open = true; }")
    assert await axe_violations(page) == []
    await page.screenshot(path=str(SCREENSHOT.with_name("portal-chart.png")), full_page=True)

    # --- every answer the page got is in the access log, the customer as the reader
    reads = [u for u in served.requests if "/v1/me/consumption" in u]
    audited = await pool.fetch(
        "SELECT actor, detail->>'granularity' AS granularity FROM audit_log"
        " WHERE kind = 'data.read' ORDER BY seq"
    )
    assert len(audited) == len(reads)
    assert {r["actor"] for r in audited} == {f"customer:{CUSTOMER}"}
    assert sorted(r["granularity"] for r in audited) == sorted(
        ["P1D", "P1D", "PT15M", "PT15M", "PT1H", "PT1H"]
    )
    await page.reload()
    access_rows = page.locator("#access-log-table tbody tr")
    await expect(access_rows.first).to_contain_text("U heeft uw")
    assert errors == []
    await page.context.close()
