"""Backup and restore as docs/operations.md tells an operator to do it: a gateway with a registry,
consents, readings, webhooks and an audit trail is dumped with ``python -m gateway backup``
(``pg_dump --format=custom``) while its database is up, restored with ``python -m gateway
restore`` (``pg_restore``) into a FRESH embedded PostgreSQL in a new data directory, and then:

* ``python -m gateway audit verify --data-dir NEW --expect-head <head printed by backup>`` passes;
* every table's rows are the same as in the source (readings, consents, audit, …);
* with the signing key copied beside it, a gateway on the restored database serves the same key:
  the receipt issued before the backup verifies, the readings cursor issued before it works;
* without the signing key (the negative the guide warns about): the gateway makes itself a new
  key, the old receipt no longer verifies with the served keys and the old cursor is refused.

Plus the refusals: ``restore`` into a database that holds a registry, ``backup`` over a file.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import SecretStr

from consent.receipts import b64url_decode, canonical_json
from gateway import keys
from gateway.api.app import create_app
from gateway.cli.token import mint_dev_token
from gateway.settings import Settings
from gateway.storage import db
from tests.support.billing_world import PURPOSE, build, page, sync

Client = TestClient[web.Request, web.Application]
PROBLEM = "application/problem+json"


def gateway_cli(*args: str, database_url: str | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m gateway ARGS`` as an operator runs it (no test settings in the environment)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERPOORT_")}
    env.pop("DATABASE_URL", None)
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


async def cli(*args: str, database_url: str | None = None) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(gateway_cli, *args, database_url=database_url)


@pytest.fixture
def settings(gateway_settings: Settings) -> Settings:
    s = gateway_settings.model_copy(update={"dev_mode": True})
    mint_dev_token(s.data_dir, "warm-up", "meterpoort", dt.timedelta(minutes=1))
    return s


@pytest.fixture
async def fresh_embedded() -> AsyncIterator[Path]:
    """A data directory for the restore; its embedded server is stopped at the end. Not under
    tmp_path: every pytest session resets /tmp/pytest-of-<user> to mode 0700, which locks the
    embedded server's own user out of a cluster below it (tests/conftest.py does the same)."""
    base = Path(tempfile.mkdtemp(prefix="meterpoort-restore-"))
    data_dir = base / "restored"
    try:
        yield data_dir
    finally:
        if db.has_embedded_cluster(data_dir):
            # join and release: the last holder stops the server
            server = db.EmbeddedPostgres(data_dir)
            await asyncio.to_thread(server.start)
            await asyncio.to_thread(server.stop)
        shutil.rmtree(base)


async def start(settings: Settings) -> Client:
    client: Client = TestClient(TestServer(create_app(settings), host="127.0.0.1", port=0))
    await client.start_server()
    return client


async def served_keys(http: Client) -> list[dict[str, Any]]:
    keys_: list[dict[str, Any]] = (await (await http.get("/v1/keys")).json())["keys"]
    return keys_


def receipt_verifies(document: dict[str, Any], served: list[dict[str, Any]]) -> bool:
    matching = [k for k in served if k["kid"] == document["signature"]["kid"]]
    if not matching:
        return False
    public = Ed25519PublicKey.from_public_bytes(b64url_decode(matching[0]["x"]))
    public.verify(
        b64url_decode(document["signature"]["value"]), canonical_json(document["receipt"])
    )
    return True


#: columns that hold transaction ids or snapshots of the cluster (cleared by restore)
SKIP = frozenset({"changed_xid", "snapshot"})


async def table_digests(dsn: str, skip: frozenset[str] = frozenset()) -> dict[str, tuple[int, str]]:
    """(rows, md5 of the rows in text order) of every ordinary table, partitions included;
    ``skip``: columns left out."""
    conn = await db.connect(dsn)
    try:
        names = [
            r["relname"]
            for r in await conn.fetch(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = 'public' AND c.relkind = 'r' ORDER BY c.relname"
            )
        ]
        found: dict[str, tuple[int, str]] = {}
        for name in names:
            columns = [
                f'"{r["attname"]}"'
                for r in await conn.fetch(
                    "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass"
                    " AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                    name,
                )
                if r["attname"] not in skip
            ]
            row = await conn.fetchrow(
                "SELECT count(*) AS n, md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), ''))"
                f' AS d FROM (SELECT {", ".join(columns)} FROM "{name}") t'
            )
            assert row is not None
            found[name] = (row["n"], row["d"])
        return found
    finally:
        await conn.close()


