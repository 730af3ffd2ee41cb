"""Delivery an operator can test and repair, end to end: ``outagewatch notify test`` against
aiosmtpd relays (one refusing), the real daemon falling back to a second relay, and a mail
refused for good that stays visible (API, metric, ``incident list``) until ``outagewatch
mail resend`` sends it again with the same Message-ID."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import UTC, datetime, timedelta

import pytest
from tests.helpers.daemon import TINY, DaemonProcess, config_text, free_port, wait
from tests.helpers.faultproxy import Fault, FaultProxy
from tests.helpers.scriptedrelay import scripted_relays

TOKEN = "s3cret-operator-token-0123456789"
SECRET = "relay-Pa55word-do-not-print"


@pytest.fixture(name="relays")
async def _relays():
    """Start relays on demand; each is stopped at the end."""
    async with scripted_relays(SECRET) as start:
        yield start


def relay_yaml(port: int, password: str | None = None) -> str:
    login = f", username: noc, password: '{password}'" if password else ""
    return f"{{host: 127.0.0.1, port: {port}, tls: none, timeout: 2s{login}}}"


def write_config(tmp_path, port, proxy_port, relays: list[str], *, info=True):
    notify = (f"notify: {{smtp: [{', '.join(relays)}], sender: 'NOC <noc@example.com>',"
              " update_interval: 1h, coalesce: 0.3s, retry_backoff: 0.2s, retry_max: 1s}\n")
    text = config_text(port, [
        f"{{name: webmail-eu, platform: eu, type: http, url: 'http://127.0.0.1:{proxy_port}/'}}",
    ], state=tmp_path / "state.db", extra=notify, server="token_env: OW_TOKEN", **TINY)
    if not info:
        text = text.replace(", info_recipients: [info@example.com]", "")
    path = tmp_path / "outagewatch.yaml"
    path.write_text(text)
    return path


async def cli(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "outagewatch", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "OUTAGEWATCH_TOKEN": TOKEN, "OW_TOKEN": TOKEN})
    out, err = await asyncio.wait_for(process.communicate(), 30)
    return process.returncode or 0, out.decode(), err.decode()


class TestNotifyTest:
    async def test_a_refusing_relay_then_one_that_accepts(self, tmp_path, relays):
        """The first relay refuses our login, the second accepts: exit 0, both relays'
        answers printed (greeting, EHLO, AUTH, MAIL, RCPT, DATA), the recipient accepted,
        a marked test mail with the list's List-Id arrives, and no password is printed."""
        refusing, taking = await relays(), await relays()
        config = write_config(tmp_path, free_port(), free_port(), [
            relay_yaml(refusing.port, "wrong-" + SECRET), relay_yaml(taking.port, SECRET)])
        code, out, err = await cli("notify", "test", "-c", str(config), "--platform", "eu")
        assert (0, "") == (code, err), out
        assert f"relay 1 of 2: 127.0.0.1:{refusing.port}" in out
        assert f"relay 2 of 2: 127.0.0.1:{taking.port}" in out
        for line in ("connect", "EHLO", "AUTH", "535", "MAIL", "RCPT oncall@example.com",
                     "DATA", "=> refused: relay", "=> took the mail"):
            assert line in out, line
        assert "250-relay.test" in out  # every line of the EHLO reply, as written
        assert f"oncall@example.com: accepted by 127.0.0.1:{taking.port}" in out
        assert SECRET not in out
        ((rcpt, mail),) = taking.mails
        assert ("oncall@example.com",) == rcpt
        assert mail["Subject"].startswith("[TEST] outagewatch")
        assert "This is a test mail" in mail.get_payload(decode=True).decode()
        assert "outagewatch eu incident <incident.eu.outagewatch.example.com>" == mail[
            "List-Id"]
        assert [] == refusing.mails

    async def test_refused_everywhere_exits_1(self, tmp_path, relays):
        """The only relay refuses the mail (554 to DATA): exit 1, the recipient refused."""
        relay = await relays()
        relay.data = "554 5.7.1 not from you"
        config = write_config(tmp_path, free_port(), free_port(), [relay_yaml(relay.port)])
        code, out, _ = await cli("notify", "test", "-c", str(config), "--platform", "eu",
                                 "--list", "info")
        assert 1 == code, out
        assert "554 5.7.1 not from you" in out
        assert "info@example.com: refused: relay" in out

    @pytest.mark.parametrize(("args", "info", "expected"), [
        (["--platform", "us"], True, "unknown platform 'us' (known: eu)"),
        (["--platform", "eu", "--list", "info"], False, "platform eu has no info list"),
    ], ids=["unknown-platform", "empty-list"])
    async def test_bad_input_is_one_line_exit_2(self, tmp_path, args, info, expected):
        config = write_config(tmp_path, free_port(), free_port(), [relay_yaml(free_port())],
                              info=info)
        code, out, err = await cli("notify", "test", "-c", str(config), *args)
        assert (2, "") == (code, out)
        assert 1 == len(err.splitlines()), err
        assert expected in err

    async def test_no_notify_section_exit_2(self, tmp_path):
        config = tmp_path / "c.yaml"
        config.write_text(config_text(free_port(), [
            "{name: w, platform: eu, type: http, url: 'http://127.0.0.1:1/'}"],
            state=tmp_path / "s.db"))
        code, _, err = await cli("notify", "test", "-c", str(config), "--platform", "eu")
        assert 2 == code
        assert "no notify section" in err


