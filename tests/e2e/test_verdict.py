"""The outage verdict as the real daemon applies it: restarts across a deadline, and a
maintenance hold released by the operator (issue 8)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.helpers.daemon import TINY, DaemonProcess, config_text, free_port, wait
from tests.helpers.faultproxy import Fault, FaultProxy

from outagewatch.scheduler import stable_offset

TOKEN = "s3cret-operator-token-0123456789"
NOTIFY = ("notify: {{smtp: {{host: 127.0.0.1, port: {port}, tls: none}},"
          " sender: 'NOC <noc@example.com>', update_interval: 1h, coalesce: 0.3s,"
          " retry_backoff: 0.2s, retry_max: 1s}}\n")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class TestRestartAcrossADeadline:
    async def test_cpu_stays_idle(self, tmp_path, http_server, relay):
        """Issue 8.1: one BAD run, kill -9, and a restart after the deadline with nobody
        having watched near it: no outage, and the daemon idles until the next run (it
        used to spin on the past deadline: 0.8-0.9 CPU-seconds per second)."""
        # interval 2 s, timeout 1.5 s: nobody-watched gap 5.5 s, below the 7 s window. The
        # name puts the target's runs about 1.8 s into each interval, so the restarted daemon
        # has nearly two seconds before its first run decides anything.
        name = "webmail-12"
        assert 1.7 < stable_offset(name, 2.0) < 1.9
        port = free_port()
        async with FaultProxy(http_server.port, Fault("stall")) as proxy:
            text = config_text(port, [
                (f"{{name: {name}, platform: eu, type: http,"
                f" url: 'http://127.0.0.1:{proxy.port}/'}}")],
                state=tmp_path / "state.db", extra=NOTIFY.format(port=relay.port),
                interval="2s", timeout="1.5s", threshold="1s", window="7s")
            config = tmp_path / "c.yaml"
            config.write_text(text)
            daemon = await DaemonProcess(config).start(port)
            await daemon.wait_for(lambda: daemon.has_event("probe_overdue"), timeout=5,
                                  what="the first BAD run")
            bad_at = asyncio.get_running_loop().time()
            daemon.signal(signal.SIGKILL)
            await daemon.process.wait()
            await daemon.stop()
            # the deadline is 6 s after the run became BAD; come back well after it
            await asyncio.sleep(max(0.0, bad_at + 7.0 - asyncio.get_running_loop().time()))
            again = await DaemonProcess(config).start(port)
            try:
                before = cpu_seconds(again.process.pid)
                await asyncio.sleep(1.5)
                used = cpu_seconds(again.process.pid) - before
            finally:
                await again.stop()
        assert used < 0.5, f"{used:.2f} CPU-seconds in 1.5 s: the daemon is spinning"
        assert [] == relay.mails
        assert not again.has_event("outage_declared")


class TestMaintenanceReleasedByTheOperator:
    async def test_cancelled_window_gives_the_open_mail_at_cancel_plus_window(
            self, tmp_path, http_server, relay):
        """Issue 8.2 end to end: an emergency window over Web-Mail, which then dies: no
        incident while the window runs; cancelled through the API, the OPEN mail comes at
        the cancellation + the window (1.5 s), and the outage counts from the cancellation."""
        port = free_port()
        async with FaultProxy(http_server.port) as proxy:
            text = config_text(port, [
                (f"{{name: webmail-eu, platform: eu, type: http,"
                f" url: 'http://127.0.0.1:{proxy.port}/'}}")],
                state=tmp_path / "state.db", extra=NOTIFY.format(port=relay.port),
                server="token_env: OW_TOKEN", **TINY)
            config = tmp_path / "c.yaml"
            config.write_text(text)
            daemon = await DaemonProcess(config, env={"OW_TOKEN": TOKEN}).start(port)
            try:
                now = datetime.now(UTC)
                status, body = await daemon.request("POST", "/api/v1/maintenance", token=TOKEN,
                                                    json_body={
                    "id": "db-upgrade", "platform": "eu", "kind": "emergency",
                    "start": now.isoformat(), "end": (now + timedelta(hours=1)).isoformat()})
                assert 201 == status, body
                await wait(lambda: "STARTED" in relay.kinds(), 5, "STARTED")
                proxy.mode = Fault("stall")
                await asyncio.sleep(4.0)  # well past the 1.5 s window: held
                assert "OPEN" not in relay.kinds()
                loop = asyncio.get_running_loop()
                cancel_from = datetime.now(UTC)
                status, _ = await daemon.request("DELETE", "/api/v1/maintenance/db-upgrade",
                                                 token=TOKEN)
                cancel_to = datetime.now(UTC)
                cancelled = loop.time()
                assert 200 == status
                await wait(lambda: "OPEN" in relay.kinds(), 5, "OPEN")
                opened_after = loop.time() - cancelled
                incidents = json.loads((await daemon.get("/api/v1/incidents"))[1])
            finally:
                await daemon.stop()
        (incident,) = incidents["open"]
        started = datetime.fromisoformat(incident["started_at"])
        assert cancel_from - timedelta(seconds=0.05) <= started <= cancel_to
        assert 1.4 <= opened_after <= 3.0
        assert ["ANNOUNCEMENT", "STARTED", "CANCELLED", "OPEN"] == relay.kinds()
