"""The pure core stays pure: parsing, framing and decoding never load pyserial or aiohttp.

Each check runs in a fresh interpreter, because this test process has long imported everything
(other tests open pseudo-terminals and HTTP servers), so its ``sys.modules`` proves nothing.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
PACKAGE = REPO / "p1_reader"
TELEGRAM = REPO / "tests" / "fixtures" / "telegrams" / "nodedsmr_v5_nl_iskra_am550.txt"

SERIAL = frozenset({"serial", "serial_asyncio_fast"})
HTTP = frozenset({"aiohttp"})
#: modules that must import without any I/O dependency (``decode`` reads files, nothing else)
PURE = (
    "errors",
    "crc",
    "obis",
    "timestamps",
    "telegram",
    "parser",
    "framing",
    "decrypt",
    "encode",
    "jsonout",
    "cliargs",
    "profiles",
    "sources",
    "thinning",
    "decode",
)


def loaded_after(code: str) -> set[str]:
    """Top-level packages in ``sys.modules`` after running ``code`` in a new interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    proc = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    # the last line: whatever the code printed before (decode's JSON lines) comes first
    modules: list[str] = json.loads(proc.stdout.splitlines()[-1])
    return {name.partition(".")[0] for name in modules}


def test_pure_core_and_the_decode_parser_load_neither_serial_nor_http() -> None:
    code = "\n".join(
        [
            "import argparse",
            *(f"import p1_reader.{name}" for name in PURE),
            "from p1_reader import decode",
            "parser = argparse.ArgumentParser()",
            "decode.add_parser(parser.add_subparsers())",
            # parsing runs the --key type as well, not only its registration
            "parser.parse_args(['decode', '--key', '00' * 16, '--no-aad', 'capture.hex'])",
        ]
    )
    assert loaded_after(code) & (SERIAL | HTTP) == set()


def test_decode_through_the_cli_does_not_load_pyserial() -> None:
    # the CLI registers every subcommand (read and forward included) before it runs one
    code = "\n".join(
        [
            "from p1_reader.cli import main",
            f"assert main(['decode', {str(TELEGRAM)!r}]) == 0",
        ]
    )
    assert loaded_after(code) & SERIAL == set()


def test_only_the_serial_port_module_imports_pyserial() -> None:
    importers: set[str] = set()
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            if any(name.partition(".")[0] in SERIAL for name in names):
                importers.add(path.stem)
    assert importers == {"serial_port"}
