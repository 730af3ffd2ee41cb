"""The operator API of a running daemon: token, maintenance lifecycle, incident changes."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

from tests.helpers.daemon import TINY, DaemonProcess, config_text, free_port, wait
from tests.helpers.faultproxy import Fault, FaultProxy

TOKEN = "s3cret-operator-token-0123456789"


async def start(tmp_path, http_port, relay_port, *, token=True):
    port = free_port()
    notify = (f"notify: {{smtp: {{host: 127.0.0.1, port: {relay_port}, tls: none}},"
              " sender: 'NOC <noc@example.com>', update_interval: 1h, coalesce: 0.3s,"
              " retry_backoff: 0.2s, retry_max: 1s}\n")
    text = config_text(port, [
        f"{{name: webmail-eu, platform: eu, type: http, url: 'http://127.0.0.1:{http_port}/'}}",
    ], state=tmp_path / "state.db", extra=notify,
        server="token_env: OW_TOKEN" if token else "", **TINY)
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return await DaemonProcess(path, env={"OW_TOKEN": TOKEN}).start(port)


def iso(minutes: float) -> str:
    return (datetime.now(UTC) + timedelta(minutes=minutes)).isoformat()


def window(**over):
    return {"id": "db-upgrade", "platform": "eu", "kind": "emergency",
            "start": iso(60), "end": iso(120), "impact": "Web-Mail unavailable", **over}


class TestOperatorApi:
    async def test_auth_and_maintenance_lifecycle(self, tmp_path, http_server, relay):
        """No token 401, wrong token 403, right token 201; moving and cancelling mail the
        info list in the window's thread; reads need no token."""
        daemon = await start(tmp_path, http_server.port, relay.port)
        try:
            path = "/api/v1/maintenance"
            assert 401 == (await daemon.request("POST", path, json_body=window()))[0]
            status, body = await daemon.request("POST", path, json_body=window(),
                                                token="wrong-token-wrong-token")
            assert (403, "wrong token") == (status, json.loads(body)["error"])
            status, body = await daemon.request("POST", path, json_body=window(), token=TOKEN)
            assert 201 == status, body
            assert ["webmail-eu"] == json.loads(body)["targets"]
            status, body = await daemon.get(path)
            assert ["db-upgrade"] == [w["id"] for w in json.loads(body)["windows"]]
            status, _ = await daemon.request("PATCH", f"{path}/db-upgrade", token=TOKEN,
                                             json_body={"start": iso(90), "end": iso(150)})
            assert 200 == status
            status, body = await daemon.request("DELETE", f"{path}/db-upgrade", token=TOKEN)
            assert ("cancelled", 200) == (json.loads(body)["state"], status)
            await wait(lambda: len(relay.mails) >= 3, 5, "three maintenance mails")
        finally:
            await daemon.stop()
        assert ["ANNOUNCEMENT", "UPDATED", "CANCELLED"] == relay.kinds()
        assert {("info@example.com",)} == {r for r, _ in relay.mails}
        first, *rest = [m for _, m in relay.mails]
        assert all(m["References"].startswith(first["Message-ID"]) for m in rest)
        assert not any(TOKEN in line for line in daemon.lines)

    async def test_refusals_and_bad_input(self, tmp_path, http_server, relay):
        daemon = await start(tmp_path, http_server.port, relay.port)
        try:
            path = "/api/v1/maintenance"
            status, body = await daemon.request(
                "POST", path, token=TOKEN, json_body=window(kind="planned", start=iso(10)))
            assert 409 == status
            assert "must be announced 3 business days ahead" in json.loads(body)["error"]
            status, body = await daemon.request(
                "POST", path, token=TOKEN, json_body=window(start="2026-12-28T22:00:00"))
            assert (422, "start") == (status, json.loads(body)["field"])
            status, body = await daemon.request(
                "POST", path, token=TOKEN, json_body=window(targets=["nope"]))
            assert 409 == status
            assert "nope" in json.loads(body)["error"]
            status, body = await daemon.request("POST", path, token=TOKEN,
                                                json_body=window(end=iso(30)))
            assert (422, "end") == (status, json.loads(body)["field"])
            assert 404 == (await daemon.request("DELETE", f"{path}/nope", token=TOKEN))[0]
            async with __import__("aiohttp").ClientSession() as session, session.post(
                f"http://127.0.0.1:{daemon.port}{path}", data=b"{not json",
                headers={"Authorization": f"Bearer {TOKEN}"}) as response:
                assert 400 == response.status
        finally:
            await daemon.stop()

    async def test_set_etr_mails_an_update(self, tmp_path, http_server, relay):
        async with FaultProxy(http_server.port, Fault("stall")) as proxy:
            daemon = await start(tmp_path, proxy.port, relay.port)
            try:
                await wait(lambda: "OPEN" in relay.kinds(), 6, "OPEN")
                incident = relay.mails[0][1]["Subject"].split()[1]
                etr = iso(45)
                status, body = await daemon.request(
                    "PATCH", f"/api/v1/incidents/{incident}", token=TOKEN,
                    json_body={"etr": etr, "update_interval": "30m"})
                assert 200 == status, body
                await wait(lambda: len(relay.mails) >= 2, 5, "UPDATE")
                status, body = await daemon.request(
                    "PATCH", f"/api/v1/incidents/{incident}", token=TOKEN,
                    json_body={"note": "Storage vendor engaged."})
                assert ["Storage vendor engaged."] == [
                    n["text"] for n in json.loads(body)["notes"]]
                await wait(lambda: len(relay.mails) >= 3, 5, "note UPDATE")
            finally:
                await daemon.stop()
        update = relay.mails[1][1].get_payload()
        assert "Expected time to restoration: 20" in update
        assert "expected time to restoration set" in update
        assert "Z): Storage vendor engaged." in relay.mails[-1][1].get_payload()

    async def test_disabled_without_a_token(self, tmp_path, http_server, relay):
        daemon = await start(tmp_path, http_server.port, relay.port, token=False)
        try:
            status, body = await daemon.request("POST", "/api/v1/maintenance",
                                                json_body=window(), token=TOKEN)
        finally:
            await daemon.stop()
        assert 403 == status
        assert "disabled" in json.loads(body)["error"]


