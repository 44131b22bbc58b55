"""CI runs the README's test command, the very line a new user copies."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    """The shell blocks under the README's "Two commands" heading, in order."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", section, re.S)]


def test_ci_runs_the_readme_test_command() -> None:
    serve, test = readme_commands()
    assert "python -m gateway serve" in serve
    lines = [
        line.strip()
        for line in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    # the shell options and the change to the checkout's root, then exactly the README's command
    assert lines == ["set -euo pipefail", 'cd "$(dirname "$0")/.."', test]
    assert (REPO / test).is_file()
