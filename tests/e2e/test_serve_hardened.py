"""The gateway works under the systemd unit's ``MemoryDenyWriteExecute=yes``
(deploy/meterpoort-gateway.service): ``serve`` with two workers and the embedded PostgreSQL,
started with the kernel's MDWE flag (``prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN)``, Linux ≥
6.3), which refuses what systemd's seccomp filter refuses: memory both writable and executable,
and making mapped memory executable later. The flag is inherited by every process that serve
and PostgreSQL start. A library that generates machine code at run time (a JIT, libffi closures
on writable pages) would fail here before it fails on a production host.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import leak_audit, make_ean

#: exec the rest of argv with MDWE set; fails loudly where the kernel lacks it
MDWE_EXEC = """
import ctypes, os, sys
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    raise OSError(ctypes.get_errno(), "prctl(PR_SET_MDWE) failed: kernel older than 6.3?")
os.execv(sys.argv[1], sys.argv[1:])
"""

#: proof that the flag bites: a writable and executable mapping is refused
WX_MAP = """
import mmap, sys
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
except PermissionError:
    sys.exit(0)
sys.exit("a W+X mapping was allowed")
"""


@pytest.fixture
def serve_dir() -> Iterator[Path]:
    # outside pytest's tmp tree, which concurrent sessions prune (see test_serve.py)
    path = Path(tempfile.mkdtemp(prefix="meterpoort-mdwe-"))
    try:
        yield path
    finally:
        shutil.rmtree(path)


def under_mdwe(*argv: str) -> list[str]:
    return [sys.executable, "-c", MDWE_EXEC, *argv]


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            status: int = resp.status
            return status
    except urllib.error.HTTPError as err:
        return err.code


def test_mdwe_refuses_writable_executable_memory() -> None:
    # without this the test below would prove nothing
    assert subprocess.run([sys.executable, "-c", WX_MAP], check=False).returncode != 0
    assert subprocess.run(under_mdwe(sys.executable, "-c", WX_MAP), check=False).returncode == 0


def test_serve_runs_with_memory_deny_write_execute(serve_dir: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(METERPOORT_ADMIN_TOKEN="mdwe-admin-token", METERPOORT_RETENTION_ENABLED="false")
    proc = subprocess.Popen(
        under_mdwe(
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--port",
            str(port),
            "--workers",
            "2",
            "--data-dir",
            str(serve_dir / "var"),
        ),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, f"serve died under MDWE: {proc.communicate()}"
            try:
                if get(base + "/readyz") == 200:
                    break
            except OSError:
                pass  # not listening yet
            assert time.monotonic() < deadline, "serve did not become ready"
            time.sleep(0.2)
        # the signing key, the metrics and a write to the database (an audited registration)
        assert get(base + "/v1/keys") == 200
        assert get(base + "/metrics") == 200
        meter = {
            "ean": make_ean(1),
            "commodity": "electricity",
            "meter_id": "E0000000000000001",
            "customer_id": "cust-1",
            "contract_start": "2024-01-01T00:00:00+01:00",
        }
        request = urllib.request.Request(
            base + "/v1/admin/meters",
            data=json.dumps(meter).encode(),
            headers={
                "Authorization": "Bearer mdwe-admin-token",
                "Content-Type": "application/json",
            },
        )
        with urllib.request.urlopen(request, timeout=5) as resp:
            assert resp.status == 201
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        leak_audit.add_output("serve", err)
    assert proc.returncode == 0, err
