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


PROMETHEUS = Path(__file__).parents[1] / "deploy" / "prometheus"


def _promtool() -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("promtool is missing (Debian package prometheus)")
        pytest.skip("promtool is not installed")
    return promtool


def test_prometheus_rules_check_and_unit_tests():
    """promtool accepts the rules, and every alert fires (and stays quiet) as tested."""
    promtool = _promtool()
    check = subprocess.run([promtool, "check", "rules", "rules.yml"], cwd=PROMETHEUS,
                           capture_output=True, text=True)
    assert 0 == check.returncode, check.stdout + check.stderr
    tests = subprocess.run([promtool, "test", "rules", "rules.test.yml"], cwd=PROMETHEUS,
                           capture_output=True, text=True)
    assert 0 == tests.returncode, tests.stdout + tests.stderr
    assert "SUCCESS" in tests.stdout + tests.stderr
