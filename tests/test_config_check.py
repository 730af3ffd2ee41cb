"""``check-config`` says what ``run`` would meet (issue 12): a state it cannot use, a planned
window with too little notice, and warnings for a configuration that loads but would mail
nobody or measure nothing; the daemon logs the same warnings when it starts."""

from __future__ import annotations

import contextlib
import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tests.conftest import IN_CI
from tests.helpers.daemon import DaemonProcess, config_text
from tests.helpers.ports import free_port
from tests.test_cli import outagewatch

from outagewatch.config import config_warnings, load_settings
from outagewatch.core.maintenance import Calendar

WEB = "{name: web, platform: eu, type: http, url: 'http://x/'}"
RECIPIENTS = "{incident_recipients: [oncall@example.com], info_recipients: [info@example.com]}"
NOTIFY = "notify: {smtp: {host: relay.example.com}, sender: 'NOC <noc@example.com>'}\n"


def config(tmp_path: Path, *, state: str | None = None, extra: str = "",
           platform: str = RECIPIENTS, targets: str = f"  - {WEB}\n",
           notify: str = NOTIFY) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(f"platforms: {{eu: {platform}}}\ntargets:\n{targets}{notify}"
                    f"state: {{path: '{state or tmp_path / 'state' / 'state.db'}'}}\n"
                    f"server: {{listen: '127.0.0.1:{free_port()}'}}\n{extra}")
    return path


