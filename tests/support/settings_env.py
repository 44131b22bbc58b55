"""The environment variables ``gateway.settings.Settings`` reads, for checks of the deploy files.

``Settings`` ignores unknown ``METERPOORT_*`` variables (``extra="ignore"``), so a misspelt name
in a compose file or an environment file would silently do nothing; these helpers let a test
name every variable the deploy files set and build the settings they amount to.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import pytest
from pydantic import BaseModel

from gateway.settings import Settings

PREFIX = "METERPOORT_"


def settings_env_names() -> frozenset[str]:
    """Every variable name a setting is read from (nested models: ``METERPOORT_<NEST>_<NAME>``)."""
    names = {"DATABASE_URL"}
    for name, field in Settings.model_fields.items():
        nested = field.annotation
        if isinstance(nested, type) and issubclass(nested, BaseModel):
            names.update(f"{PREFIX}{name}_{sub}".upper() for sub in nested.model_fields)
        else:
            names.add(f"{PREFIX}{name}".upper())
    return frozenset(names)


@contextmanager
def settings_from(env: Mapping[str, str]) -> Iterator[Settings]:
    """``Settings`` built from exactly ``env`` (no other variable, no ``.env`` file)."""
    with pytest.MonkeyPatch.context() as mp:
        for key in list(os.environ):
            if key.startswith(PREFIX) or key == "DATABASE_URL":
                mp.delenv(key)
        for key, value in env.items():
            mp.setenv(key, value)
        yield Settings(_env_file=None)  # type: ignore[call-arg]
