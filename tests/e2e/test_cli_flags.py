"""``python -m gateway``: a bad flag fails at once, before PostgreSQL starts; a mistyped
``--data-dir`` is an error, not a new empty database; ``token customer`` needs the dev key a
dev-mode gateway made; bad times name the formats; ``serve --help`` lists the settings;
``--version``."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from gateway import keys
from gateway.cli.config_reference import settings_docs
from tests.support import make_ean


def test_a_bad_port_fails_at_once_without_starting_postgres(tmp_path: Path) -> None:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--port", "99999", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "65535" in done.stderr
    assert time.monotonic() - started < 20  # no PostgreSQL start, no migrations
    assert list(tmp_path.iterdir()) == []  # nothing created in the data directory


def test_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "--version"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    assert done.stdout.strip() == f"meterpoort {importlib.metadata.version('meterpoort')}"


def _gateway(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}  # the embedded server
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )


def test_a_mistyped_data_dir_is_an_error_not_a_new_database(tmp_path: Path) -> None:
    typo = tmp_path / "no" / "such" / "dir"
    meter = (
        "admin", "meters", "add", "--data-dir", str(typo), "--ean", make_ean(1),
        "--commodity", "electricity", "--meter-id", "M1", "--customer-id", "c1",
        "--contract-start", "2024-01-01",
    )  # fmt: skip
    for command in (meter, ("audit", "verify", "--data-dir", str(typo))):
        done = _gateway(*command)
        assert done.returncode == 1, done.stderr
        assert f"no database in {typo}" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "no").exists()  # nothing was created

    # where a database exists (migrate made it), the same command registers the meter
    home = tmp_path / "var"
    assert _gateway("migrate", "--data-dir", str(home)).returncode == 0
    done = _gateway(*(str(home) if a == str(typo) else a for a in meter))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ean"] == make_ean(1)

    # token customer: the same refusal of a directory without a database ...
    done = _gateway("token", "customer", "alice", "--data-dir", str(typo))
    assert (done.returncode, done.stdout) == (1, "")
    assert f"no database in {typo}" in done.stderr and "Traceback" not in done.stderr
    # ... and of one without the dev key: a fresh key would sign tokens no gateway trusts
    key = home / keys.DEV_CUSTOMER_KEY_FILE
    done = _gateway("token", "customer", "alice", "--data-dir", str(home))
    assert (done.returncode, done.stdout) == (1, "")
    assert f"no dev customer key {key}" in done.stderr
    assert "METERPOORT_DEV_MODE=1 python -m gateway serve" in done.stderr
    assert not key.exists() and not (tmp_path / "no").exists()
    keys.dev_customer_key(home)  # what serve with METERPOORT_DEV_MODE=1 does on start
    done = _gateway("token", "customer", "alice", "--data-dir", str(home))
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(".") == 2


def test_a_bad_time_is_a_usage_error_naming_the_formats(tmp_path: Path) -> None:
    done = _gateway(
        "admin", "meters", "end", "--ean", make_ean(1), "--at", "31-12-2024",
        "--reason", "move-out", "--data-dir", str(tmp_path),
    )  # fmt: skip
    assert done.returncode == 2
    assert "argument --at: '31-12-2024' is not a time: expected YYYY-MM-DD" in done.stderr
    assert "Invalid isoformat" not in done.stderr and "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_serve_help_lists_the_settings_and_hides_secrets() -> None:
    env = {**os.environ, "METERPOORT_ADMIN_TOKEN": "s3cret-admin-token-for-the-help-test"}
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    for doc in settings_docs():
        assert f"{doc.env[0]}" in done.stdout
    assert "METERPOORT_RETENTION_BATCH_ROWS  (default 10000)" in done.stdout
    assert "METERPOORT_ADMIN_TOKEN  (default hidden)" in done.stdout
    assert "s3cret" not in done.stdout
