"""The CLI refuses malformed and out-of-range arguments in its parser (exit 2, naming the format),
by the settings' and the API's own rules; time arguments share one parser
(tests/e2e/test_cli_flags.py runs the command)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from gateway.cli.common import TIME_FORMATS, parse_time_arg
from gateway.cli.main import build_parser
from gateway.settings import Settings
from tests.support import make_ean


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


# ---------------------------------------------------------------------------------------------
# every argument is checked in the parser: a usage error naming the format


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[Any]:
    """(command path, action) of every argument of every (sub)command."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, (*path, name))
        else:
            yield path, action


#: arguments that take any text on purpose: a file name ('-' for stdin) read by the command
_FREE_TEXT = {("admin", "meters", "import", "csv"), ("admin", "contracts", "import", "csv")}


def test_every_argument_has_a_checking_type_or_choices() -> None:
    """A new option without a type fails here: each value is checked before anything starts."""
    unchecked = []
    for path, action in _walk(build_parser()):
        if action.nargs == 0 or isinstance(action, argparse._HelpAction | argparse._VersionAction):
            continue  # flags without a value
        if (
            action.type is None
            and action.choices is None
            and (*path, action.dest) not in _FREE_TEXT
        ):
            unchecked.append(
                " ".join(
                    (*path, action.option_strings[0] if action.option_strings else action.dest)
                )
            )
    assert unchecked == []


EAN = make_ean(1)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (
            [
                "admin",
                "meters",
                "add",
                "--ean",
                "123",
                "--commodity",
                "gas",
                "--meter-id",
                "G1",
                "--customer-id",
                "c1",
                "--contract-start",
                "2024-01-01",
            ],
            "argument --ean: '123' is not an EAN-18",
        ),
        (
            [
                "admin",
                "meters",
                "end",
                "--ean",
                EAN[:-1] + str((int(EAN[-1]) + 1) % 10),
                "--at",
                "2024-01-01",
                "--reason",
                "move-out",
            ],
            "argument --ean",
        ),
        (
            [
                "admin",
                "meters",
                "add",
                "--ean",
                EAN,
                "--commodity",
                "gas",
                "--meter-id",
                "G 1",
                "--customer-id",
                "c1",
                "--contract-start",
                "2024-01-01",
            ],
            "argument --meter-id: 'G 1' is not a meter id",
        ),
        (
            [
                "admin",
                "meters",
                "add",
                "--ean",
                EAN,
                "--commodity",
                "gas",
                "--meter-id",
                "G1",
                "--customer-id",
                "c 1",
                "--contract-start",
                "2024-01-01",
            ],
            "is not a customer id (letters",
        ),
        (
            [
                "admin",
                "meters",
                "add",
                "--ean",
                EAN,
                "--commodity",
                "gas",
                "--meter-id",
                "G1",
                "--customer-id",
                "c1",
                "--contract-start",
                "1/1/2024",
            ],
            "argument --contract-start: '1/1/2024' is not a time: expected YYYY-MM-DD",
        ),
        (
            ["admin", "meters", "exchange", "--ean", EAN, "--meter-id", "E2", "--at", "2024-02-30"],
            "argument --at: '2024-02-30' is not a time: day is out of range",
        ),
        (
            [
                "admin",
                "contracts",
                "add",
                "--ean",
                EAN,
                "--customer-id",
                "c1",
                "--start",
                "2024-01-01",
                "--end",
                "soon",
            ],
            "argument --end",
        ),
        (
            ["admin", "contracts", "end", "42", "--at", "2024-01-01", "--reason", "move-out"],
            "'42' is not a contract id: expected a UUID",
        ),
        (["admin", "devices", "add", "--meter-id", ""], "argument --meter-id"),
        (["admin", "devices", "rebind", "x", "--meter-id", "E1"], "not a device id"),
        (["admin", "clients", "rotate", "x"], "'x' is not a client id: expected a UUID"),
        (["admin", "clients", "revoke", "x"], "not a client id"),
        (["admin", "clients", "add", "--name", " ", "--granularity", "P1D"], "argument --name"),
        (
            [
                "admin",
                "clients",
                "add",
                "--name",
                "b",
                "--granularity",
                "P1D",
                "--purpose",
                "spying",
            ],
            "invalid choice: 'spying'",
        ),
        (
            [
                "admin",
                "clients",
                "add",
                "--name",
                "b",
                "--granularity",
                "P1D",
                "--webhook-url",
                "ftp://x",
            ],
            "is not a webhook URL (absolute http:// or https://)",
        ),
        (["audit", "verify", "--expect-head", "abc"], "argument --expect-head"),
        (
            ["audit", "prune", "--before", "last year"],
            "argument --before: 'last year' is not a time",
        ),
        (["retention", "run", "--now", "2024-03-01T12"], "argument --now"),
        (["token", "customer", "al ice"], "argument CUSTOMER_ID: 'al ice' is not a customer id"),
        (
            ["token", "customer", "alice", "--ttl", "0s"],
            "argument --ttl: '0s': must be more than 0",
        ),
        (["serve", "--workers", "many"], "is not a valid METERPOORT_WORKERS"),
    ],
)
def test_malformed_values_are_usage_errors_naming_the_format(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)
    assert exited.value.code == 2
    assert says in capsys.readouterr().err