async def cli(*args, env=None):
    import os
    import sys

    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "outagewatch", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, **(env or {})})
    out, err = await process.communicate()
    return process.returncode, out.decode(), err.decode()


class TestOperatorCli:
    async def test_maintenance_and_incident_commands(self, tmp_path, http_server, relay):
        daemon = await start(tmp_path, http_server.port, relay.port)
        env = {"OUTAGEWATCH_URL": f"http://127.0.0.1:{daemon.port}", "OUTAGEWATCH_TOKEN": TOKEN}
        try:
            code, out, err = await cli("maintenance", "add", "--id", "db", "--platform", "eu",
                                       "--start", iso(60), "--end", iso(90), "--emergency",
                                       "--impact", "Web-Mail down", env=env)
            assert (0, "") == (code, err)
            assert out.splitlines()[1].split()[:4] == ["db", "eu", "emergency", "scheduled"]
            code, out, _ = await cli("maintenance", "list", env=env)
            assert ["db"] == [line.split()[0] for line in out.splitlines()[1:]]
            code, out, _ = await cli("maintenance", "show", "db", "--json", env=env)
            assert "scheduled" == json.loads(out)["state"]
            code, out, _ = await cli("maintenance", "update", "db", "--start", iso(70),
                                     "--end", iso(100), env=env)
            assert 0 == code
            code, out, _ = await cli("maintenance", "cancel", "db", env=env)
            assert "cancelled" in out
            code, _, err = await cli("maintenance", "cancel", "db", env=env)
            assert (2, "outagewatch: refused (409): maintenance db is cancelled already\n") \
                == (code, err)
            code, _, err = await cli("maintenance", "add", "--id", "x", "--platform", "eu",
                                     "--start", iso(5), "--end", iso(9), env=env)
            assert 2 == code
            assert "announced 3 business days ahead" in err
            code, _, err = await cli("maintenance", "cancel", "db",
                                     env={**env, "OUTAGEWATCH_TOKEN": ""})
            assert (2, "outagewatch: refused (401): missing 'Authorization: Bearer <token>'\n"
                    ) == (code, err)
            code, out, _ = await cli("incident", "list", env=env)
            assert (0, ["ID", "PLATFORM", "SEV", "STATE", "STARTED", "SERVICES", "MAILS"]) == (
                code, out.splitlines()[0].split())
            code, _, err = await cli("incident", "set-etr", "EU-2026-9999", iso(30), env=env)
            assert (2, "outagewatch: refused (404): no open incident 'EU-2026-9999'\n") == (
                code, err)
        finally:
            await daemon.stop()

    async def test_unreachable_daemon(self):
        code, _, err = await cli("maintenance", "list", "--url",
                                 f"http://127.0.0.1:{free_port()}")
        assert 2 == code
        assert err.startswith("outagewatch: cannot reach the daemon at http://127.0.0.1:")
        assert 1 == len(err.splitlines())


