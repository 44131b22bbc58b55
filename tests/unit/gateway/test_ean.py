"""EAN-18 validation: 18 ASCII digits, GS1 mod-10 check digit."""

from __future__ import annotations

import pytest

from consent.ean import ean_check_digit, ean_problem, is_valid_ean
from gateway.errors import InvalidEANError
from gateway.services.registry import validate_ean

# check digits worked out by hand (weights 3,1,3,… from the left over 17 data digits)
VALID = [
    "735005385000000011",  # GS1's own GSRN example
    "871687140000000002",  # 8·3+7+1·3+6+8·3+7+1·3+4 = 78 → 2
    "000000000000000000",
]


@pytest.mark.parametrize("code", VALID)
def test_valid_codes_pass(code: str) -> None:
    assert is_valid_ean(code)
    assert validate_ean(code) == code
    assert ean_check_digit(code[:17]) == int(code[17])


@pytest.mark.parametrize("code", VALID)
def test_every_single_digit_error_is_caught(code: str) -> None:
    for pos in range(18):
        for digit in "0123456789":
            if digit == code[pos]:
                continue
            wrong = code[:pos] + digit + code[pos + 1 :]
            assert not is_valid_ean(wrong), wrong


def test_adjacent_transposition_is_caught() -> None:
    code = "871687140000000002"
    swapped = code[1] + code[0] + code[2:]  # 78… vs 87…: digits differ by 1, weights differ
    assert not is_valid_ean(swapped)


@pytest.mark.parametrize(
    ("code", "why"),
    [
        ("87168714000000000", "18 digits"),  # 17
        ("8716871400000000021", "18 digits"),  # 19
        ("", "18 digits"),
        ("87168714000000000X", "18 digits"),
        (" 71687140000000002", "18 digits"),
        ("٨٧١٦٨٧١٤٠٠٠٠٠٠٠٠٠٢", "18 digits"),  # Arabic-Indic digits: isdigit() but not ASCII
        ("871687140000000003", "check digit"),
    ],
)
def test_invalid_codes_say_why(code: str, why: str) -> None:
    problem = ean_problem(code)
    assert problem is not None and why in problem
    with pytest.raises(InvalidEANError) as info:
        validate_ean(code)
    assert info.value.errors[0].loc == ("ean",)
