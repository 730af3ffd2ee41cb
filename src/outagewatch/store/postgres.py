"""The networked backend: the state in PostgreSQL, shared by the nodes of a cluster.

- **Pool.** Calls borrow a connection from a psycopg ``AsyncConnectionPool`` (``pool_size``
  at most, autocommit off: every call is one explicit transaction). The pool checks a
  connection before it lends it, so one cut by a server restart is replaced, not used. Each
  node writes its own ``location`` into the verdicts and samples; everything else is shared.
- **Deadlines.** Every call runs under a hard outer deadline (``asyncio.timeout(call_timeout)``
  around a shielded task). TCP keepalives never fire on a half-dead path (a proxy or NAT that
  acks but never answers), and psycopg answers a cancellation with a cancel request over the
  same dead path (up to 2 x 5 s). So at the deadline the call is cancelled again, which closes
  its connection at once; it fails with one line and the pool replaces the connection. The
  server side is bounded too (``statement_timeout``, ``idle_in_transaction_session_timeout``).
  A commit whose answer is lost is looked up (``txid_status``), at once or at the next
  write, so a unit that did commit is never retried into "a message exists already".
- **Migrations.** Versioned like SQLite's: ``MIGRATIONS[n - 1]`` brings the schema to
  version n (table ``schema_version``). All pending steps run in one transaction that first
  takes ``pg_advisory_xact_lock(MIGRATION_LOCK)``: nodes starting at once migrate once, the
  others wait and find the work done. A database newer than the code is refused.
- **Why psycopg 3 and not asyncpg.** It is typed (``py.typed``), its cancellation is safe and
  the pool's ``check`` recovers after a restart; asyncpg is faster (~1.6x) but untyped and hangs
  on half-dead connections (notes/pg-study.md).

Every failure is a ``StoreError`` of one line naming ``host:port/db`` and the reason, never
the password. Records are encoded by ``codecs.py`` and stored as the same JSON text the SQLite
backend writes (text, not jsonb: NaN and Infinity survive, floats are not renormalised).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from outagewatch.core.evaluator import Health
from outagewatch.core.quorum import Seen
from outagewatch.core.rollup import BUCKET, Rollup
from outagewatch.store import (
    Changes,
    Delivery,
    Envelope,
    EnvelopeKey,
    Interval,
    OutageSpan,
    State,
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
    from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence

    from outagewatch.core.incidents import Incident
    from outagewatch.core.maintenance import Window

__all__ = ["CONSENSUS", "MIGRATIONS", "MIGRATION_LOCK", "Fenced", "PostgresStore"]

T = TypeVar("T")
Conn = psycopg.AsyncConnection[TupleRow]

# pg_advisory_xact_lock(bigint) key of the migrations: outagewatch's keyspace (0x6F77, the
# int pair the cluster's locks use) in the high half. A bigint lock never meets an int pair.
MIGRATION_LOCK = 0x6F77_0000_0001
CANCEL_GRACE = 0.25  # after the deadline: seconds psycopg may cancel politely, then it is cut
CUTS = 4  # cancellations (CANCEL_GRACE apart) before a call is left to finish on its own
CLOSE_TIMEOUT = 5.0  # seconds the pool may take to close
# SQLSTATE classes that mean the database is out of reach, not that it refused a statement:
# connection exception, invalid authorization, insufficient resources, operator intervention,
# invalid catalog name (no such database)
UNREACHABLE = ("08", "28", "53", "57", "3D")
CONSENSUS = "*"  # the location of the leader's consensus rows in ``views``
SAMPLES_PER_LOCATION = 2  # of a target's latest samples, quoted in its mails, per location

MIGRATIONS: tuple[str, ...] = (
    # 1: the first schema: SQLite's state (verdicts and samples per location), an outbox a
    # leader drains, and the cluster's own tables (cluster/leadership.py, cluster/node.py)
    """
    CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL);
    CREATE TABLE verdicts (
        target text NOT NULL, location text NOT NULL DEFAULT '', state text NOT NULL,
        PRIMARY KEY (target, location));
    CREATE TABLE samples (
        target text NOT NULL, location text NOT NULL DEFAULT '',
        start double precision NOT NULL, duration double precision NOT NULL,
        result text NOT NULL, phase text, bad boolean NOT NULL);
    CREATE INDEX samples_by_target ON samples (location, target, start);
    CREATE TABLE books (platform text PRIMARY KEY, state text NOT NULL);
    CREATE TABLE incidents (
        id text PRIMARY KEY, platform text NOT NULL, opened_at double precision NOT NULL,
        resolved_at double precision, state text NOT NULL);
    CREATE INDEX incidents_by_opened_at ON incidents (opened_at);
    CREATE TABLE windows (id text PRIMARY KEY, platform text NOT NULL, state text NOT NULL);
    CREATE TABLE outbox (
        id bigserial PRIMARY KEY,
        channel text NOT NULL, thread text NOT NULL, lane text NOT NULL,
        number integer NOT NULL, kind text NOT NULL, payload text NOT NULL,
        created double precision NOT NULL, status text NOT NULL DEFAULT 'pending',
        attempts integer NOT NULL DEFAULT 0, next_attempt double precision NOT NULL,
        last_error text, sent_at double precision,
        UNIQUE (channel, thread, lane, number));
    CREATE INDEX outbox_by_status ON outbox (status, id);
    CREATE INDEX outbox_by_thread ON outbox (thread, number);
    CREATE TABLE nodes (
        node text PRIMARY KEY, location text NOT NULL, pid integer NOT NULL,
        address text NOT NULL DEFAULT '', version text NOT NULL DEFAULT '',
        started timestamptz NOT NULL DEFAULT now(),
        heartbeat timestamptz NOT NULL DEFAULT now());
    CREATE TABLE leadership (
        id integer PRIMARY KEY CHECK (id = 1), epoch bigint NOT NULL DEFAULT 0, node text,
        pid integer, since timestamptz,
        heartbeat timestamptz NOT NULL DEFAULT '-infinity');
    INSERT INTO leadership (id) VALUES (1);
    CREATE TABLE views (
        target text NOT NULL, location text NOT NULL, health text NOT NULL,
        last_run double precision, outage_start double precision,
        restored_at double precision, node text NOT NULL,
        seq xid8 NOT NULL DEFAULT pg_current_xact_id(),
        PRIMARY KEY (target, location));
    CREATE INDEX views_by_seq ON views (seq);
    """,
    # 2: the ledger, kept after the samples: per target, location and 5 minutes its runs'
    # rollup (no index by bucket: see _write_ledger's prune), the time each location saw
    # it, and its outages; incidents by when they ended
    """
    CREATE TABLE rollups (
        target text NOT NULL, location text NOT NULL, bucket double precision NOT NULL,
        runs integer NOT NULL, bad integer NOT NULL, p50 double precision NOT NULL,
        p95 double precision NOT NULL, max double precision NOT NULL, errors text,
        PRIMARY KEY (target, location, bucket));
    CREATE TABLE coverage (
        target text NOT NULL, location text NOT NULL, started double precision NOT NULL,
        ended double precision NOT NULL, PRIMARY KEY (target, location, started));
    CREATE TABLE outages (
        target text NOT NULL, started double precision NOT NULL, platform text NOT NULL,
        ended double precision, incident text, PRIMARY KEY (target, started));
    CREATE INDEX incidents_by_resolved_at ON incidents (resolved_at);
    """,
)


@dataclass
class _LastFailure:
    """Why the pool's latest connection attempt failed (the pool itself only logs it)."""

    error: psycopg.Error | None = None


