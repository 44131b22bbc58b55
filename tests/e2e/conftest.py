"""Fixtures shared by the end-to-end tests."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def workdir() -> Iterator[Path]:
    """Where the processes run (no stray ``.env`` from the checkout; spool and data dir inside).
    Outside pytest's tmp tree: concurrent pytest sessions prune that tree."""
    path = Path(tempfile.mkdtemp(prefix="meterpoort-e2e-"))
    try:
        yield path
    finally:
        shutil.rmtree(path)
