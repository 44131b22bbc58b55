"""How the field device reads the gateway's per-telegram answer (``outcome_of``)."""

from __future__ import annotations

from p1_reader.gateway_client import OutcomeKind, outcome_of


def test_an_answer_lists_each_rejection() -> None:
    outcome = outcome_of(
        {"accepted": 2, "rejected": [{"index": 1, "reason": "bad-crc", "detail": "CRC"}]}
    )
    assert outcome.kind is OutcomeKind.DELIVERED
    assert (outcome.accepted, outcome.rejected, outcome.omitted) == (2, ((1, "bad-crc", "CRC"),), 0)


def test_rejections_the_gateway_summarised_still_count() -> None:
    """A bounded answer lists some rejections and counts the rest: the device's tally of
    answered telegrams (accepted + rejected) still matches what it sent."""
    outcome = outcome_of(
        {
            "accepted": 0,
            "rejected": [{"index": 0, "reason": "bad-format", "detail": "x"}],
            "rejected_omitted": 999,
            "rejected_by_reason": {"bad-format": 1000},
        }
    )
    assert outcome.accepted + len(outcome.rejected) + outcome.omitted == 1000


def test_a_nonsense_omitted_count_is_ignored() -> None:
    for bad in (-5, "7", None, 1.5):
        assert outcome_of({"accepted": 1, "rejected": [], "rejected_omitted": bad}).omitted == 0
