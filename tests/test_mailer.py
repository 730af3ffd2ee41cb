"""The mailer against a real aiosmtpd relay: order, threading, retries, refusals."""

from __future__ import annotations

import asyncio
import random
from email import message_from_bytes

import pytest
from aiosmtpd.smtp import SMTP
from prometheus_client import CollectorRegistry
from tests.helpers.fakeclock import FakeClock
from tests.helpers.ports import free_port
from tests.helpers.smtpd import PASSWORD, USER, start_smtpd

from outagewatch.config import NotifyConfig
from outagewatch.core.render import Mail
from outagewatch.mailer import Mailer
from outagewatch.metrics import build_metrics
from outagewatch.store import Store


class Relay:
    """Accepts mail, with per-recipient answers a test can set."""

    def __init__(self):
        self.received = []
        self.rcpt = {}  # address -> reply such as "451 try later"
        self.data = "250 OK"

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


def mail(incident, number, to=("oncall@example.com",)):
    root = f"<{incident}.0@example.com>"
    parent = f"<{incident}.{number - 1}@example.com>" if number else None
    return Mail(to=to, subject=f"Incident {incident} #{number}", body=f"mail {number}",
                message_id=f"<{incident}.{number}@example.com>", in_reply_to=parent,
                references=(root, parent) if parent and number > 1 else (root,) if parent else ())


def setup(port, **smtp):
    clock = FakeClock()
    store = Store(":memory:")
    registry = CollectorRegistry()
    metrics = build_metrics(registry, buckets=(1.0,))
    mailer = Mailer(store=store, notify=notify(port, **smtp), clock=clock, metrics=metrics,
                    backoff=(10.0, 60.0), rng=random.Random(1))
    return clock, store, registry, mailer


def queue(store, clock, *mails):
    for m in mails:
        number = int(m.subject.rsplit("#", 1)[1])
        store.enqueue(m, incident_id=m.subject.split()[1], number=number,
                      kind="open" if number == 0 else "update",
                      now=clock.now().timestamp())


class TestMailer:
    async def test_delivers_in_order_with_thread_headers(self, relay):
        clock, store, registry, mailer = setup(relay.port)
        queue(store, clock, mail("eu-1", 0), mail("eu-1", 1), mail("eu-1", 2))
        assert 3 == await mailer.send_due()
        subjects = [m["Subject"] for _, m in relay.received]
        assert ["Incident eu-1 #0", "Incident eu-1 #1", "Incident eu-1 #2"] == subjects
        last = relay.received[-1][1]
        assert "<eu-1.2@example.com>" == last["Message-ID"]
        assert "<eu-1.1@example.com>" == last["In-Reply-To"]
        assert "<eu-1.0@example.com> <eu-1.1@example.com>" == last["References"]
        assert "Monitoring <noc@example.com>" == last["From"]
        assert last["Date"]
        assert 3 == registry.get_sample_value("outagewatch_notifications_total",
                                              {"kind": "update", "result": "sent"}) + 1
        assert 0 == registry.get_sample_value("outagewatch_outbox_pending")

    async def test_dead_relay_retries_with_backoff_then_delivers_in_order(self, relay):
        """Nothing is lost while the relay is down, and the thread arrives in order after."""
        dead = free_port()
        clock, store, registry, mailer = setup(dead)
        queue(store, clock, mail("eu-1", 0), mail("eu-1", 1))
        assert 0 == await mailer.send_due()
        first_retry = store.next_attempt() - clock.now().timestamp()
        assert 5.0 <= first_retry <= 10.0  # 10 s base, jitter 0.5..1
        await clock.advance(first_retry)
        assert 0 == await mailer.send_due()
        assert 10.0 <= store.next_attempt() - clock.now().timestamp() <= 20.0  # doubled
        assert (2, pytest.approx(first_retry)) == store.outbox_stats(clock.now().timestamp())
        mailer._notify = notify(relay.port)  # the relay is back (at the configured address)
        await clock.advance(60)
        assert 2 == await mailer.send_due()
        assert ["Incident eu-1 #0", "Incident eu-1 #1"] == [
            m["Subject"] for _, m in relay.received]
        assert 2 == registry.get_sample_value("outagewatch_notifications_total",
                                              {"kind": "open", "result": "retry"})

    async def test_permanent_refusal_is_not_retried(self, relay):
        relay.data = "554 rejected by policy"
        clock, store, registry, mailer = setup(relay.port)
        queue(store, clock, mail("eu-1", 0))
        await mailer.send_due()
        assert (0, 0.0) == store.outbox_stats(clock.now().timestamp())
        assert "failed" == store.mails("eu-1")[0]["status"]
        assert 1 == registry.get_sample_value("outagewatch_notifications_total",
                                              {"kind": "open", "result": "failed"})

    async def test_partial_deferral_retries_only_those_recipients(self, relay):
        """451 for one recipient: the others get it now, that one later, same Message-ID."""
        relay.rcpt["busy@example.com"] = "451 4.3.0 try later"
        relay.rcpt["gone@example.com"] = "550 5.1.1 no such user"
        clock, store, _, mailer = setup(relay.port)
        to = ("oncall@example.com", "busy@example.com", "gone@example.com")
        queue(store, clock, mail("eu-1", 0, to=to))
        await mailer.send_due()
        assert [("oncall@example.com",)] == [rcpt for rcpt, _ in relay.received]
        del relay.rcpt["busy@example.com"]
        await clock.advance(60)
        await mailer.send_due()
        assert ("busy@example.com",) == relay.received[1][0]
        assert relay.received[0][1]["Message-ID"] == relay.received[1][1]["Message-ID"]
        assert "sent" == store.mails("eu-1")[0]["status"]

    async def test_bad_relay_login_is_a_configuration_error(self, server_tls, tls_files):
        server = await start_smtpd(server_tls)
        try:
            clock, store, _, mailer = setup(server.port, tls="starttls",
                                            ca_file=str(tls_files["ca"]), username=USER,
                                            password="wrong")
            queue(store, clock, mail("eu-1", 0))
            await mailer.send_due()
            assert "failed" == store.mails("eu-1")[0]["status"]
            assert "login" in store.mails("eu-1")[0]["last_error"]
            clock2, store2, _, good = setup(server.port, tls="starttls",
                                            ca_file=str(tls_files["ca"]), username=USER,
                                            password=PASSWORD)
            queue(store2, clock2, mail("eu-2", 0))
            assert 1 == await good.send_due()
            assert 1 == len(server.sink.messages)
        finally:
            await server.stop()
