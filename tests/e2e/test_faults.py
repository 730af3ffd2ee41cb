"""The daemon's own faults, in real environments: a full disk, a state file locked by
another process. Each is loud (log, metric, /readyz) and survived, and no mail is lost or
doubled (issue 10)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import IN_CI
from tests.helpers.daemon import TINY, DaemonProcess, config_text, free_port, wait
from tests.helpers.faultproxy import Fault, FaultProxy

NOTIFY = ("notify: {{smtp: {{host: 127.0.0.1, port: {port}, tls: none}},"
          " sender: 'NOC <noc@example.com>', update_interval: {update}, coalesce: 0.3s,"
          " retry_backoff: 0.2s, retry_max: 1s}}\n")


@pytest.fixture(name="small_disk")
def _small_disk(tmp_path):
    """A real 512 KiB filesystem (tmpfs) for the state, and a way to fill and empty it."""
    if os.geteuid() != 0:
        message = "a full disk needs a tmpfs mount, which needs root"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path) -> Path:
    """Take every byte left on the filesystem of ``directory``."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * 4096)
    return filler


def read_only(mount: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)


def metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def configure(tmp_path, port, proxy_port, relay_port, state, update="1h"):
    text = config_text(port, [
        f"{{name: webmail-eu, platform: eu, type: http, url: 'http://127.0.0.1:{proxy_port}/'}}"
    ], state=state, extra=NOTIFY.format(port=relay_port, update=update), **TINY)
    path = tmp_path / "outagewatch.yaml"
    path.write_text(text)
    return path


class TestFullDisk:
    async def test_an_outage_is_mailed_while_the_state_cannot_be_written(
            self, tmp_path, small_disk, http_server, relay):
        """Issue 10.2: the state's disk fills up, then Web-Mail dies. The outage is still
        declared and its OPEN still leaves; the fault is loud (metric, /readyz 503); once
        there is room again it clears, everything is written, and the RESOLVED follows the
        OPEN once, with no second OPEN (with the state on a full disk there used to be no
        incident and no mail at all)."""
        port = free_port()
        async with FaultProxy(http_server.port) as proxy:
            config = configure(tmp_path, port, proxy.port, relay.port, small_disk / "s.db")
            daemon = await DaemonProcess(config).start(port)
            try:
                await asyncio.sleep(0.6)
                filler = fill(small_disk)
                proxy.mode = Fault("stall")
                await wait(lambda: "OPEN" in relay.kinds(), 10, "OPEN on a full disk")
                await daemon.wait_for(
                    lambda: daemon.has_event("fault_raised"), timeout=10, what="the fault")
                status, body = await daemon.get("/readyz")
                text = await daemon.metrics()
                assert 503 == status
                assert "state_write" in json.loads(body)["reason"]
                assert 1.0 == metric(text, 'outagewatch_fault{fault="state_write"}')
                filler.unlink()
                await daemon.wait_for(lambda: daemon.has_event("fault_cleared"), timeout=15,
                                      what="the fault cleared")
                assert 200 == (await daemon.get("/readyz"))[0]
                proxy.mode = Fault()
                await wait(lambda: "RESOLVED" in relay.kinds(), 10, "RESOLVED")
                listing = json.loads((await daemon.get("/api/v1/incidents"))[1])
            finally:
                await daemon.stop()
        assert ["OPEN", "RESOLVED"] == relay.kinds()
        (incident,) = listing["recent"]
        assert ["sent", "sent"] == [m["status"] for m in incident["mails"]]

    @pytest.mark.parametrize("how", ["full", "read-only"])
    async def test_a_start_on_a_disk_that_cannot_be_written_is_one_line(
            self, tmp_path, small_disk, how):
        """Issue 10.17: a state on a full or read-only disk stops the start with one line
        and exit 2 (a traceback and exit 1 before); the daemon writes once at start to know."""
        config, port = tmp_path / "c.yaml", free_port()
        config.write_text(config_text(port, [
            "{name: a, platform: eu, type: http, url: 'http://127.0.0.1:1/'}"],
            state=small_disk / "s.db"))
        first = await DaemonProcess(config).start(port)  # leaves a state file behind
        assert 0 == await first.stop()
        if how == "full":
            fill(small_disk)
        else:
            read_only(small_disk)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "outagewatch", "run", "-c", str(config),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(process.communicate(), 20)
        assert 2 == process.returncode
        lines = err.decode().splitlines()
        assert 1 == len(lines), lines
        assert lines[0].startswith("outagewatch: state.path: "), lines
        assert b"Traceback" not in out + err



