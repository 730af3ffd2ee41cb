"""``outagewatch report`` against the real daemon: an outage of one service in the running
month shows in every format, parsed back."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import sys
from datetime import UTC, datetime

from tests.helpers.daemon import TINY, DaemonProcess, config_text, free_port, wait
from tests.helpers.faultproxy import Fault, FaultProxy


async def report(daemon: DaemonProcess, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "outagewatch", "report", "--url", f"127.0.0.1:{daemon.port}",
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=dict(os.environ))
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_report_of_the_running_month(tmp_path, http_server, relay):
    port = free_port()
    notify = (f"notify: {{smtp: {{host: 127.0.0.1, port: {relay.port}, tls: none}},"
              " sender: 'NOC <noc@example.com>'}\n")
    async with FaultProxy(http_server.port) as proxy:
        path = tmp_path / "c.yaml"
        path.write_text(config_text(port, [
            f"{{name: web-a, platform: eu, type: http, url: 'http://127.0.0.1:{proxy.port}/'}}",
            f"{{name: web-b, platform: eu, type: http, url: 'http://127.0.0.1:{http_server.port}/'}}",
        ], state=tmp_path / "state.db", extra=notify, **TINY))
        daemon = await DaemonProcess(path).start(port)
        try:
            await asyncio.sleep(1.0)  # watched and answering a while...
            proxy.mode = Fault("stall")  # ...then web-a down until it is an outage
            await wait(lambda: "OPEN" in relay.kinds(), 8, "OPEN")
            await asyncio.sleep(1.0)
            month = f"{datetime.now(UTC):%Y-%m}"
            code, out, err = await report(daemon, "--period", month, "--format", "json")
            assert (0, "") == (code, err)
            code, table, err = await report(daemon, "--period", month, "--format", "csv")
            assert (0, "") == (code, err)
            code, text, err = await report(daemon, "--period", month)
            assert (0, "") == (code, err)
            code, _, err = await report(daemon, "--period", "2026-13")
            assert code == 2
            assert err.startswith("outagewatch: refused (422): ")
            assert len(err.splitlines()) == 1
        finally:
            await daemon.stop()
    (eu,) = json.loads(out)["platforms"]
    assert eu["incidents"] == 1
    assert eu["by_severity"]["2"] == 1
    services = {s["service"]: s for s in eu["services"]}
    assert 0 < services["web-a"]["availability"] < 1
    assert services["web-a"]["unplanned_min"] > 0
    assert services["web-b"]["availability"] == 1
    rows = {r["service"]: r for r in csv.DictReader(io.StringIO(table))}
    assert set(rows) == {"", "web-a", "web-b"}
    assert float(rows["web-a"]["availability"]) < 1
    assert f"Availability report {month}" in text
    assert [i["ticket"] for i in eu["incident_list"]] == [None]
