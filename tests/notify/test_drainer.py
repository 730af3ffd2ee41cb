"""The drainer and the SMTP channel against a real aiosmtpd relay: order per recipient,
threading headers, retries, refusals, and a drainer that nothing stops."""

from __future__ import annotations

import asyncio
import sqlite3
from email import message_from_bytes

import pytest
from aiosmtpd.smtp import SMTP
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs
from tests.helpers.engine import EngineHarness
from tests.helpers.fakeclock import FakeClock
from tests.helpers.ports import free_port
from tests.helpers.smtpd import PASSWORD, USER, start_smtpd

from outagewatch.app import channels_of, outbox_of
from outagewatch.config import Settings
from outagewatch.core.render import Message, Thread, ThreadKind
from outagewatch.faults import Faults
from outagewatch.metrics import build_metrics
from outagewatch.notify import SmtpChannel
from outagewatch.store import Changes, Envelope, EnvelopeKey
from outagewatch.store.sqlite import SqliteStore

ONCALL = "oncall@example.com"


class Relay:
    """Accepts mail, with per-recipient answers a test can set."""

    def __init__(self):
        self.received = []
        self.rcpt = {}  # address -> reply such as "451 try later"
        self.data = "250 OK"
        self.quit_delay = 0.0
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


class SlowQuit(SMTP):
    """A relay that takes its time to answer QUIT."""

    async def smtp_QUIT(self, arg):  # noqa: N802
        await asyncio.sleep(self.event_handler.quit_delay)
        await super().smtp_QUIT(arg)


@pytest.fixture(name="relay")
async def _relay():
    relay = Relay()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SlowQuit(relay, hostname="relay.test"),
                                      "127.0.0.1", 0)
    relay.port = server.sockets[0].getsockname()[1]
    yield relay
    server.close()
    await server.wait_closed()


def settings(tmp_path, port, **smtp):
    return Settings(
        platforms={"eu": {"incident_recipients": [ONCALL]}},
        targets=[{"name": "web", "platform": "eu", "type": "http", "url": "http://x/"}],
        notify={"smtp": {"host": "127.0.0.1", "port": port, "tls": "none", "timeout": 5,
                         **smtp},
                "sender": "Monitoring <noc@example.com>", "retry_backoff": 10,
                "retry_max": 60},
        state={"path": tmp_path / "state.db"})


def message(incident, number, to=(ONCALL,)):
    return Message(thread=Thread(ThreadKind.INCIDENT, incident), number=number,
                   kind="open" if number == 0 else "update", to=to,
                   subject=f"Incident {incident} #{number}", body=f"mail {number}")


async def queue(h, *messages):
    """Into the outbox as the engine puts them: through the writer, durable at once."""
    now = h.clock.now().timestamp()
    channel = h.composer.channels["smtp"]
    h.writer.submit(Changes(envelopes=[
        Envelope(EnvelopeKey("smtp", m.thread.key, lane, m.number), m.kind, payload, now)
        for m in messages for lane, payload in channel.payloads(m, created=now).items()]))
    await h.writer.flush()


def states(stored):
    return [(m.lane, m.number, m.status) for m in stored]


def metric(h, kind, result):
    return h.registry.get_sample_value("outagewatch_notifications_total",
                                       {"kind": kind, "result": result}) or 0


