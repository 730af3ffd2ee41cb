"""The state store: one SQLite file (``state.path``) with a versioned schema.

It holds each target's verdict and recent samples, each platform's incident book, the
incident history, and the outbox. The recorder writes an incident change and the mails it
causes in one transaction (``with store.transaction():``), so a crash can neither lose nor
duplicate a mail. WAL with synchronous=NORMAL survives a killed process.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from outagewatch.core.evaluator import Run, Status, Verdict
from outagewatch.core.incidents import Book, Incident
from outagewatch.core.maintenance import Window, WindowKind, WindowState
from outagewatch.errors import OutagewatchError

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from outagewatch.core.render import Mail

MIGRATIONS: tuple[str, ...] = (
    # 1: the first schema
    """
    CREATE TABLE verdicts (target TEXT PRIMARY KEY, state TEXT NOT NULL);
    CREATE TABLE samples (
        target TEXT NOT NULL, start REAL NOT NULL, duration REAL NOT NULL,
        result TEXT NOT NULL, phase TEXT, bad INTEGER NOT NULL);
    CREATE INDEX samples_by_target ON samples (target, start);
    CREATE TABLE books (platform TEXT PRIMARY KEY, state TEXT NOT NULL);
    CREATE TABLE incidents (
        id TEXT PRIMARY KEY, platform TEXT NOT NULL, opened_at REAL NOT NULL,
        resolved_at REAL, state TEXT NOT NULL);
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        incident_id TEXT NOT NULL, number INTEGER NOT NULL, kind TEXT NOT NULL,
        message_id TEXT NOT NULL UNIQUE,
        recipients TEXT NOT NULL, subject TEXT NOT NULL, body TEXT NOT NULL,
        in_reply_to TEXT, refs TEXT NOT NULL,
        created REAL NOT NULL, status TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0, next_attempt REAL NOT NULL,
        last_error TEXT, sent_at REAL);
    CREATE INDEX outbox_pending ON outbox (status, incident_id, id);
    """,
    # 2: maintenance windows
    """
    CREATE TABLE windows (id TEXT PRIMARY KEY, platform TEXT NOT NULL, state TEXT NOT NULL);
    """,
)


class StoreError(OutagewatchError, OSError):
    """The state file cannot be opened or written."""


@dataclass(frozen=True, slots=True)
class OutboxMail:
    id: int
    incident_id: str
    number: int
    kind: str
    message_id: str
    recipients: tuple[str, ...]
    subject: str
    body: str
    in_reply_to: str | None
    references: tuple[str, ...]
    created: float
    attempts: int


@dataclass(frozen=True, slots=True)
class StoredSample:
    target: str
    start: float
    duration: float
    result: str
    phase: str | None
    bad: bool


class Store:
    def __init__(self, path: Path | str) -> None:
        try:
            self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except sqlite3.Error as exc:
            raise StoreError(f"state.path: cannot use {path}: {exc}") from None
        self._depth = 0

    def close(self) -> None:
        self._db.close()

    @property
    def version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        current = self.version
        if current > len(MIGRATIONS):
            raise StoreError(f"state file schema {current} is newer than this outagewatch "
                             f"understands ({len(MIGRATIONS)}): refusing to touch it")
        for number, script in enumerate(MIGRATIONS[current:], current + 1):
            self._db.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """All writes inside commit together or not at all (nesting joins the outer one)."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        else:
            self._db.execute("COMMIT")
        finally:
            self._depth = 0

    # -- verdicts and samples -------------------------------------------------------------

    def verdicts(self) -> dict[str, Verdict]:
        rows = self._db.execute("SELECT target, state FROM verdicts").fetchall()
        return {target: verdict_from_json(json.loads(state)) for target, state in rows}

    def save_verdict(self, target: str, verdict: Verdict) -> None:
        self._db.execute("INSERT OR REPLACE INTO verdicts VALUES (?, ?)",
                         (target, json.dumps(verdict_to_json(verdict))))

    def add_sample(self, sample: StoredSample, *, keep_after: float) -> None:
        self._db.execute("INSERT INTO samples VALUES (?, ?, ?, ?, ?, ?)",
                         (sample.target, sample.start, sample.duration, sample.result,
                          sample.phase, int(sample.bad)))
        self._db.execute("DELETE FROM samples WHERE target = ? AND start < ?",
                         (sample.target, keep_after))

    def recent_samples(self, target: str, limit: int) -> list[StoredSample]:
        rows = self._db.execute(
            "SELECT target, start, duration, result, phase, bad FROM samples WHERE target = ?"
            " ORDER BY start DESC LIMIT ?", (target, limit)).fetchall()
        return [StoredSample(r[0], r[1], r[2], r[3], r[4], bool(r[5])) for r in reversed(rows)]

    def forget_target(self, target: str) -> None:
        with self.transaction():
            self._db.execute("DELETE FROM verdicts WHERE target = ?", (target,))
            self._db.execute("DELETE FROM samples WHERE target = ?", (target,))

    # -- incidents ------------------------------------------------------------------------

    def books(self) -> dict[str, Book]:
        rows = self._db.execute("SELECT platform, state FROM books").fetchall()
        return {platform: _book(json.loads(state)) for platform, state in rows}

    def save_book(self, platform: str, book: Book) -> None:
        self._db.execute("INSERT OR REPLACE INTO books VALUES (?, ?)",
                         (platform, json.dumps(_book_json(book))))

    def save_incident(self, incident: Incident) -> None:
        self._db.execute("INSERT OR REPLACE INTO incidents VALUES (?, ?, ?, ?, ?)",
                         (incident.id, incident.platform, incident.opened_at,
                          incident.resolved_at, json.dumps(_incident_json(incident))))

    def incidents(self, *, limit: int = 50) -> list[Incident]:
        rows = self._db.execute("SELECT state FROM incidents ORDER BY opened_at DESC LIMIT ?",
                                (limit,)).fetchall()
        return [_incident(json.loads(r[0])) for r in rows]

    # -- maintenance windows --------------------------------------------------------------

    def windows(self) -> dict[str, Window]:
        rows = self._db.execute("SELECT id, state FROM windows").fetchall()
        return {wid: _window(json.loads(state)) for wid, state in rows}

    def save_window(self, window: Window) -> None:
        self._db.execute("INSERT OR REPLACE INTO windows VALUES (?, ?, ?)",
                         (window.id, window.platform, json.dumps(asdict(window))))

    # -- outbox ---------------------------------------------------------------------------

    def enqueue(self, mail: Mail, *, incident_id: str, number: int, kind: str,
                now: float) -> None:
        """Queue a mail; the same Message-ID twice is the same mail and is kept once."""
        self._db.execute(
            "INSERT OR IGNORE INTO outbox (incident_id, number, kind, message_id, recipients,"
            " subject, body, in_reply_to, refs, created, next_attempt)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (incident_id, number, kind, mail.message_id, json.dumps(list(mail.to)),
             mail.subject, mail.body, mail.in_reply_to, json.dumps(list(mail.references)),
             now, now))

    def due_mails(self, now: float) -> list[OutboxMail]:
        """The oldest pending mail of each incident, if its time has come: later mails of an
        incident wait for earlier ones, so every thread arrives in order."""
        rows = self._db.execute(
            "SELECT o.id, o.incident_id, o.number, o.kind, o.message_id, o.recipients,"
            " o.subject, o.body, o.in_reply_to, o.refs, o.created, o.attempts, o.next_attempt"
            " FROM outbox o WHERE o.status = 'pending' AND o.id = (SELECT MIN(id) FROM outbox"
            " WHERE status = 'pending' AND incident_id = o.incident_id) ORDER BY o.id"
        ).fetchall()
        return [OutboxMail(r[0], r[1], r[2], r[3], r[4], tuple(json.loads(r[5])), r[6], r[7],
                           r[8], tuple(json.loads(r[9])), r[10], r[11])
                for r in rows if r[12] <= now]

    def next_attempt(self) -> float | None:
        """When the next mail can go: the earliest retry among each incident's oldest pending
        mail (a later mail of an incident cannot go before it, whatever its own time)."""
        row = self._db.execute(
            "SELECT MIN(o.next_attempt) FROM outbox o WHERE o.status = 'pending' AND o.id ="
            " (SELECT MIN(id) FROM outbox WHERE status = 'pending'"
            " AND incident_id = o.incident_id)").fetchone()
        return None if row[0] is None else float(row[0])

    def mark_sent(self, mail_id: int, now: float) -> None:
        self._db.execute("UPDATE outbox SET status = 'sent', sent_at = ?, attempts ="
                         " attempts + 1, last_error = NULL WHERE id = ?", (now, mail_id))

    def mark_retry(self, mail_id: int, *, recipients: tuple[str, ...], at: float,
                   error: str) -> None:
        self._db.execute("UPDATE outbox SET attempts = attempts + 1, next_attempt = ?,"
                         " last_error = ?, recipients = ? WHERE id = ?",
                         (at, error, json.dumps(list(recipients)), mail_id))

    def mark_failed(self, mail_id: int, error: str) -> None:
        self._db.execute("UPDATE outbox SET status = 'failed', attempts = attempts + 1,"
                         " last_error = ? WHERE id = ?", (error, mail_id))

    def outbox_stats(self, now: float) -> tuple[int, float]:
        """Pending mails, and the age of the oldest one (0 when none)."""
        count, oldest = self._db.execute(
            "SELECT COUNT(*), MIN(created) FROM outbox WHERE status = 'pending'").fetchone()
        return int(count), 0.0 if oldest is None else max(0.0, now - float(oldest))

    def mails(self, incident_id: str) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT number, kind, subject, status, created, sent_at, attempts, last_error,"
            " message_id, recipients, body FROM outbox WHERE incident_id = ? ORDER BY id",
            (incident_id,)).fetchall()
        keys = ("number", "kind", "subject", "status", "created", "sent_at", "attempts",
                "last_error", "message_id", "recipients", "body")
        rows = [(*row[:9], json.loads(row[9]), row[10]) for row in rows]
        return [dict(zip(keys, row, strict=True)) for row in rows]