class TestMaintenanceHidesAnOutage:
    async def test_dovecot_outage_inside_a_window(self, tmp_path, dovecot, tls_files, relay):
        """IMAP (Dovecot) dies inside an emergency window: no incident while it lasts, the
        FINISHED mail says 'completed with problems: imap-eu', and since IMAP is still down
        the incident opens only at the window's end + the outage window."""
        port = free_port()
        async with FaultProxy(dovecot.imap) as proxy:
            notify = (f"notify: {{smtp: {{host: 127.0.0.1, port: {relay.port}, tls: none}},"
                      " sender: 'NOC <noc@example.com>', update_interval: 1h, coalesce: 0.3s,"
                      " retry_backoff: 0.2s, retry_max: 1s}\n")
            text = config_text(port, [
                (f"{{name: imap-eu, platform: eu, type: imap, host: localhost,"
                f" port: {proxy.port}, username: {dovecot.user},"
                f" password: '{dovecot.password}', ca_file: '{tls_files['ca']}'}}"),
            ], state=tmp_path / "state.db", extra=notify, server="token_env: OW_TOKEN",
                **TINY)
            config = tmp_path / "c.yaml"
            config.write_text(text)
            daemon = await DaemonProcess(config, env={"OW_TOKEN": TOKEN}).start(port)
            try:
                start = datetime.now(UTC) + timedelta(seconds=0.5)
                end = start + timedelta(seconds=3)
                status, body = await daemon.request("POST", "/api/v1/maintenance", token=TOKEN,
                                                    json_body={
                    "id": "imap-upgrade", "platform": "eu", "kind": "emergency",
                    "start": start.isoformat(), "end": end.isoformat()})
                assert 201 == status, body
                await wait(lambda: "STARTED" in relay.kinds(), 5, "STARTED")
                proxy.mode = Fault("stall")
                await wait(lambda: "FINISHED" in relay.kinds(), 8, "FINISHED")
                finished_at = datetime.now(UTC)
                assert "OPEN" not in relay.kinds()
                await wait(lambda: "OPEN" in relay.kinds(), 6, "OPEN after the window")
                opened_at = datetime.now(UTC)
            finally:
                await daemon.stop()
        assert ["ANNOUNCEMENT", "STARTED", "FINISHED", "OPEN"] == relay.kinds()[:4]
        finished = relay.mails[2][1]
        text = finished.get_payload(decode=True).decode()
        assert "completed with problems: not answering normally at its end: imap-eu" in text
        assert ("info@example.com",) == relay.mails[2][0]
        assert ("oncall@example.com",) == relay.mails[3][0]
        assert (opened_at - finished_at).total_seconds() > 1.0  # window 1.5 s after the end
