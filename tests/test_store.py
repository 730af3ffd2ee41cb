from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from outagewatch.core.evaluator import Health, Run, Status, Verdict
from outagewatch.core.incidents import Book, Platform, Service, declared
from outagewatch.core.render import Mail
from outagewatch.store import MIGRATIONS, Store, StoredSample, StoreError

EU = Platform("eu", (Service("imap-eu"), Service("smtp-eu")))


def mail(incident: str, number: int) -> Mail:
    return Mail(to=("a@example.com", "b@example.com"), subject=f"{incident} #{number}",
                body="text", message_id=f"<{incident}.{number}@x>", in_reply_to=None,
                references=())


class TestStore:
    def test_state_survives_a_reopen(self, tmp_path):
        """Verdicts, books (with their open incident) and samples are there after a restart."""
        path = tmp_path / "state.db"
        store = Store(path)
        book, _ = declared(Book(), EU, "imap-eu", 100.0, 1000.0)
        with store.transaction():
            store.save_verdict("imap-eu", Verdict(runs=(Run(1000.0, Status.GOOD),),
                                                  last_start=1000.0, outage_start=100.0))
            store.save_book("eu", book)
            store.save_incident(book.open)
            store.add_sample(StoredSample("imap-eu", 960.0, 35.0, "timeout", "login", True),
                             keep_after=0)
        store.close()
        again = Store(path)
        assert Verdict(runs=(Run(1000.0, Status.GOOD),), last_start=1000.0,
                       outage_start=100.0) == again.verdicts()["imap-eu"]
        assert book == again.books()["eu"]
        assert [book.open] == again.incidents()
        assert "login" == again.recent_samples("imap-eu", 5)[0].phase
        assert len(MIGRATIONS) == again.version

    def test_transaction_is_all_or_nothing(self, tmp_path):
        store = Store(tmp_path / "s.db")

        def fail_halfway():
            with store.transaction():
                store.save_verdict("a", Verdict())
                store.enqueue(mail("x", 0), incident_id="x", number=0, kind="open", now=1.0)
                raise RuntimeError

        with pytest.raises(RuntimeError):
            fail_halfway()
        assert {} == store.verdicts()
        assert (0, 0.0) == store.outbox_stats(2.0)

    def test_outbox_keeps_each_thread_in_order(self):
        """Only the oldest pending mail of an incident is due; others wait their turn."""
        store = Store(":memory:")
        for number in range(3):
            store.enqueue(mail("eu-1", number), incident_id="eu-1", number=number,
                          kind="update", now=10.0)
        store.enqueue(mail("us-1", 0), incident_id="us-1", number=0, kind="open", now=11.0)
        assert [("eu-1", 0), ("us-1", 0)] == [(m.incident_id, m.number)
                                              for m in store.due_mails(20.0)]
        first = store.due_mails(20.0)[0]
        store.mark_retry(first.id, recipients=("b@example.com",), at=30.0, error="451")
        assert ["us-1"] == [m.incident_id for m in store.due_mails(20.0)]
        (retry, _) = store.due_mails(30.0)
        assert (0, ("b@example.com",), 1) == (retry.number, retry.recipients, retry.attempts)
        store.mark_sent(retry.id, 31.0)
        assert [("eu-1", 1), ("us-1", 0)] == [(m.incident_id, m.number)
                                              for m in store.due_mails(31.0)]
        assert (4 - 1, 21.0) == store.outbox_stats(31.0)

    def test_same_message_id_is_queued_once(self):
        store = Store(":memory:")
        for _ in range(2):
            store.enqueue(mail("eu-1", 0), incident_id="eu-1", number=0, kind="open", now=1.0)
        assert 1 == store.outbox_stats(1.0)[0]

    def test_samples_are_pruned(self):
        store = Store(":memory:")
        for start in range(10):
            store.add_sample(StoredSample("t", float(start), 1.0, "ok", None, False),
                             keep_after=start - 3)
        assert [6.0, 7.0, 8.0, 9.0] == [s.start for s in store.recent_samples("t", 100)]

    def test_newer_schema_is_refused(self, tmp_path):
        path = tmp_path / "s.db"
        db = sqlite3.connect(path)
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
        db.close()
        with pytest.raises(StoreError, match="newer than this outagewatch"):
            Store(path)

    def test_unusable_path_is_one_line(self, tmp_path):
        with pytest.raises(StoreError, match=r"state\.path: cannot use"):
            Store(tmp_path / "missing-dir" / "s.db")


class TestUpgrade:
    """A state file written by release 0.1 (tests/testdata/state/README.md) is read right."""

    def open(self, tmp_path):
        source = Path(__file__).parent / "testdata" / "state" / "state-0.1.db"
        copy = tmp_path / "state.db"
        copy.write_bytes(source.read_bytes())
        return Store(copy)

    def test_verdicts_of_every_shape(self, tmp_path):
        t0 = 1_780_000_000.0
        verdicts = self.open(tmp_path).verdicts()
        outage = verdicts["imap-eu"]
        assert (Health.OUTAGE, t0) == (outage.health, outage.outage_start)
        assert [Run(t0 + 1000, Status.GOOD)] == list(outage.runs)  # one GOOD run of two
        bad = verdicts["smtp-eu"]
        assert (Health.BAD, t0 + 600, t0 + 960) == (bad.health, bad.streak_start,
                                                     bad.last_start)
        held = verdicts["webmail-eu"]  # 0.1 moved a held streak to the window's end
        assert (Health.BAD, t0 + 5000, t0 + 5000) == (held.health, held.floor,
                                                       held.streak_start)
        assert (Health.OK, t0 + 990) == (verdicts["pop3-eu"].health,
                                         verdicts["pop3-eu"].last_start)

    def test_incidents_windows_and_outbox(self, tmp_path):
        store = self.open(tmp_path)
        (incident,) = store.incidents()
        assert incident == store.books()["eu"].open
        assert ["open"] == [m["kind"] for m in store.mails(incident.id)]
        assert "sent" == store.mails(incident.id)[0]["status"]
        assert ["db-upgrade"] == list(store.windows())
        assert ["announcement"] == [m.kind for m in store.due_mails(2e9)]
        assert 1 == len(store.recent_samples("imap-eu", 5))

