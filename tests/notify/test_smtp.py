"""The SMTP channel against real aiosmtpd relays: several relays tried in order, what a
mail carries (List-Id, Auto-Submitted), and the conversation kept for ``notify test``."""

from __future__ import annotations

import asyncio

import pytest
from aiosmtpd.smtp import SMTP
from structlog.testing import capture_logs
from tests.helpers.ports import free_port
from tests.helpers.scriptedrelay import ScriptedRelay as Relay
from tests.helpers.scriptedrelay import scripted_relays
from tests.helpers.smtpd import PASSWORD, USER, start_smtpd

from outagewatch.config import NotifyConfig
from outagewatch.core.render import Message, Thread, ThreadKind
from outagewatch.notify import Deferred, Delivered, Refused, SmtpChannel
from outagewatch.notify.queue import Letter
from outagewatch.store import EnvelopeKey

ONCALL = "oncall@example.com"
SECRET = "relay-Pa55word"


@pytest.fixture(name="relays")
async def _relays():
    """Start relays on demand; each is stopped at the end."""
    async with scripted_relays(SECRET) as start:
        yield start


def notify(*relays: dict) -> NotifyConfig:
    return NotifyConfig.model_validate({
        "smtp": [{"host": "127.0.0.1", "tls": "none", "timeout": 5, **r} for r in relays],
        "sender": "NOC <noc@example.com>"})


def message(number: int = 0, *, platform: str = "eu", audience: str = "incident") -> Message:
    return Message(thread=Thread(ThreadKind.INCIDENT, "EU-20261129-1423"), number=number,
                   kind="open", to=(ONCALL,), subject="Incident EU-20261129-1423 [OPEN]",
                   body="down", platform=platform, audience=audience)


def letter(channel: SmtpChannel, msg: Message | None = None, *, payload=None) -> Letter:
    msg = msg or message()
    payload = payload or channel.payloads(msg, created=0.0)[ONCALL]
    return Letter(EnvelopeKey("smtp", msg.thread.key, ONCALL, msg.number), msg.kind, payload,
                  1_764_000_000.0)


async def deliver(channel: SmtpChannel, item: Letter):
    outcome = await channel.deliver(item)
    if isinstance(outcome, Delivered) and outcome.close is not None:
        await outcome.close()
    return outcome


class TestRelays:
    async def test_a_single_mapping_is_one_relay(self):
        """``notify.smtp`` as one mapping (as before) is a list of one relay."""
        config = NotifyConfig.model_validate({"smtp": {"host": "relay.example.com"},
                                              "sender": "noc@example.com"})
        assert ["relay.example.com:587"] == [r.address for r in config.smtp]

    async def test_unreachable_relay_passes_to_the_next(self, relays):
        """A relay that cannot be reached defers: the next one takes the mail, and the log
        says which relay took it."""
        second = await relays()
        channel = SmtpChannel(notify({"port": free_port()}, {"port": second.port}),
                              installation="abcd")
        with capture_logs() as logs:
            outcome = await deliver(channel, letter(channel))
        assert isinstance(outcome, Delivered)
        assert 1 == len(second.received)
        took = [e for e in logs if e["event"] == "relay_took_mail"]
        assert [f"127.0.0.1:{second.port}"] == [e["relay"] for e in took]
        assert any(e["event"] == "relay_did_not_take_mail" and not e["refused"] for e in logs)

    async def test_deferring_relay_passes_to_the_next(self, relays):
        """A 4xx to DATA from the first relay: the second one delivers."""
        first, second = await relays(), await relays()
        first.data = "451 4.3.0 try later"
        channel = SmtpChannel(notify({"port": first.port}, {"port": second.port}),
                              installation="abcd")
        assert isinstance(await deliver(channel, letter(channel)), Delivered)
        assert ([], 1) == (first.received, len(second.received))

    async def test_refused_login_passes_to_the_next(self, relays):
        """A relay that refuses our login (535) hands the mail on; the first 250 to DATA
        counts, so the mail goes out exactly once."""
        first, second = await relays(), await relays()
        channel = SmtpChannel(notify(
            {"port": first.port, "username": "noc", "password": "wrong"},
            {"port": second.port, "username": "noc", "password": SECRET}), installation="ab")
        assert isinstance(await deliver(channel, letter(channel)), Delivered)
        assert ([], 1) == (first.received, len(second.received))

    async def test_refused_only_when_every_relay_refused(self, relays):
        """Two relays answering 5xx: refused, naming both."""
        first, second = await relays(), await relays()
        first.mail = second.mail = "550 5.7.1 sender not allowed"
        channel = SmtpChannel(notify({"port": first.port}, {"port": second.port}),
                              installation="abcd")
        outcome = await deliver(channel, letter(channel))
        assert isinstance(outcome, Refused)
        assert str(first.port) in outcome.error
        assert str(second.port) in outcome.error

    async def test_deferred_when_any_relay_deferred(self, relays):
        """One relay refuses for good, the other is down: the mail waits for a retry."""
        first = await relays()
        first.mail = "550 5.7.1 sender not allowed"
        channel = SmtpChannel(notify({"port": first.port}, {"port": free_port()}),
                              installation="abcd")
        assert isinstance(await deliver(channel, letter(channel)), Deferred)

    async def test_conversation_is_kept_without_secrets(self, relays):
        """Each relay tried, with every answer (greeting, EHLO, AUTH, MAIL, RCPT, DATA);
        the password appears nowhere."""
        first, second = await relays(), await relays()
        channel = SmtpChannel(notify(
            {"port": first.port, "username": "noc", "password": "wrong-" + SECRET},
            {"port": second.port, "username": "noc", "password": SECRET}), installation="ab")
        item = letter(channel)
        outcome, attempts = await channel.send(channel.email(item), [ONCALL])
        assert isinstance(outcome, Delivered)
        assert outcome.close is not None
        await outcome.close()
        refused, took = attempts
        assert ["connect", "EHLO", "AUTH"] == [r.step for r in refused.replies]
        assert 535 == refused.replies[-1].code
        assert isinstance(refused.outcome, Refused)
        assert ["connect", "EHLO", "AUTH", "MAIL", f"RCPT {ONCALL}", "DATA"] == [
            r.step for r in took.replies]
        assert ([ONCALL], {}) == (took.accepted, took.refused)
        assert SECRET not in repr(attempts)


