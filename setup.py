"""Build hook: the optional compiled build of p1_reader's parsing core.

``pip install .`` builds the pure-Python package, with no compiler run. With
``METERPOORT_MYPYC=1`` in the environment, the modules in ``COMPILED`` are also compiled with
mypyc (they are ``mypy --strict`` clean) into extension modules that Python imports in place of
their ``.py`` files: the same parser, about 1.4x (warm caches) to 1.5x (first sight) faster.
The build backend (``build_support/backend.py``) then adds mypy to the build requirements, and
a C compiler and the Python headers must be present. ``scripts/build-mypyc`` builds them in
place in a checkout; deleting the ``.so`` files returns it to pure Python.
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "build_support"))
from backend import COMPILED, wants_mypyc


def ext_modules() -> list[Extension]:
    if not wants_mypyc():
        return []
    from mypyc.build import mypycify

    return mypycify(list(COMPILED), opt_level="3", group_name="p1_reader_core")


setup(ext_modules=ext_modules())