def _recording(sink: _LastFailure) -> type[Conn]:
    class RecordingConnection(psycopg.AsyncConnection[TupleRow]):
        @classmethod
        async def connect(cls, conninfo: str = "", **kwargs: Any) -> RecordingConnection:
            try:
                conn = await super().connect(conninfo, **kwargs)
            except psycopg.Error as exc:
                sink.error = exc
                raise
            sink.error = None
            return conn

    return RecordingConnection


class PostgresStore:
    """The state in a PostgreSQL database; open with ``await PostgresStore.open(url, ...)``."""

    def __init__(self, pool: AsyncConnectionPool[Conn], *, where: str, location: str,
                 connect: dict[str, Any], call_timeout: float, version: int,
                 last_failure: _LastFailure, url: str, node: str = "") -> None:
        self._pool = pool
        self._node = node or location
        self._recent: dict[str, list[StoredSample]] = {}
        self._where = where
        self._location = location
        self._connect = connect
        self._call_timeout = call_timeout
        self._version = version
        self._last_failure = last_failure
        self._url = url
        self._secret = connect.get("password")
        self._calls: set[asyncio.Task[Any]] = set()
        self._closed = False
        # units whose commit was sent but never answered (xid: their envelopes): the next
        # write asks the database, and a retried envelope of a unit that did commit is no
        # duplicate
        self._uncertain: dict[int, frozenset[EnvelopeKey]] = {}

    @classmethod
    async def open(cls, url: str, *, password: str | None = None, location: str = "",
                   connect_timeout: float = 5.0, call_timeout: float = 10.0,
                   sslmode: str | None = None, sslrootcert: str | None = None,
                   pool_size: int = 4, node: str = "") -> PostgresStore:
        """Connect, migrate and open the pool; StoreError (one line) if it cannot."""
        where = _where(url)
        connect = _connect_kwargs(password=password, location=node or location,
                                  connect_timeout=connect_timeout, call_timeout=call_timeout,
                                  sslmode=sslmode, sslrootcert=sslrootcert)
        secret = password
        budget = connect_timeout + call_timeout
        try:
            version = await _bounded(_prepare(url, connect, where, connect_timeout), budget)
        except TimeoutError:
            raise StoreError(f"cannot reach the database at {where}: no answer within "
                             f"{budget:g} s") from None
        except psycopg.Error as exc:
            raise StoreError(_message(exc, where, "migration", secret)) from None
        last_failure = _LastFailure()
        pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            url, connection_class=_recording(last_failure), kwargs=connect,
            min_size=1, max_size=max(1, pool_size), open=False,
            check=AsyncConnectionPool.check_connection, timeout=call_timeout,
            name=f"outagewatch {where}")
        await pool.open(wait=False)
        return cls(pool, where=where, location=location, connect=connect,
                   call_timeout=call_timeout, version=version, last_failure=last_failure,
                   url=url, node=node)

    @property
    def version(self) -> int:
        """The schema version, as this store found or left it at open."""
        return self._version

    @property
    def location(self) -> str:
        return self._location

    @property
    def where(self) -> str:
        """``host:port/db``, for messages."""
        return self._where

    async def health(self) -> str | None:
        """None while a trivial query answers in time; else why not (one line)."""
        async def ping(conn: Conn) -> None:
            await conn.execute("SELECT 1")
            await conn.commit()

        try:
            await self._call("health check", ping)
        except StoreError as exc:
            return str(exc)
        return None

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in list(self._calls):
            await _abandon(task)
        with contextlib.suppress(TimeoutError, psycopg.Error):
            async with asyncio.timeout(CLOSE_TIMEOUT + 1):
                await self._pool.close(timeout=CLOSE_TIMEOUT)

    # -- StateStore -------------------------------------------------------------------------

    async def load(self, *, recent: int) -> State:
        return await self._call("read", lambda conn: _load(conn, self._location, recent))

    async def apply(self, changes: Changes, *, fence: int | None = None) -> None:
        """One unit of work; with ``fence``, only while the leadership epoch is still that
        (checked, and the row held, in the same transaction: a deposed leader cannot write)."""
        await self._call("write", lambda conn: self._apply(conn, changes, fence))

    def fenced(self, epoch: int) -> Fenced:
        """This store as the leader of ``epoch`` writes to it."""
        return Fenced(self, epoch)

    # -- a cluster --------------------------------------------------------------------------

    async def dedicated(self) -> Conn:
        """A connection of its own, outside the pool, in autocommit (leadership's session
        advisory locks live on it)."""
        try:
            async with asyncio.timeout(float(self._connect["connect_timeout"]) + 1):
                return await psycopg.AsyncConnection.connect(
                    self._url, **{**self._connect, "autocommit": True})
        except TimeoutError:
            raise psycopg.OperationalError("no answer in time (connect_timeout)") from None

    async def views_since(self, cursor: int) -> tuple[list[tuple[str, str, Seen]], int]:
        """The locations' views written by transactions from ``cursor`` on, and the cursor
        for the next call: the oldest transaction still running (a view it writes later is
        read then; a view read twice is harmless)."""
        async def read(conn: Conn) -> tuple[list[tuple[str, str, Seen]], int]:
            horizon = await (await conn.execute(
                "SELECT pg_snapshot_xmin(pg_current_snapshot())::text")).fetchone()
            cur = await conn.execute(
                "SELECT target, location, health, last_run, outage_start, restored_at"
                " FROM views WHERE seq >= %s::xid8 AND location <> %s",
                (str(cursor), CONSENSUS))
            rows = await cur.fetchall()
            await conn.commit()
            assert horizon is not None
            return ([(r[0], r[1], Seen(Health(r[2]), r[3], r[4], r[5])) for r in rows],
                    int(horizon[0]))

        return await self._call("read", read)

    async def refresh_recent(self, targets: Iterable[str]) -> None:
        """Read the latest samples of ``targets`` from every location (``recent_of``)."""
        names = sorted(set(targets))
        if not names:
            return
        rows = await self._call("read", lambda conn: _fetch(
            conn, "SELECT target, start, duration, result, phase, bad, location FROM ("
            "SELECT *, row_number() OVER (PARTITION BY target, location ORDER BY start DESC)"
            " AS n FROM samples WHERE target = ANY(%s)) AS latest WHERE n <= %s"
            " ORDER BY target, start", (names, SAMPLES_PER_LOCATION)))
        found: dict[str, list[StoredSample]] = {name: [] for name in names}
        for r in rows:
            found[r[0]].append(StoredSample(r[0], r[1], r[2], r[3], r[4], r[5], r[6]))
        self._recent.update(found)

    def recent_of(self, target: str) -> list[StoredSample]:
        """The target's latest samples from every location, as last read."""
        return self._recent.get(target, [])

    async def windows(self) -> list[Window]:
        rows = await self._call("read", lambda conn: _fetch(
            conn, "SELECT state FROM windows ORDER BY id", ()))
        return [window_from_json(json.loads(r[0])) for r in rows]

    async def cluster_status(self, lease: float) -> dict[str, Any]:
        """The nodes and the leader, with heartbeat ages by the database's clock."""
        async def read(conn: Conn) -> dict[str, Any]:
            nodes = await (await conn.execute(
                "SELECT node, location, address, version,"
                " CASE WHEN isfinite(started) THEN extract(epoch FROM now() - started) END,"
                " CASE WHEN isfinite(heartbeat) THEN extract(epoch FROM now() - heartbeat) END"
                " FROM nodes ORDER BY node")).fetchall()
            leader = await (await conn.execute(
                "SELECT epoch, node,"
                " CASE WHEN isfinite(since) THEN extract(epoch FROM now() - since) END,"
                " CASE WHEN isfinite(heartbeat) THEN extract(epoch FROM now() - heartbeat) END"
                " FROM leadership WHERE id = 1")).fetchone()
            await conn.commit()
            assert leader is not None
            age = _age(leader[3])
            return {
                "nodes": [{"node": n[0], "location": n[1], "address": n[2], "version": n[3],
                           "up_for_s": _age(n[4]), "heartbeat_age_s": _age(n[5]),
                           "live": _age(n[5]) <= lease} for n in nodes],
                "leader": {"epoch": int(leader[0]), "node": leader[1],
                           "since": None if leader[2] is None else _age(leader[2]),
                           "heartbeat_age_s": age, "live": leader[1] is not None and age <= lease},
                "lease": lease,
            }

        return await self._call("read", read)

    async def forget_nodes(self, silent_for: float) -> list[str]:
        """Nodes not heard from for ``silent_for`` seconds leave the node list (a node taken
        out of the cluster would otherwise be reported silent for ever); their names."""
        rows = await self._call("write", lambda conn: _fetch(
            conn, "DELETE FROM nodes WHERE heartbeat < now() - make_interval(secs => %s)"
            " RETURNING node", (silent_for,)))
        return sorted(str(r[0]) for r in rows)

    async def leader_address(self, lease: float) -> str | None:
        """Where the live leader's API listens, if there is one."""
        rows = await self._call("read", lambda conn: _fetch(
            conn, "SELECT n.address FROM leadership l JOIN nodes n ON n.node = l.node"
            " WHERE l.id = 1 AND l.heartbeat >= now() - make_interval(secs => %s)", (lease,)))
        return str(rows[0][0]) if rows and rows[0][0] else None

    async def incidents(self, *, limit: int = 50) -> list[Incident]:
        rows = await self._call("read", lambda conn: _fetch(
            conn, "SELECT state FROM incidents ORDER BY opened_at DESC LIMIT %s", (limit,)))
        return [incident_from_json(json.loads(r[0])) for r in rows]

    async def thread(self, key: str) -> list[StoredMessage]:
        rows = await self._call("read", lambda conn: _fetch(
            conn, "SELECT number, kind, channel, lane, status, created, sent_at, attempts,"
            ' last_error, payload FROM outbox WHERE thread = %s ORDER BY number, lane COLLATE "C"',
            (key,)))
        return [StoredMessage(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8],
                              json.loads(r[9])) for r in rows]

    # -- the ledger ---------------------------------------------------------------------------

    async def rollups(self, targets: Sequence[str], start: float, end: float) -> list[Rollup]:
        rows = await self._call("read", lambda conn: _fetch(
            conn, "SELECT target, location, bucket, runs, bad, p50, p95, max, errors"
            " FROM rollups WHERE target = ANY(%s) AND bucket > %s AND bucket < %s"
            ' ORDER BY target COLLATE "C", location COLLATE "C", bucket',
            (sorted(set(targets)), start - BUCKET, end)))
        return [Rollup(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], errors_from_text(r[8]))
                for r in rows]

    async def series(self, targets: Sequence[str], start: float,
                     end: float) -> list[tuple[str, float, float, bool]]:
        rows = await self._call("read", lambda conn: _fetch(
            conn, "SELECT target, bucket, MAX(p95), BOOL_OR(bad > 0) FROM rollups"
            " WHERE target = ANY(%s) AND bucket > %s AND bucket < %s GROUP BY target, bucket"
            ' ORDER BY target COLLATE "C", bucket',
            (sorted(set(targets)), start - BUCKET, end)))
        return [(r[0], float(r[1]), float(r[2]), bool(r[3])) for r in rows]

    async def coverage(self, targets: Sequence[str], start: float,
                       end: float) -> dict[str, list[Interval]]:
        names = sorted(set(targets))
        rows = await self._call("read", lambda conn: _fetch(
            conn, "SELECT target, started, ended FROM coverage WHERE target = ANY(%s)"
            " AND started < %s AND ended > %s", (names, end, start)))
        return union(names, [(r[0], r[1], r[2]) for r in rows], start, end)

    async def outages(self, targets: Sequence[str], start: float,
                      end: float) -> list[OutageSpan]:
        rows = await self._call("read", lambda conn: _fetch(
            conn, "SELECT target, platform, started, ended, incident FROM outages"
            " WHERE target = ANY(%s) AND started < %s AND (ended IS NULL OR ended > %s)"
            ' ORDER BY started, target COLLATE "C"', (sorted(set(targets)), end, start)))
        return [OutageSpan(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    async def incidents_between(self, start: float, end: float,
                                platform: str | None = None) -> list[Incident]:
        rows = await self._call("read", lambda conn: _fetch(
            conn, "SELECT state FROM incidents WHERE (resolved_at IS NULL OR resolved_at > %s)"
            " AND (%s::text IS NULL OR platform = %s)", (start, platform, platform)))
        return incidents_between((incident_from_json(json.loads(r[0])) for r in rows),
                                 start, end, platform)

    async def windows_between(self, start: float, end: float,
                              platform: str | None = None) -> list[Window]:
        rows = await self._call("read", lambda conn: _fetch(
            conn, "SELECT state FROM windows WHERE %s::text IS NULL OR platform = %s",
            (platform, platform)))
        return windows_between((window_from_json(json.loads(r[0])) for r in rows),
                               start, end, platform)

    # -- calls ------------------------------------------------------------------------------

    async def _call(self, what: str, work: Callable[[Conn], Awaitable[T]]) -> T:
        """Run ``work`` on a pooled connection under the hard deadline."""
        if self._closed:
            raise StoreError(f"the database at {self._where}: the store is closed")
        lent = asyncio.Event()  # set once the pool lent a connection that passed its check
        task = asyncio.create_task(self._session(what, work, lent),
                                   name=f"outagewatch-postgres-{what}")
        self._calls.add(task)
        task.add_done_callback(_settled(self._calls))
        try:
            return await _bounded(task, self._call_timeout)
        except TimeoutError:
            if not lent.is_set():
                raise StoreError(self._unreachable()) from None
            raise StoreError(f"the database at {self._where} did not answer within "
                             f"{self._call_timeout:g} s ({what}); the connection was dropped"
                             ) from None

    def _unreachable(self) -> str:
        """No connection in time: the pool's latest failure to connect says why, if any."""
        last = self._last_failure.error
        why = f"no working connection within {self._call_timeout:g} s"
        if last is not None:
            why += f" (last attempt: {_reason(last, self._secret)})"
        return f"cannot reach the database at {self._where}: {why}"

    async def _session(self, what: str, work: Callable[[Conn], Awaitable[T]],
                       lent: asyncio.Event) -> T:
        try:
            conn = await self._pool.getconn()
        except PoolTimeout:
            raise StoreError(self._unreachable()) from None
        except psycopg.Error as exc:
            raise StoreError(_message(exc, self._where, what, self._secret)) from None
        lent.set()
        failure: BaseException | None = None
        try:
            return await work(conn)
        except psycopg.Error as exc:
            failure = exc
            raise StoreError(_message(exc, self._where, what, self._secret)) from None
        except BaseException as exc:
            failure = exc
            raise
        finally:
            try:
                if failure is not None:
                    await _settle(conn, failure)
            finally:
                await self._pool.putconn(conn)

    async def _apply(self, conn: Conn, changes: Changes, fence: int | None) -> None:
        location = self._location
        uncertain = dict(self._uncertain)
        if fence is not None:
            row = await (await conn.execute(
                "SELECT epoch FROM leadership WHERE id = 1 FOR SHARE")).fetchone()
            if row is None or int(row[0]) != fence:
                await conn.rollback()
                now = "none" if row is None else row[0]
                raise StoreError(f"the database at {self._where}: fenced: this node led in "
                                 f"epoch {fence}, the cluster is in epoch {now}; not written")
        async with conn.pipeline():
            xid_cur = await conn.execute("SELECT txid_current()")
            status_cur = None
            if uncertain:
                status_cur = await conn.execute(
                    "SELECT x, txid_status(x) FROM unnest(%s::bigint[]) AS x", (list(uncertain),))
            if changes.forgotten:
                forgotten = sorted(changes.forgotten)
                await conn.execute("DELETE FROM verdicts WHERE location = %s AND target = ANY(%s)",
                                   (location, forgotten))
                await conn.execute("DELETE FROM samples WHERE location = %s AND target = ANY(%s)",
                                   (location, forgotten))
                await conn.execute("DELETE FROM views WHERE location = %s AND target = ANY(%s)",
                                   (location, forgotten))
            cur = conn.cursor()
            await _many(cur, "INSERT INTO verdicts (target, location, state) VALUES (%s, %s, %s)"
                        " ON CONFLICT (target, location) DO UPDATE SET state = EXCLUDED.state",
                        [(t, location, json.dumps(verdict_to_json(v)))
                         for t, v in changes.verdicts.items()])
            await _many(cur, "INSERT INTO views (target, location, health, last_run,"
                        " outage_start, restored_at, node) VALUES (%s, %s, %s, %s, %s, %s, %s)"
                        " ON CONFLICT (target, location) DO UPDATE SET health = EXCLUDED.health,"
                        " last_run = EXCLUDED.last_run, outage_start = EXCLUDED.outage_start,"
                        " restored_at = EXCLUDED.restored_at, node = EXCLUDED.node,"
                        " seq = pg_current_xact_id()",
                        [(t, location, str(v.health), v.last_run, v.outage_start,
                          v.restored_at, self._node) for t, v in changes.views.items()]
                        + [(t, CONSENSUS, str(Health.OUTAGE if start is not None
                                              else Health.OK), None, start, None, self._node)
                           for t, start in changes.consensus.items()])
            await _many(cur, "INSERT INTO samples (target, location, start, duration, result,"
                        " phase, bad) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                        [(s.target, location, s.start, s.duration, s.result, s.phase, s.bad)
                         for s in changes.samples])
            await _many(cur, "DELETE FROM samples WHERE location = %s AND target = %s"
                        " AND start < %s",
                        [(location, t, after) for t, after in changes.keep_after.items()])
            await _write_ledger(conn, cur, changes)
            await _many(cur, "INSERT INTO books (platform, state) VALUES (%s, %s)"
                        " ON CONFLICT (platform) DO UPDATE SET state = EXCLUDED.state",
                        [(p, json.dumps(book_to_json(b))) for p, b in changes.books.items()])
            await _many(cur, "INSERT INTO incidents (id, platform, opened_at, resolved_at, state)"
                        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET"
                        " platform = EXCLUDED.platform, opened_at = EXCLUDED.opened_at,"
                        " resolved_at = EXCLUDED.resolved_at, state = EXCLUDED.state",
                        [(i.id, i.platform, i.opened_at, i.resolved_at,
                          json.dumps(incident_to_json(i))) for i in changes.incidents.values()])
            await _many(cur, "INSERT INTO windows (id, platform, state) VALUES (%s, %s, %s)"
                        " ON CONFLICT (id) DO UPDATE SET platform = EXCLUDED.platform,"
                        " state = EXCLUDED.state",
                        [(w.id, w.platform, json.dumps(window_to_json(w)))
                         for w in changes.windows.values()])
            envelopes = conn.cursor()
            if changes.envelopes:
                await envelopes.executemany(
                    "INSERT INTO outbox (channel, thread, lane, number, kind, payload, created,"
                    " next_attempt) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (channel, thread, lane, number) DO NOTHING"
                    " RETURNING channel, thread, lane, number",
                    [(e.key.channel, e.key.thread, e.key.lane, e.key.number, e.kind,
                      json.dumps(e.payload), e.created, e.created) for e in changes.envelopes],
                    returning=True)
            if changes.prune_mails_before is not None:
                await conn.execute(
                    "DELETE FROM outbox WHERE (status = 'sent' AND sent_at < %s)"
                    " OR (status IN ('failed', 'superseded') AND created < %s)",
                    (changes.prune_mails_before, changes.prune_mails_before))
            await _many(cur, "UPDATE outbox SET status = %s, attempts = %s, next_attempt = %s,"
                        " last_error = %s, payload = %s, sent_at = %s WHERE channel = %s"
                        " AND thread = %s AND lane = %s AND number = %s",
                        [(d.status, d.attempts, d.next_attempt, d.last_error,
                          json.dumps(d.payload), d.sent_at, d.key.channel, d.key.thread,
                          d.key.lane, d.key.number) for d in changes.deliveries.values()])
        statuses = ({int(x): status for x, status in await status_cur.fetchall()}
                    if status_cur is not None else {})
        done = {x for x, status in statuses.items() if status != "in progress"}
        committed = frozenset().union(*(uncertain[x] for x, status in statuses.items()
                                        if status == "committed"))
        if changes.envelopes:
            await _check_all_new(changes.envelopes, envelopes, self._where, committed)
        row = await xid_cur.fetchone()
        assert row is not None
        await self._commit(conn, int(row[0]), frozenset(e.key for e in changes.envelopes))
        for x in done:
            self._uncertain.pop(x, None)

    async def _commit(self, conn: Conn, xid: int, envelopes: frozenset[EnvelopeKey]) -> None:
        """Commit. If the answer is lost (the connection breaks, the deadline cuts the call),
        the outcome is asked for, now or at the next write: a unit that did commit is never
        reported failed only to have its retry refused as a duplicate of itself."""
        self._uncertain[xid] = envelopes  # until the database answers
        try:
            await conn.commit()
        except psycopg.OperationalError as exc:
            if exc.sqlstate is not None and exc.sqlstate[:2] not in {"08", "57"}:
                self._uncertain.pop(xid, None)
                raise  # the server answered: it did not commit
            status = await self._status(xid)
            if status is not None:
                self._uncertain.pop(xid, None)
            if status == "committed":
                return
            raise
        except psycopg.Error:
            self._uncertain.pop(xid, None)
            raise
        self._uncertain.pop(xid, None)

    async def _status(self, xid: int) -> str | None:
        """``committed`` or ``aborted``: what became of transaction ``xid``; None when the
        database cannot say now. On a connection of its own (the pool's may all be cut);
        bounded by the caller's deadline."""
        try:
            check = await psycopg.AsyncConnection.connect(
                self._url, **{**self._connect, "autocommit": True})
        except psycopg.Error:
            return None
        try:
            while True:
                cur = await check.execute("SELECT txid_status(%s)", (xid,))
                row = await cur.fetchone()
                status = None if row is None else row[0]
                if status != "in progress":  # its session may not have noticed the cut yet
                    return "aborted" if status is None else str(status)
                await asyncio.sleep(0.05)
        except psycopg.Error:
            return None
        finally:
            await check.close()

class Fenced:
    """The store as the leader of one epoch writes to it: every write checks the epoch."""

    def __init__(self, store: PostgresStore, epoch: int) -> None:
        self._store = store
        self.epoch = epoch

    async def load(self, *, recent: int) -> State:
        return await self._store.load(recent=recent)

    async def apply(self, changes: Changes) -> None:
        await self._store.apply(changes, fence=self.epoch)

    async def incidents(self, *, limit: int = 50) -> list[Incident]:
        return await self._store.incidents(limit=limit)

    async def thread(self, key: str) -> list[StoredMessage]:
        return await self._store.thread(key)

    async def rollups(self, targets: Sequence[str], start: float, end: float) -> list[Rollup]:
        return await self._store.rollups(targets, start, end)

    async def series(self, targets: Sequence[str], start: float,
                     end: float) -> list[tuple[str, float, float, bool]]:
        return await self._store.series(targets, start, end)

    async def coverage(self, targets: Sequence[str], start: float,
                       end: float) -> dict[str, list[Interval]]:
        return await self._store.coverage(targets, start, end)

    async def outages(self, targets: Sequence[str], start: float,
                      end: float) -> list[OutageSpan]:
        return await self._store.outages(targets, start, end)

    async def incidents_between(self, start: float, end: float,
                                platform: str | None = None) -> list[Incident]:
        return await self._store.incidents_between(start, end, platform)

    async def windows_between(self, start: float, end: float,
                              platform: str | None = None) -> list[Window]:
        return await self._store.windows_between(start, end, platform)

    async def health(self) -> str | None:
        return await self._store.health()

    async def close(self) -> None:
        """The store itself stays open: it is the node's."""


_: type[StateStore] = PostgresStore
__: type[StateStore] = Fenced


def _age(seconds: Any) -> float:
    """Seconds from ``extract(epoch FROM interval)``; an infinite one (never) as infinity."""
    if seconds is None:
        return math.inf
    value = float(seconds)
    return value if math.isfinite(value) else math.inf


# -- helpers ------------------------------------------------------------------------------


async def _bounded(work: Coroutine[Any, Any, T] | asyncio.Task[T], timeout: float) -> T:
    """Await ``work`` for at most ``timeout`` seconds, then cut it (TimeoutError). The work
    runs as a task of its own, so that the deadline holds whatever the work does when it is
    cancelled (psycopg's polite cancel request over a dead path takes up to 10 s)."""
    task = work if isinstance(work, asyncio.Task) else asyncio.ensure_future(work)
    try:
        async with asyncio.timeout(timeout):
            return await asyncio.shield(task)
    except TimeoutError:
        if task.done():
            return task.result()
        await _abandon(task)
        raise
    except asyncio.CancelledError:
        task.cancel()  # the caller gave up: so does the work (close() reaps what lingers)
        raise


async def _abandon(task: asyncio.Task[Any]) -> None:
    """Cancel ``task``; cancel it again while it lingers: psycopg closes a connection whose
    cancellation is itself cancelled. A task that outlasts even that finishes on its own."""
    for _ in range(CUTS):
        if task.done():
            break
        task.cancel()
        await asyncio.wait({task}, timeout=CANCEL_GRACE)
    if task.done() and not task.cancelled():
        task.exception()  # retrieved: its failure is reported as the deadline


def _settled(calls: set[asyncio.Task[Any]]) -> Callable[[asyncio.Task[Any]], None]:
    def done(task: asyncio.Task[Any]) -> None:
        calls.discard(task)
        if not task.cancelled():
            task.exception()  # an abandoned call's failure was reported as the deadline

    return done


async def _settle(conn: Conn, failure: BaseException) -> None:
    """Leave a connection whose work failed fit for the pool, or closed (the pool replaces a
    closed one). Only a connection the server answered is rolled back; any other (cut,
    cancelled mid-query) is closed at once, without a network round trip that could hang."""
    answered = ((isinstance(failure, psycopg.Error) and failure.sqlstate is not None
                 and failure.sqlstate[:2] not in UNREACHABLE) or isinstance(failure, StoreError))
    if (answered and not conn.closed and conn.info.transaction_status
            in {TransactionStatus.INTRANS, TransactionStatus.INERROR}):
        try:
            await conn.rollback()
        except BaseException:
            await conn.close()
            raise
        return
    await conn.close()


async def _prepare(url: str, connect: dict[str, Any], where: str, connect_timeout: float) -> int:
    """Migrate, and write once at start (a database the daemon cannot write stops it at
    once, with one line); give the installation its token. Returns the schema version."""
    try:
        async with asyncio.timeout(connect_timeout):
            conn = await psycopg.AsyncConnection.connect(url, **connect)
    except TimeoutError:
        raise StoreError(f"cannot reach the database at {where}: no answer within "
                         f"{connect_timeout:g} s (connect_timeout)") from None
    try:
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_version ("
                           "version integer PRIMARY KEY,"
                           " applied_at timestamptz NOT NULL DEFAULT now())")
        row = await (await conn.execute(
            "SELECT coalesce(max(version), 0) FROM schema_version")).fetchone()
        current = 0 if row is None else int(row[0])
        if current > len(MIGRATIONS):
            raise StoreError(f"the database at {where} has schema {current}, newer than this "
                             f"outagewatch understands ({len(MIGRATIONS)}): refusing to touch it")
        for number, script in enumerate(MIGRATIONS[current:], current + 1):
            await conn.execute(script)
            await conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (number,))
        await conn.execute("INSERT INTO meta VALUES ('installation', %s)"
                           " ON CONFLICT (key) DO NOTHING", (secrets.token_hex(4),))
        await conn.execute("INSERT INTO meta VALUES ('opened_at', %s)"
                           " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                           (str(time.time()),))
        await conn.commit()
        return max(current, len(MIGRATIONS))
    finally:
        await conn.close()


async def _fetch(conn: Conn, query: str, params: tuple[Any, ...]) -> list[TupleRow]:
    cur = await conn.execute(query, params)
    rows = await cur.fetchall()
    await conn.commit()
    return rows


async def _many(cur: psycopg.AsyncCursor[TupleRow], query: str,
                rows: list[tuple[Any, ...]]) -> None:
    if rows:
        await cur.executemany(query, rows)


async def _write_ledger(conn: Conn, cur: psycopg.AsyncCursor[TupleRow],
                        changes: Changes) -> None:
    """The ledger's part of a unit (in its transaction and pipeline): rollups, coverage and
    outages upserted, and what retention lets go deleted."""
    await _many(cur, "INSERT INTO rollups (target, location, bucket, runs, bad, p50,"
                " p95, max, errors) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (target, location, bucket) DO UPDATE SET"
                " runs = EXCLUDED.runs, bad = EXCLUDED.bad, p50 = EXCLUDED.p50,"
                " p95 = EXCLUDED.p95, max = EXCLUDED.max, errors = EXCLUDED.errors",
                [(r.target, r.location, r.bucket, r.runs, r.bad, r.p50, r.p95, r.max,
                  errors_to_text(r.errors)) for r in changes.rollups.values()])
    await _many(cur, "INSERT INTO coverage (target, location, started, ended)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT (target, location, started)"
                " DO UPDATE SET ended = EXCLUDED.ended",
                [(*key, until) for key, until in changes.coverage.items()])
    await _many(cur, "INSERT INTO outages (target, started, platform, ended, incident)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (target, started) DO UPDATE"
                " SET platform = EXCLUDED.platform, ended = EXCLUDED.ended,"
                " incident = EXCLUDED.incident",
                [(o.target, o.start, o.platform, o.end, o.incident)
                 for o in changes.outages.values()])
    if changes.prune_rollups_before is not None:
        # target by target through the primary key (a loose index scan: one seek from one
        # (target, location) to the next), where an index by bucket would cost a quarter
        # of the table's size
        await conn.execute(
            "WITH RECURSIVE pairs AS ((SELECT target, location FROM rollups"
            " ORDER BY target, location LIMIT 1) UNION ALL SELECT n.target, n.location"
            " FROM pairs p CROSS JOIN LATERAL (SELECT target, location FROM rollups r"
            " WHERE (r.target, r.location) > (p.target, p.location)"
            " ORDER BY r.target, r.location LIMIT 1) n)"
            " DELETE FROM rollups r USING pairs p WHERE r.target = p.target"
            " AND r.location = p.location AND r.bucket < %s", (changes.prune_rollups_before,))
    if changes.prune_history_before is not None:
        before = changes.prune_history_before
        await conn.execute("DELETE FROM coverage WHERE ended < %s", (before,))
        await conn.execute("DELETE FROM outages WHERE ended < %s", (before,))
        await conn.execute("DELETE FROM incidents WHERE resolved_at < %s", (before,))
        await conn.execute(
            "DELETE FROM windows WHERE state::json->>'state' IN ('finished', 'cancelled')"
            " AND greatest((state::json->>'end')::float8,"
            " coalesce((state::json->>'closed_at')::float8, 0)) < %s", (before,))


async def _check_all_new(envelopes: list[Envelope], cur: psycopg.AsyncCursor[TupleRow],
                         where: str, committed: frozenset[EnvelopeKey]) -> None:
    """An envelope that exists already is an error, not a silent skip: a message is never
    dropped (the unit is rolled back). Unless it is the retry of a unit whose commit was not
    answered but happened (``committed``): then it is that very envelope."""
    inserted: set[EnvelopeKey] = set()
    while True:  # one result per row of executemany(returning=True)
        inserted.update(EnvelopeKey(*row) for row in await cur.fetchall())
        if not cur.nextset():
            break
    for item in envelopes:
        if item.key not in inserted and item.key not in committed:
            key = item.key
            raise StoreError(f"the database at {where}: outbox: a message with the same thread "
                             f"and number exists already ({key.channel} {key.thread} "
                             f"#{key.number} to {key.lane!r})")
        inserted.discard(item.key)  # the same envelope twice in one unit is a duplicate too


async def _load(conn: Conn, location: str, recent: int) -> State:
    async with conn.pipeline():
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        verdicts_cur = await conn.execute(
            "SELECT target, state FROM verdicts WHERE location = %s", (location,))
        books_cur = await conn.execute("SELECT platform, state FROM books")
        windows_cur = await conn.execute("SELECT id, state FROM windows")
        samples_cur = await conn.execute(
            "SELECT target, start, duration, result, phase, bad FROM (SELECT *, row_number()"
            " OVER (PARTITION BY target ORDER BY start DESC) AS n FROM samples"
            " WHERE location = %s) AS latest WHERE n <= %s ORDER BY target, start",
            (location, recent))
        outbox_cur = await conn.execute(
            "SELECT channel, thread, lane, number, kind, payload, created, status, attempts,"
            " next_attempt, last_error, sent_at FROM outbox"
            " WHERE status NOT IN ('sent', 'superseded') ORDER BY id")
        meta_cur = await conn.execute("SELECT value FROM meta WHERE key = 'installation'")
        views_cur = await conn.execute(
            "SELECT target, location, health, last_run, outage_start, restored_at FROM views"
            " WHERE location IN (%s, %s)", (location, CONSENSUS))
        # per target this location probes, its latest rollup with the durations of the
        # samples still stored for its bucket, and its latest coverage interval
        rollups_cur = await conn.execute(
            "SELECT r.target, r.location, r.bucket, r.runs, r.bad, r.p50, r.p95, r.max,"
            " r.errors, coalesce((SELECT array_agg(s.duration) FROM samples s"
            "  WHERE s.location = r.location AND s.target = r.target AND s.start >= r.bucket"
            "  AND s.start < r.bucket + %s), '{}') FROM verdicts v CROSS JOIN LATERAL"
            " (SELECT * FROM rollups WHERE target = v.target AND location = v.location"
            "  ORDER BY bucket DESC LIMIT 1) r WHERE v.location = %s", (BUCKET, location))
        coverage_cur = await conn.execute(
            "SELECT c.target, c.started, c.ended FROM verdicts v CROSS JOIN LATERAL"
            " (SELECT * FROM coverage WHERE target = v.target AND location = v.location"
            "  ORDER BY started DESC LIMIT 1) c WHERE v.location = %s", (location,))
    verdicts = {target: verdict_from_json(json.loads(state))
                for target, state in await verdicts_cur.fetchall()}
    books = {platform: book_from_json(json.loads(state))
             for platform, state in await books_cur.fetchall()}
    windows = {wid: window_from_json(json.loads(state))
               for wid, state in await windows_cur.fetchall()}
    samples: dict[str, list[StoredSample]] = {}
    for r in await samples_cur.fetchall():
        samples.setdefault(r[0], []).append(StoredSample(r[0], r[1], r[2], r[3], r[4], r[5],
                                                         location))
    outbox = []
    for r in await outbox_cur.fetchall():
        key, payload = EnvelopeKey(r[0], r[1], r[2], r[3]), json.loads(r[5])
        outbox.append((Envelope(key, r[4], payload, r[6]),
                       Delivery(key, r[7], r[8], r[9], r[10], payload, r[11])))
    meta = await meta_cur.fetchone()
    views: dict[str, Seen] = {}
    consensus: dict[str, float] = {}
    for target, where, health, last_run, outage_start, restored_at in await views_cur.fetchall():
        if where == CONSENSUS:
            if outage_start is not None:
                consensus[target] = outage_start
        else:
            views[target] = Seen(Health(health), last_run, outage_start, restored_at)
    rollups = {r[0]: (Rollup(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7],
                             errors_from_text(r[8])), tuple(r[9]))
               for r in await rollups_cur.fetchall()}
    coverage: dict[str, Interval] = {r[0]: (r[1], r[2]) for r in await coverage_cur.fetchall()}
    await conn.commit()
    if meta is None:
        raise StoreError("the database has no installation token: was meta emptied?")
    return State(verdicts=verdicts, books=books, windows=windows, recent=samples,
                 outbox=outbox, installation=meta[0], views=views, consensus=consensus,
                 rollups=rollups, coverage=coverage)


