"""Incidents opened, raised and resolved by hand (the agreement: "If an outage is detected by
the Customer and escalated via the ticket process, the same communication rules apply"), a
target removed by a reload, and a periodic UPDATE right before a recovery. Simulated time."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from tests.core.test_incidents import EU, T0, H

from outagewatch.core.incidents import (
    Book,
    Incident,
    Kind,
    Origin,
    Refused,
    change,
    declared,
    next_deadline,
    opened,
    resolve,
    restored,
    set_severity,
    tick,
    unmonitored,
)
from outagewatch.core.render import render


def open_by_hand(book: Book | None = None, **kw: Any):
    args: dict[str, Any] = {"reported": ("Calendar sync",), "severity": 2,
                            "impact": "Calendar invitations are not delivered",
                            "ticket": "OX-12345"} | kw
    return opened(book or Book(), EU, T0, **args)


def the(book: Book) -> Incident:
    assert book.open is not None
    return book.open


class TestOpenedByHand:
    def test_open_mails_like_a_declared_one_with_the_ticket(self):
        book, [notice] = open_by_hand(etr=T0 + 2 * H)
        incident = notice.incident
        assert (notice.kind, notice.number) == (Kind.OPEN, 0)
        assert incident.origin is Origin.OPERATOR
        assert incident.severity == 2
        assert incident.services == ["Calendar sync"]
        assert book.open == incident
        message = render(notice, EU, recipients=["ops@example.net"])
        assert "OX-12345" in message.subject
        assert "An outage has been reported to us on platform eu." in message.body
        assert "- Calendar sync: Calendar invitations are not delivered" in message.body
        assert "Ticket: OX-12345" in message.body
        assert "Expected time to restoration: 2026-03-02T11:00:00Z" in message.body

    def test_hourly_updates_and_the_ticket_in_every_mail(self):
        book, _ = open_by_hand()
        assert next_deadline(book, EU) == T0 + H
        book, [update] = tick(book, EU, T0 + H)
        assert update.kind is Kind.UPDATE
        assert "Ticket: OX-12345" in render(update, EU, recipients=["a@b.c"]).body
        book, [done] = resolve(book, update.incident.id, T0 + 90 * 60, note="cache rebuilt")
        message = render(done, EU, recipients=["a@b.c"])
        assert done.kind is Kind.RESOLVED
        assert book.open is None
        assert "OX-12345" in message.subject
        assert "resolved by the operators" in message.body
        assert "cache rebuilt" in message.body
        assert "Total duration: 1 h 30 min" in message.body

    def test_since_sets_the_start_never_the_future(self):
        _, [notice] = open_by_hand(since=T0 - 1800)
        assert notice.incident.started_at == T0 - 1800
        _, [later] = open_by_hand(since=T0 + 1800)
        assert later.incident.started_at == T0

    @pytest.mark.parametrize(("kw", "why"), [
        ({"reported": ()}, "name at least one service"),
        ({"severity": 4}, "severity must be 1, 2 or 3"),
        ({"until_restored": True}, "only an incident opened for probed services"),
    ])
    def test_refused_with_one_line(self, kw, why):
        with pytest.raises(Refused, match=why):
            open_by_hand(**kw)

    def test_one_incident_per_platform(self):
        book, _ = declared(Book(), EU, "imap-eu", T0 - 900, T0)
        with pytest.raises(Refused, match=r"already has an open incident EU-20260302-0900"):
            open_by_hand(book)


class TestProbesAndHand:
    def test_a_probe_declared_outage_joins_and_its_recovery_does_not_resolve(self):
        book, _ = open_by_hand(reported=("imap-eu",), severity=3)
        book, [joined] = declared(book, EU, "smtp-eu", T0 + 60, T0 + 960)
        assert joined.kind is Kind.UPDATE
        assert joined.incident.severity == 2  # the probes may raise it
        assert joined.incident.services == ["imap-eu", "smtp-eu"]
        book, [back] = restored(book, EU, "smtp-eu", T0 + 1200, T0 + 1260)
        assert back.kind is Kind.UPDATE  # not RESOLVED: the customer's report stands
        assert book.open is not None
        assert back.incident.services == ["imap-eu"]
        assert back.incident.severity == 3  # back to the operator's level, no lower

    def test_until_restored_resolves_with_the_probes(self):
        book, _ = open_by_hand(reported=("imap-eu",), until_restored=True)
        book, _ = declared(book, EU, "imap-eu", T0 - 300, T0 + 600)
        book, [done] = restored(book, EU, "imap-eu", T0 + 1200, T0 + 1260)
        assert done.kind is Kind.RESOLVED
        assert done.incident.restored_at == T0 + 1200
        assert book.open is None

    def test_resolve_by_hand_refused_while_the_probes_see_it_down(self):
        book, _ = open_by_hand()
        book, _ = declared(book, EU, "imap-eu", T0, T0 + 900)
        with pytest.raises(Refused, match="the probes still see imap-eu down"):
            resolve(book, the(book).id, T0 + 1000)

    def test_resolve_unknown_or_closed(self):
        with pytest.raises(Refused, match="is not open"):
            resolve(Book(), "EU-20260302-0900", T0)


class TestSeverityByHand:
    def test_raised_by_hand_is_an_update_with_the_reason(self):
        book, _ = declared(Book(), EU, "pop3-eu", T0 - 900, T0)
        assert the(book).severity == 3
        book, [notice] = set_severity(book, the(book).id, 1,
                                      "security: possible data exposure", T0 + 60)
        assert notice.kind is Kind.UPDATE
        assert notice.incident.severity == 1
        body = render(notice, EU, recipients=["a@b.c"]).body
        assert "severity 3 -> 1 set by the operators: security: possible data exposure" in body
        assert "Severity 1: complete outage" in body

    def test_probe_changes_never_lower_it(self):
        book, _ = declared(Book(), EU, "imap-eu", T0 - 900, T0)
        book, _ = set_severity(book, the(book).id, 1, "security", T0 + 60)
        book, [more] = declared(book, EU, "pop3-eu", T0, T0 + 120)
        assert more.incident.severity == 1
        book, [less] = restored(book, EU, "pop3-eu", T0 + 150, T0 + 200)
        assert less.incident.severity == 1
        assert "severity" not in " ".join(less.reasons)

    def test_refused(self):
        book, _ = declared(Book(), EU, "imap-eu", T0 - 900, T0)
        with pytest.raises(Refused, match="give the reason"):
            set_severity(book, the(book).id, 1, "  ", T0)
        with pytest.raises(Refused, match="severity must be"):
            set_severity(book, the(book).id, 0, "x", T0)


class TestNoLongerMonitored:
    def test_removed_during_an_incident_is_not_restored(self):
        book, _ = declared(Book(), EU, "imap-eu", T0 - 900, T0)
        book, _ = declared(book, EU, "smtp-eu", T0 - 900, T0 + 10)
        book, [update] = unmonitored(book, EU, "smtp-eu", T0 + 60)
        assert update.kind is Kind.UPDATE
        assert update.reasons == ("smtp-eu no longer monitored",)
        body = render(update, EU, recipients=["a@b.c"]).body
        assert "No longer monitored: smtp-eu" in body
        assert "Restored: smtp-eu" not in body
        book, [done] = restored(book, EU, "imap-eu", T0 + 100, T0 + 160)
        assert done.kind is Kind.RESOLVED
        assert done.incident.restored_at == T0 + 100  # only imap-eu's recovery was seen

    def test_the_last_one_removed_resolves_without_a_restore_time(self):
        book, _ = declared(Book(), EU, "imap-eu", T0 - 900, T0)
        book, [done] = unmonitored(book, EU, "imap-eu", T0 + 60)
        assert done.kind is Kind.RESOLVED
        assert done.incident.restored_at is None
        body = render(done, EU, recipients=["a@b.c"]).body
        assert "Restored:       not observed" in body
        assert "all services are restored" not in body
        assert "imap-eu (removed from the configuration" in body


class TestPeriodicThenResolved:
    COALESCING = replace(EU, coalesce=5.0)

    def test_a_recovery_within_the_coalescing_window_is_one_resolved(self):
        p = self.COALESCING
        book, _ = declared(Book(), p, "imap-eu", T0 - 900, T0)
        assert next_deadline(book, p) == T0 + H
        book, notes = tick(book, p, T0 + H)  # the periodic UPDATE waits for 5 s...
        assert notes == []
        assert next_deadline(book, p) == T0 + H + 5  # ...and the timer does not spin
        assert tick(book, p, T0 + H + 2) == (book, [])
        book, [done] = restored(book, p, "imap-eu", T0 + H - 30, T0 + H + 3)
        assert done.kind is Kind.RESOLVED
        assert done.number == 1  # no UPDATE in between
        assert done.reasons == ("periodic update", "imap-eu restored")

    def test_without_a_recovery_it_goes_out_after_the_window(self):
        p = self.COALESCING
        book, _ = declared(Book(), p, "imap-eu", T0 - 900, T0)
        book, _ = tick(book, p, T0 + H)
        book, [update] = tick(book, p, T0 + H + 5)
        assert (update.kind, update.number, update.reasons) == (
            Kind.UPDATE, 1, ("periodic update",))
        assert next_deadline(book, p) == T0 + 2 * H  # hourly, however long it was collected


class TestReviewFindings:
    def test_until_restored_waits_for_every_named_service(self):
        """Opened for imap-eu and smtp-eu: imap-eu's recovery alone does not resolve it
        (smtp-eu was never seen to recover)."""
        book, _ = open_by_hand(reported=("imap-eu", "smtp-eu"), until_restored=True)
        book, _ = declared(book, EU, "imap-eu", T0, T0 + 900)
        book, [update] = restored(book, EU, "imap-eu", T0 + 1200, T0 + 1260)
        assert update.kind is Kind.UPDATE
        body = render(update, EU, recipients=["a@b.c"]).body
        assert "the probes saw it recover at 09:20Z" in body
        assert "see it down" not in body
        book, _ = declared(book, EU, "smtp-eu", T0 + 1300, T0 + 2200)
        book, [done] = restored(book, EU, "smtp-eu", T0 + 2500, T0 + 2560)
        assert done.kind is Kind.RESOLVED

    def test_the_severity_reason_is_in_every_later_mail_and_the_resolved_one(self):
        book, _ = declared(Book(), EU, "pop3-eu", T0 - 900, T0)
        book, _ = set_severity(book, the(book).id, 1, "security: possible data exposure",
                               T0 + 60)
        book, [tick_update] = tick(book, EU, T0 + 60 + H)
        book, [done] = restored(book, EU, "pop3-eu", T0 + H + 10, T0 + H + 70)
        for notice in (tick_update, done):
            body = render(notice, EU, recipients=["a@b.c"]).body
            assert ("Severity 1: complete outage, all users affected (set by the operators: "
                    "security: possible data exposure)") in body

    def test_the_same_severity_again_is_kept_not_an_arrow(self):
        book, _ = declared(Book(), EU, "imap-eu", T0 - 900, T0)
        book, [notice] = set_severity(book, the(book).id, 2, "customer escalation", T0 + 60)
        assert notice.reasons == ("severity 2 kept by the operators: customer escalation",)

    def test_a_ticket_and_components_attached_to_an_open_incident(self):
        book, _ = declared(Book(), EU, "imap-eu", T0 - 900, T0)
        book, [update] = change(book, T0 + 60, ticket="OX-9", reported=("Calendar sync",))
        assert update.reasons == ("ticket OX-9", "reported by the operators: Calendar sync")
        message = render(update, EU, recipients=["a@b.c"])
        assert "OX-9" in message.subject
        assert "- Calendar sync:" in message.body
        assert change(book, T0 + 120, ticket="OX-9", reported=("Calendar sync",)) == (book, [])
