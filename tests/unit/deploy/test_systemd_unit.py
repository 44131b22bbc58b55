"""The gateway's systemd unit (deploy/meterpoort-gateway.service) and its environment file
(deploy/gateway.env.example): ``systemd-analyze verify`` and ``security`` on the unit, and in
Python that it keeps its hardening and fits the gateway's settings.

``systemd-analyze`` runs offline (no systemd as PID 1 needed); scripts/install-systemd-analyze
installs it (Debian's ``systemd`` package) for scripts/test.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from tests.support.settings_env import settings_env_names, settings_from

REPO = Path(__file__).resolve().parents[3]
UNIT = REPO / "deploy" / "meterpoort-gateway.service"
ENV_EXAMPLE = REPO / "deploy" / "gateway.env.example"
#: where the unit expects the project's virtualenv (deploy/README.md)
VENV_PYTHON = "/opt/meterpoort/venv/bin/python"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """``{section: {key: [values]}}`` of a unit file.

    Hand-written because configparser cannot hold what units use: a key given several times
    (``SystemCallFilter=``, ``Environment=``) and backslash-continued lines.
    """
    sections: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    section = ""
    for line in text.replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        sections[section][key.strip()].append(value.strip())
    return sections


def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT.read_text(encoding="utf-8"))


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze is missing: scripts/install-systemd-analyze installs it"
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=60, check=False)


def installed_copy(tmp_path: Path, text: str | None = None) -> Path:
    """The unit as verify can check it here: ExecStart's interpreter is this test's (verify
    insists that it exists), everything else as shipped."""
    text = UNIT.read_text(encoding="utf-8") if text is None else text
    assert VENV_PYTHON in text
    path = tmp_path / UNIT.name
    path.write_text(text.replace(VENV_PYTHON, sys.executable), encoding="utf-8")
    return path


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    result = analyze("verify", "--man=no", str(installed_copy(tmp_path)))
    # verify reports unknown keys and bad values on stderr and still exits 0: both must be clean
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        (("ProtectSystem=strict", "ProtectSystem=strct"), "protect system value"),
        (("SystemCallFilter=@system-service", "SystemCallFilter=@system-servce"), "system call"),
        (("NoNewPrivileges=yes", "NoNewPrivilege=yes"), "Unknown key"),
    ],
)
def test_verify_reports_a_broken_unit(
    tmp_path: Path, broken: tuple[str, str], message: str
) -> None:
    text = UNIT.read_text(encoding="utf-8")
    assert broken[0] in text
    result = analyze("verify", "--man=no", str(installed_copy(tmp_path, text.replace(*broken))))
    assert message in result.stderr


def test_unit_exposure_is_low(tmp_path: Path) -> None:
    # systemd's own score of the sandbox, 0 (locked down) to 10 (unprotected); the shipped
    # unit scores about 1.5. --threshold is in tenths: above 2.0 the command fails.
    path = installed_copy(tmp_path)
    result = analyze("security", "--offline=yes", "--no-pager", "--threshold=20", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    # the threshold bites: the same unit without its hardening block fails it
    bare = path.read_text(encoding="utf-8").split("# Hardening:")[0] + "\n[Install]\n"
    path.write_text(bare, encoding="utf-8")
    result = analyze("security", "--offline=yes", "--no-pager", "--threshold=20", str(path))
    assert result.returncode != 0


def test_unit_runs_the_gateway_as_its_own_user_in_a_locked_down_sandbox() -> None:
    service = unit()["Service"]
    expected = {
        "User": "meterpoort",
        "EnvironmentFile": "/etc/meterpoort/gateway.env",
        "StateDirectory": "meterpoort",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "MemoryDenyWriteExecute": "yes",
        "Restart": "on-failure",
        "KillMode": "mixed",
    }
    assert {key: service[key][-1] for key in expected} == expected
    assert set(service["RestrictAddressFamilies"][-1].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert "@system-service" in service["SystemCallFilter"]
    assert service["ExecStart"] == [f"{VENV_PYTHON} -m gateway serve"]
    # the data directory is the state directory systemd creates and keeps
    env = dict(e.split("=", 1) for e in service["Environment"])
    assert env["METERPOORT_DATA_DIR"] == f"/var/lib/{service['StateDirectory'][-1]}"
    # a crash loop ends: restarts are limited
    start_limit = unit()["Unit"]
    assert int(start_limit["StartLimitBurst"][-1]) > 0
    assert int(start_limit["StartLimitIntervalSec"][-1]) > 0


def test_unit_waits_longer_than_the_gateway_drains() -> None:
    service = unit()["Service"]
    stop = re.fullmatch(r"(\d+)", service["TimeoutStopSec"][-1])
    assert stop, service["TimeoutStopSec"]
    with settings_from(env_example_values()) as settings:
        # the drain, then stopping the embedded PostgreSQL, with room to spare
        assert int(stop.group(1)) >= 2 * settings.shutdown_timeout_s + 10


def env_example_assignments() -> list[tuple[str, str, bool]]:
    """``(name, value, active)`` of every assignment in the example, commented-out ones too
    (``active`` False). systemd's syntax: ``KEY=value``, a value in double quotes loses them."""
    found = []
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        match = re.fullmatch(r"(#?)([A-Z][A-Z0-9_]*)=(.*)", line.strip())
        if match:
            comment, name, value = match.groups()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            found.append((name, value, comment == ""))
    return found


def env_example_values() -> dict[str, str]:
    return {name: value for name, value, active in env_example_assignments() if active}


def test_env_example_names_only_settings_the_gateway_reads() -> None:
    names = {name for name, _, _ in env_example_assignments()}
    assert names, "no settings in the example"
    # Settings ignores unknown variables: a misspelt name would silently do nothing
    assert names - settings_env_names() == set()
    # the unit sets the data directory; the file must not fight it
    assert "METERPOORT_DATA_DIR" not in names


def test_env_example_values_are_valid_settings() -> None:
    with settings_from(env_example_values()) as settings:
        assert settings.admin_token is not None
        assert settings.trusted_proxies, "the example sits behind a proxy"
    # and each commented-out example is valid too, once switched on
    for name, value, active in env_example_assignments():
        if not active:
            with settings_from({**env_example_values(), name: value}):
                pass