# -- connection parameters and messages ----------------------------------------------------


def _connect_kwargs(*, password: str | None, location: str, connect_timeout: float,
                    call_timeout: float, sslmode: str | None,
                    sslrootcert: str | None) -> dict[str, Any]:
    call_ms = max(1, math.ceil(call_timeout * 1000))
    kwargs: dict[str, Any] = {
        "autocommit": False,
        # psycopg enforces it (whole seconds, 2 at least); the outer deadline is exact
        "connect_timeout": max(2, math.ceil(connect_timeout)),
        # "outagewatch <node>": a new leader ends every session of a leader it replaces
        # (cluster/leadership.py), its transactions and row locks with them
        "application_name": f"outagewatch {location}".strip()[:63],
        # an idle pooled connection on a dead path is found out in about 30 s
        "keepalives": 1, "keepalives_idle": 15, "keepalives_interval": 5,
        "keepalives_count": 3,
        # the server gives up too: on a statement past the call's deadline, and on a
        # transaction its client left open (a client cut off mid-transaction holds locks)
        "options": (f"-c statement_timeout={call_ms}"
                    f" -c idle_in_transaction_session_timeout={max(call_ms * 3, 5000)}"),
    }
    if password is not None:
        kwargs["password"] = password
    if sslmode is not None:
        kwargs["sslmode"] = sslmode
    if sslrootcert is not None:
        kwargs["sslrootcert"] = sslrootcert
    return kwargs


