"""The drainer and the SMTP channel against a real aiosmtpd relay: order, threading headers,
retries, refusals."""

from __future__ import annotations

import asyncio
import random
from email import message_from_bytes

import pytest
from aiosmtpd.smtp import SMTP
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs
from tests.helpers.fakeclock import FakeClock
from tests.helpers.ports import free_port
from tests.helpers.smtpd import PASSWORD, USER, start_smtpd

from outagewatch.config import NotifyConfig
from outagewatch.core.render import Message, Thread, ThreadKind
from outagewatch.metrics import build_metrics
from outagewatch.notify import Drainer, SmtpChannel
from outagewatch.store import Changes, Envelope
from outagewatch.store.sqlite import SqliteStore


class Relay:
    """Accepts mail, with per-recipient answers a test can set."""

    def __init__(self):
        self.received = []
        self.rcpt = {}  # address -> reply such as "451 try later"
        self.data = "250 OK"
        self.port = 0

    async def handle_RCPT(self, server, session, envelope, address, options):  # noqa: N802
        reply = self.rcpt.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        if self.data.startswith("250"):
            self.received.append((tuple(envelope.rcpt_tos), message_from_bytes(envelope.content)))
        return self.data


@pytest.fixture(name="relay")
async def _relay():
    relay = Relay()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(relay, hostname="relay.test"),
                                      "127.0.0.1", 0)
    relay.port = server.sockets[0].getsockname()[1]
    yield relay
    server.close()
    await server.wait_closed()


def notify(port, **smtp):
    return NotifyConfig(smtp={"host": "127.0.0.1", "port": port, "tls": "none",
                              "timeout": 5, **smtp},
                        sender="Monitoring <noc@example.com>")


def message(incident, number, to=("oncall@example.com",)):
    return Message(thread=Thread(ThreadKind.INCIDENT, incident), number=number,
                   kind="open" if number == 0 else "update", to=to,
                   subject=f"Incident {incident} #{number}", body=f"mail {number}")


async def setup(tmp_path, port, **smtp):
    clock = FakeClock()
    store = await SqliteStore.open(tmp_path / "state.db", threaded=False)
    registry = CollectorRegistry()
    metrics = build_metrics(registry, buckets=(1.0,))
    channel = SmtpChannel(notify(port, **smtp))
    drainer = Drainer(outbox=store, channels={"smtp": channel}, clock=clock, metrics=metrics,
                      backoff=(10.0, 60.0), rng=random.Random(1))
    return clock, store, registry, drainer, channel


async def queue(store, clock, channel, *messages):
    now = clock.now().timestamp()
    await store.apply(Changes(envelopes=[
        Envelope(thread=m.thread.key, number=m.number, kind=m.kind, channel="smtp",
                 payload=channel.payload(m, created=now), created=now) for m in messages]))


@pytest.fixture(name="opened")
async def _opened(tmp_path):
    stores: list[SqliteStore] = []

    async def open_one(port, **smtp):
        made = await setup(tmp_path / str(len(stores)), port, **smtp)
        stores.append(made[1])
        return made

    (tmp_path / "0").mkdir()
    (tmp_path / "1").mkdir()
    yield open_one
    for store in stores:
        await store.close()


def status(messages):
    return [m.status for m in messages]


