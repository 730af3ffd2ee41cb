"""The whole pipeline as a user gets it: ``outagewatch run`` on tiny thresholds against a
real service behind the faulting proxy, with aiosmtpd as the relay for the mails."""

from __future__ import annotations

import asyncio
import json
import signal

from aiosmtpd.smtp import SMTP
from tests.helpers.daemon import TINY, DaemonProcess, config_text, free_port, wait
from tests.helpers.faultproxy import Fault, FaultProxy
from tests.helpers.relay import Relay


def configure(tmp_path, port, proxy_port, relay_port, update="1s", extra_targets=()):
    notify = (f"notify: {{smtp: {{host: 127.0.0.1, port: {relay_port}, tls: none}},"
              f" sender: 'NOC <noc@example.com>', update_interval: {update}, coalesce: 0.3s,"
              " retry_backoff: 0.2s, retry_max: 1s}\n")
    text = config_text(port, [
        (f"{{name: webmail-eu, platform: eu, type: http, url: 'http://127.0.0.1:{proxy_port}/',"
        " impact: 'Users cannot reach Web-Mail.'}"),
        *extra_targets,
    ], state=tmp_path / "state.db", extra=notify, **TINY)
    path = tmp_path / "outagewatch.yaml"
    path.write_text(text)
    return path