@contextlib.contextmanager
def read_only(path: Path):
    """``path`` (a file or a directory) made read-only for us: a read-only bind mount when
    we are root (permissions do not stop root), else its mode."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    try:
        subprocess.run(["mount", "--bind", str(path), str(path)], check=True,
                       capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        if IN_CI:
            raise
        pytest.skip(f"no read-only bind mount here: {exc}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True,
                       capture_output=True)
        yield
    finally:
        subprocess.run(["umount", str(path)], check=False)


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


class TestState:
    async def check_like_run(self, tmp_path: Path, state: Path) -> str:
        """check-config's line for this state is the one ``run`` fails with, and checking
        created nothing."""
        path = config(tmp_path, state=str(state))
        before = tree(tmp_path)
        code, out, _ = await outagewatch("check-config", "-c", str(path))
        assert before == tree(tmp_path)
        assert 2 == code, out
        run_code, _, err = await outagewatch("run", "-c", str(path))
        assert 2 == run_code
        refusal = [line.removeprefix("outagewatch: ") for line in err.splitlines()
                   if line.startswith("outagewatch: ")]
        assert refusal == out.splitlines()
        return out.strip()

    async def test_a_file_where_the_directory_should_be(self, tmp_path):
        (tmp_path / "file").write_text("")
        line = await self.check_like_run(tmp_path, tmp_path / "file" / "sub" / "state.db")
        assert f"state.path: cannot create {tmp_path}/file/sub: Not a directory" == line

    async def test_a_directory_for_the_state_file(self, tmp_path):
        (tmp_path / "dir").mkdir()
        (tmp_path / "dir.lock").write_text("")  # run takes its lock beside it first
        line = await self.check_like_run(tmp_path, tmp_path / "dir")
        assert f"state.path: cannot use {tmp_path}/dir: unable to open database file" == line

    async def test_a_read_only_directory(self, tmp_path):
        directory = tmp_path / "ro"
        directory.mkdir()
        with read_only(directory):
            line = await self.check_like_run(tmp_path, directory / "state.db")
        assert line.startswith(f"state.path: cannot create {directory}/state.db.lock: ")

    async def test_a_missing_directory_under_a_read_only_one(self, tmp_path):
        directory = tmp_path / "ro"
        directory.mkdir()
        with read_only(directory):
            line = await self.check_like_run(tmp_path, directory / "sub" / "state.db")
        assert line.startswith(f"state.path: cannot create {directory}/sub: ")

    async def test_a_read_only_state_file(self, tmp_path):
        directory = tmp_path / "state"
        directory.mkdir()
        state = directory / "state.db"
        state.write_bytes(b"")
        with read_only(state):
            line = await self.check_like_run(tmp_path, state)
        assert f"state.path: cannot use {state}: attempt to write a readonly database" == line

    async def test_a_state_to_be_created_is_ok_and_is_not_created(self, tmp_path):
        path = config(tmp_path, state=str(tmp_path / "new" / "dir" / "state.db"))
        assert (0, "ok\n", "") == await outagewatch("check-config", "-c", str(path))
        assert not (tmp_path / "new").exists()


def next_business_day(now: datetime) -> datetime:
    day = now + timedelta(days=1)
    while not Calendar().is_business_day(day.date()):
        day += timedelta(days=1)
    return day


class TestNotice:
    def window(self, start: datetime, kind: str = "planned") -> str:
        end = start + timedelta(hours=2)
        return (f"maintenance:\n  windows:\n    - {{id: upgrade, platform: eu, kind: {kind}, "
                f"start: '{start:%Y-%m-%dT%H:%M:%SZ}', end: '{end:%Y-%m-%dT%H:%M:%SZ}'}}\n")

    async def test_a_planned_window_with_too_little_notice_is_an_error(self, tmp_path):
        """The rule run applies when it registers the file's windows (refused there with a
        log line only), applied at check time with the time now."""
        start = next_business_day(datetime.now(UTC)).replace(hour=22, minute=0, second=0,
                                                               microsecond=0)
        code, out, _ = await outagewatch("check-config", "-c", str(
            config(tmp_path, extra=self.window(start))))
        assert 2 == code
        (line,) = out.splitlines()
        assert line.startswith("maintenance.windows[0].start: upgrade: planned maintenance must be "
                               "announced 3 business days ahead: for a start on "
                               f"{start:%a %Y-%m-%d} announce by ")
        assert line.endswith("; register it as an emergency if it cannot wait")

    @pytest.mark.parametrize("when", ["far ahead", "emergency", "over"])
    async def test_windows_run_accepts_or_has_done_with_pass(self, tmp_path, when):
        now = datetime.now(UTC).replace(microsecond=0)
        start = {"far ahead": now + timedelta(days=30), "emergency": now + timedelta(hours=1),
                 "over": now - timedelta(days=3)}[when]
        extra = self.window(start, "emergency" if when == "emergency" else "planned")
        assert (0, "ok\n", "") == await outagewatch("check-config", "-c", str(
            config(tmp_path, extra=extra)))


class TestWarnings:
    async def test_a_config_that_mails_nobody_warns_and_exits_0(self, tmp_path):
        path = config(tmp_path, notify="", platform="{incident_recipients: [], "
                                                    "info_recipients: []}")
        code, out, _ = await outagewatch("check-config", "-c", str(path))
        assert (0, [
            ("warning: notify: no section: no incident or maintenance mail is sent to anyone "
             "(add notify: {smtp: {host: ...}, sender: ...})"),
            ("warning: platforms.eu.incident_recipients: empty: outages of platform eu are "
             "mailed to nobody"),
            ("warning: platforms.eu.info_recipients: empty: maintenance of platform eu is "
             "announced to nobody"),
            "ok"]) == (code, out.splitlines())

    async def test_rules_that_cannot_measure_their_window(self, tmp_path):
        """interval longer than window, threshold not shorter than window: once at defaults
        when inherited, at the target when it sets one itself."""
        targets = "".join(f"  - {{name: w{i}, platform: eu, type: http, url: 'http://x/'}}\n"
                          for i in range(3))
        targets += ("  - {name: own, platform: eu, type: http, url: 'http://x/', "
                    "threshold: 5m, timeout: 6m}\n")
        path = config(tmp_path, targets=targets,
                      extra="defaults: {interval: 20m, window: 5m, threshold: 10s}\n")
        code, out, _ = await outagewatch("check-config", "-c", str(path))
        assert (0, [
            ("warning: defaults.interval: longer than defaults.window (5m): one BAD run is an "
             "outage, no second run falls within the window"),
            ("warning: targets[own].threshold: not shorter than window (5m, from defaults): a "
             "slow run is BAD only once the window has passed"),
            "ok"]) == (code, out.splitlines())

    def test_no_warning_for_a_complete_config(self, tmp_path):
        assert [] == config_warnings(load_settings(config(tmp_path)))

    def test_a_public_page_beside_an_open_read_api_is_a_warning(self, tmp_path, monkeypatch):
        """The public page hides hosts and tickets; the API on the same listener does not."""
        path = config(tmp_path)
        text = path.read_text().replace("server: {listen:", "server: {status_page: {public: "
                                        "true}, listen:")
        path.write_text(text)
        (warning,) = config_warnings(load_settings(path))
        assert warning.startswith("server.status_page.public: the public page hides hosts")
        monkeypatch.setenv("OW_READ", "r" * 24)
        path.write_text(text.replace("server: {", "server: {read_token_env: OW_READ, "))
        assert [] == config_warnings(load_settings(path))

    async def test_errors_and_warnings_together_exit_2(self, tmp_path):
        (tmp_path / "file").write_text("")
        path = config(tmp_path, notify="", state=str(tmp_path / "file" / "state.db"))
        code, out, _ = await outagewatch("check-config", "-c", str(path))
        assert 2 == code
        assert [f"state.path: cannot create {tmp_path}/file: File exists",
                ("warning: notify: no section: no incident or maintenance mail is sent to "
                 "anyone (add notify: {smtp: {host: ...}, sender: ...})")] == out.splitlines()


async def test_the_daemon_logs_the_warnings_at_start(tmp_path):
    """config_warning events at start, the same lines check-config prints."""
    port = free_port()
    path = tmp_path / "c.yaml"
    path.write_text(config_text(port, [WEB], state=tmp_path / "state.db"))
    daemon = await DaemonProcess(path).start(port)
    await daemon.stop()
    warnings = [e["warning"] for e in daemon.events() if e.get("event") == "config_warning"]
    assert config_warnings(load_settings(path)) == warnings
    assert [("notify: no section: no incident or maintenance mail is sent to anyone (add "
            "notify: {smtp: {host: ...}, sender: ...})")] == warnings
