"""The package's build backend: setuptools', plus mypy as a build requirement when the
optional compiled parser is asked for (``METERPOORT_MYPYC=1``, see ``setup.py``).

setuptools documents this in-tree wrapper for build requirements that depend on the build
("Dynamic build dependencies"): a plain ``pip install .`` needs no mypy and runs no compiler.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403 (the backend hooks this module passes through)

#: the pure core the gateway's ingest path runs per telegram, in import order; telegram.py is
#: left out (its dataclasses stay plain Python classes for every consumer)
COMPILED = ("p1_reader/obis.py", "p1_reader/timestamps.py", "p1_reader/parser.py")
#: what the compiled build needs at build time
MYPYC_REQUIREMENT = "mypy>=1.10"


_ENV = "METERPOORT_MYPYC"


def wants_mypyc() -> bool:
    """True when ``METERPOORT_MYPYC`` asks for the compiled parser."""
    return os.environ.get(_ENV, "").strip().lower() in ("1", "true", "yes")


def _requires(hook: Callable[[Any], list[str]], config_settings: Any) -> list[str]:
    if not wants_mypyc():
        return hook(config_settings)
    # setuptools runs setup.py to collect its requirements, before they are installed: it
    # must not reach for mypyc then (setup.py compiles only when METERPOORT_MYPYC is set)
    saved = os.environ.pop(_ENV)
    try:
        return [*hook(config_settings), MYPYC_REQUIREMENT]
    finally:
        os.environ[_ENV] = saved


def get_requires_for_build_wheel(config_settings: Any = None) -> list[str]:
    return _requires(_setuptools.get_requires_for_build_wheel, config_settings)


def get_requires_for_build_editable(config_settings: Any = None) -> list[str]:
    return _requires(_setuptools.get_requires_for_build_editable, config_settings)
