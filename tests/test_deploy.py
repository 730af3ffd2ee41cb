"""The shipped systemd unit passes systemd's own checker."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).parents[1] / "deploy" / "systemd" / "outagewatch.service"


def test_unit_verifies(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("systemd-analyze is missing (Debian package systemd)")
        pytest.skip("systemd-analyze is not installed")
    binary = shutil.which("outagewatch") or str(Path(sys.executable).parent / "outagewatch")
    text = UNIT.read_text().replace("/usr/local/bin/outagewatch", binary)
    text = text.replace("/bin/kill", shutil.which("kill") or "/bin/kill")
    unit = tmp_path / "outagewatch.service"
    unit.write_text(text)
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                            env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"})
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if "outagewatch.service" in line]
    assert (0, []) == (result.returncode, problems)
    assert "Type=notify" in text
    assert "WatchdogSec=" in text
