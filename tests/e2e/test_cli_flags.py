"""``python -m gateway``: a bad flag fails at once, before PostgreSQL starts; ``--version``."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import time
from pathlib import Path


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