def _window(data: dict[str, Any]) -> Window:
    return Window(**{**data, "kind": WindowKind(data["kind"]),
                     "state": WindowState(data["state"]), "targets": tuple(data["targets"]),
                     "problems": tuple(data["problems"]), "history": tuple(data["history"])})


VERDICT_FORMAT = 2


def verdict_to_json(verdict: Verdict) -> dict[str, Any]:
    """A verdict as stored: format 2, runs as [start, status, after_gap] triples."""
    return {"v": VERDICT_FORMAT,
            "runs": [[r.start, r.status.value, r.after_gap] for r in verdict.runs],
            "last_start": verdict.last_start, "horizon": verdict.horizon,
            "outage_start": verdict.outage_start, "floor": verdict.floor}


def verdict_from_json(data: dict[str, Any]) -> Verdict:
    """Read a stored verdict, of this format or of release 0.1's (no ``v``)."""
    if data.get("v") == VERDICT_FORMAT:
        return Verdict(runs=tuple(Run(float(start), Status(status), bool(gap))
                                  for start, status, gap in data["runs"]),
                       last_start=data["last_start"], horizon=data["horizon"],
                       outage_start=data["outage_start"], floor=data["floor"])
    if "v" in data:
        raise StoreError(f"a verdict of format {data['v']} is newer than this outagewatch "
                         f"understands ({VERDICT_FORMAT})")
    return _verdict_v1(data)


