"""Test support code shared by integration and e2e tests (fakes of our own interfaces)."""

from gateway.registry import ean_check_digit


def make_ean(n: int) -> str:
    """A valid 18-digit EAN (GS1 check digit) numbered ``n``."""
    body = f"8716{n:013d}"
    return body + str(ean_check_digit(body))
