"""EAN-18 connection codes (GS1 GSRN-style): 18 digits, the last a GS1 mod-10 check digit.

Every Dutch connection is addressed by one; a code that fails the check is a typo, refused at
every entry point with the same reason.
"""

from __future__ import annotations


def ean_check_digit(first17: str) -> int:
    """The GS1 mod-10 check digit for the first 17 digits of an EAN-18.

    Weights 3 and 1 alternate from the rightmost data digit (which weighs 3).
    """
    total = 0
    for i, ch in enumerate(reversed(first17)):
        total += (ord(ch) - 48) * (3 if i % 2 == 0 else 1)
    return (10 - total % 10) % 10


def ean_problem(code: str) -> str | None:
    """Why ``code`` is not a valid EAN-18, or None when it is."""
    if len(code) != 18 or not code.isascii() or not code.isdigit():
        return "an EAN is exactly 18 digits"
    if ean_check_digit(code[:17]) != ord(code[17]) - 48:
        return "the EAN's check digit (GS1 mod 10) does not match"
    return None


def is_valid_ean(code: str) -> bool:
    """True for 18 ASCII digits whose last one is the GS1 check digit of the others."""
    return ean_problem(code) is None
