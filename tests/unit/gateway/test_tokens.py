"""Bearer tokens survive a command line: none starts with '-' (argparse would read an option)."""

from __future__ import annotations

import argparse

from gateway.tokens import generate_token, hash_token


def test_tokens_never_start_with_a_dash_and_parse_as_an_option_value() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--token")
    # 1 in 64 URL-safe base64 tokens starts with '-': 2000 draws meet ~31 of them
    for _ in range(2000):
        token = generate_token()
        assert not token.startswith("-")
        assert len(token) == 43
        assert parser.parse_args(["--token", token]).token == token


def test_tokens_are_distinct_and_stored_by_hash() -> None:
    tokens = {generate_token() for _ in range(100)}
    assert len(tokens) == 100
    assert len({hash_token(t) for t in tokens}) == 100