def _where(url: str) -> str:
    """``host:port/db`` of a URL or conninfo string, without credentials."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error:
        raise StoreError("state.url: not a PostgreSQL URL or connection string "
                         "(postgresql://user@host:port/db)") from None
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    port = str(params.get("port") or 5432)
    db = str(params.get("dbname") or params.get("user") or "postgres")
    return f"{host}:{port}/{db}"


_PREFIXES = re.compile(r"^(?:connection failed: )?(?:connection to server (?:at|on) .*? failed: )?"
                       r"(?:(?:FATAL|ERROR|PANIC):\s+)?")


def _reason(exc: BaseException, secret: str | None) -> str:
    """The gist of an error, on one line: what libpq or the server said, without the
    connection attempt's preamble (``connection to server at ... failed:``)."""
    if isinstance(exc, psycopg.errors.ConnectionTimeout):
        text = "no answer in time (connect_timeout)"
    elif isinstance(exc, psycopg.Error) and exc.diag.message_primary:
        text = exc.diag.message_primary
    else:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        attempts = [line for line in lines if line.startswith("- ")]
        text = (attempts[-1].split(": ", 1)[-1] if attempts else lines[0] if lines
                else type(exc).__name__)
    text = _PREFIXES.sub("", " ".join(text.split()))
    if text[:1].isupper() and text[1:2].islower():
        text = text[0].lower() + text[1:]  # "Connection refused" reads as a reason
    if secret:
        text = text.replace(secret, "***")
    return text or type(exc).__name__


def _message(exc: psycopg.Error, where: str, what: str, secret: str | None) -> str:
    sqlstate = exc.sqlstate
    if ((sqlstate is None and isinstance(exc, psycopg.OperationalError))
            or (sqlstate is not None and sqlstate[:2] in UNREACHABLE)):
        return f"cannot reach the database at {where}: {_reason(exc, secret)}"
    code = f" [{sqlstate}]" if sqlstate else ""
    return f"the database at {where} refused the {what}: {_reason(exc, secret)}{code}"
