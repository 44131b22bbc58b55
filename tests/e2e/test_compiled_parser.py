"""The optional compiled parser (mypyc, ``METERPOORT_MYPYC=1``: see setup.py) builds, is the one
imported where it is installed, and parses exactly as the pure-Python parser does.

The build runs in a temporary copy of the package (never in this checkout), then the same
script parses every fixture telegram, damaged variants of them, and each telegram three times
(first sight, second sight, known layout) under both builds, each in its own interpreter; the
outcomes (every field and object, or the error class and message) must be identical.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# run in each interpreter: prints one line per outcome, and which build parsed
SCRIPT = r"""
import importlib.machinery, json, sys
from pathlib import Path
from p1_reader import parser
from p1_reader.parser import parse_telegram

fixtures = Path(sys.argv[1])
ext = tuple(importlib.machinery.EXTENSION_SUFFIXES)
print("compiled" if str(parser.__file__).endswith(ext) else "pure")
for entry in json.loads((fixtures / "index.json").read_text()):
    raw = (fixtures / "telegrams" / entry["file"]).read_bytes()
    variants = [raw, raw.replace(b"*kWh", b"*kwh", 1), raw.replace(b")\r\n", b")\n"),
                raw.replace(b"(", b"", 1), raw[: len(raw) // 2], raw.replace(b"S)", b"X)", 1)]
    for index, data in enumerate(variants):
        for sight in range(3):
            for crc in (None, False):
                try:
                    t = parse_telegram(data, require_crc=crc)
                except Exception as exc:
                    outcome = f"{type(exc).__name__}: {exc}"
                else:
                    fields = [getattr(t, name) for name in t.__slots__ if name != "objects"]
                    outcome = repr((fields, dict(t.objects)))
                print(entry["file"], index, sight, crc, outcome)
"""


def _copy_package(target: Path) -> None:
    shutil.copytree(
        ROOT / "p1_reader",
        target / "p1_reader",
        ignore=shutil.ignore_patterns("*.so", "__pycache__"),
    )


def _outcomes(workdir: Path) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(ROOT / "tests" / "fixtures")],
        cwd=workdir,
        env={**os.environ, "PYTHONPATH": str(workdir)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.splitlines()


@pytest.mark.slow
def test_compiled_parser_parses_as_the_pure_one(tmp_path: Path) -> None:
    pure, compiled = tmp_path / "pure", tmp_path / "compiled"
    _copy_package(pure)
    _copy_package(compiled)
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, compiled / name)
    shutil.copytree(ROOT / "build_support", compiled / "build_support")
    build = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
        cwd=compiled,
        env={**os.environ, "METERPOORT_MYPYC": "1"},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    built = sorted(p.name.split(".")[0] for p in (compiled / "p1_reader").glob("*.so"))
    assert built == ["obis", "parser", "timestamps"]

    pure_out, compiled_out = _outcomes(pure), _outcomes(compiled)
    assert pure_out[0] == "pure" and compiled_out[0] == "compiled"
    assert len(pure_out) > 1000
    # both refuse some variants and accept others: the comparison covers both paths
    assert any("Error: " in line for line in pure_out)
    assert any("Error: " not in line for line in pure_out[1:])
    assert compiled_out[1:] == pure_out[1:]
