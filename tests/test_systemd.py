"""The notify protocol against a fake NOTIFY_SOCKET, and the watchdog's honesty."""

from __future__ import annotations

import asyncio
import signal
import socket
import tempfile
from pathlib import Path

from tests.helpers.daemon import DaemonProcess, config_text, free_port

from outagewatch.config import credential_path
from outagewatch.systemd import notify, watchdog, watchdog_period


class FakeSystemd:
    """A datagram socket where systemd would listen."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="owsd-", dir="/tmp"))
        self.path = self.dir / "notify"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def drain(self):
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return

    def close(self):
        self.sock.close()


async def test_daemon_speaks_the_protocol(tmp_path, http_server):
    """READY=1 with a STATUS once up; WATCHDOG=1 pings at half WatchdogSec; STOPPING=1."""
    systemd = FakeSystemd()
    port = free_port()
    config = tmp_path / "c.yaml"
    config.write_text(config_text(port, [
        f"{{name: web, platform: eu, type: http, url: 'http://127.0.0.1:{http_server.port}/'}}",
    ]))
    daemon = await DaemonProcess(config, env={"NOTIFY_SOCKET": str(systemd.path),
                                              "WATCHDOG_USEC": "400000"}).start(port)
    try:
        await asyncio.sleep(1.0)
        daemon.signal(signal.SIGTERM)
        await daemon.process.wait()
    finally:
        await daemon.stop()
        systemd.drain()
        systemd.close()
    first = systemd.messages[0]
    assert first.startswith("READY=1\nSTATUS=1 targets; open incidents: none")
    pings = [m for m in systemd.messages if m.startswith("WATCHDOG=1")]
    assert 3 <= len(pings) <= 7  # every 0.2 s for about a second
    assert "STOPPING=1" == systemd.messages[-1]


async def test_watchdog_withheld_when_the_scheduler_is_stuck():
    sent: list[str] = []
    ages = iter([0.01, 0.01, 5.0, 5.0, 5.0, 5.0])

    def send(message: str) -> bool:
        sent.append(message)
        return True

    task = asyncio.create_task(watchdog(0.05, lambda: next(ages, 5.0), send=send))
    await asyncio.sleep(0.28)
    task.cancel()
    assert ["WATCHDOG=1", "WATCHDOG=1"] == sent


def test_no_systemd_no_messages():
    assert notify("READY=1", environ={}) is False
    assert watchdog_period({}) is None
    assert 2.5 == watchdog_period({"WATCHDOG_USEC": "5000000"})
    assert watchdog_period({"WATCHDOG_USEC": "5000000", "WATCHDOG_PID": "1"}) is None


def test_abstract_socket_name():
    name = f"@outagewatch-test-{free_port()}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind("\0" + name[1:])
    try:
        assert notify("READY=1", environ={"NOTIFY_SOCKET": name})
        assert b"READY=1" == server.recv(100)
    finally:
        server.close()


def test_credentials_directory(monkeypatch, tmp_path):
    """LoadCredential=: a relative password_file is found in $CREDENTIALS_DIRECTORY."""
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert tmp_path / "imap-probe" == credential_path("imap-probe")
    assert Path("/run/secrets/x") == credential_path("/run/secrets/x")
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    assert Path("imap-probe") == credential_path("imap-probe")


class WedgingClock:
    """The system clock, except that after a few rounds the scheduler's sleep never ends:
    a scheduler wedged on something while the event loop itself stays healthy."""

    def __init__(self, rounds: int) -> None:
        from outagewatch.clock import SystemClock

        self._real = SystemClock()
        self._rounds = rounds
        self.now = self._real.now
        self.monotonic = self._real.monotonic
        self.call_at = self._real.call_at

    async def sleep_until(self, deadline: float) -> None:
        self._rounds -= 1
        if self._rounds <= 0:
            await asyncio.Event().wait()
        await self._real.sleep_until(deadline)


async def test_a_wedged_scheduler_stops_the_watchdog(tmp_path, monkeypatch, http_server):
    """The loop keeps answering (/healthz) but the scheduler is stuck: WATCHDOG=1 stops, so
    systemd would restart the service."""
    import aiohttp

    from outagewatch.app import Daemon
    from outagewatch.config import load_settings

    systemd = FakeSystemd()
    monkeypatch.setenv("NOTIFY_SOCKET", str(systemd.path))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # a ping every 0.2 s
    port = free_port()
    config = tmp_path / "c.yaml"
    config.write_text(config_text(port, [
        f"{{name: web, platform: eu, type: http, url: 'http://127.0.0.1:{http_server.port}/'}}",
    ]))
    daemon = Daemon(load_settings(config), clock=WedgingClock(rounds=3))
    task = asyncio.create_task(daemon.run())
    try:
        await asyncio.sleep(2.5)  # wedged after ~1.5 s; pings stop once 2 periods pass
        systemd.drain()
        before = len(systemd.messages)
        await asyncio.sleep(1.0)
        async with aiohttp.ClientSession() as session, session.get(
                f"http://127.0.0.1:{port}/healthz") as response:
            assert 200 == response.status  # the loop is fine
        systemd.drain()
    finally:
        daemon.stop()
        await task
        systemd.close()
    assert any(m.startswith("WATCHDOG=1") for m in systemd.messages[:before])
    assert not any(m.startswith("WATCHDOG=1") for m in systemd.messages[before:])


def test_a_full_notify_socket_never_blocks_the_daemon():
    """systemd busy (or a listener that does not read): once its queue is full, a ping is
    dropped and logged; it never blocks (a blocking send stopped the whole event loop)."""
    systemd = FakeSystemd()
    try:
        environ = {"NOTIFY_SOCKET": str(systemd.path)}
        sent = [notify("WATCHDOG=1", environ=environ) for _ in range(200)]
    finally:
        systemd.close()
    assert sent[0]
    assert not sent[-1]
