"""Incidents opened by hand with the real daemon and an aiosmtpd relay: a customer's report
(the agreement: "the same communication rules apply"), probes joining it, a severity set
by hand, the ticket in every mail, resolved by hand; a target removed by a reload during an
incident; ETRs refused in the past and accepted relative."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from typing import Any

from tests.helpers.daemon import TINY, DaemonProcess, config_text, free_port, wait
from tests.helpers.faultproxy import Fault, FaultProxy

TOKEN = "s3cret-operator-token-0123456789"
NOTIFY = ("notify: {{smtp: {{host: 127.0.0.1, port: {port}, tls: none}},"
          " sender: 'NOC <noc@example.com>', update_interval: 1h, coalesce: 0.3s,"
          " retry_backoff: 0.2s, retry_max: 1s}}\n")


def targets(*ports: int) -> list[str]:
    return [f"{{name: webmail-{i}, platform: eu, type: http, url: 'http://127.0.0.1:{p}/'}}"
            for i, p in enumerate(ports)]


async def start(tmp_path: Any, relay_port: int, *ports: int) -> DaemonProcess:
    port = free_port()
    path = tmp_path / "c.yaml"
    path.write_text(config_text(port, targets(*ports), state=tmp_path / "state.db",
                                extra=NOTIFY.format(port=relay_port),
                                server="token_env: OW_TOKEN", **TINY))
    return await DaemonProcess(path, env={"OW_TOKEN": TOKEN}).start(port)


async def cli(daemon: DaemonProcess, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "OUTAGEWATCH_URL": f"http://127.0.0.1:{daemon.port}",
           "OUTAGEWATCH_TOKEN": TOKEN}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "outagewatch", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env)
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def body(mail: Any) -> str:
    return str(mail.get_payload(decode=True).decode())


class TestCustomerReported:
    async def test_opened_joined_raised_and_resolved_by_hand(self, tmp_path, http_server,
                                                            relay):
        async with FaultProxy(http_server.port) as proxy:
            daemon = await start(tmp_path, relay.port, proxy.port)
            try:
                code, out, err = await cli(
                    daemon, "incident", "open", "--platform", "eu", "--severity", "3",
                    "--component", "Calendar sync", "--impact",
                    "Calendar invitations are not delivered", "--ticket", "OX-12345",
                    "--etr", "+2h")
                assert (0, "") == (code, err)
                incident = out.split()[2]
                await wait(lambda: relay.kinds() == ["OPEN"], 5, "OPEN")

                proxy.mode = Fault("stall")  # the probes now see Web-Mail down: it joins
                await wait(lambda: len(relay.mails) >= 2, 8, "UPDATE: webmail-0 down")
                code, _, err = await cli(daemon, "incident", "resolve", incident)
                assert code == 2
                assert err == (f"outagewatch: refused (409): the probes still see webmail-0 "
                               f"down: incident {incident} resolves when they recover\n")
                proxy.mode = Fault("pass")
                await wait(lambda: len(relay.mails) >= 3, 8, "UPDATE: webmail-0 restored")
                await asyncio.sleep(1.0)  # the probes' recovery does not resolve it
                assert relay.kinds() == ["OPEN", "UPDATE", "UPDATE"]

                code, out, err = await cli(daemon, "incident", "set-severity",
                                           incident.lower(), "1", "--reason",
                                           "security: possible data exposure")
                assert (0, "") == (code, err), err
                await wait(lambda: len(relay.mails) >= 4, 5, "UPDATE: severity")
                code, out, err = await cli(daemon, "incident", "resolve", incident,
                                           "--note", "Calendar cache rebuilt")
                assert (0, "") == (code, err)
                await wait(lambda: len(relay.mails) >= 5, 5, "RESOLVED")
                code, shown, err = await cli(daemon, "incident", "show", incident.lower())
                assert (0, "") == (code, err)
                code, listed, _ = await cli(daemon, "incident", "show", incident, "--json")
            finally:
                await daemon.stop()
        assert relay.kinds() == ["OPEN", "UPDATE", "UPDATE", "UPDATE", "RESOLVED"]
        mails = [m for _, m in relay.mails]
        assert all("OX-12345" in str(m["Subject"]) and "Ticket: OX-12345" in body(m)
                   for m in mails)
        first = body(mails[0])
        assert "An outage has been reported to us on platform eu." in first
        assert "- Calendar sync: Calendar invitations are not delivered" in first
        assert "Severity 3" in first
        assert "webmail-0 down" in body(mails[1])
        assert "Sev 1" in str(mails[1]["Subject"])  # its only service down: the probes raise it
        assert "webmail-0 restored" in body(mails[2])
        assert "Sev 3" in str(mails[2]["Subject"])  # back to the operators' level
        assert ("severity 3 -> 1 set by the operators: security: possible data exposure"
                in body(mails[3]))
        last = body(mails[4])
        assert "resolved by the operators" in last
        assert "Calendar cache rebuilt" in last
        assert {m["References"].split()[0] for m in mails[1:]} == {mails[0]["Message-ID"]}
        data = json.loads(listed)
        assert (data["origin"], data["ticket"], data["severity"]) == ("operator", "OX-12345", 1)
        assert data["resolved_at"] is not None
        assert "Opened by: the operators" in shown
        timeline = [line.split()[1:3] for line in shown.splitlines() if "mail " in line]
        assert timeline == [["mail", "0"], ["mail", "1"], ["mail", "2"], ["mail", "3"],
                            ["mail", "4"]]
        assert "1 sent" in shown
        assert "note" in shown
        assert "Calendar cache rebuilt" in shown

    async def test_bad_requests_are_one_line(self, tmp_path, http_server, relay):
        daemon = await start(tmp_path, relay.port, http_server.port)
        try:
            code, _, err = await cli(daemon, "incident", "open", "--platform", "us",
                                     "--severity", "2", "--component", "x", "--impact", "y")
            assert (2, "outagewatch: refused (422): no platform 'us' (known: eu) (platform)\n"
                    ) == (code, err)
            code, _, err = await cli(daemon, "incident", "open", "--platform", "eu",
                                     "--severity", "2", "--service", "imap-eu",
                                     "--impact", "y")
            assert code == 2
            assert "imap-eu: not a service of platform eu (its services: webmail-0" in err
            code, _, err = await cli(daemon, "incident", "open", "--platform", "eu",
                                     "--severity", "2", "--impact", "y")
            said = "name at least one service or component (services)"
            assert (code, err) == (2, f"outagewatch: refused (422): {said}\n")
            code, out, err = await cli(daemon, "incident", "open", "--platform", "eu",
                                       "--severity", "2", "--service", "webmail-0",
                                       "--impact", "Slow logins", "--etr",
                                       "2020-01-01T00:00:00Z")
            assert code == 2
            assert "'2020-01-01T00:00:00Z' is in the past" in err
            assert len(err.splitlines()) == 1
            code, out, err = await cli(daemon, "incident", "open", "--platform", "eu",
                                       "--severity", "2", "--service", "webmail-0",
                                       "--impact", "Slow logins")
            assert (0, "") == (code, err)
            incident = out.split()[2]
            code, _, err = await cli(daemon, "incident", "set-etr", incident,
                                     "2026-01-01T00:00:00+01:00")
            assert (code, len(err.splitlines())) == (2, 1)
            assert "is in the past" in err
            code, _, err = await cli(daemon, "incident", "set-etr", incident, "90m")
            assert (0, "") == (code, err)
            code, _, err = await cli(daemon, "incident", "attach", incident, "--ticket",
                                     "OX-77", "--component", "Calendar sync")
            assert (0, "") == (code, err)
            code, _, err = await cli(daemon, "incident", "open", "--platform", "eu",
                                     "--severity", "2", "--component", "x", "--impact", "y")
            assert code == 2
            assert f"already has an open incident {incident}: attach" in err
            await wait(lambda: len(relay.mails) >= 3, 5, "OPEN and two UPDATEs")
        finally:
            await daemon.stop()
        etr = body(relay.mails[1][1])
        assert "expected time to restoration set" in etr
        assert "Expected time to restoration: 20" in etr
        attached = relay.mails[2][1]
        assert "(ticket OX-77)" in str(attached["Subject"])
        assert "reported by the operators: Calendar sync" in body(attached)
        assert "- Calendar sync: Slow logins" in body(attached)


class TestRemovedByAReload:
    async def test_no_longer_monitored_is_not_restored(self, tmp_path, http_server, relay):
        async with FaultProxy(http_server.port, Fault("stall")) as dead:
            daemon = await start(tmp_path, relay.port, http_server.port, dead.port)
            try:
                await wait(lambda: relay.kinds() == ["OPEN"], 8, "OPEN for webmail-1")
                config = tmp_path / "c.yaml"
                text = config.read_text()
                line = next(x for x in text.splitlines() if "webmail-1" in x)
                config.write_text(text.replace(line + "\n", ""))
                daemon.signal(signal.SIGHUP)
                await wait(lambda: len(relay.mails) >= 2, 5, "RESOLVED after the reload")
            finally:
                await daemon.stop()
        assert relay.kinds() == ["OPEN", "RESOLVED"]
        text = body(relay.mails[1][1])
        assert "is over: nothing affected is monitored any more" in text
        assert "No longer monitored: webmail-1 (removed from the configuration" in text
        assert "Restored:       not observed" in text
        assert "Restored: webmail-1" not in text
