"""``python -m gateway serve`` as a child process, for the tests that run it the way an
operator does: start it on a free port, wait until it is ready, read its endpoints, stop it
(its stderr goes through the leak audit)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.support import free_port, leak_audit


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers or {}), timeout=5
        ) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def wait_ready(base: str, proc: subprocess.Popen[str], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"serve exited early: {proc.communicate()}"
        try:
            if get(base + "/readyz")[0] == 200:
                return
        except OSError:
            pass  # not listening yet
        time.sleep(0.2)
    raise AssertionError("serve did not become ready")


def start_serve(
    serve_dir: Path, *extra: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], str]:
    """``serve`` on a free port; ``env``: settings beyond these tests' defaults."""
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    environ["METERPOORT_ADMIN_TOKEN"] = "smoke-admin-token"
    environ["METERPOORT_RETENTION_ENABLED"] = "false"
    environ["METERPOORT_SHUTDOWN_DRAIN_S"] = "0"  # test_observability tests the drain
    environ.update(env or {})
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--port",
            str(port),
            "--data-dir",
            str(serve_dir / "var"),
            *extra,
        ],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, f"http://127.0.0.1:{port}"


def stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    leak_audit.add_output("serve", err)
    assert proc.returncode == 0, err
    return out, err


def worker_pids(
    base: str, want: int, timeout: float = 30, gone: frozenset[int] = frozenset()
) -> set[int]:
    """The pids of the live workers one scrape reports, once there are ``want`` of them and
    none of ``gone``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, _, body = get(base + "/metrics")
        except OSError:  # reset: queued on the listening socket of a worker that just died
            time.sleep(0.1)
            continue
        assert status == 200
        found = re.findall(rb'meterpoort_worker_info\{worker_pid="(\d+)"\} 1\.0', body)
        pids = {int(pid) for pid in found}
        if (len(pids) == want and not pids & gone) or time.monotonic() > deadline:
            return pids
        time.sleep(0.2)


def scraped(base: str, series: str) -> float:
    """The value of one series in a scrape (0 when absent)."""
    assert get_retrying(base + "/metrics") == 200
    _, _, body = get(base + "/metrics")
    for line in body.decode().splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def get_retrying(url: str, timeout: float = 10) -> int:
    """The status of GET ``url``, retrying refused/reset connections (a worker just died)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return get(url)[0]
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