class TestIncidentMails:
    async def test_outage_open_update_resolved(self, tmp_path, http_server, dovecot,
                                               tls_files, relay):
        """A dead Web-Mail gives OPEN after the window; Dovecot's IMAP dying too joins the
        incident (severity 1: the whole platform); UPDATEs follow the cadence; RESOLVED
        after two good runs of each. One thread, to the platform's incident list."""
        port = free_port()
        async with FaultProxy(http_server.port) as proxy, \
                FaultProxy(dovecot.imap) as imap_proxy:
            imap = (f"{{name: imap-eu, platform: eu, type: imap, host: localhost,"
                    f" port: {imap_proxy.port}, username: {dovecot.user},"
                    f" password: '{dovecot.password}', ca_file: '{tls_files['ca']}',"
                    " impact: 'Users cannot read mail with their mail programs.'}")
            config = configure(tmp_path, port, proxy.port, relay.port, extra_targets=[imap])
            daemon = await DaemonProcess(config).start(port)
            try:
                await asyncio.sleep(0.6)
                assert [] == relay.mails  # healthy: no mail
                proxy.mode = Fault("stall")
                await wait(lambda: "OPEN" in relay.kinds(), 6, "OPEN")
                imap_proxy.mode = Fault("stall")
                await wait(lambda: any("Sev 1" in m["Subject"] for _, m in relay.mails), 6,
                           "IMAP joining: severity 1")
                status = json.loads((await daemon.get("/api/v1/status"))[1])
                target = status["targets"][0]
                assert ("webmail-eu", "outage") == (target["name"], target["state"])
                assert target["outage_start"] is not None
                assert "timeout" == target["last_sample"]["result"]
                await wait(lambda: relay.kinds().count("UPDATE") >= 2, 6, "two UPDATEs")
                proxy.mode = Fault()
                imap_proxy.mode = Fault()
                await wait(lambda: "RESOLVED" in relay.kinds(), 6, "RESOLVED")
                await asyncio.sleep(0.2)
                listing = json.loads((await daemon.get("/api/v1/incidents"))[1])
            finally:
                await daemon.stop()
        assert [] == listing["open"]
        (done,) = listing["recent"]
        assert ["imap-eu", "webmail-eu"] == done["involved"]
        # an UPDATE still unsent when the RESOLVED came is superseded by it, never sent
        assert {"sent"} <= {m["status"] for m in done["mails"]} <= {"sent", "superseded"}
        assert "resolved" == done["mails"][-1]["kind"]
        kinds = relay.kinds()
        assert "OPEN" == kinds[0]
        assert "RESOLVED" == kinds[-1]
        assert {"UPDATE"} == set(kinds[1:-1])
        rcpts = {r for r, _ in relay.mails}
        assert {("oncall@example.com",)} == rcpts
        first, last = relay.mails[0][1], relay.mails[-1][1]
        incident = first["Subject"].split()[1]
        assert incident.startswith("EU-20")
        assert all(m["Subject"].startswith(f"Incident {incident} [") for _, m in relay.mails)
        ids = [m["Message-ID"] for _, m in relay.mails]
        assert len(set(ids)) == len(ids)
        assert [None, *ids[:-1]] == [m["In-Reply-To"] for _, m in relay.mails]
        joined = next(m for _, m in relay.mails if "imap-eu down" in m.get_payload())
        assert "Users cannot read mail with their mail programs." in joined.get_payload()
        assert "severity 2 -> 1" in joined.get_payload()
        body = first.get_payload()
        assert "Users cannot reach Web-Mail." in body
        assert "Expected time to restoration: unknown" in body
        assert "webmail-eu: timeout" in body
        assert "Total duration:" in last.get_payload()
        assert daemon.has_event("outage_declared")
        assert daemon.has_event("incident_resolved")

    async def test_kill_9_mid_incident(self, tmp_path, http_server, relay):
        """Killed hard after the OPEN mail and restarted: no second OPEN, the incident and
        its thread go on, and the RESOLVED mail comes once the service is back."""
        port = free_port()
        async with FaultProxy(http_server.port, Fault("stall")) as proxy:
            config = configure(tmp_path, port, proxy.port, relay.port, update="30s")
            daemon = await DaemonProcess(config).start(port)
            # killed once the OPEN is recorded as sent (the moment between the relay's 250
            # and that record is measured apart, by kill storms aimed at it)
            await wait(lambda: any(e.get("event") == "mail_sent" for e in daemon.events()),
                       6, "the OPEN recorded as sent")
            daemon.signal(signal.SIGKILL)
            await daemon.process.wait()
            await daemon.stop()
            proxy.mode = Fault()
            again = await DaemonProcess(config).start(port)
            try:
                await wait(lambda: "RESOLVED" in relay.kinds(), 6, "RESOLVED")
            finally:
                await again.stop()
        assert ["OPEN", "RESOLVED"] == relay.kinds()
        first, last = relay.mails[0][1], relay.mails[1][1]
        assert first["Message-ID"] == last["In-Reply-To"]
        assert first["Subject"].split()[1] == last["Subject"].split()[1]

    async def test_relay_down_then_everything_delivered_in_order(self, tmp_path, http_server):
        """With the relay down the mails wait in the outbox; once it is up they arrive in
        order, each once: the OPEN and the RESOLVED, whose news made the waiting UPDATEs
        stale (superseded, not sent); the RESOLVED answers the OPEN."""
        port = free_port()
        relay_port = free_port()
        sink = Relay()
        async with FaultProxy(http_server.port, Fault("stall")) as proxy:
            config = configure(tmp_path, port, proxy.port, relay_port, update="1s")
            daemon = await DaemonProcess(config).start(port)
            try:
                await asyncio.sleep(3.5)  # OPEN and some UPDATEs pile up, undeliverable
                proxy.mode = Fault()
                await asyncio.sleep(1.5)  # RESOLVED joins them
                loop = asyncio.get_running_loop()
                server = await loop.create_server(
                    lambda: SMTP(sink, hostname="relay.test"), "127.0.0.1", relay_port)
                try:
                    await wait(lambda: "RESOLVED" in sink.kinds(), 40, "RESOLVED")
                finally:
                    server.close()
            finally:
                await daemon.stop()
        kinds = sink.kinds()
        assert ["OPEN", "RESOLVED"] == kinds
        assert sink.mails[0][1]["Message-ID"] == sink.mails[1][1]["In-Reply-To"]
        ids = [m["Message-ID"] for _, m in sink.mails]
        assert len(set(ids)) == len(ids)
        numbers = [int(i.split(".")[2]) for i in ids]  # <incident.ID.NUMBER.TOKEN@domain>
        assert sorted(numbers) == numbers
