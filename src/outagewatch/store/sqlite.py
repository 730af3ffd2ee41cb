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
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from outagewatch.store import (
    Changes,
    Outbox,
    OutboxItem,
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

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from outagewatch.core.incidents import Incident

T = TypeVar("T")

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
)


class SqliteStore:
    """The state in one SQLite file; open with ``await SqliteStore.open(path)``."""

    def __init__(self, db: sqlite3.Connection, *, executor: ThreadPoolExecutor | None,
                 lock: int | None) -> None:
        self._db = db
        self._executor = executor
        self._lock = lock

    @classmethod
    async def open(cls, path: Path | str, *, threaded: bool = True) -> SqliteStore:
        """Lock, open and migrate the state file; StoreError (one line) if it cannot."""
        executor = (ThreadPoolExecutor(max_workers=1, thread_name_prefix="outagewatch-sqlite")
                    if threaded else None)
        try:
            if executor is None:
                lock, db = _open(path)
            else:
                lock, db = await asyncio.get_running_loop().run_in_executor(
                    executor, _open, path)
        except BaseException:
            if executor is not None:
                executor.shutdown(wait=False)
            raise
        return cls(db, executor=executor, lock=lock)

    async def _call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._executor is None:
            return _guarded(work, self._db)
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, _guarded, work, self._db)

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
            "SELECT number, kind, channel, status, created, sent_at, attempts, last_error,"
            " payload FROM envelopes WHERE thread = ? ORDER BY number, id", (key,)).fetchall())
        return [StoredMessage(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], json.loads(r[8]))
                for r in rows]

    # -- Outbox -----------------------------------------------------------------------------

    async def due(self, now: float) -> list[OutboxItem]:
        rows = await self._call(lambda db: db.execute(
            "SELECT e.id, e.thread, e.number, e.kind, e.channel, e.payload, e.created,"
            " e.attempts FROM envelopes e WHERE e.status = 'pending' AND e.next_attempt <= ?"
            " AND e.id = (SELECT MIN(id) FROM envelopes WHERE status = 'pending'"
            " AND thread = e.thread AND channel = e.channel) ORDER BY e.id", (now,)).fetchall())
        return [OutboxItem(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6], r[7])
                for r in rows]

    async def next_attempt(self) -> float | None:
        row = await self._call(lambda db: db.execute(
            "SELECT MIN(e.next_attempt) FROM envelopes e WHERE e.status = 'pending' AND e.id ="
            " (SELECT MIN(id) FROM envelopes WHERE status = 'pending' AND thread = e.thread"
            " AND channel = e.channel)").fetchone())
        return None if row[0] is None else float(row[0])

    async def mark_sent(self, item: int, now: float) -> None:
        await self._write(
            "UPDATE envelopes SET status = 'sent', sent_at = ?, attempts = attempts + 1,"
            " last_error = NULL WHERE id = ?", (now, item))

    async def mark_retry(self, item: int, *, payload: Mapping[str, Any], at: float,
                         error: str) -> None:
        await self._write(
            "UPDATE envelopes SET attempts = attempts + 1, next_attempt = ?, last_error = ?,"
            " payload = ? WHERE id = ?", (at, error, json.dumps(payload), item))

    async def mark_failed(self, item: int, error: str) -> None:
        await self._write(
            "UPDATE envelopes SET status = 'failed', attempts = attempts + 1, last_error = ?"
            " WHERE id = ?", (error, item))

    async def stats(self, now: float) -> tuple[int, float]:
        count, oldest = await self._call(lambda db: db.execute(
            "SELECT COUNT(*), MIN(created) FROM envelopes WHERE status = 'pending'").fetchone())
        return int(count), 0.0 if oldest is None else max(0.0, now - float(oldest))

    async def _write(self, sql: str, args: tuple[Any, ...]) -> None:
        def work(db: sqlite3.Connection) -> None:
            with _transaction(db):
                db.execute(sql, args)

        await self._call(work)


_: type[StateStore] = SqliteStore
_outbox: type[Outbox] = SqliteStore


# -- on the store's thread ----------------------------------------------------------------


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


def _open(path: Path | str) -> tuple[int | None, sqlite3.Connection]:
    lock = None if str(path) == ":memory:" else _lock(Path(path))
    try:
        db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            _migrate(db)
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
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


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
    return State(verdicts=verdicts, books=books, windows=windows, recent=samples)


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
                "INSERT INTO envelopes (thread, number, kind, channel, payload, created,"
                " next_attempt) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(e.thread, e.number, e.kind, e.channel, json.dumps(e.payload), e.created,
                  e.created) for e in changes.envelopes])
        except sqlite3.IntegrityError as exc:  # never drop a message silently
            raise StoreError(f"outbox: a message with the same thread and number exists "
                             f"already: {exc}") from exc