class TestDrainer:
    async def test_delivers_in_order_with_thread_headers(self, tmp_path, relay):
        """Every mail answers the previous one and references the first; the ids derive
        from the thread and the number, so a retry carries the same one."""
        async with EngineHarness(settings(tmp_path, relay.port), FakeClock()) as h:
            await queue(h, *(message("EU-1", n) for n in range(3)))
            assert 3 == await h.core.drainer.send_due()
            await h.writer.flush()
            assert [(ONCALL, n, "sent") for n in range(3)] == states(
                await h.store.thread("incident:EU-1"))
        subjects = [m["Subject"] for _, m in relay.received]
        assert ["Incident EU-1 #0", "Incident EU-1 #1", "Incident EU-1 #2"] == subjects
        first, second, last = (m for _, m in relay.received)

        def ident(n):
            return f"<incident.eu-1.{n}.{h.core.installation}@example.com>"

        assert ident(0) == first["Message-ID"]
        assert (None, None) == (first["In-Reply-To"], first["References"])
        assert (ident(0), ident(0)) == (second["In-Reply-To"], second["References"])
        assert ident(2) == last["Message-ID"]
        assert ident(1) == last["In-Reply-To"]
        assert f"{ident(0)} {ident(1)}" == " ".join(last["References"].split())  # unfolded
        assert "Monitoring <noc@example.com>" == last["From"]
        assert "auto-generated" == last["Auto-Submitted"]
        assert 2 == metric(h, "update", "sent")
        assert 0 == h.registry.get_sample_value("outagewatch_outbox_pending")

    async def test_dead_relay_retries_with_backoff_then_delivers_in_order(self, tmp_path,
                                                                          relay):
        """Nothing is lost while the relay is down, and the thread arrives in order after."""
        async with EngineHarness(settings(tmp_path, free_port()), FakeClock()) as h:
            drainer = h.core.drainer
            await queue(h, message("EU-1", 0), message("EU-1", 1))
            assert 0 == await drainer.send_due()
            now = h.clock.now().timestamp()
            first_retry = h.core.queue.next_attempt(undurable=False) - now
            assert 5.0 <= first_retry <= 10.0  # 10 s base, jitter 0.5..1
            await h.clock.advance(first_retry + 0.001)  # datetimes are microsecond-precise
            assert 0 == await drainer.send_due()
            retry = h.core.queue.next_attempt(undurable=False) - h.clock.now().timestamp()
            assert 10.0 <= retry <= 20.0  # doubled
            drainer.reconfigure({"smtp": SmtpChannel(settings(tmp_path, relay.port).notify,
                                                     installation=h.core.installation)},
                                (10.0, 60.0))  # the relay is back
            await h.clock.advance(60)
            assert 2 == await drainer.send_due()
            assert 2 == metric(h, "open", "retry")
        assert ["Incident EU-1 #0", "Incident EU-1 #1"] == [
            m["Subject"] for _, m in relay.received]

    async def test_a_deferring_recipient_holds_back_only_itself(self, tmp_path, relay):
        """Issue 10.8: one recipient answering 451 for a while; the other gets the whole
        thread at once, in order, and the first gets it in order once it accepts again (it
        used to hold back every later mail for every recipient)."""
        relay.rcpt["busy@example.com"] = "451 4.3.0 try later"
        to = (ONCALL, "busy@example.com")
        async with EngineHarness(settings(tmp_path, relay.port), FakeClock()) as h:
            await queue(h, *(message("EU-1", n, to=to) for n in range(3)))
            await h.core.drainer.send_due()
            assert [((ONCALL,), f"Incident EU-1 #{n}") for n in range(3)] == [
                (rcpt, m["Subject"]) for rcpt, m in relay.received]
            del relay.rcpt["busy@example.com"]
            await h.clock.advance(60)
            await h.core.drainer.send_due()
        late = [m for rcpt, m in relay.received if rcpt == ("busy@example.com",)]
        assert [f"Incident EU-1 #{n}" for n in range(3)] == [m["Subject"] for m in late]
        assert all("oncall@example.com, busy@example.com" == m["To"] for m in late)

    async def test_permanent_refusal_is_kept_as_failed_and_not_counted_sent(self, tmp_path,
                                                                           relay):
        """Issue 10.18: a recipient refused for good is a failure of its own lane, kept
        and counted as failed, never as sent; the other recipient gets the mail."""
        relay.rcpt["gone@example.com"] = "550 5.1.1 no such user"
        async with EngineHarness(settings(tmp_path, relay.port), FakeClock()) as h:
            await queue(h, message("EU-1", 0, to=(ONCALL, "gone@example.com")))
            with capture_logs() as logs:
                await h.core.drainer.send_due()
            await h.writer.flush()
            assert [(ONCALL, 0, "sent"), ("gone@example.com", 0, "failed")] == sorted(
                states(await h.store.thread("incident:EU-1")), key=lambda s: s[2], reverse=True)
            assert (1, 1) == (metric(h, "open", "sent"), metric(h, "open", "failed"))
        (failed,) = [e for e in logs if e["event"] == "mail_failed"]
        assert "gone@example.com: 550 5.1.1 no such user" in failed["error"]

    async def test_a_relay_answering_garbage_is_deferred_not_refused(self, tmp_path):
        """Issue 10.10: bytes that are no SMTP reply are a reason to try again, not a
        permanent refusal (an OPEN and two UPDATEs were lost to 8 s of garbage)."""
        async def garbage(reader, writer):
            writer.write(b"\x00\xff garbage \x1b[0m\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(garbage, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with EngineHarness(settings(tmp_path, port), FakeClock()) as h:
                await queue(h, message("EU-1", 0))
                await h.core.drainer.send_due()
                await h.writer.flush()
                (stored,) = await h.store.thread("incident:EU-1")
        finally:
            server.close()
            await server.wait_closed()
        assert ("pending", 1) == (stored.status, stored.attempts)
        assert 0 == metric(h, "open", "failed")

    async def test_recorded_as_sent_before_quit(self, tmp_path, relay):
        """Issue 10.7: the delivery is recorded the moment the relay accepted the DATA, not
        after QUIT: with a relay slow to answer QUIT, the record is in the store while the
        QUIT is still waiting."""
        relay.quit_delay = 3.0
        async with EngineHarness(settings(tmp_path, relay.port), FakeClock()) as h:
            await queue(h, message("EU-1", 0))
            sending = asyncio.create_task(h.core.drainer.send_due())
            for _ in range(200):
                await asyncio.sleep(0.01)
                if relay.received:
                    break
            await asyncio.sleep(0.05)
            await h.writer.flush()
            assert [(ONCALL, 0, "sent")] == states(await h.store.thread("incident:EU-1"))
            assert not sending.done()  # QUIT still unanswered
            assert 1 == await sending

    async def test_a_leader_sends_nothing_more_while_its_last_delivery_is_off_record(
            self, tmp_path, relay):
        """Cluster: a leader cut from its database may send one mail whose record it cannot
        write (the next leader sends it again), never the next ones of its lease. Here the
        store's write lock is held by another connection once the mails are queued."""
        clock = FakeClock()
        config = settings(tmp_path, relay.port)
        metrics = build_metrics(CollectorRegistry(), buckets=(1.0,))
        store = await SqliteStore.open(config.state.path, busy_timeout=0.05)
        state = await store.load(recent=1)
        channels = channels_of(config.notify, installation=state.installation)
        _, writer, drainer = outbox_of(
            config, state=state, store=store, clock=clock, metrics=metrics,
            faults=Faults(metrics, clock), authority=lambda: 60.0, undurable=False,
            channels=channels)
        writing = asyncio.create_task(writer.run())
        holder = sqlite3.connect(config.state.path, isolation_level=None)
        try:
            now = clock.now().timestamp()
            channel = channels["smtp"]
            writer.submit(Changes(envelopes=[
                Envelope(EnvelopeKey("smtp", m.thread.key, lane, m.number), m.kind, payload,
                         now)
                for m in (message("EU-1", 0), message("EU-2", 0))
                for lane, payload in channel.payloads(m, created=now).items()]))
            await writer.flush()
            holder.execute("BEGIN EXCLUSIVE")
            assert 1 == await drainer.send_due()
            assert 0 == await drainer.send_due(), "nothing more before the record is written"
            assert 1 == len(relay.received)
            holder.execute("ROLLBACK")
            await clock.advance(1.0)  # the writer's backoff
            await writer.flush()
            assert 1 == await drainer.send_due()
            await writer.flush()
            sent = [(await store.thread(f"incident:{i}"))[0].status for i in ("EU-1", "EU-2")]
            assert ["sent", "sent"] == sent
        finally:
            holder.close()
            writing.cancel()
            await asyncio.gather(writing, return_exceptions=True)
            await store.close()

    async def test_a_crashing_channel_does_not_stop_the_drainer(self, tmp_path, relay):
        """Issue 10.1: whatever a channel throws, the mail is kept (deferred, logged with
        its traceback) and the other mails go on."""
        async with EngineHarness(settings(tmp_path, relay.port), FakeClock()) as h:
            channel = h.composer.channels["smtp"]
            real = channel.deliver

            async def crash_on_eu(letter):
                if letter.key.thread == "incident:EU-1":
                    raise RuntimeError("a bug")
                return await real(letter)

            channel.deliver = crash_on_eu  # type: ignore[method-assign]
            await queue(h, message("EU-1", 0), message("US-1", 0))
            with capture_logs() as logs:
                assert 1 == await h.core.drainer.send_due()
            await h.writer.flush()
            (eu,) = await h.store.thread("incident:EU-1")
        assert ("pending", "the smtp channel crashed: RuntimeError: a bug") == (
            eu.status, eu.last_error)
        assert ["Incident US-1 #0"] == [m["Subject"] for _, m in relay.received]
        assert any(e["event"] == "channel_crashed" and "exc_info" in e for e in logs)

    async def test_a_subject_with_line_breaks_still_goes_out(self, tmp_path, relay):
        """Issue 10.1: a line break that reaches a subject (an operator template) is folded
        into the line; the mail goes out and the drainer lives (it used to die for good)."""
        async with EngineHarness(settings(tmp_path, relay.port), FakeClock()) as h:
            broken = Message(Thread(ThreadKind.INCIDENT, "EU-1"), 0, "open", (ONCALL,),
                             "Incident EU-1\nDOWN:\r\n imap-eu", "body")
            await queue(h, broken)
            assert 1 == await h.core.drainer.send_due()
        assert "Incident EU-1 DOWN: imap-eu" == relay.received[0][1]["Subject"]

    async def test_bad_relay_login_is_a_configuration_error(self, tmp_path, server_tls,
                                                            tls_files):
        server = await start_smtpd(server_tls)
        try:
            wrong = settings(tmp_path, server.port, tls="starttls",
                             ca_file=str(tls_files["ca"]), username=USER, password="wrong")
            async with EngineHarness(wrong, FakeClock()) as h:
                await queue(h, message("EU-1", 0))
                await h.core.drainer.send_due()
                await h.writer.flush()
                (failed,) = await h.store.thread("incident:EU-1")
            assert "failed" == failed.status
            assert "login" in (failed.last_error or "")
            (tmp_path / "ok").mkdir()
            right = settings(tmp_path / "ok", server.port, tls="starttls",
                             ca_file=str(tls_files["ca"]), username=USER, password=PASSWORD)
            async with EngineHarness(right, FakeClock()) as h:
                await queue(h, message("EU-2", 0))
                assert 1 == await h.core.drainer.send_due()
            assert 1 == len(server.sink.messages)
        finally:
            await server.stop()

    async def test_message_ids_never_repeat(self, tmp_path, relay):
        """Issue 10.4 and 10.5: an incident and a window of the same name, and the same
        incident thread again after the state was lost, all get their own Message-IDs
        (the outbox used to drop a second mail with an existing id, and a new state
        started again at eu-2026-0001.0)."""
        ids = []
        for run in ("first", "state lost"):
            (tmp_path / run).mkdir()
            async with EngineHarness(settings(tmp_path / run, relay.port), FakeClock()) as h:
                window = Message(Thread(ThreadKind.MAINTENANCE, "eu-1"), 0, "announcement",
                                 (ONCALL,), "Maintenance eu-1", "body")
                await queue(h, message("EU-1", 0), window)
                assert 2 == await h.core.drainer.send_due()
            ids += [m["Message-ID"] for _, m in relay.received[-2:]]
        assert 4 == len(set(ids)), ids