async def test_backup_restores_into_a_fresh_embedded_postgres(
    settings: Settings,
    database_url: str,
    admin_headers: dict[str, str],
    fresh_embedded: Path,
    tmp_path: Path,
) -> None:
    # --- the world, served from the source database ---------------------------------------
    http = await start(settings)
    try:
        w = await build(http, settings, admin_headers, "http://127.0.0.1:9/hook")
        resp = await http.post(
            "/v1/me/consents",
            json={"ean": w.consent_ean, "purpose": PURPOSE, "notice_version": "v3"},
            headers=w.alice,
        )
        assert resp.status == 201, await resp.text()
        receipt = (await resp.json())["receipt"]
        resp = await page(http, w)
        assert resp.status == 200, await resp.text()
        cursor = (await resp.json())["next_cursor"]
        assert cursor
        resp = await sync(http, w, "0")
        readings_seen = len((await resp.text()).splitlines())
        assert resp.status == 200 and readings_seen >= 3
        original_kid = (await served_keys(http))[0]["kid"]
    finally:
        await http.close()

    # --- backup, while the database is up ----------------------------------------------------
    archive = tmp_path / "meterpoort.dump"
    done = await cli("backup", str(archive), database_url=database_url)
    assert done.returncode == 0, done.stderr
    backed_up = json.loads(done.stdout)
    assert backed_up["bytes"] == archive.stat().st_size > 0
    source = await cli("audit", "verify", database_url=database_url)
    assert source.returncode == 0, source.stderr
    assert source.stdout.startswith("ok: ") and backed_up["audit_head"] in source.stdout
    # the world left a real trail: registry changes, consents, reads
    source_digests = await table_digests(database_url)
    assert source_digests["audit_log"][0] >= 5
    readings = sum(n for name, (n, _) in source_digests.items() if name.startswith("readings_"))
    assert readings >= 4
    # what the guide says to back up beside the dump: the signing key (and the dev key here)
    keys_backup = tmp_path / "keys-backup"
    keys_backup.mkdir(mode=0o700)
    for name in (keys.SIGNING_KEY_FILE, keys.DEV_CUSTOMER_KEY_FILE):
        shutil.copy2(settings.data_dir / name, keys_backup / name)

    # --- restore into a fresh embedded PostgreSQL --------------------------------------------
    done = await cli("restore", str(archive), "--data-dir", str(fresh_embedded))
    assert done.returncode == 0, done.stderr
    restored = json.loads(done.stdout)
    assert restored["migrations_applied"] == []  # the dump is of this version
    assert restored["audit"] == source.stdout.strip()
    assert "no signing-key.pem" in done.stderr  # it tells the operator to copy the key
    # a second restore into the same place is refused: never merged into a registry
    again = await cli("restore", str(archive), "--data-dir", str(fresh_embedded))
    assert again.returncode == 1 and "already holds gateway tables" in again.stderr
    for name in (keys.SIGNING_KEY_FILE, keys.DEV_CUSTOMER_KEY_FILE):
        shutil.copy2(keys_backup / name, fresh_embedded / name)

    verified = await cli(
        "audit",
        "verify",
        "--data-dir",
        str(fresh_embedded),
        "--expect-head",
        backed_up["audit_head"],
    )
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout == source.stdout

    server = db.EmbeddedPostgres(fresh_embedded)
    restored_url = await asyncio.to_thread(server.start)
    try:
        # the same rows, but for the source cluster's transaction ids, which restore clears, and
        # the readings.changed job's mark, which restore sets to the restored cluster's present
        restored_rows = await table_digests(restored_url, SKIP)
        source_rows = await table_digests(database_url, SKIP)
        for digests in (restored_rows, source_rows):
            assert digests.pop("readings_changed_mark")[0] == 1
            assert digests.pop("index_changes_mark")[0] == 1
        # the consent index's change log names the source cluster's transactions: forgotten
        assert restored_rows.pop("index_changes")[0] == 0
        source_rows.pop("index_changes")
        assert restored_rows == source_rows
        restored_counts = {n: rows for n, (rows, _) in (await table_digests(restored_url)).items()}
        source_counts = {n: rows for n, (rows, _) in source_digests.items()}
        assert restored_counts.pop("index_changes") == 0
        source_counts.pop("index_changes")
        assert restored_counts == source_counts
        on_restored = settings.model_copy(
            update={"database_url": SecretStr(restored_url), "data_dir": fresh_embedded}
        )
        http = await start(on_restored)
        try:
            served = await served_keys(http)
            assert [k["kid"] for k in served] == [original_kid]
            assert receipt_verifies(receipt, served)
            resp = await page(http, w, cursor=cursor)
            assert resp.status == 200, await resp.text()
            assert len((await resp.json())["readings"]) == 1
            # a sync from the start, then from its token: nothing is "changed" again
            resp = await sync(http, w, "0")
            assert resp.status == 200 and len((await resp.text()).splitlines()) == readings_seen
            resp = await sync(http, w, resp.headers["Meterpoort-Changed-Token"])
            assert resp.status == 200 and await resp.text() == ""
        finally:
            await http.close()

        # --- the same database without the signing key ---------------------------------------
        without_key = on_restored.model_copy(update={"data_dir": tmp_path / "no-key"})
        mint_dev_token(without_key.data_dir, "warm-up", "meterpoort", dt.timedelta(minutes=1))
        http = await start(without_key)
        try:
            served = await served_keys(http)
            assert [k["kid"] for k in served] != [original_kid]
            assert not receipt_verifies(receipt, served)
            resp = await page(http, w, cursor=cursor)
            assert resp.status == 400 and resp.content_type == PROBLEM
        finally:
            await http.close()
    finally:
        await asyncio.to_thread(server.stop)


async def test_backup_and_restore_refuse_to_overwrite(
    database_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    existing = tmp_path / "taken.dump"
    existing.write_bytes(b"keep me")
    done = await cli("backup", str(existing), database_url=database_url)
    assert done.returncode == 1 and "never overwrites" in done.stderr
    assert existing.read_bytes() == b"keep me"
    # the test database holds a registry: restoring into it is refused before pg_restore runs
    archive = tmp_path / "ok.dump"
    assert (await cli("backup", str(archive), database_url=database_url)).returncode == 0
    done = await cli("restore", str(archive), database_url=database_url)
    assert done.returncode == 1 and "already holds gateway tables" in done.stderr
    done = await cli("restore", str(tmp_path / "missing.dump"), database_url=database_url)
    assert done.returncode == 1 and "no backup file" in done.stderr
    # a mistyped data directory is no database to back up
    done = await cli("backup", str(tmp_path / "x.dump"), "--data-dir", str(tmp_path / "typo"))
    assert done.returncode == 1 and "no database in" in done.stderr