class TestDaemonDelivery:
    async def test_relay_fallback_then_failed_mail_resent(self, tmp_path, http_server,
                                                         relays):
        """The first relay refuses our login, the second takes the OPEN (logged). Then the
        second refuses for good too (554): the RESOLVED is failed, shown with its error in
        the API and in 'incident list', counted in outagewatch_mails_failed. 'mail resend' after the
        fix sends it again with the same Message-ID, without a restart; resending it once
        more is refused (409, one line)."""
        refusing, taking = await relays(), await relays()
        port = free_port()
        async with FaultProxy(http_server.port) as proxy:
            config = write_config(tmp_path, port, proxy.port, [
                relay_yaml(refusing.port, "wrong-" + SECRET), relay_yaml(taking.port)])
            daemon = await DaemonProcess(config, env={"OW_TOKEN": TOKEN}).start(port)
            try:
                proxy.mode = Fault("stall")
                await wait(lambda: len(taking.mails) >= 1, 8, "OPEN through the 2nd relay")
                took = [e for e in daemon.events() if e.get("event") == "relay_took_mail"]
                assert f"127.0.0.1:{taking.port}" == took[0]["relay"]
                taking.data = "554 5.7.1 policy rejection"
                proxy.mode = Fault()
                listing = {}

                async def failed() -> bool:
                    nonlocal listing
                    listing = json.loads((await daemon.get("/api/v1/incidents"))[1])
                    mails = [m for i in listing["recent"] for m in i["mails"]]
                    return any(m["status"] == "failed" for m in mails)

                await daemon.wait_for(failed, timeout=8, what="the RESOLVED failed")
                (incident,) = listing["recent"]
                (bad,) = [m for m in incident["mails"] if m["status"] == "failed"]
                assert "554 5.7.1 policy rejection" in bad["last_error"]
                assert 'outagewatch_mails_failed{kind="resolved"} 1.0' in (
                    await daemon.metrics())
                code, out, _ = await cli("incident", "list", "--url",
                                         f"http://127.0.0.1:{port}")
                assert "1 sent, 1 failed" in out, out
                taking.data = "250 OK"  # the operator fixed the relay
                mail_id = f"{incident['id'].lower()}/{bad['number']}"
                code, out, err = await cli("mail", "resend", mail_id, "--url",
                                           f"http://127.0.0.1:{port}")
                assert 0 == code, err
                assert "pending again" in out
                await wait(lambda: len(taking.mails) >= 2, 8, "the resent mail")
                assert bad["message_id"] == taking.mails[-1][1]["Message-ID"]

                async def none_failed() -> bool:
                    return 'outagewatch_mails_failed{kind="resolved"} 0.0' in (
                        await daemon.metrics())

                await daemon.wait_for(none_failed, timeout=5, what="the gauge back at 0")
                code, out, err = await cli("mail", "resend", mail_id, "--url",
                                           f"http://127.0.0.1:{port}")
                assert (2, "") == (code, out)
                assert "refused (409)" in err
                assert 1 == len(err.splitlines())
                for body, expected in (({"id": "EU-1"}, 422), ({"id": "EU-1/0"}, 404),
                                       ({"id": mail_id, "recipient": "x@example.com"}, 404)):
                    status, _ = await daemon.request("POST", "/api/v1/mails/resend",
                                                     json_body=body, token=TOKEN)
                    assert expected == status, body
                taking.data = "554 5.7.1 policy rejection"
                start = datetime.now(UTC) + timedelta(hours=1)
                status, _ = await daemon.request("POST", "/api/v1/maintenance", token=TOKEN,
                                                 json_body={
                    "id": "db", "platform": "eu", "kind": "emergency",
                    "start": start.isoformat(), "end": (start + timedelta(hours=1)).isoformat()})
                assert 201 == status

                async def announcement_failed() -> bool:
                    window = json.loads((await daemon.get("/api/v1/maintenance/db"))[1])
                    return any(m["status"] == "failed" for m in window["mails"])

                await daemon.wait_for(announcement_failed, timeout=8, what="failed mail")
                code, out, err = await cli("maintenance", "show", "db", "--url",
                                           f"http://127.0.0.1:{port}")
            finally:
                await daemon.stop()
        assert 0 == code, err
        assert "failed mails (1): fix the cause, then 'outagewatch mail resend ID'" in out
        assert "db/0  announcement  to info@example.com: every relay refused it" in out
        assert "554 5.7.1 policy rejection" in out
