"""The embedded backend: one SQLite file (``state.path``) with a versioned schema.

Every call runs on one dedicated thread that owns the connection, so neither SQLite's busy
wait nor a slow disk ever blocks the event loop (``threaded=False`` runs calls inline, for
tests on a fake clock). WAL with synchronous=NORMAL survives a killed process. An exclusive
lock on ``<state>.lock`` (with the holder's pid in it) keeps a second daemon off the file:
two daemons on one state would send every mail twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import secrets
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from outagewatch.core.rollup import BUCKET, Rollup
from outagewatch.store import (
    Changes,
    Delivery,
    Envelope,
    EnvelopeKey,
    Interval,
    OutageSpan,
    State,
    StateLocked,
    StateStore,
    StoredMessage,
    StoredSample,
    StoreError,
)
from outagewatch.store.codecs import (
    book_from_json,
    book_to_json,
    incident_from_json,
    incident_to_json,
    verdict_from_json,
    verdict_to_json,
    window_from_json,
    window_to_json,
)
from outagewatch.store.ledger import (
    errors_from_text,
    errors_to_text,
    incidents_between,
    union,
    windows_between,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from outagewatch.core.incidents import Incident
    from outagewatch.core.maintenance import Window

T = TypeVar("T")

BUSY_TIMEOUT = 5.0  # seconds a write waits for another process's lock before it fails

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
    # 3: a channel-neutral outbox: a thread (incident:ID or maintenance:ID), and per channel
    # the payload it rendered; one envelope per channel, thread and number
    """
    CREATE TABLE envelopes (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        thread TEXT NOT NULL, number INTEGER NOT NULL, kind TEXT NOT NULL,
        channel TEXT NOT NULL, payload TEXT NOT NULL,
        created REAL NOT NULL, status TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0, next_attempt REAL NOT NULL,
        last_error TEXT, sent_at REAL,
        UNIQUE (channel, thread, number));
    INSERT INTO envelopes (id, thread, number, kind, channel, payload, created, status,
                           attempts, next_attempt, last_error, sent_at)
        SELECT id,
               CASE WHEN kind IN ('open', 'update', 'resolved') THEN 'incident:'
                    ELSE 'maintenance:' END || incident_id,
               number, kind, 'smtp',
               json_object('to', json(recipients), 'subject', subject, 'body', body,
                           'message_id', message_id, 'in_reply_to', in_reply_to,
                           'references', json(refs)),
               created, status, attempts, next_attempt, last_error, sent_at
        FROM outbox;
    DROP TABLE outbox;
    CREATE INDEX envelopes_pending ON envelopes (status, thread, channel, id);
    """,
    # 4: a lane per envelope (for SMTP: one recipient, so that a recipient that defers holds
    # back only its own mails); older envelopes are one lane for all their recipients
    """
    CREATE TABLE envelopes4 (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        channel TEXT NOT NULL, thread TEXT NOT NULL, lane TEXT NOT NULL,
        number INTEGER NOT NULL, kind TEXT NOT NULL, payload TEXT NOT NULL,
        created REAL NOT NULL, status TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0, next_attempt REAL NOT NULL,
        last_error TEXT, sent_at REAL,
        UNIQUE (channel, thread, lane, number));
    INSERT INTO envelopes4 (id, channel, thread, lane, number, kind, payload, created,
                            status, attempts, next_attempt, last_error, sent_at)
        SELECT id, channel, thread, '', number, kind, payload, created, status, attempts,
               next_attempt, last_error, sent_at FROM envelopes;
    DROP TABLE envelopes;
    ALTER TABLE envelopes4 RENAME TO envelopes;
    CREATE INDEX envelopes_by_status ON envelopes (status, id);
    CREATE INDEX envelopes_by_thread ON envelopes (thread, number);
    """,
    # 5: facts about the state itself: the installation's token (part of every Message-ID,
    # so a lost state never reuses one) and when a daemon last opened it
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    # 6: the ledger, kept after the samples: per target and 5 minutes its runs' rollup
    # (bucket in whole seconds and durations in whole microseconds: integers take 3 to 4
    # bytes where a REAL takes 8; no index by bucket, see _prune_rollups), the time the
    # monitor saw it, and its outages; incidents by when they ended, for the reports
    """
    CREATE TABLE rollups (
        target TEXT NOT NULL, location TEXT NOT NULL, bucket INTEGER NOT NULL,
        runs INTEGER NOT NULL, bad INTEGER NOT NULL,
        p50_us INTEGER NOT NULL, p95_us INTEGER NOT NULL, max_us INTEGER NOT NULL, errors TEXT,
        PRIMARY KEY (target, location, bucket)) WITHOUT ROWID;
    CREATE TABLE coverage (
        target TEXT NOT NULL, location TEXT NOT NULL, started REAL NOT NULL, ended REAL NOT NULL,
        PRIMARY KEY (target, location, started)) WITHOUT ROWID;
    CREATE TABLE outages (
        target TEXT NOT NULL, started REAL NOT NULL, platform TEXT NOT NULL, ended REAL,
        incident TEXT, PRIMARY KEY (target, started)) WITHOUT ROWID;
    CREATE INDEX incidents_by_resolved_at ON incidents (resolved_at);
    """,
)


class SqliteStore:
    """The state in one SQLite file; open with ``await SqliteStore.open(path)``."""

    def __init__(self, db: sqlite3.Connection, *, executor: ThreadPoolExecutor | None,
                 lock: int | None, path: Path | str) -> None:
        self._db = db
        self._executor = executor
        self._lock = lock
        self._path = Path(path)
        self._identity = _identity(self._path)

    @classmethod
    async def open(cls, path: Path | str, *, threaded: bool = True,
                   busy_timeout: float = BUSY_TIMEOUT) -> SqliteStore:
        """Lock, open and migrate the state file; StoreError (one line) if it cannot."""
        executor = (ThreadPoolExecutor(max_workers=1, thread_name_prefix="outagewatch-sqlite")
                    if threaded else None)
        try:
            if executor is None:
                lock, db = _open(path, busy_timeout)
            else:
                lock, db = await asyncio.get_running_loop().run_in_executor(
                    executor, _open, path, busy_timeout)
        except BaseException:
            if executor is not None:
                executor.shutdown(wait=False)
            raise
        return cls(db, executor=executor, lock=lock, path=path)

    async def _call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._executor is None:
            return _guarded(work, self._db)
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, _guarded, work, self._db)

    async def health(self) -> str | None:
        """Is the file we write still the state file? One deleted or replaced under the
        daemon takes every write into a file nobody will read again."""
        if self._identity is None:
            return None
        now = _identity(self._path)
        if now is None:
            return (f"the state file {self._path} was deleted while the daemon runs: "
                    "decisions are written into a file that is gone; restart the daemon")
        if now != self._identity:
            return (f"the state file {self._path} was replaced while the daemon runs; "
                    "restart the daemon")
        return None

    async def close(self) -> None:
        try:
            await self._call(lambda db: db.close())
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
            if self._lock is not None:
                os.close(self._lock)  # releases the lock

    @property
    def version(self) -> int:
        return _version(self._db)

    # -- StateStore -------------------------------------------------------------------------

    async def load(self, *, recent: int) -> State:
        return await self._call(lambda db: _load(db, recent))

    async def apply(self, changes: Changes) -> None:
        await self._call(lambda db: _apply(db, changes))

    async def incidents(self, *, limit: int = 50) -> list[Incident]:
        rows = await self._call(lambda db: db.execute(
            "SELECT state FROM incidents ORDER BY opened_at DESC LIMIT ?", (limit,)).fetchall())
        return [incident_from_json(json.loads(r[0])) for r in rows]

    async def thread(self, key: str) -> list[StoredMessage]:
        rows = await self._call(lambda db: db.execute(
            "SELECT number, kind, channel, lane, status, created, sent_at, attempts,"
            " last_error, payload FROM envelopes WHERE thread = ? ORDER BY number, lane",
            (key,)).fetchall())
        return [StoredMessage(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8],
                              json.loads(r[9])) for r in rows]

    # -- the ledger ---------------------------------------------------------------------------

    async def rollups(self, targets: Sequence[str], start: float, end: float) -> list[Rollup]:
        names = sorted(set(targets))
        rows = await self._call(lambda db: db.execute(
            "SELECT r.target, location, bucket, runs, bad, p50_us, p95_us, max_us, errors"
            " FROM rollups r"
            " JOIN json_each(?) t ON r.target = t.value WHERE bucket > ? AND bucket < ?"
            " ORDER BY r.target, location, bucket",
            (json.dumps(names), start - BUCKET, end)).fetchall())
        return [_rollup(r) for r in rows]

    async def series(self, targets: Sequence[str], start: float,
                     end: float) -> list[tuple[str, float, float, bool]]:
        names = sorted(set(targets))
        rows = await self._call(lambda db: db.execute(
            "SELECT r.target, bucket, MAX(p95_us), MAX(bad > 0) FROM rollups r"
            " JOIN json_each(?) t ON r.target = t.value WHERE bucket > ? AND bucket < ?"
            " GROUP BY r.target, bucket ORDER BY r.target, bucket",
            (json.dumps(names), start - BUCKET, end)).fetchall())
        return [(r[0], float(r[1]), r[2] / 1e6, bool(r[3])) for r in rows]

    async def coverage(self, targets: Sequence[str], start: float,
                       end: float) -> dict[str, list[Interval]]:
        names = sorted(set(targets))
        rows = await self._call(lambda db: db.execute(
            "SELECT c.target, started, ended FROM coverage c JOIN json_each(?) t"
            " ON c.target = t.value WHERE started < ? AND ended > ?",
            (json.dumps(names), end, start)).fetchall())
        return union(names, rows, start, end)

    async def outages(self, targets: Sequence[str], start: float,
                      end: float) -> list[OutageSpan]:
        rows = await self._call(lambda db: db.execute(
            "SELECT o.target, platform, started, ended, incident FROM outages o"
            " JOIN json_each(?) t ON o.target = t.value"
            " WHERE started < ? AND (ended IS NULL OR ended > ?) ORDER BY started, o.target",
            (json.dumps(sorted(set(targets))), end, start)).fetchall())
        return [OutageSpan(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    async def incidents_between(self, start: float, end: float,
                                platform: str | None = None) -> list[Incident]:
        rows = await self._call(lambda db: db.execute(
            "SELECT state FROM incidents WHERE (resolved_at IS NULL OR resolved_at > ?)"
            " AND (? IS NULL OR platform = ?)", (start, platform, platform)).fetchall())
        return incidents_between((incident_from_json(json.loads(r[0])) for r in rows),
                                 start, end, platform)

    async def windows_between(self, start: float, end: float,
                              platform: str | None = None) -> list[Window]:
        rows = await self._call(lambda db: db.execute(
            "SELECT state FROM windows WHERE ? IS NULL OR platform = ?",
            (platform, platform)).fetchall())
        return windows_between((window_from_json(json.loads(r[0])) for r in rows),
                               start, end, platform)

_: type[StateStore] = SqliteStore


# -- on the store's thread ----------------------------------------------------------------


def _identity(path: Path) -> tuple[int, int] | None:
    if str(path) == ":memory:":
        return None
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino


def _guarded(work: Callable[[sqlite3.Connection], T], db: sqlite3.Connection) -> T:
    try:
        return work(db)
    except sqlite3.Error as exc:
        raise StoreError(f"state.path: {exc}") from exc


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Any:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _open(path: Path | str, busy_timeout: float) -> tuple[int | None, sqlite3.Connection]:
    lock = None if str(path) == ":memory:" else _lock(Path(path))
    try:
        db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False,
                             timeout=busy_timeout)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            _migrate(db)
            _opened(db)
        except BaseException:
            db.close()
            raise
    except sqlite3.Error as exc:
        if lock is not None:
            os.close(lock)
        raise StoreError(f"state.path: cannot use {path}: {exc}") from None
    except BaseException:
        if lock is not None:
            os.close(lock)
        raise
    return lock, db


def _lock(path: Path) -> int:
    """Take ``<path>.lock`` for this process, or raise StateLocked naming the holder."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StoreError(f"state.path: cannot create {lock_path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        who = f" (pid {holder})" if holder.isdigit() else ""
        raise StateLocked(f"state.path: {path} is in use by another outagewatch{who}; "
                          "one daemon per state file") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as exc:
        os.close(fd)
        raise StoreError(f"state.path: cannot write {lock_path}: {exc.strerror}") from None
    return fd


def _opened(db: sqlite3.Connection) -> None:
    """Write once at start, so that a state the daemon could not write (a full disk, a
    read-only file) stops it at once with one line rather than at its first incident;
    and give the installation its token."""
    with _transaction(db):
        db.execute("INSERT OR IGNORE INTO meta VALUES ('installation', ?)",
                   (secrets.token_hex(4),))
        db.execute("INSERT OR REPLACE INTO meta VALUES ('opened_at', ?)", (str(time.time()),))


def _version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def _migrate(db: sqlite3.Connection) -> None:
    current = _version(db)
    if current > len(MIGRATIONS):
        raise StoreError(f"state file schema {current} is newer than this outagewatch "
                         f"understands ({len(MIGRATIONS)}): refusing to touch it")
    for number, script in enumerate(MIGRATIONS[current:], current + 1):
        db.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")


def _load(db: sqlite3.Connection, recent: int) -> State:
    verdicts = {target: verdict_from_json(json.loads(state))
                for target, state in db.execute("SELECT target, state FROM verdicts")}
    books = {platform: book_from_json(json.loads(state))
             for platform, state in db.execute("SELECT platform, state FROM books")}
    windows = {wid: window_from_json(json.loads(state))
               for wid, state in db.execute("SELECT id, state FROM windows")}
    rows = db.execute(
        "SELECT target, start, duration, result, phase, bad FROM (SELECT *, ROW_NUMBER()"
        " OVER (PARTITION BY target ORDER BY start DESC) AS n FROM samples) WHERE n <= ?"
        " ORDER BY target, start", (recent,))
    samples: dict[str, list[StoredSample]] = {}
    for r in rows:
        samples.setdefault(r[0], []).append(StoredSample(r[0], r[1], r[2], r[3], r[4],
                                                         bool(r[5])))
    outbox = []
    for r in db.execute(
            "SELECT channel, thread, lane, number, kind, payload, created, status, attempts,"
            " next_attempt, last_error, sent_at FROM envelopes"
            " WHERE status NOT IN ('sent', 'superseded') ORDER BY id"):
        key, payload = EnvelopeKey(r[0], r[1], r[2], r[3]), json.loads(r[5])
        outbox.append((Envelope(key, r[4], payload, r[6]),
                       Delivery(key, r[7], r[8], r[9], r[10], payload, r[11])))
    (installation,) = db.execute("SELECT value FROM meta WHERE key = 'installation'").fetchone()
    return State(verdicts=verdicts, books=books, windows=windows, recent=samples,
                 outbox=outbox, installation=installation, rollups=_open_rollups(db),
                 coverage=_last_coverage(db))


def _open_rollups(db: sqlite3.Connection) -> dict[str, tuple[Rollup, tuple[float, ...]]]:
    """Per target (with a verdict: one still probed), its latest rollup and the durations
    of the samples still stored for its bucket."""
    found: dict[str, tuple[Rollup, tuple[float, ...]]] = {}
    for r in db.execute(
            "SELECT r.target, r.location, r.bucket, runs, r.bad, p50_us, p95_us, max_us, errors,"
            " (SELECT json_group_array(duration) FROM samples s WHERE s.target = r.target"
            "  AND s.start >= r.bucket AND s.start < r.bucket + ?)"
            " FROM verdicts v JOIN rollups r ON r.target = v.target AND r.location = ''"
            " AND r.bucket = (SELECT max(bucket) FROM rollups WHERE target = v.target"
            " AND location = '')", (BUCKET,)):
        found[r[0]] = (_rollup(r), tuple(float(d) for d in json.loads(r[9])))
    return found


def _rollup(row: Sequence[Any]) -> Rollup:
    return Rollup(row[0], row[1], float(row[2]), row[3], row[4], row[5] / 1e6, row[6] / 1e6,
                  row[7] / 1e6, errors_from_text(row[8]))


def _micro(seconds: float) -> int:
    return round(seconds * 1e6)


def _prune_rollups(db: sqlite3.Connection, before: float) -> None:
    """Rollups of buckets before ``before`` go, target by target through the primary key:
    the walk from one (target, location) to the next is one seek, where an index by
    bucket would cost a third of the table's size."""
    pair = db.execute("SELECT target, location FROM rollups ORDER BY target, location"
                      " LIMIT 1").fetchone()
    while pair is not None:
        db.execute("DELETE FROM rollups WHERE target = ? AND location = ? AND bucket < ?",
                   (*pair, before))
        pair = db.execute("SELECT target, location FROM rollups WHERE (target, location)"
                          " > (?, ?) ORDER BY target, location LIMIT 1", pair).fetchone()


def _last_coverage(db: sqlite3.Connection) -> dict[str, Interval]:
    return {r[0]: (r[1], r[2]) for r in db.execute(
        "SELECT c.target, c.started, c.ended FROM verdicts v JOIN coverage c"
        " ON c.target = v.target AND c.location = '' AND c.started = (SELECT max(started)"
        " FROM coverage WHERE target = v.target AND location = '')")}


def _apply(db: sqlite3.Connection, changes: Changes) -> None:
    with _transaction(db):
        for name in changes.forgotten:
            db.execute("DELETE FROM verdicts WHERE target = ?", (name,))
            db.execute("DELETE FROM samples WHERE target = ?", (name,))
        db.executemany("INSERT OR REPLACE INTO verdicts VALUES (?, ?)",
                       [(t, json.dumps(verdict_to_json(v))) for t, v in changes.verdicts.items()])
        db.executemany("INSERT INTO samples VALUES (?, ?, ?, ?, ?, ?)",
                       [(s.target, s.start, s.duration, s.result, s.phase, int(s.bad))
                        for s in changes.samples])
        db.executemany("DELETE FROM samples WHERE target = ? AND start < ?",
                       list(changes.keep_after.items()))
        db.executemany("INSERT OR REPLACE INTO rollups VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       [(r.target, r.location, int(r.bucket), r.runs, r.bad, _micro(r.p50),
                         _micro(r.p95), _micro(r.max), errors_to_text(r.errors))
                        for r in changes.rollups.values()])
        db.executemany("INSERT OR REPLACE INTO coverage VALUES (?, ?, ?, ?)",
                       [(*key, until) for key, until in changes.coverage.items()])
        db.executemany("INSERT OR REPLACE INTO outages VALUES (?, ?, ?, ?, ?)",
                       [(o.target, o.start, o.platform, o.end, o.incident)
                        for o in changes.outages.values()])
        db.executemany("INSERT OR REPLACE INTO books VALUES (?, ?)",
                       [(p, json.dumps(book_to_json(b))) for p, b in changes.books.items()])
        db.executemany("INSERT OR REPLACE INTO incidents VALUES (?, ?, ?, ?, ?)",
                       [(i.id, i.platform, i.opened_at, i.resolved_at,
                         json.dumps(incident_to_json(i))) for i in changes.incidents.values()])
        db.executemany("INSERT OR REPLACE INTO windows VALUES (?, ?, ?)",
                       [(w.id, w.platform, json.dumps(window_to_json(w)))
                        for w in changes.windows.values()])
        try:
            db.executemany(
                "INSERT INTO envelopes (channel, thread, lane, number, kind, payload, created,"
                " next_attempt) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(e.key.channel, e.key.thread, e.key.lane, e.key.number, e.kind,
                  json.dumps(e.payload), e.created, e.created) for e in changes.envelopes])
        except sqlite3.IntegrityError as exc:  # never drop a message silently
            raise StoreError(f"outbox: a message with the same thread and number exists "
                             f"already: {exc}") from exc
        if changes.prune_mails_before is not None:
            db.execute("DELETE FROM envelopes WHERE (status = 'sent' AND sent_at < ?)"
                       " OR (status IN ('failed', 'superseded') AND created < ?)",
                       (changes.prune_mails_before, changes.prune_mails_before))
        if changes.prune_rollups_before is not None:
            _prune_rollups(db, changes.prune_rollups_before)
        if changes.prune_history_before is not None:
            before = changes.prune_history_before
            db.execute("DELETE FROM coverage WHERE ended < ?", (before,))
            db.execute("DELETE FROM outages WHERE ended < ?", (before,))
            db.execute("DELETE FROM incidents WHERE resolved_at < ?", (before,))
            db.execute("DELETE FROM windows WHERE json_extract(state, '$.state')"
                       " IN ('finished', 'cancelled') AND max(json_extract(state, '$.end'),"
                       " coalesce(json_extract(state, '$.closed_at'), 0)) < ?", (before,))
        db.executemany(
            "UPDATE envelopes SET status = ?, attempts = ?, next_attempt = ?, last_error = ?,"
            " payload = ?, sent_at = ? WHERE channel = ? AND thread = ? AND lane = ?"
            " AND number = ?",
            [(d.status, d.attempts, d.next_attempt, d.last_error, json.dumps(d.payload),
              d.sent_at, d.key.channel, d.key.thread, d.key.lane, d.key.number)
             for d in changes.deliveries.values()])
