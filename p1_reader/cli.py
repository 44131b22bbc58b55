"""``python -m p1_reader``: read, decode, forward, simulate.

Each subcommand lives in its own module exposing ``add_parser(subparsers)`` (which registers the
subcommand and sets ``func``) so the commands do not depend on each other.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from p1_reader import decode, forwarder, reader, simulate

#: the modules implementing a subcommand, each with ``add_parser(subparsers)``
_COMMANDS = (reader, decode, forwarder, simulate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m p1_reader",
        description="Meterpoort field side: read DSMR telegrams from a P1 port and forward them.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    result: int = args.func(args)
    return result