class TestHeaders:
    async def test_list_id_and_auto_submitted(self, relays):
        """Every mail is marked auto-generated and carries a List-Id of its platform and
        list, in RFC 2919 form, under the sender's domain."""
        relay = await relays()
        channel = SmtpChannel(notify({"port": relay.port}), installation="abcd")
        await deliver(channel, letter(channel, message(platform="eu", audience="info")))
        (_, mail), = relay.received
        assert "auto-generated" == mail["Auto-Submitted"]
        assert "outagewatch eu info <info.eu.outagewatch.example.com>" == mail["List-Id"]

    async def test_stored_payload_without_list_id_still_sends(self, relays):
        """A payload stored before List-Id existed goes out as it is."""
        relay = await relays()
        channel = SmtpChannel(notify({"port": relay.port}), installation="abcd")
        payload = dict(channel.payloads(message(), created=0.0)[ONCALL])
        del payload["list_id"]
        assert isinstance(await deliver(channel, letter(channel, payload=payload)), Delivered)
        (_, mail), = relay.received
        assert mail["List-Id"] is None
        assert "auto-generated" == mail["Auto-Submitted"]


class TestStartTls:
    async def test_starttls_and_login_answers_are_kept(self, server_tls, tls_files):
        """Through STARTTLS and AUTH, as configured: each answer kept, in order; the
        password nowhere in them."""
        server = await start_smtpd(server_tls)
        try:
            channel = SmtpChannel(notify({
                "port": server.port, "tls": "starttls", "ca_file": str(tls_files["ca"]),
                "username": USER, "password": PASSWORD}), installation="abcd")
            item = letter(channel)
            outcome, (attempt,) = await channel.send(channel.email(item), [ONCALL])
            assert isinstance(outcome, Delivered)
            assert outcome.close is not None
            await outcome.close()
        finally:
            await server.stop()
        assert ["connect", "EHLO", "STARTTLS", "EHLO", "AUTH", "MAIL", f"RCPT {ONCALL}",
                "DATA"] == [r.step for r in attempt.replies]
        assert [220, 250, 220, 250, 235, 250, 250, 250] == [r.code for r in attempt.replies]
        assert PASSWORD not in repr(attempt)
        assert 1 == len(server.sink.messages)


class TestNonAscii:
    """Addresses the configuration accepts (``jörg@exämple.com``) go out with SMTPUTF8."""

    async def start(self, *, utf8: bool):
        relay = Relay()
        server = await asyncio.get_running_loop().create_server(
            lambda: SMTP(relay, hostname="relay.test", enable_SMTPUTF8=utf8),
            "127.0.0.1", 0)
        relay.port = server.sockets[0].getsockname()[1]
        return relay, server

    def channel_and_letter(self, port: int) -> tuple[SmtpChannel, Letter]:
        config = NotifyConfig.model_validate({
            "smtp": [{"host": "127.0.0.1", "tls": "none", "timeout": 5, "port": port}],
            "sender": "NÖC <noc@exämple.com>"})
        channel = SmtpChannel(config, installation="abcd")
        msg = Message(thread=Thread(ThreadKind.INCIDENT, "EU-1"), number=0, kind="open",
                      to=("jörg@exämple.com",), subject="Incident EU-1 [OPEN] Störung",
                      body="Dienst gestört", platform="eu", audience="incident")
        payload = channel.payloads(msg, created=0.0)["jörg@exämple.com"]
        return channel, Letter(EnvelopeKey("smtp", msg.thread.key, "jörg@exämple.com", 0),
                               "open", payload, 1_764_000_000.0)

    async def test_delivered_with_smtputf8(self):
        relay, server = await self.start(utf8=True)
        try:
            channel, item = self.channel_and_letter(relay.port)
            assert isinstance(await deliver(channel, item), Delivered)
        finally:
            server.close()
            await server.wait_closed()
        (rcpt, mail), = relay.received
        assert rcpt == ("jörg@exämple.com",)
        assert mail["To"] is not None

    async def test_a_relay_without_smtputf8_refuses_in_one_line(self):
        relay, server = await self.start(utf8=False)
        try:
            channel, item = self.channel_and_letter(relay.port)
            outcome = await deliver(channel, item)
        finally:
            server.close()
            await server.wait_closed()
        assert isinstance(outcome, Refused)
        assert "does not offer SMTPUTF8" in outcome.error
        assert relay.received == []
