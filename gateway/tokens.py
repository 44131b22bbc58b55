"""Bearer tokens and the small cache their look-ups share.

Tokens are 32 random bytes, URL-safe base64; only their SHA-256 is stored (a token is shown once,
at creation). SHA-256 without salt is enough because tokens are random, not passwords: there is no
dictionary to try.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import OrderedDict
from typing import Generic, TypeVar

TOKEN_BYTES = 32

_K = TypeVar("_K")
_V = TypeVar("_V")


def generate_token() -> str:
    """A fresh random bearer token (32 bytes of entropy, URL-safe base64, 43 characters).

    Never one starting with ``-``: pasted after ``--token`` on a command line (the field
    device's ``forward --token``), argparse would take it for an option. Drawing again costs
    1/64 of a draw's entropy on average, nothing that matters at 256 bits.
    """
    while True:
        token = secrets.token_urlsafe(TOKEN_BYTES)
        if not token.startswith("-"):
            return token


def hash_token(token: str) -> bytes:
    """The SHA-256 digest under which a token is stored and looked up."""
    return hashlib.sha256(token.encode("utf-8")).digest()


class TtlCache(Generic[_K, _V]):
    """A small bounded cache whose entries expire ``ttl`` seconds after they were stored.

    Not thread-safe; meant for one event loop. Oldest entries are evicted first when full.
    """

    def __init__(self, maxsize: int, ttl: float) -> None:
        self._maxsize = maxsize
        self._ttl = ttl
        self._data: OrderedDict[_K, tuple[float, _V]] = OrderedDict()

    def get(self, key: _K) -> tuple[bool, _V | None]:
        """``(True, value)`` for a live entry, ``(False, None)`` for a miss or an expired one."""
        item = self._data.get(key)
        if item is None:
            return False, None
        expires, value = item
        if expires < time.monotonic():
            del self._data[key]
            return False, None
        return True, value

    def put(self, key: _K, value: _V) -> None:
        self._data[key] = (time.monotonic() + self._ttl, value)
        self._data.move_to_end(key)
        while len(self._data) > self._maxsize:
            self._data.popitem(last=False)

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)
