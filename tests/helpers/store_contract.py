"""What every storage backend must do: the contract of ``StateStore`` and ``Outbox``.

A backend's test module subclasses ``StoreContract`` and provides a ``store`` fixture that
yields an empty, open store (``test_sqlite.py``; the PostgreSQL backend runs the same)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from outagewatch.core.evaluator import Run, Status, Verdict
from outagewatch.core.incidents import Book, Platform, Service, declared
from outagewatch.core.maintenance import Window, WindowKind, WindowState
from outagewatch.core.rollup import Rollup
from outagewatch.store import (
    Changes,
    Delivery,
    Envelope,
    EnvelopeKey,
    OutageSpan,
    StoredSample,
    StoreError,
)

EU = Platform("eu", (Service("imap-eu"), Service("smtp-eu")))


def envelope(thread: str, number: int, *, created: float = 10.0, kind: str = "update",
             channel: str = "smtp", lane: str = "a@example.com") -> Envelope:
    return Envelope(EnvelopeKey(channel, thread, lane, number), kind,
                    {"to": ["a@example.com"], "subject": f"{thread} #{number}"}, created)


def delivered(item: Envelope, status: str, *, at: float = 20.0, error: str | None = None,
              attempts: int = 1) -> Delivery:
    return Delivery(item.key, status, attempts, at, error, item.payload,
                    at if status == "sent" else None)


def sample(target: str, start: float, *, bad: bool = False,
           duration: float = 0.5) -> StoredSample:
    return StoredSample(target, start, duration, "timeout" if bad else "ok", None, bad)


def rollup(target: str, bucket: float, *, location: str = "", runs: int = 3, bad: int = 0,
           errors: dict[str, int] | None = None, p95: float = 1.5) -> Rollup:
    return Rollup(target, location, bucket, runs, bad, 0.25, p95, 2.125, errors or {})


def window(wid: str, start: float, end: float, *, platform: str = "eu",
           state: WindowState = WindowState.SCHEDULED,
           closed_at: float | None = None) -> Window:
    return Window(id=wid, platform=platform, targets=("imap-eu",), start=start, end=end,
                  kind=WindowKind.PLANNED, description="d", impact="i", registered_at=0.0,
                  state=state, closed_at=closed_at)


class StoreContract:
    """Subclass and provide a ``store`` fixture."""

    async def test_a_change_is_there_after_load(self, store):
        """Verdicts, books, incidents, windows and samples written in one unit come back."""
        book, _ = declared(Book(), EU, "imap-eu", 100.0, 1000.0)
        verdict = Verdict(runs=(Run(960.0, Status.BAD),), last_start=960.0, outage_start=100.0)
        window = Window(id="db", platform="eu", targets=("imap-eu",), start=5000.0,
                        end=6000.0, kind=WindowKind.EMERGENCY, description="d", impact="i",
                        registered_at=900.0)
        assert book.open is not None
        await store.apply(Changes(verdicts={"imap-eu": verdict}, books={"eu": book},
                                  incidents={book.open.id: book.open}, windows={"db": window},
                                  samples=[sample("imap-eu", 960.0, bad=True)],
                                  envelopes=[envelope("incident:EU-2026-0001", 0)]))
        state = await store.load(recent=3)
        assert {"imap-eu": verdict} == dict(state.verdicts)
        assert {"eu": book} == dict(state.books)
        assert {"db": window} == dict(state.windows)
        assert [sample("imap-eu", 960.0, bad=True)] == state.recent["imap-eu"]
        assert [book.open] == await store.incidents()

    async def test_load_gives_the_latest_samples_oldest_first(self, store):
        await store.apply(Changes(samples=[sample("t", float(s)) for s in (5, 1, 4, 2, 3)]))
        await store.apply(Changes(samples=[sample("u", 7.0)]))
        recent = (await store.load(recent=3)).recent
        assert [3.0, 4.0, 5.0] == [s.start for s in recent["t"]]
        assert [7.0] == [s.start for s in recent["u"]]

    async def test_samples_are_pruned(self, store):
        for start in range(10):
            await store.apply(Changes(samples=[sample("t", float(start))],
                                      keep_after={"t": start - 3.0}))
        assert [6.0, 7.0, 8.0, 9.0] == [s.start for s in (await store.load(recent=100))
                                        .recent["t"]]

    async def test_a_forgotten_target_leaves_nothing(self, store):
        await store.apply(Changes(verdicts={"t": Verdict(last_start=1.0)},
                                  samples=[sample("t", 1.0)]))
        await store.apply(Changes(forgotten={"t"}))
        state = await store.load(recent=5)
        assert ({}, {}) == (dict(state.verdicts), dict(state.recent))

    async def test_a_unit_is_all_or_nothing(self, store):
        """A unit that cannot be written (here: a message that exists already) writes
        nothing, and says so: a message is never dropped silently."""
        await store.apply(Changes(envelopes=[envelope("incident:A", 0)]))
        with pytest.raises(StoreError, match="exists already"):
            await store.apply(Changes(verdicts={"t": Verdict(last_start=1.0)},
                                      envelopes=[envelope("incident:B", 0),
                                                 envelope("incident:A", 0)]))
        assert {} == dict((await store.load(recent=1)).verdicts)
        assert [] == await store.thread("incident:B")

    async def test_a_thread_id_may_be_used_by_an_incident_and_a_window(self, store):
        await store.apply(Changes(envelopes=[envelope("incident:eu-1", 0),
                                             envelope("maintenance:eu-1", 0)]))
        assert 2 == len((await store.load(recent=1)).outbox)

    async def test_each_lane_is_its_own_envelope(self, store):
        """One message, two recipients: two envelopes, each with its own state."""
        first, second = (envelope("incident:A", 0, lane=lane) for lane in ("a@x", "b@x"))
        await store.apply(Changes(envelopes=[first, second]))
        await store.apply(Changes(deliveries={first.key: delivered(first, "sent")}))
        stored = await store.thread("incident:A")
        assert [("a@x", "sent"), ("b@x", "pending")] == [(m.lane, m.status) for m in stored]

    async def test_the_outbox_comes_back_with_its_deliveries(self, store):
        """At start the drainer gets back every envelope not sent, as it left it, in the
        order they were made; sent ones stay in their thread only."""
        sent, retry, failed, new = (envelope("incident:A", n, created=10.0 + n)
                                    for n in range(4))
        await store.apply(Changes(envelopes=[sent, retry, failed, new]))
        await store.apply(Changes(deliveries={
            sent.key: delivered(sent, "sent"),
            retry.key: Delivery(retry.key, "pending", 2, 99.0, "451 later",
                                {"to": ["a@example.com"], "rcpt": ["a@example.com"]}),
            failed.key: delivered(failed, "failed", error="554 rejected")}))
        outbox = (await store.load(recent=1)).outbox
        assert [1, 2, 3] == [e.key.number for e, _ in outbox]
        (_, pending), (_, gave_up), (_, fresh) = outbox
        assert ("pending", 2, 99.0, "451 later") == (pending.status, pending.attempts,
                                                    pending.next_attempt, pending.last_error)
        assert {"to": ["a@example.com"], "rcpt": ["a@example.com"]} == dict(pending.payload)
        assert ("failed", "554 rejected") == (gave_up.status, gave_up.last_error)
        assert ("pending", 0, 13.0) == (fresh.status, fresh.attempts, fresh.next_attempt)
        listed = await store.thread("incident:A")
        assert ["sent", "pending", "failed", "pending"] == [m.status for m in listed]
        assert 20.0 == listed[0].sent_at

    async def test_a_delivery_in_the_unit_of_its_envelope(self, store):
        """Written while the store could not: the envelope and its delivery arrive together,
        and the delivery wins."""
        item = envelope("incident:A", 0)
        await store.apply(Changes(envelopes=[item],
                                  deliveries={item.key: delivered(item, "sent")}))
        assert [] == (await store.load(recent=1)).outbox
        assert ["sent"] == [m.status for m in await store.thread("incident:A")]

    async def test_old_mails_are_pruned_pending_ones_never(self, store):
        """Issue 10.16: sent (and failed) mails older than the retention go; a pending one
        stays whatever its age (it still has to leave)."""
        old_sent, old_pending, new_sent = (envelope("incident:A", n, created=10.0 + n)
                                           for n in range(3))
        await store.apply(Changes(envelopes=[old_sent, old_pending, new_sent]))
        await store.apply(Changes(deliveries={
            old_sent.key: delivered(old_sent, "sent", at=100.0),
            new_sent.key: delivered(new_sent, "sent", at=900.0)}))
        await store.apply(Changes(prune_mails_before=500.0))
        assert [(1, "pending"), (2, "sent")] == [
            (m.number, m.status) for m in await store.thread("incident:A")]

    async def test_a_superseded_mail_is_listed_not_loaded_and_pruned(self, store):
        """An UPDATE superseded by its RESOLVED keeps that state in its thread (for the
        API), is not handed to the drainer again at start, and goes with the old mails."""
        update, resolved = envelope("incident:A", 1), envelope("incident:A", 2,
                                                                 kind="resolved")
        await store.apply(Changes(envelopes=[update, resolved]))
        await store.apply(Changes(deliveries={update.key: delivered(update, "superseded",
                                                                    attempts=0)}))
        assert [(1, "superseded"), (2, "pending")] == [
            (m.number, m.status) for m in await store.thread("incident:A")]
        assert [2] == [e.key.number for e, _ in (await store.load(recent=1)).outbox]
        await store.apply(Changes(prune_mails_before=500.0))
        assert [2] == [m.number for m in await store.thread("incident:A")]

    async def test_incidents_newest_first(self, store):
        book = Book()
        for at in (1000.0, 2000.0, 3000.0):
            book, (notice,) = declared(Book(last_id=book.last_id), EU, "imap-eu", at, at)
            await store.apply(Changes(incidents={notice.incident.id: notice.incident}))
        assert [3000.0, 2000.0] == [i.opened_at for i in await store.incidents(limit=2)]


class LedgerContract:
    """The ledger that outlasts the samples: rollups, coverage, outages, and incidents and
    windows by time, for the reports and the status page."""

    async def test_rollups_round_trip_and_are_read_by_range(self, store):
        rows = [rollup("imap", 600.0, bad=1, errors={"timeout": 1, "refused": 2}),
                rollup("imap", 900.0), rollup("imap", 1200.0), rollup("smtp", 900.0),
                rollup("pop3", 900.0)]
        await store.apply(Changes(rollups={(r.target, r.location, r.bucket): r for r in rows}))
        found = await store.rollups(["imap", "smtp"], 700.0, 1200.0)
        # the bucket holding 700 overlaps the range; the one starting at its end does not
        assert [rows[0], rows[1], rows[3]] == found
        assert {"timeout": 1, "refused": 2} == dict(found[0].errors)
        assert [] == await store.rollups(["none"], 0.0, 1e10)

    async def test_series_is_the_slowest_location_and_any_bad_per_bucket(self, store):
        """The response-time chart's data: per target and bucket, across locations."""
        rows = [rollup("imap", 600.0, location="fra", p95=0.5),
                rollup("imap", 600.0, location="ams", p95=0.25, bad=1),
                rollup("imap", 900.0, location="fra", p95=0.125),
                rollup("smtp", 600.0, location="fra", p95=1.5), rollup("pop3", 600.0)]
        await store.apply(Changes(rollups={(r.target, r.location, r.bucket): r for r in rows}))
        assert [("imap", 600.0, 0.5, True), ("imap", 900.0, 0.125, False),
                ("smtp", 600.0, 1.5, False)] == await store.series(["smtp", "imap"], 700.0,
                                                                     1200.0)
        assert [] == await store.series(["none"], 0.0, 1e10)

    async def test_a_rollup_is_rewritten_as_its_bucket_fills(self, store):
        first, later = rollup("imap", 300.0, runs=1), rollup("imap", 300.0, runs=2, bad=1,
                                                             errors={"timeout": 1})
        await store.apply(Changes(rollups={("imap", "", 300.0): first}))
        await store.apply(Changes(rollups={("imap", "", 300.0): later}))
        assert [later] == await store.rollups(["imap"], 0.0, 1e10)

    async def test_coverage_is_extended_and_read_as_a_union(self, store):
        await store.apply(Changes(coverage={("imap", "", 100.0): 160.0}))
        await store.apply(Changes(coverage={("imap", "", 100.0): 220.0,
                                            ("imap", "", 500.0): 560.0,
                                            ("imap", "b", 200.0): 300.0,
                                            ("smtp", "", 0.0): 50.0}))
        found = await store.coverage(["imap", "smtp", "pop3"], 150.0, 540.0)
        assert {"imap": [(150.0, 300.0), (500.0, 540.0)], "smtp": [], "pop3": []} == found

    async def test_outages_open_and_close(self, store):
        opened = OutageSpan("imap", "eu", 100.0, None, "EU-1")
        await store.apply(Changes(outages={("imap", 100.0): opened}))
        assert [opened] == await store.outages(["imap"], 5000.0, 6000.0)  # still lasting
        closed = replace(opened, end=400.0)
        other = OutageSpan("smtp", "eu", 350.0, 380.0, None)
        await store.apply(Changes(outages={("imap", 100.0): closed, ("smtp", 350.0): other}))
        assert [closed, other] == await store.outages(["imap", "smtp"], 300.0, 1000.0)
        assert [] == await store.outages(["imap", "smtp"], 400.0, 1000.0)
        assert [other] == await store.outages(["smtp"], 0.0, 1000.0)

    async def test_incidents_and_windows_by_time(self, store):
        book, (notice,) = declared(Book(), EU, "imap-eu", 1000.0, 1100.0)
        early = replace(notice.incident, resolved_at=2000.0, restored_at=1900.0)
        _, (notice,) = declared(Book(last_id=book.last_id), EU, "imap-eu", 5000.0, 5100.0)
        lasting = notice.incident
        us = replace(lasting, id="US-1", platform="us")
        await store.apply(Changes(incidents={i.id: i for i in (early, lasting, us)}))
        assert [early] == await store.incidents_between(0.0, 3000.0)
        assert [lasting] == await store.incidents_between(2000.0, 9000.0, "eu")
        assert [early, lasting, us] == await store.incidents_between(1500.0, 9000.0)
        assert [] == await store.incidents_between(2000.0, 5000.0)
        # an incident counts from its outage's start, before it was opened
        assert [early, lasting] == await store.incidents_between(0.0, 5050.0, "eu")
        done = window("done", 100.0, 200.0, state=WindowState.FINISHED)
        cancelled = window("cancelled", 300.0, 400.0, state=WindowState.CANCELLED,
                           closed_at=350.0)
        ahead = window("ahead", 800.0, 900.0, platform="us")
        await store.apply(Changes(windows={w.id: w for w in (done, cancelled, ahead)}))
        assert [done, cancelled] == await store.windows_between(150.0, 800.0)
        assert [] == await store.windows_between(150.0, 800.0, "us")
        assert [ahead] == await store.windows_between(0.0, 1000.0, "us")

    async def test_load_gives_the_open_rollup_and_coverage_to_continue(self, store):
        """After a restart the engine continues each target's bucket (with the durations
        of its samples still stored) and its coverage interval."""
        older, latest = rollup("imap", 300.0), rollup("imap", 600.0, runs=2)
        await store.apply(Changes(
            verdicts={"imap": Verdict(last_start=610.0)},
            samples=[sample("imap", 290.0, duration=9.0), sample("imap", 605.0, duration=1.0),
                     sample("imap", 610.0, duration=2.0)],
            rollups={("imap", "", 300.0): older, ("imap", "", 600.0): latest,
                     ("gone", "", 600.0): rollup("gone", 600.0)},
            coverage={("imap", "", 10.0): 100.0, ("imap", "", 200.0): 670.0}))
        state = await store.load(recent=1)
        assert {"imap": (latest, (1.0, 2.0))} == {
            k: (r, tuple(sorted(d))) for k, (r, d) in state.rollups.items()}
        assert {"imap": (200.0, 670.0)} == dict(state.coverage)

    async def test_a_forgotten_target_keeps_its_history(self, store):
        await store.apply(Changes(verdicts={"t": Verdict(last_start=1.0)},
                                  rollups={("t", "", 0.0): rollup("t", 0.0)},
                                  coverage={("t", "", 0.0): 60.0},
                                  outages={("t", 5.0): OutageSpan("t", "eu", 5.0, 9.0, None)}))
        await store.apply(Changes(forgotten={"t"}))
        assert 1 == len(await store.rollups(["t"], 0.0, 300.0))
        assert {"t": [(0.0, 60.0)]} == await store.coverage(["t"], 0.0, 300.0)
        assert 1 == len(await store.outages(["t"], 0.0, 300.0))

    async def test_rollups_are_pruned_by_their_retention(self, store):
        """Of every target at every location (the prune walks them one by one)."""
        rows = [rollup(t, b, location=where) for t in ("a", "b", "c") for where in ("", "x")
                for b in (0.0, 300.0, 600.0)]
        await store.apply(Changes(rollups={(r.target, r.location, r.bucket): r for r in rows}))
        await store.apply(Changes(prune_rollups_before=300.0))
        assert [(t, where, b) for t in ("a", "b", "c") for where in ("", "x")
                for b in (300.0, 600.0)] == [
            (r.target, r.location, r.bucket)
            for r in await store.rollups(["a", "b", "c"], 0.0, 1e10)]

    async def test_history_is_pruned_only_when_ended(self, store):
        """What ended before the line goes; what lasts (an open outage, an open incident,
        a window ahead) stays whatever its age."""
        book, (notice,) = declared(Book(), EU, "imap-eu", 10.0, 10.0)
        resolved = replace(notice.incident, resolved_at=50.0, restored_at=40.0)
        _, (notice,) = declared(Book(last_id=book.last_id), EU, "imap-eu", 20.0, 20.0)
        still_open = notice.incident
        await store.apply(Changes(
            coverage={("t", "", 0.0): 60.0, ("t", "", 100.0): 300.0},
            outages={("t", 5.0): OutageSpan("t", "eu", 5.0, 9.0, None),
                     ("t", 20.0): OutageSpan("t", "eu", 20.0, None, still_open.id)},
            incidents={resolved.id: resolved, still_open.id: still_open},
            windows={"old": window("old", 0.0, 50.0, state=WindowState.FINISHED),
                     "kept": window("kept", 0.0, 50.0, state=WindowState.ACTIVE)}))
        await store.apply(Changes(prune_history_before=100.0))
        assert {"t": [(100.0, 300.0)]} == await store.coverage(["t"], 0.0, 1000.0)
        assert [20.0] == [o.start for o in await store.outages(["t"], 0.0, 1000.0)]
        assert [still_open.id] == [i.id for i in await store.incidents_between(0.0, 1000.0)]
        assert ["kept"] == [w.id for w in await store.windows_between(0.0, 1000.0)]
