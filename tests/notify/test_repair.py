"""Delivery an operator can repair, against a real aiosmtpd relay: UPDATEs made stale by the
RESOLVED are superseded, a failed mail is counted in a gauge and can be resent with the same
Message-ID, and the drainer picks the resent mail up without a restart."""

from __future__ import annotations

import asyncio

from aiosmtpd.smtp import SMTP
from tests.helpers.engine import EngineHarness
from tests.helpers.fakeclock import FakeClock
from tests.helpers.ports import free_port
from tests.notify.test_drainer import (  # the relay fixture with per-recipient answers
    ONCALL,
    Relay,
    _relay,  # noqa: F401
    message,
    queue,
    settings,
    states,
)

from outagewatch.core.render import Message, Thread, ThreadKind


def resolved(incident: str, number: int) -> Message:
    return Message(thread=Thread(ThreadKind.INCIDENT, incident), number=number,
                   kind="resolved", to=(ONCALL,), subject=f"Incident {incident} #{number}",
                   body="restored")


def failed_gauge(h, kind: str) -> float | None:
    return h.registry.get_sample_value("outagewatch_mails_failed", {"kind": kind})


class TestSuperseded:
    async def test_stale_updates_are_not_sent_after_the_relay_heals(self, tmp_path):
        """The relay goes down after the OPEN; two UPDATEs wait; the incident is resolved;
        the relay comes back: OPEN and RESOLVED arrive, the UPDATEs are superseded (kept
        with that state, never sent), the order is kept, and the RESOLVED answers the
        OPEN."""
        port = free_port()
        relay = Relay()
        server = await asyncio.get_running_loop().create_server(
            lambda: SMTP(relay, hostname="relay.test"), "127.0.0.1", port)
        try:
            async with EngineHarness(settings(tmp_path, port), FakeClock()) as h:
                await queue(h, message("EU-1", 0))
                assert 1 == await h.core.drainer.send_due()
                server.close()
                await server.wait_closed()  # the relay is down
                await queue(h, message("EU-1", 1), message("EU-1", 2))
                assert 0 == await h.core.drainer.send_due()
                await queue(h, resolved("EU-1", 3))
                server = await asyncio.get_running_loop().create_server(
                    lambda: SMTP(relay, hostname="relay.test"), "127.0.0.1", port)
                await h.clock.advance(120)  # past the retry
                assert 1 == await h.core.drainer.send_due()
                await h.writer.flush()
                stored = await h.store.thread("incident:EU-1")
                superseded = h.registry.get_sample_value(
                    "outagewatch_notifications_total", {"kind": "update",
                                                        "result": "superseded"})
        finally:
            server.close()
            await server.wait_closed()
        assert ["Incident EU-1 #0", "Incident EU-1 #3"] == [
            m["Subject"] for _, m in relay.received]
        (_, opened), (_, closed) = relay.received
        assert opened["Message-ID"] == closed["In-Reply-To"]  # not the UPDATE never sent
        assert opened["Message-ID"] == closed["References"]
        assert [(ONCALL, 0, "sent"), (ONCALL, 1, "superseded"), (ONCALL, 2, "superseded"),
                (ONCALL, 3, "sent")] == states(stored)
        assert 2 == superseded

    async def test_a_delivered_update_stays_and_a_later_one_is_untouched(self, tmp_path,
                                                                         relay):
        """Only UPDATEs before the RESOLVED and never delivered are superseded."""
        async with EngineHarness(settings(tmp_path, relay.port), FakeClock()) as h:
            await queue(h, message("EU-1", 0), message("EU-1", 1))
            assert 2 == await h.core.drainer.send_due()
            await queue(h, resolved("EU-1", 2))
            assert 1 == await h.core.drainer.send_due()
            await h.writer.flush()
            assert ["sent"] * 3 == [m.status for m in await h.store.thread("incident:EU-1")]


class TestResend:
    async def test_a_failed_mail_is_counted_and_resent_with_its_message_id(self, tmp_path,
                                                                          relay):
        """A 5xx to DATA: failed, counted in outagewatch_mails_failed; once the relay is
        fixed, a resend sets it back to pending (attempts reset), the running drainer
        sends it at once with the same Message-ID, and the gauge goes back to 0."""
        relay.data = "554 5.7.1 policy says no"
        async with EngineHarness(settings(tmp_path, relay.port), FakeClock()) as h:
            drainer = h.core.drainer
            running = asyncio.create_task(drainer.run())
            try:
                await queue(h, message("EU-1", 0))
                for _ in range(100):
                    await h.clock.settle()
                    if failed_gauge(h, "open") == 1:
                        break
                    await asyncio.sleep(0.01)
                assert 1 == failed_gauge(h, "open")
                assert 0 == failed_gauge(h, "update")
                (failed,) = await h.store.thread("incident:EU-1")
                assert ("failed", 1) == (failed.status, failed.attempts)
                assert "554 5.7.1 policy says no" in (failed.last_error or "")
                relay.data = "250 OK"  # the operator fixed the cause
                (letter,) = drainer.resend("eu-1", 0)  # any case
                assert (0, "pending") == (letter.attempts, letter.status)
                for _ in range(100):
                    await h.clock.settle()
                    if relay.received:
                        break
                    await asyncio.sleep(0.01)
                await h.writer.flush()
                (sent,) = await h.store.thread("incident:EU-1")
            finally:
                running.cancel()
                await asyncio.gather(running, return_exceptions=True)
        assert ("sent", 1) == (sent.status, sent.attempts)
        (_, mail), = relay.received
        assert failed.payload["message_id"] == mail["Message-ID"]
        assert 0 == failed_gauge(h, "open")

    async def test_resend_of_a_mail_not_failed_changes_nothing(self, tmp_path, relay):
        """Sent, unknown, or another recipient: nothing to resend."""
        async with EngineHarness(settings(tmp_path, relay.port), FakeClock()) as h:
            await queue(h, message("EU-1", 0))
            assert 1 == await h.core.drainer.send_due()
            assert [] == h.core.drainer.resend("EU-1", 0)
            assert [] == h.core.drainer.resend("EU-2", 0)

    async def test_resend_of_one_recipient(self, tmp_path, relay):
        """With a recipient, only that lane goes back to pending."""
        relay.rcpt["a@example.com"] = relay.rcpt["b@example.com"] = "550 5.1.1 no such user"
        async with EngineHarness(settings(tmp_path, relay.port), FakeClock()) as h:
            await queue(h, message("EU-1", 0, to=("a@example.com", "b@example.com")))
            await h.core.drainer.send_due()
            assert 2 == failed_gauge(h, "open")
            del relay.rcpt["a@example.com"]
            (letter,) = h.core.drainer.resend("incident:EU-1", 0, lane="A@example.com")
            assert "a@example.com" == letter.key.lane
            assert 1 == await h.core.drainer.send_due()
            assert 1 == failed_gauge(h, "open")