class TestDrainer:
    async def test_delivers_in_order_with_thread_headers(self, relay, opened):
        """Every mail answers the previous one and references the first; the ids derive
        from the thread and the number, so a retry carries the same one."""
        clock, store, registry, drainer, channel = await opened(relay.port)
        await queue(store, clock, channel, *(message("EU-1", n) for n in range(3)))
        assert 3 == await drainer.send_due()
        subjects = [m["Subject"] for _, m in relay.received]
        assert ["Incident EU-1 #0", "Incident EU-1 #1", "Incident EU-1 #2"] == subjects
        first, second, last = (m for _, m in relay.received)
        assert "<eu-1.0@example.com>" == first["Message-ID"]
        assert (None, None) == (first["In-Reply-To"], first["References"])
        assert ("<eu-1.0@example.com>", "<eu-1.0@example.com>") == (second["In-Reply-To"],
                                                                     second["References"])
        assert "<eu-1.2@example.com>" == last["Message-ID"]
        assert "<eu-1.1@example.com>" == last["In-Reply-To"]
        assert "<eu-1.0@example.com> <eu-1.1@example.com>" == last["References"]
        assert "Monitoring <noc@example.com>" == last["From"]
        assert "auto-generated" == last["Auto-Submitted"]
        assert last["Date"]
        assert 2 == registry.get_sample_value("outagewatch_notifications_total",
                                              {"kind": "update", "result": "sent"})
        assert 0 == registry.get_sample_value("outagewatch_outbox_pending")

    async def test_dead_relay_retries_with_backoff_then_delivers_in_order(self, relay, opened):
        """Nothing is lost while the relay is down, and the thread arrives in order after."""
        clock, store, registry, drainer, channel = await opened(free_port())
        await queue(store, clock, channel, message("EU-1", 0), message("EU-1", 1))
        assert 0 == await drainer.send_due()
        first_retry = await store.next_attempt() - clock.now().timestamp()
        assert 5.0 <= first_retry <= 10.0  # 10 s base, jitter 0.5..1
        await clock.advance(first_retry)
        assert 0 == await drainer.send_due()
        assert 10.0 <= await store.next_attempt() - clock.now().timestamp() <= 20.0  # doubled
        assert (2, pytest.approx(first_retry)) == await store.stats(clock.now().timestamp())
        # the relay is back (at the configured address)
        drainer.reconfigure({"smtp": SmtpChannel(notify(relay.port))}, (10.0, 60.0))
        await clock.advance(60)
        assert 2 == await drainer.send_due()
        assert ["Incident EU-1 #0", "Incident EU-1 #1"] == [
            m["Subject"] for _, m in relay.received]
        assert 2 == registry.get_sample_value("outagewatch_notifications_total",
                                              {"kind": "open", "result": "retry"})

    async def test_permanent_refusal_is_not_retried(self, relay, opened):
        relay.data = "554 rejected by policy"
        clock, store, registry, drainer, channel = await opened(relay.port)
        await queue(store, clock, channel, message("EU-1", 0))
        with capture_logs() as logs:
            await drainer.send_due()
        assert (0, 0.0) == await store.stats(clock.now().timestamp())
        assert ["failed"] == status(await store.thread("incident:EU-1"))
        assert 1 == registry.get_sample_value("outagewatch_notifications_total",
                                              {"kind": "open", "result": "failed"})
        (failed,) = [e for e in logs if e["event"] == "mail_failed"]
        assert "relay refused the mail: 554 rejected by policy" == failed["error"]

    async def test_partial_deferral_retries_only_those_recipients(self, relay, opened):
        """451 for one recipient: the others get it now, that one later, same Message-ID."""
        relay.rcpt["busy@example.com"] = "451 4.3.0 try later"
        relay.rcpt["gone@example.com"] = "550 5.1.1 no such user"
        clock, store, _, drainer, channel = await opened(relay.port)
        to = ("oncall@example.com", "busy@example.com", "gone@example.com")
        await queue(store, clock, channel, message("EU-1", 0, to=to))
        await drainer.send_due()
        assert [("oncall@example.com",)] == [rcpt for rcpt, _ in relay.received]
        del relay.rcpt["busy@example.com"]
        await clock.advance(60)
        await drainer.send_due()
        assert ("busy@example.com",) == relay.received[1][0]
        assert relay.received[0][1]["Message-ID"] == relay.received[1][1]["Message-ID"]
        assert ["sent"] == status(await store.thread("incident:EU-1"))

    async def test_bad_relay_login_is_a_configuration_error(self, server_tls, tls_files,
                                                            opened):
        server = await start_smtpd(server_tls)
        try:
            clock, store, _, drainer, channel = await opened(
                server.port, tls="starttls", ca_file=str(tls_files["ca"]), username=USER,
                password="wrong")
            await queue(store, clock, channel, message("EU-1", 0))
            await drainer.send_due()
            (failed,) = await store.thread("incident:EU-1")
            assert "failed" == failed.status
            assert "login" in failed.last_error
            clock2, store2, _, good, channel2 = await opened(
                server.port, tls="starttls", ca_file=str(tls_files["ca"]), username=USER,
                password=PASSWORD)
            await queue(store2, clock2, channel2, message("EU-2", 0))
            assert 1 == await good.send_due()
            assert 1 == len(server.sink.messages)
        finally:
            await server.stop()
