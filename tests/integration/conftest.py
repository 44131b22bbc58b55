"""Fixtures shared by the integration tests."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def serve_dir() -> Iterator[Path]:
    """A data directory outside pytest's tmp tree (concurrent pytest sessions prune that tree,
    which would pull the data directory from under a running server)."""
    path = Path(tempfile.mkdtemp(prefix="meterpoort-serve-"))
    try:
        yield path
    finally:
        shutil.rmtree(path)