def test_meters_add_and_end_take_the_ean_the_same_way(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    add = parser.parse_args(
        ["admin", "meters", "add", "--ean", EAN, "--commodity", "gas", "--meter-id", "G1",
         "--customer-id", "c1", "--contract-start", "2024-01-01"]
    )  # fmt: skip
    end = parser.parse_args(
        ["admin", "meters", "end", "--ean", EAN, "--at", "2024-06-01", "--reason", "move-out"]
    )
    exchange = parser.parse_args(
        [
            "admin",
            "meters",
            "exchange",
            "--ean",
            EAN,
            "--meter-id",
            "G2",
            "--at",
            "2024-06-01",
        ]
    )
    assert add.ean == end.ean == exchange.ean
    with pytest.raises(SystemExit):  # the old positional form is gone, not silently different
        parser.parse_args(
            ["admin", "meters", "end", EAN, "--at", "2024-06-01", "--reason", "move-out"]
        )
    assert "--ean" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# time arguments


AMS = ZoneInfo("Europe/Amsterdam")


@pytest.mark.parametrize(
    ("text", "utc"),
    [
        ("2024-03-01", "2024-02-29T23:00:00+00:00"),  # a date: local midnight
        ("2024-07-01", "2024-06-30T22:00:00+00:00"),  # summer time
        ("2024-03-01T12:30", "2024-03-01T11:30:00+00:00"),  # local wall-clock time
        ("2024-03-01 12:30:15", "2024-03-01T11:30:15+00:00"),
        ("2024-03-01T12:30:15.250", "2024-03-01T11:30:15.250000+00:00"),
        ("2024-03-01T12:30:00Z", "2024-03-01T12:30:00+00:00"),
        ("2024-03-01T12:30:00z", "2024-03-01T12:30:00+00:00"),
        ("2024-03-01T12:30+05:30", "2024-03-01T07:00:00+00:00"),
        ("2024-03-01T12:30:00-01:00", "2024-03-01T13:30:00+00:00"),
        (" 2024-03-01 ", "2024-02-29T23:00:00+00:00"),
    ],
)
def test_time_arguments_in_every_documented_format(text: str, utc: str) -> None:
    assert parse_time_arg(text).resolve(AMS).isoformat() == utc


def test_a_local_time_is_read_in_the_configured_zone() -> None:
    moment = parse_time_arg("2024-03-01T12:00")
    assert moment.resolve(ZoneInfo("UTC")).hour == 12
    assert moment.resolve(ZoneInfo("America/New_York")).hour == 17
    # an instant with an offset does not depend on the zone
    fixed = parse_time_arg("2024-03-01T12:00Z")
    assert fixed.resolve(AMS) == fixed.resolve(ZoneInfo("Asia/Tokyo"))


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", TIME_FORMATS),
        ("tomorrow", TIME_FORMATS),
        ("20240301", TIME_FORMATS),  # ISO 8601 basic format: not promised
        ("2024-W09-5", TIME_FORMATS),  # week date: not promised
        ("2024-03-01T12", TIME_FORMATS),  # an hour without minutes
        ("2024-03-01T12:00+0100", TIME_FORMATS),  # an offset without its colon
        ("01-03-2024", TIME_FORMATS),
        ("2024-13-01", "month must be in 1..12"),
        ("2024-02-30", "day is out of range"),
        ("2024-03-01T24:00", "hour must be in 0..23"),
        ("1899-12-31", "out of range"),
        ("9999-12-31T23:59Z", "out of range"),
    ],
)
def test_bad_times_say_which_formats_are_accepted(text: str, says: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError) as refused:
        parse_time_arg(text)
    message = str(refused.value)
    assert says in message and "Invalid isoformat" not in message


def test_time_help_texts_name_the_formats() -> None:
    for path, action in _walk(build_parser()):
        if action.type is parse_time_arg:
            assert action.help is not None and "YYYY-MM-DD" in action.help, (path, action.dest)
            assert "METERPOORT_TZ" in action.help
