"""What every storage backend must do: the contract of ``StateStore`` and ``Outbox``.

A backend's test module subclasses ``StoreContract`` and provides a ``store`` fixture that
yields an empty, open store (``test_sqlite.py``; the PostgreSQL backend runs the same)."""

from __future__ import annotations

import pytest

from outagewatch.core.evaluator import Run, Status, Verdict
from outagewatch.core.incidents import Book, Platform, Service, declared
from outagewatch.core.maintenance import Window, WindowKind
from outagewatch.store import Changes, Envelope, StoredSample, StoreError

EU = Platform("eu", (Service("imap-eu"), Service("smtp-eu")))


def envelope(thread: str, number: int, *, created: float = 10.0, kind: str = "update",
             channel: str = "smtp") -> Envelope:
    return Envelope(thread=thread, number=number, kind=kind, channel=channel,
                    payload={"to": ["a@example.com"], "subject": f"{thread} #{number}"},
                    created=created)


def sample(target: str, start: float, *, bad: bool = False) -> StoredSample:
    return StoredSample(target, start, 0.5, "timeout" if bad else "ok", None, bad)


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
        assert 2 == (await store.stats(20.0))[0]

    async def test_outbox_keeps_each_thread_in_order(self, store):
        """Only the oldest pending envelope of a thread and channel is due."""
        await store.apply(Changes(envelopes=[envelope("incident:EU-1", n) for n in range(3)]
                                  + [envelope("incident:US-1", 0, created=11.0, kind="open")]))
        due = await store.due(20.0)
        assert [("incident:EU-1", 0), ("incident:US-1", 0)] == [(i.thread, i.number)
                                                                for i in due]
        await store.mark_retry(due[0].id, payload={"to": ["b@example.com"]}, at=30.0,
                               error="451 later")
        assert ["incident:US-1"] == [i.thread for i in await store.due(20.0)]
        assert 11.0 == await store.next_attempt()  # US-1 is due since 11, EU-1 again at 30
        retry = (await store.due(30.0))[0]
        assert (0, {"to": ["b@example.com"]}, 1) == (retry.number, dict(retry.payload),
                                                      retry.attempts)
        await store.mark_sent(retry.id, 31.0)
        assert [("incident:EU-1", 1), ("incident:US-1", 0)] == [
            (i.thread, i.number) for i in await store.due(31.0)]
        assert (3, 21.0) == await store.stats(31.0)

    async def test_next_attempt_is_the_earliest_head(self, store):
        await store.apply(Changes(envelopes=[envelope("incident:A", 0, created=50.0),
                                             envelope("incident:A", 1, created=5.0)]))
        assert 50.0 == await store.next_attempt()  # the second waits for the first
        assert [] == await store.due(40.0)

    async def test_a_failed_envelope_is_kept_and_listed(self, store):
        await store.apply(Changes(envelopes=[envelope("incident:A", 0)]))
        (item,) = await store.due(20.0)
        await store.mark_failed(item.id, "554 rejected")
        (listed,) = await store.thread("incident:A")
        assert ("failed", "554 rejected", 1) == (listed.status, listed.last_error,
                                                 listed.attempts)
        assert (0, 0.0) == await store.stats(20.0)
        assert await store.next_attempt() is None

    async def test_incidents_newest_first(self, store):
        book = Book()
        for at in (1000.0, 2000.0, 3000.0):
            book, (notice,) = declared(Book(counters=book.counters), EU, "imap-eu", at, at)
            await store.apply(Changes(incidents={notice.incident.id: notice.incident}))
        assert [3000.0, 2000.0] == [i.opened_at for i in await store.incidents(limit=2)]