class TestLockedState:
    async def test_updates_go_on_while_another_process_holds_the_state(
            self, tmp_path, http_server, relay):
        """Issue 10.6 and 10.1: another process holds the state file's write lock for 12 s
        during an incident with an update every second. The UPDATEs go on (they used to
        stop for good: the timer was re-armed only inside the commit that failed), the
        fault is loud while it lasts, and each mail is sent once."""
        port = free_port()
        state = tmp_path / "state.db"
        async with FaultProxy(http_server.port, Fault("stall")) as proxy:
            config = configure(tmp_path, port, proxy.port, relay.port, state, update="1s")
            daemon = await DaemonProcess(config).start(port)
            try:
                await wait(lambda: "OPEN" in relay.kinds(), 10, "OPEN")
                holder = sqlite3.connect(state, isolation_level=None)
                holder.execute("BEGIN IMMEDIATE")
                try:
                    before = len(relay.mails)
                    await asyncio.sleep(12)
                    during = len(relay.mails) - before
                    locked = await daemon.get("/readyz")
                finally:
                    holder.execute("ROLLBACK")
                    holder.close()
                await daemon.wait_for(lambda: daemon.has_event("fault_cleared"), timeout=15,
                                      what="the fault cleared")
                after = len(relay.mails)
                await asyncio.sleep(3)
                proxy.mode = Fault()
                await wait(lambda: "RESOLVED" in relay.kinds(), 10, "RESOLVED")
            finally:
                await daemon.stop()
        assert during >= 5, f"{during} UPDATEs in 12 s of a held lock"
        assert len(relay.mails) - after >= 2  # and they go on afterwards
        assert 503 == locked[0]
        assert "state_write" in json.loads(locked[1])["reason"]
        ids = [m["Message-ID"] for _, m in relay.mails]
        assert len(set(ids)) == len(ids), "a mail was sent twice"
        assert "RESOLVED" == relay.kinds()[-1]


class TestStateFileDeleted:
    async def test_deleting_the_state_file_is_noticed_and_loud(self, tmp_path, http_server):
        """Issue 10.5: the state file deleted under a running daemon is a blocking fault
        within seconds (it went unnoticed: everything was written into a file gone)."""
        port = free_port()
        state = tmp_path / "state.db"
        config = tmp_path / "c.yaml"
        config.write_text(config_text(port, [
            f"{{name: a, platform: eu, type: http, url: 'http://127.0.0.1:{http_server.port}/'}}"],
            state=state))
        daemon = await DaemonProcess(config).start(port)
        try:
            state.unlink()
            await daemon.wait_for(lambda: daemon.has_event("fault_raised"), timeout=10,
                                  what="the fault")
            status, body = await daemon.get("/readyz")
            text = await daemon.metrics()
        finally:
            await daemon.stop()
        assert 503 == status
        assert "was deleted while the daemon runs" in json.loads(body)["reason"]
        assert 1.0 == metric(text, 'outagewatch_fault{fault="state_file"}')



class TestStopWhileSending:
    async def test_sigterm_while_the_relay_is_slow_to_quit_sends_nothing_twice(
            self, tmp_path, http_server):
        """Issue 10.7: the relay accepts the OPEN but takes 3 s to answer QUIT; a SIGTERM
        then lets the dialogue end, the mail is on record, and the restarted daemon does not
        send it again (1 duplicate in 1 try before)."""
        relay = SlowQuitRelay(quit_delay=3.0)
        await relay.start()
        port = free_port()
        try:
            async with FaultProxy(http_server.port, Fault("stall")) as proxy:
                config = configure(tmp_path, port, proxy.port, relay.port, tmp_path / "s.db")
                daemon = await DaemonProcess(config).start(port)
                await wait(lambda: relay.mails, 10, "the OPEN at the relay")
                daemon.signal(signal.SIGTERM)
                assert 0 == await daemon.stop()
                again = await DaemonProcess(config).start(port)
                await asyncio.sleep(3)
                await again.stop()
        finally:
            await relay.stop()
        assert 1 == len(relay.mails), [m["Subject"] for m in relay.mails]


class SlowQuitRelay:
    """An SMTP relay that accepts every mail and answers QUIT late."""

    def __init__(self, quit_delay: float) -> None:
        self.quit_delay = quit_delay
        self.mails: list = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        from email import message_from_bytes

        from aiosmtpd.smtp import SMTP

        relay = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):  # noqa: N802
                relay.mails.append(message_from_bytes(envelope.content))
                return "250 OK"

        class Slow(SMTP):
            async def smtp_QUIT(self, arg):  # noqa: N802
                await asyncio.sleep(relay.quit_delay)
                await super().smtp_QUIT(arg)

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: Slow(Handler(), hostname="r.test"),
                                                "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
