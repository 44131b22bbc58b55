"""Reading an all-or-nothing CSV import (``admin meters import``, ``admin contracts import``):
a header-checked table read into numbered records, and the CsvImportError refusing the file.

What a row means is the importer's business; this module only checks the table's shape (the
header names every required column, no unknown or repeated one; each row has the header's
width) and reports each problem as a FieldError at ``("line", n, column or "row"|"header")``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.errors import CsvImportError, FieldError


@dataclass(frozen=True, slots=True)
class CsvRecord:
    """One row of the table: the (1-based, physical) line it ended on and its stripped fields
    by column; an optional column absent from the header reads as ``""``."""

    line: int
    values: dict[str, str]


def read_csv_table(
    text: str, required: Sequence[str], optional: Sequence[str] = ()
) -> tuple[list[CsvRecord], list[FieldError]]:
    """The records of a CSV whose header line names its columns, and one error per row of the
    wrong width (in line order). A missing header or a bad one (missing, unknown or repeated
    columns) is a single error and no records."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return [], [FieldError(("line", 1, "row"), "empty file: expected a header line")]
    header = [h.strip().lstrip("\ufeff") for h in header]
    columns = (*required, *optional)
    missing = [c for c in required if c not in header]
    unknown = [c for c in header if c not in columns]
    if missing or unknown or len(set(header)) != len(header):
        parts = []
        if missing:
            parts.append(f"missing columns {missing}")
        if unknown:
            parts.append(f"unknown columns {unknown}")
        if len(set(header)) != len(header):
            parts.append("repeated columns")
        return [], [FieldError(("line", 1, "header"), "; ".join(parts))]
    absent = dict.fromkeys((c for c in optional if c not in header), "")
    width = len(header)

    records: list[CsvRecord] = []
    errors: list[FieldError] = []
    for record in reader:
        line = reader.line_num
        if not record or (len(record) == 1 and not record[0].strip()):
            continue  # blank lines carry no row
        if len(record) != width:
            errors.append(
                FieldError(("line", line, "row"), f"expected {width} fields, got {len(record)}")
            )
            continue
        values = dict(zip(header, (f.strip() for f in record), strict=True))
        records.append(CsvRecord(line, {**values, **absent}))
    return records, errors


def in_line_order(errors: list[FieldError]) -> list[FieldError]:
    """``errors`` by line, each line's in the order given (a stable sort): the table's errors
    among the ones an importer found in its records, as one pass over the file lists them."""
    return sorted(errors, key=lambda e: int(e.loc[1]))


def csv_import_error(errors: list[FieldError], outcome: str = "nothing imported") -> CsvImportError:
    """The CsvImportError refusing a whole file for ``errors`` (listed as given); its message
    counts the bad lines and names the first ten."""
    lines = sorted({int(e.loc[1]) for e in errors})
    shown = ", ".join(str(n) for n in lines[:10]) + (" …" if len(lines) > 10 else "")
    return CsvImportError(f"{len(lines)} bad row(s), {outcome}; lines: {shown}", errors)
