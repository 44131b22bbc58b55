"""B1: telegram parse rate, p1_reader ÷ dsmr_parser, on the same fixture telegrams in one run.

Usage: python bench/parse.py [--seconds 2.0] [--cold]

Every fixture telegram that both parsers handle with their CRC checks on is parsed in turn by
each parser for about ``--seconds``; the rates are telegrams per second over the whole mix.
Fair comparison: dsmr_parser gets the matching telegram specification per fixture
(``dsmr_parser_spec`` in tests/fixtures/index.json), gets the
text already decoded (it wants ``str``; we take the bytes as they come off the wire), and
checks the CRC where the telegram has one (its ISKRA_IE spec does not, so the bench calls its
``validate_checksum`` explicitly for that one).

Our parser keeps three small caches; the default run (the B1 figure) has them warm, as a reader
process parsing one meter's telegrams every second does:

* per meter: decoded equipment ids and converted timestamps (gas capture times repeat for up to
  an hour). ``--cold`` clears these before every telegram, as when a gateway sees many meters in
  turn; the layout cache stays warm there, since meters of one model share their layouts.
* per layout (meter model, firmware, text-message length): where the lines of a telegram sit.
  ``--first-sight`` also clears that before every telegram: every telegram is the first of its
  kind, the worst case, which no real stream stays in. (The zone's offset changes per year,
  ``timestamps._years``, stay: they are zoneinfo's data in another shape, not anything learnt
  from telegrams.)

With the optional compiled parser built (``scripts/build-mypyc`` or ``METERPOORT_MYPYC=1 pip
install .``: mypyc extension modules in place of ``p1_reader``'s parser, timestamps and obis),
the bench measures both builds, each against dsmr_parser in its own process: the compiled one
as installed, then the pure-Python one (``--pure`` imports those modules from their ``.py``
sources). The B1 figure (and the exit status) is the build that is installed.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import importlib.util
import json
import logging
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from dsmr_parser import telegram_specifications as specs
from dsmr_parser.parsers import TelegramParser

ROOT = Path(__file__).resolve().parent.parent
# this checkout first: `scripts/build-mypyc` builds the compiled parser in place, and its shared
# runtime module (p1_reader_core__mypyc) sits at the root, which `python bench/parse.py` would
# not otherwise have on its path
sys.path.insert(0, str(ROOT))
FIXTURES = ROOT / "tests" / "fixtures"
#: SPEC §6 B1: warm caches, and every telegram the first of its kind (the cold run has no
#: target of its own: it is held to the warm one)
TARGET_WARM = 40.0
TARGET_FIRST_SIGHT = 25.0
#: the modules the optional compiled build replaces (build_support/backend.py: COMPILED)
COMPILED_MODULES = ("p1_reader.obis", "p1_reader.timestamps", "p1_reader.parser")


class _PureSources(importlib.abc.MetaPathFinder):
    """Imports ``COMPILED_MODULES`` from their ``.py`` files even where extension modules of
    the same name sit beside them (Python would otherwise prefer the extension)."""

    def __init__(self) -> None:
        spec = importlib.util.find_spec("p1_reader")  # finds without importing the package
        assert spec is not None and spec.submodule_search_locations is not None
        self.package = Path(next(iter(spec.submodule_search_locations)))

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name not in COMPILED_MODULES:
            return None
        source = self.package / (name.rpartition(".")[2] + ".py")
        return importlib.util.spec_from_file_location(name, source)


def compiled(module: ModuleType) -> bool:
    """True when ``module`` was loaded from an extension module (the mypyc build)."""
    return str(module.__file__).endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def load() -> list[tuple[str, bytes, str, TelegramParser, bool]]:
    """(name, bytes, text, dsmr_parser parser, needs explicit CRC check) per usable fixture."""
    out = []
    for entry in json.loads((FIXTURES / "index.json").read_text()):
        if entry["crc_valid"] is False:
            continue  # both parsers reject these with CRC checks on
        raw = (FIXTURES / "telegrams" / entry["file"]).read_bytes()
        spec: dict[str, Any] = getattr(specs, entry["dsmr_parser_spec"])
        extra_crc = bool(entry["has_crc"]) and not spec["checksum_support"]
        out.append((entry["file"], raw, raw.decode("latin-1"), TelegramParser(spec), extra_crc))
    return out


def measure(
    ours: Callable[[], None], theirs: Callable[[], None], count: int, seconds: float
) -> tuple[float, float, float]:
    """Interleave short timed rounds of both parsers (the machine is shared: load that comes
    and goes hits both alike). Returns (our rate, their rate, median per-round ratio)."""
    ours()  # warm up both
    theirs()
    our_time = their_time = 0.0
    our_count = their_count = 0
    ratios: list[float] = []
    deadline = time.perf_counter() + 2 * seconds
    while time.perf_counter() < deadline or not ratios:
        t0 = time.perf_counter()
        theirs()
        t1 = time.perf_counter()
        # run ours about as long as theirs took, so both see the same slice of machine load
        reps = 0
        while True:
            ours()
            reps += 1
            t2 = time.perf_counter()
            if t2 - t1 >= t1 - t0:
                break
        their_time += t1 - t0
        our_time += t2 - t1
        their_count += count
        our_count += reps * count
        ratios.append((reps * count / (t2 - t1)) / (count / (t1 - t0)))
    return our_count / our_time, their_count / their_time, statistics.median(ratios)


def main(argv: list[str] | None = None) -> int:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--seconds", type=float, default=2.0, help="time per parser (default 2)")
    args.add_argument(
        "--cold", action="store_true", help="clear the per-meter caches before each parse"
    )
    args.add_argument(
        "--first-sight", action="store_true", help="clear every cache before each parse"
    )
    args.add_argument(
        "--pure",
        action="store_true",
        help="measure the pure-Python parser even where the compiled build is installed",
    )
    opts = args.parse_args(argv)
    logging.disable(logging.CRITICAL)  # dsmr_parser logs every line it cannot parse
    if opts.pure:
        sys.meta_path.insert(0, _PureSources())
    # imported here, after --pure had its say over where these modules come from
    from p1_reader import parser as p1_parser
    from p1_reader import timestamps as p1_timestamps
    from p1_reader.parser import parse_telegram

    is_compiled = compiled(p1_parser)
    assert not (opts.pure and is_compiled), "--pure still imported the compiled parser"

    telegrams = load()
    # both parsers must accept every telegram in the mix
    for _name, raw, text, theirs, extra_crc in telegrams:
        parse_telegram(raw)
        if extra_crc:
            TelegramParser.validate_checksum(text)
        theirs.parse(text)
    ours_input = [raw for _, raw, _, _, _ in telegrams]
    theirs_input = [(text, p, extra) for _, _, text, p, extra in telegrams]

    def ours_once() -> None:
        for raw in ours_input:
            parse_telegram(raw)

    def ours_cold_once() -> None:
        for raw in ours_input:
            p1_parser._ids.clear()
            p1_timestamps._cache.clear()
            parse_telegram(raw)

    def ours_first_sight_once() -> None:
        for raw in ours_input:
            p1_parser._ids.clear()
            p1_parser._layouts.clear()
            p1_timestamps._cache.clear()
            parse_telegram(raw)

    def theirs_once() -> None:
        for text, p, extra in theirs_input:
            if extra:
                TelegramParser.validate_checksum(text)
            p.parse(text)

    n = len(telegrams)
    target = TARGET_FIRST_SIGHT if opts.first_sight else TARGET_WARM
    if opts.first_sight:
        ours_run, label = ours_first_sight_once, "ours(first sight, no caches)"
    elif opts.cold:
        ours_run, label = ours_cold_once, "ours(cold per-meter caches)"
    else:
        ours_run, label = ours_once, "ours"
    build = "compiled (mypyc)" if is_compiled else "pure Python"
    ours, theirs, median = measure(ours_run, theirs_once, n, opts.seconds)
    ratio = ours / theirs
    if not opts.pure:
        print(f"{n} fixture telegrams: {', '.join(name for name, *_ in telegrams)}")
    print(
        f"{label}, {build}: {ours:,.0f}/s  dsmr_parser {theirs:,.0f}/s  ratio {ratio:.1f}x"
        f" (median of interleaved rounds {median:.1f}x; target >= {target:g})",
        flush=True,
    )
    if is_compiled:
        # the same measurement of the pure-Python parser, in a process of its own (its exit
        # status says whether the pure build meets the target: informative here)
        subprocess.run(
            [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--pure"],
            check=False,
        )
    return 0 if ratio >= target else 1


if __name__ == "__main__":
    sys.exit(main())
