"""The unit file: passes `systemd-analyze verify` and says what operations rely on."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness import REPO

UNIT = REPO / "systemd" / "ringd.service"


def unit_lines() -> dict[str, list[str]]:
    section, out = "", {}
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out.setdefault(f"{section}.{key}", []).append(value)
    return out


def test_the_unit_passes_systemd_analyze_verify_without_a_warning(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    ringd = Path(sys.executable).parent / "ringd"
    assert ringd.exists(), "the ringd console script is installed beside this python"
    unit = tmp_path / "ringd.service"
    unit.write_text(UNIT.read_text().replace("/opt/ringd/bin/ringd", str(ringd)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "" and result.stdout.strip() == "", (
        result.stderr + result.stdout
    )


def test_the_unit_is_a_notify_service_with_reload_watchdog_and_gpu_access() -> None:
    lines = unit_lines()
    assert lines["Service.Type"] == ["notify"]
    assert lines["Service.ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert lines["Service.Restart"] == ["on-failure"]
    assert lines["Service.WatchdogSec"] and lines["Service.User"] == ["ringd"]
    assert lines["Service.StateDirectory"] == ["ringd"] and lines["Service.RuntimeDirectory"] == [
        "ringd"
    ]
    assert lines["Service.KillMode"] == ["mixed"]
    assert "Service.PrivateDevices" not in lines, "PrivateDevices hides /dev/nvidia*"
    assert any(v.startswith("char-nvidia-frontend") for v in lines["Service.DeviceAllow"])
    assert "Service.MemoryDenyWriteExecute" not in lines


def test_documentation_names_nothing_that_an_install_lacks() -> None:
    # It named file:///opt/ringd/README.md, which pip never installs (issue 14).
    for uri in unit_lines().get("Unit.Documentation", []):
        for one in uri.split():
            assert one.startswith(("https://", "http://", "man:")), one


def test_the_unit_lets_rsync_reach_other_hosts_as_ringd() -> None:
    """remotes: and models.publish: run rsync over ssh (or to rsync daemons) as ringd."""
    lines = unit_lines()
    families = lines["Service.RestrictAddressFamilies"][0].split()
    assert {"AF_INET", "AF_INET6"} <= set(families)
    assert "network-online.target" in lines["Unit.After"][0]
    assert "network-online.target" in lines["Unit.Wants"][0]
    # ssh reads the key and writes known_hosts in ringd's home, the state directory.
    sysusers = (REPO / "systemd" / "ringd.sysusers.conf").read_text()
    assert " /var/lib/ringd" in sysusers and lines["Service.StateDirectory"] == ["ringd"]
    assert lines["Service.ProtectHome"] == ["read-only"]
    assert "Service.PrivateNetwork" not in lines and "Service.IPAddressDeny" not in lines
