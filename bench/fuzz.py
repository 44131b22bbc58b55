"""Fuzz the framer and the parser with a few hundred thousand hostile inputs, dsmr_parser beside.

Usage: python bench/fuzz.py [--inputs 300000] [--seed 1] [--out fuzz-failures]

The inputs come from the generators of the property tests (``tests/support/telegram_fuzz.py``:
mutated fixture telegrams, most with a recomputed CRC so they reach the value parsing, and
junk), drawn from ``random.Random(seed)``, so a run is reproducible. Each input is framed (a
fresh ``Framer``, ``feed`` + ``flush``) and parsed (``parse_telegram``). Anything raised other
than ``P1Error`` is a bug: the input is written to ``--out/<sha256>.bin`` (move it to
``tests/fixtures/fuzz/`` and ``test_fuzz_parser.py`` keeps it as a regression case) and the
exit status is 1.

Rates are inputs per second, measured in the same run on the same inputs, in interleaved
blocks (the machine is shared: load that comes and goes hits both alike): our parser beside
dsmr_parser's ``TelegramParser`` (the telegram specification of each input's base fixture, as
``bench/parse.py`` picks it, text already decoded, every exception caught), our framer beside
its ``TelegramBuffer``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dsmr_parser import telegram_specifications as specs
from dsmr_parser.clients.telegram_buffer import TelegramBuffer
from dsmr_parser.parsers import TelegramParser

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the generators live with the tests

from p1_reader.errors import P1Error  # noqa: E402
from p1_reader.framing import Framer  # noqa: E402
from p1_reader.parser import parse_telegram  # noqa: E402
from tests.support.telegram_fuzz import fixture_telegrams, hostile_telegram  # noqa: E402

BLOCK = 5_000


def main(argv: list[str] | None = None) -> int:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--inputs", type=int, default=300_000, help="inputs (default 300000)")
    args.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    args.add_argument("--out", type=Path, default=Path("fuzz-failures"), help="failing inputs")
    opts = args.parse_args(argv)
    logging.disable(logging.CRITICAL)  # dsmr_parser logs every line it cannot parse

    bases = fixture_telegrams()
    index = {e["file"]: e for e in json.loads((ROOT / "tests/fixtures/index.json").read_text())}
    theirs_by_base = [
        TelegramParser(getattr(specs, index[name]["dsmr_parser_spec"])) for name, _ in bases
    ]
    rng = random.Random(opts.seed)
    inputs = [hostile_telegram(rng, bases) for _ in range(opts.inputs)]
    texts = [(theirs_by_base[k], data.decode("latin-1")) for k, data in inputs]

    failures: dict[bytes, str] = {}
    outcomes: Counter[str] = Counter()

    def ours_parse(lo: int, hi: int) -> None:
        for _, data in inputs[lo:hi]:
            try:
                parse_telegram(data)
                outcomes["parsed"] += 1
            except P1Error as exc:
                outcomes[exc.reason] += 1
            except Exception:  # the bug this bench looks for: keep it, do not stop
                failures[data] = "parse_telegram: " + traceback.format_exc()

    def ours_frame(lo: int, hi: int) -> None:
        for _, data in inputs[lo:hi]:
            try:
                framer = Framer()
                framer.feed(data)
                framer.finish()
            except Exception:
                failures[data] = "Framer: " + traceback.format_exc()

    def theirs_parse(lo: int, hi: int) -> None:
        for parser, text in texts[lo:hi]:
            try:
                parser.parse(text)
            except Exception:  # its refusals come as many exception types
                pass

    def theirs_frame(lo: int, hi: int) -> None:
        for _, text in texts[lo:hi]:
            buffer = TelegramBuffer()
            buffer.append(text)
            list(buffer.get_all())

    print(f"{len(inputs):,} inputs (seed {opts.seed}) from {len(bases)} fixture telegrams")
    for what, ours, theirs, reference in (
        ("parse", ours_parse, theirs_parse, "dsmr_parser TelegramParser"),
        ("frame", ours_frame, theirs_frame, "dsmr_parser TelegramBuffer"),
    ):
        our_rate, their_rate = measure(ours, theirs, len(inputs))
        print(
            f"{what}: ours {our_rate:,.0f} inputs/s  {reference} {their_rate:,.0f} inputs/s"
            f"  ratio {our_rate / their_rate:.1f}x"
        )
    print("parse outcomes: " + ", ".join(f"{k} {v:,}" for k, v in outcomes.most_common()))
    if not failures:
        print("no input raised anything but P1Error")
        return 0
    opts.out.mkdir(parents=True, exist_ok=True)
    for data, why in failures.items():
        path = opts.out / f"{hashlib.sha256(data).hexdigest()[:16]}.bin"
        path.write_bytes(data)
        path.with_suffix(".txt").write_text(why)
    print(f"{len(failures)} input(s) raised something else: written to {opts.out}/")
    return 1


def measure(
    ours: Callable[[int, int], Any], theirs: Callable[[int, int], Any], n: int
) -> tuple[float, float]:
    """(our inputs/s, their inputs/s) over blocks of the inputs, the two interleaved."""
    our_time = their_time = 0.0
    for lo in range(0, n, BLOCK):
        hi = min(n, lo + BLOCK)
        t0 = time.perf_counter()
        ours(lo, hi)
        t1 = time.perf_counter()
        theirs(lo, hi)
        t2 = time.perf_counter()
        our_time += t1 - t0
        their_time += t2 - t1
    return n / our_time, n / their_time


if __name__ == "__main__":
    sys.exit(main())