def _verdict_v1(data: dict[str, Any]) -> Verdict:
    """Release 0.1 kept a streak start, the latest start and a count of GOOD runs."""
    last, streak = data.get("last_start"), data.get("streak_start")
    if data.get("health") == "outage":
        first = data.get("good_run_start")
        goods = [first] if first is not None and data.get("good_run", 0) >= 1 else []
        if data.get("good_run", 0) >= 2 and last is not None and last != first:
            goods.append(last)
        runs = tuple(Run(start, Status.GOOD) for start in goods)
        return Verdict(runs=runs, last_start=last, outage_start=data["outage_start"])
    if data.get("health") == "bad" and streak is not None and last is not None:
        if streak > last:  # held by maintenance: 0.1 moved the streak to the window's end
            return Verdict(runs=(Run(last, Status.BAD),), last_start=last, floor=streak)
        starts = dict.fromkeys((streak, last))
        return Verdict(runs=tuple(Run(start, Status.BAD) for start in starts), last_start=last)
    return Verdict(last_start=last)


def _incident_json(incident: Incident) -> dict[str, Any]:
    data = asdict(incident)
    data["affected"] = sorted(incident.affected)
    return data


def _incident(data: dict[str, Any]) -> Incident:
    notes = tuple((at, text) for at, text in data.get("notes", ()))
    return Incident(**{**data, "affected": frozenset(data["affected"]), "notes": notes})


def _book_json(book: Book) -> dict[str, Any]:
    return {"open": None if book.open is None else _incident_json(book.open),
            "counters": {str(year): n for year, n in book.counters.items()}}


def _book(data: dict[str, Any]) -> Book:
    return Book(open=None if data["open"] is None else _incident(data["open"]),
                counters={int(year): n for year, n in data["counters"].items()})
