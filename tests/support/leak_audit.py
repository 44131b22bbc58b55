"""A pytest plugin: after the whole session, no log line may hold a secret, a raw telegram or an
actual-power value (SPEC §6). Registered from ``tests/conftest.py``.

For the whole session it

* records every log record at DEBUG and up, formatted exactly as ``serve`` writes it (one JSON
  object with every ``extra`` field and any traceback: ``gateway.cli.serve.JsonFormatter``);
* learns every secret the suite creates, without tests having to say so: the bearer tokens of
  ``gateway.tokens.generate_token``, every JWT ``jwt.encode`` signs and every ``SecretStr``
  value (fixed admin tokens included), by wrapping them when the session starts;
* takes what tests hand it: secrets made elsewhere (``add_secret``) and the captured output of
  the processes they ran (``add_output``, e.g. a ``serve`` child's stderr);

and at the end of the session fails the run (exit status 1, a report in the summary) when any
line holds one of those secrets, a DSMR data line (``1-0:1.7.0(…``), a telegram header
(``/ISK5\\…``) or an actual-power value (``01.234*kW``). The report masks what it found.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
from pydantic import SecretStr

from gateway import tokens
from gateway.cli.serve import JsonFormatter

#: a secret is looked for by its first this many characters (a dict look-up per position)
_PREFIX = 16
#: runs of characters a token, a JWT or a key can consist of
_RUN = re.compile(r"[A-Za-z0-9_\-.~+/=]{" + str(_PREFIX) + ",}")
_TELEGRAM = (
    ("telegram data line", re.compile(r"\b\d-\d{1,2}:\d{1,3}\.\d{1,3}\.\d{1,3}\(")),
    ("telegram header", re.compile(r"/[A-Z]{3}\d\\+")),
    ("actual-power value", re.compile(r"\b\d+\.\d{3}\*kW(?!h)")),
)


@dataclass
class _Audit:
    lines: list[tuple[str, str]] = field(default_factory=list)  # (source, line)
    secrets: dict[str, set[str]] = field(default_factory=dict)  # prefix → secrets
    findings: list[str] = field(default_factory=list)

    def add_secret(self, value: str) -> None:
        # short values (test placeholders like "x") and URLs (database DSNs, logged on purpose
        # without their password) are not bearer secrets
        if len(value) >= _PREFIX and "://" not in value:
            self.secrets.setdefault(value[:_PREFIX], set()).add(value)

    def secret_in(self, line: str) -> str | None:
        for run in _RUN.findall(line):
            for i in range(len(run) - _PREFIX + 1):
                for secret in self.secrets.get(run[i : i + _PREFIX], ()):
                    if run.startswith(secret, i):
                        return secret
        return None

    def check(self) -> None:
        for source, line in self.lines:
            found = [what for what, pattern in _TELEGRAM if pattern.search(line)]
            shown = line
            while (secret := self.secret_in(shown)) is not None:
                found.append("a secret")
                shown = shown.replace(secret, f"<{secret[:4]}… {len(secret)} chars>")
            if found:
                for _what, pattern in _TELEGRAM:  # the report must not leak what it found
                    shown = pattern.sub("<…>", shown)
                self.findings.append(f"{source}: {', '.join(found)}: {shown[:300]}")


_audit = _Audit()


def add_secret(value: str) -> None:
    """Register a secret made outside the wrapped functions (e.g. a token a child process
    printed); no log line of the session may contain it."""
    _audit.add_secret(value)


def add_output(source: str, text: str) -> None:
    """Audit the captured output of a process the test ran (each line like a log line)."""
    _audit.lines.extend((source, line) for line in text.splitlines())


class _Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # a record that cannot be formatted is audited raw
            line = repr(record.__dict__)
        _audit.lines.append((f"log {record.name}", line))


_recorder = _Recorder()


def _observing(fn: Callable[..., str]) -> Callable[..., str]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> str:
        value = fn(*args, **kwargs)
        _audit.add_secret(value)
        return value

    return wrapper


def _observe_secret_str() -> None:
    original = SecretStr.__init__

    def init(self: Any, secret_value: str) -> None:
        original(self, secret_value)
        if isinstance(secret_value, str):
            _audit.add_secret(secret_value)

    SecretStr.__init__ = init  # type: ignore[method-assign]


def _attach() -> None:
    root = logging.getLogger()
    if _recorder not in root.handlers:
        root.addHandler(_recorder)
    root.setLevel(logging.DEBUG)


def pytest_configure(config: pytest.Config) -> None:
    original = tokens.generate_token
    wrapped = _observing(original)
    # modules that imported the function before the session started hold the original
    for module in list(sys.modules.values()):
        if getattr(module, "generate_token", None) is original:
            module.generate_token = wrapped  # type: ignore[attr-defined]
    jwt.encode = _observing(jwt.encode)
    _observe_secret_str()
    _attach()


def pytest_runtest_teardown(item: pytest.Item) -> None:
    # a test that configures logging itself (``configure_logging`` replaces the root handlers)
    # must not end the recording
    _attach()


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _audit.check()
    if _audit.findings and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    count = sum(len(s) for s in _audit.secrets.values())
    if not _audit.findings:
        terminalreporter.write_line(
            f"leak audit: {len(_audit.lines)} log/output lines, {count} secrets: clean"
        )
        return
    terminalreporter.section("leak audit: secrets or telegram data in the logs", red=True)
    for finding in _audit.findings[:50]:
        terminalreporter.write_line(finding)
    if len(_audit.findings) > 50:
        terminalreporter.write_line(f"… and {len(_audit.findings) - 50} more")
