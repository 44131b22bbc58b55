"""The CLI refuses out-of-range flags in its parser, by the settings' own rules
(tests/e2e/test_cli_flags.py runs the command)."""

from __future__ import annotations

import pytest

from gateway.cli.main import build_parser
from gateway.settings import Settings


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--port", "99999"], "less than or equal to 65535"),
        (["--port", "-1"], "greater than or equal to 0"),
        (["--port", "http"], "valid integer"),
        (["--workers", "0"], "greater than or equal to 1"),
        (["--workers", "65"], "less than or equal to 64"),
    ],
)
def test_serve_flags_out_of_range_are_usage_errors(
    flags: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["serve", *flags])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flags[0]}" in err and says in err


def test_serve_flags_in_range_become_settings_values() -> None:
    args = build_parser().parse_args(["serve", "--port", "8443", "--workers", "2"])
    assert (args.port, args.workers) == (8443, 2)


def test_the_flag_bounds_are_the_settings_bounds() -> None:
    """The same rule for METERPOORT_PORT and --port: one home (gateway.settings)."""
    with pytest.raises(ValueError):
        Settings(port=99999)
    with pytest.raises(ValueError):
        Settings(workers=0)
