"""``python -m gateway admin contracts add|end|import``, ``admin meters exchange`` and ``admin
devices rebind|revoke|list`` end to end: a real process on a real database, one JSON object on
stdout, domain errors as one clear message on stderr with exit status 1 and no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import asyncpg

from tests.support import make_ean

END = ("admin", "contracts", "end")
EAN = make_ean(7)
OTHER = make_ean(8)


def _cli(
    args: list[str], database_url: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _ok(args: list[str], database_url: str, stdin: str | None = None) -> Any:
    done = _cli(args, database_url, stdin)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _fails(args: list[str], database_url: str, stdin: str | None = None) -> str:
    """stderr of a command refused with a clear message (rc 1, nothing on stdout)."""
    done = _cli(args, database_url, stdin)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stdout == ""
    assert done.stderr.startswith("error: ")
    assert "Traceback" not in done.stderr
    return done.stderr


def _usage(args: list[str], database_url: str) -> str:
    """stderr of a command line refused by the parser (rc 2, nothing on stdout)."""
    done = _cli(args, database_url)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stdout == "" and "Traceback" not in done.stderr
    return done.stderr


def _add_meter(database_url: str, ean: str, meter_id: str, customer: str) -> Any:
    return _ok(
        [
            "admin",
            "meters",
            "add",
            "--ean",
            ean,
            "--commodity",
            "electricity",
            "--meter-id",
            meter_id,
            "--customer-id",
            customer,
            "--contract-start",
            "2024-01-01",
        ],
        database_url,
    )


async def test_contracts_commands(database_url: str, pool: asyncpg.Pool) -> None:
    first = _add_meter(database_url, EAN, "E1", "alice")

    # a move-in while alice's contract is open: refused, naming her contract
    add = ["admin", "contracts", "add", "--ean", EAN, "--customer-id", "bob"]
    err = _fails([*add, "--start", "2024-06-01"], database_url)
    assert str(first["contract_id"]) in err and "overlaps" in err

    ended = _ok(
        [
            "admin",
            "contracts",
            "end",
            first["contract_id"],
            "--at",
            "2024-06-01",
            "--reason",
            "move-out",
        ],
        database_url,
    )
    assert ended["contract_id"] == first["contract_id"]
    assert ended["end"] == "2024-05-31T22:00:00Z"  # a date is local midnight
    assert ended["end_reason"] == "move-out"
    err = _fails(
        [*END, first["contract_id"], "--at", "2024-07-01", "--reason", "move-out"],
        database_url,
    )
    assert "already ended" in err

    bob = _ok([*add, "--start", "2024-06-01", "--end", "2025-06-01"], database_url)
    assert bob["customer_id"] == "bob" and bob["level"] == "daily"
    assert bob["contract_id"] != first["contract_id"]

    # argument errors: a clear message per field, no traceback
    err = _fails([*add, "--start", "2025-07-01", "--end", "2025-06-01"], database_url)
    assert "end must be after start" in err
    # malformed values are usage errors (exit 2) naming the argument and the format expected
    err = _usage([*add, "--start", "tomorrow"], database_url)
    assert "argument --start" in err and "YYYY-MM-DD" in err
    err = _usage(
        [
            "admin",
            "contracts",
            "add",
            "--ean",
            "123",
            "--customer-id",
            "x",
            "--start",
            "2030-01-01",
        ],
        database_url,
    )
    assert "argument --ean" in err and "EAN-18" in err
    err = _usage(
        ["admin", "contracts", "end", "not-a-uuid", "--at", "2024-07-01", "--reason", "move-out"],
        database_url,
    )
    assert "argument CONTRACT_ID" in err and "expected a UUID" in err
    err = _fails(
        [*END, str(uuid.UUID(int=0)), "--at", "2024-07-01", "--reason", "move-out"],
        database_url,
    )
    assert "no contract" in err
    usage = _cli(
        [*END, first["contract_id"], "--at", "2024-07-01", "--reason", "moved"],
        database_url,
    )
    assert usage.returncode == 2 and "invalid choice" in usage.stderr

    history = await pool.fetch(
        "SELECT customer_id, end_reason FROM contracts WHERE ean = $1 ORDER BY contract_start",
        EAN,
    )
    assert [tuple(r) for r in history] == [("alice", "move-out"), ("bob", None)]


async def test_contracts_import(database_url: str, pool: asyncpg.Pool, tmp_path: Path) -> None:
    _add_meter(database_url, EAN, "E1", "alice")
    csv_text = (
        "event,ean,customer_id,at,end_reason\n"
        f"end,{EAN},alice,2024-06-01,move-out\n"
        f"start,{EAN},bob,2024-06-01,\n"
    )
    path = tmp_path / "events.csv"
    path.write_text(csv_text, encoding="utf-8")
    out = _ok(["admin", "contracts", "import", str(path)], database_url)
    assert {k: out[k] for k in ("started", "ended", "skipped")} == {
        "started": 1,
        "ended": 1,
        "skipped": 0,
    }
    assert isinstance(out["seconds"], float | int)
    # the same file again, from stdin: nothing changes
    again = _ok(["admin", "contracts", "import", "-"], database_url, stdin=csv_text)
    assert (again["started"], again["ended"], again["skipped"]) == (0, 0, 2)
    assert await pool.fetchval("SELECT count(*) FROM contracts WHERE ean = $1", EAN) == 2

    bad = csv_text + f"start,{OTHER},carol,2024-06-01,\nstart,{EAN},dave,2024-07-01,switch\n"
    err = _fails(["admin", "contracts", "import", "-"], database_url, stdin=bad)
    assert "2 bad row(s), nothing changed; lines: 4, 5" in err
    assert f"line 4 ean: no connection {OTHER} is registered" in err
    assert "line 5 end_reason: a start takes no end_reason" in err

    err = _fails(["admin", "contracts", "import", str(tmp_path / "missing.csv")], database_url)
    assert "cannot read" in err and "missing.csv" in err


async def test_meter_exchange_and_devices(database_url: str, pool: asyncpg.Pool) -> None:
    _add_meter(database_url, EAN, "E1", "alice")
    _add_meter(database_url, OTHER, "E2", "carol")

    exchange = ["admin", "meters", "exchange", "--ean", EAN]
    out = _ok(
        [*exchange, "--meter-id", "E1-NEW", "--at", "2024-06-01T10:00:00+02:00"], database_url
    )
    assert out["ean"] == EAN
    assert [(m["meter_id"], m["installed_from"], m["installed_until"]) for m in out["meters"]] == [
        ("E1", "2023-12-31T23:00:00Z", "2024-06-01T08:00:00Z"),
        ("E1-NEW", "2024-06-01T08:00:00Z", None),
    ]
    # the other EAN's meter cannot be installed here at the same time
    err = _fails([*exchange, "--meter-id", "E2", "--at", "2024-07-01"], database_url)
    assert f"installed on connection {OTHER}" in err
    err = _fails([*exchange, "--meter-id", "E9", "--at", "2023-01-01"], database_url)
    assert "no meter is installed" in err
    err = _fails(
        [
            "admin",
            "meters",
            "exchange",
            "--ean",
            make_ean(99),
            "--meter-id",
            "E9",
            "--at",
            "2024-07-01",
        ],
        database_url,
    )
    assert "no connection" in err

    device = _ok(["admin", "devices", "add", "--meter-id", "E1"], database_url)
    device_id = device["device_id"]
    rebound = _ok(
        ["admin", "devices", "rebind", device_id, "--meter-id", "E1-NEW", "--meter-id", "X2"],
        database_url,
    )
    assert rebound["device_id"] == device_id
    assert rebound["meter_ids"] == ["E1-NEW", "X2"]
    assert "token" not in rebound and device["token"] not in json.dumps(rebound)

    listed = _ok(["admin", "devices", "list"], database_url)
    assert [(d["device_id"], d["meter_ids"], d["revoked_at"]) for d in listed["devices"]] == [
        (device_id, ["E1-NEW", "X2"], None)
    ]
    assert device["token"] not in json.dumps(listed)

    revoked = _ok(["admin", "devices", "revoke", device_id], database_url)
    assert revoked["revoked_at"] is not None
    again = _ok(["admin", "devices", "revoke", device_id], database_url)
    assert again["revoked_at"] == revoked["revoked_at"]  # revoking twice changes nothing
    err = _fails(["admin", "devices", "rebind", device_id, "--meter-id", "E1"], database_url)
    assert "revoked" in err
    err = _usage(["admin", "devices", "revoke", "nope"], database_url)
    assert "argument DEVICE_ID" in err and "not a device id: expected a UUID" in err
    err = _fails(["admin", "devices", "revoke", str(uuid.UUID(int=0))], database_url)
    assert "no device" in err
    assert await pool.fetchval("SELECT revoked_at IS NOT NULL FROM devices") is True
