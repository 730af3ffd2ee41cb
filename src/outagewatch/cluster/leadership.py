"""Who this node is and who leads: node seats, a leader lock, an epoch and a heartbeat, all
in PostgreSQL (no home-made consensus).

- A node claims its seat at start: session advisory locks on its name and on its location,
  held on a dedicated connection (not pooled: a session lock belongs to its session). A second
  node with the same ``cluster.node`` or ``cluster.location`` is refused with one line; a seat
  whose holder stopped renewing (its session half-open behind a broken network) is taken
  over by ending that session.
- Every node renews ``nodes.heartbeat = now()`` every ``lease / 3``; ``outagewatch cluster
  status`` reads it. Times are the database's: no two hosts' clocks are ever compared.
- One node leads. It holds the leader lock and the ``leadership`` row names it with an epoch
  one higher than the leader's before it, and it renews ``leadership.heartbeat`` with its node
  heartbeat. It acts (decides incidents, claims mails) only while its lease is valid: until
  ``lease`` after it *sent* its last successful renewal, on its own monotonic clock. A leader
  that cannot renew in time stops acting (it fences itself) before any other node may take
  over, and every write of a leader checks its epoch in the same transaction (the fencing
  token), so a stale leader that wakes from a pause or a partition cannot write either.
- Another node takes over only when the heartbeat is older than ``lease`` by the database's
  clock: it ends the old leader's session if that is still there (a partitioned leader behind
  a half-open connection would hold the lock for hours), takes the lock and increments the
  epoch, all checked, so two candidates cannot both win.
- A leader that stops cleanly resigns: its heartbeat becomes ``-infinity`` and the next node
  takes over at once.

PgBouncer in transaction mode breaks session advisory locks: point ``state.url`` at the
database or at a session-mode pool.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
import structlog

from outagewatch.errors import OutagewatchError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from outagewatch.clock import Clock

log = structlog.get_logger("outagewatch.cluster")

T = TypeVar("T")

LOCK_CLASS = 0x6F77  # advisory lock keyspace of outagewatch: (LOCK_CLASS, key)
LEADER_KEY = 0
RECONNECT = (0.5, 5.0)  # backoff of the dedicated connection: first, ceiling (seconds)


def session_name(node: str) -> str:
    """The ``application_name`` of a node's sessions (``store/postgres.py`` sets it)."""
    return f"outagewatch {node}"[:63]


class SeatTaken(OutagewatchError):
    """Another live node holds this node's name or location."""


@dataclass(frozen=True, slots=True)
class Seat:
    node: str
    location: str
    address: str  # where its API listens, for ``cluster status``
    version: str


class Leadership:
    """The node's seat and the leader election, on one dedicated connection. ``run`` is the
    supervised task; ``acting`` says whether this node may act as the leader right now."""

    def __init__(self, *, connect: Callable[[], Awaitable[psycopg.AsyncConnection[Any]]],
                 seat: Seat, lease: float, clock: Clock,
                 on_elected: Callable[[int], None],
                 on_deposed: Callable[[str], None]) -> None:
        self._connect = connect
        self.seat = seat
        self.lease = lease
        self.period = lease / 3
        self._clock = clock
        self._on_elected = on_elected
        self._on_deposed = on_deposed
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._pid: int | None = None
        self._seated = False
        self.epoch: int | None = None  # while this node leads
        self._valid_until = 0.0  # monotonic: the lease as last renewed
        self._failures = 0
        self.connected = False
        self.last_error: str | None = None
        self._reapers: set[asyncio.Task[None]] = set()

    # -- reads ----------------------------------------------------------------------------

    @property
    def seated(self) -> bool:
        """Has this node taken its seat (its name and location are its own)?"""
        return self._seated

    @property
    def acting(self) -> bool:
        """Does this node lead, with a lease still valid? Checked before every act."""
        return self.epoch is not None and self._clock.monotonic() < self._valid_until

    def remaining(self) -> float:
        """Seconds of lease left (0 unless leading)."""
        if self.epoch is None:
            return 0.0
        return max(0.0, self._valid_until - self._clock.monotonic())

    # -- the task -------------------------------------------------------------------------

    async def run(self) -> None:
        """Hold the seat, renew, elect, and fence: for ever. SeatTaken ends it (fatal)."""
        try:
            while True:
                wake = self._clock.monotonic() + self.period
                try:
                    if self._conn is None:
                        await self._open()
                    wake = await self._beat()
                    self._failures = 0
                    self.connected, self.last_error = True, None
                except SeatTaken:
                    raise
                except (psycopg.Error, OSError, TimeoutError) as exc:
                    self._failures += 1
                    self._lost(_reason(exc))
                    first, ceiling = RECONNECT
                    wake = self._clock.monotonic() + min(ceiling,
                                                         first * 2 ** (self._failures - 1))
                if self.epoch is not None:
                    wake = min(wake, self._valid_until)
                await self._clock.sleep_until(wake)
                if self.epoch is not None and not self.acting:
                    self._depose("the lease ran out before it could be renewed")
        finally:
            if self.epoch is not None:
                self._depose("stopping")
            self._close()

    async def resign(self) -> None:
        """A clean stop: let the next node take over at once (bounded)."""
        epoch, self.epoch = self.epoch, None
        if epoch is None or self._conn is None:
            return
        with contextlib.suppress(psycopg.Error, OSError, TimeoutError):
            await self._call(lambda c: c.execute(
                "UPDATE leadership SET heartbeat = '-infinity' WHERE id = 1 AND epoch = %s",
                (epoch,)), timeout=2.0)
            log.info("leadership_resigned", node=self.seat.node, epoch=epoch)

    def abdicate(self, reason: str) -> None:
        """Stop leading now (this node cannot do the leader's work); another node, or this
        one later, takes over once the lease has run out."""
        self._depose(reason)

    # -- steps ----------------------------------------------------------------------------

    async def _open(self) -> None:
        conn = await asyncio.wait_for(self._connect(), timeout=self.period + 5)
        self._conn = conn
        row = await self._one("SELECT pg_backend_pid()")
        self._pid = int(row[0])
        await self._take_seat()

    async def _take_seat(self) -> None:
        seat = self.seat
        keys = (f"node:{seat.node}", f"location:{seat.location}")
        for attempt in range(2):
            got = await self._one(
                "SELECT pg_try_advisory_lock(%s, hashtext(%s)),"
                " pg_try_advisory_lock(%s, hashtext(%s))",
                (LOCK_CLASS, keys[0], LOCK_CLASS, keys[1]))
            if got[0] and got[1]:
                break
            await self._fetch("SELECT pg_advisory_unlock_all() IS NULL")
            holder = await self._fetch(
                "SELECT node, pid,"
                " CASE WHEN isfinite(heartbeat) THEN extract(epoch FROM now() - heartbeat) END,"
                " pid IN (SELECT pid FROM pg_stat_activity) FROM nodes"
                " WHERE CASE WHEN %s THEN location = %s ELSE node = %s END"
                " ORDER BY heartbeat DESC LIMIT 1",
                (bool(got[0]), seat.location, seat.node))
            what = (f"cluster.node {seat.node!r}" if not got[0]
                    else f"cluster.location {seat.location!r}")
            if holder is None or attempt == 1:
                raise SeatTaken(f"{what} is taken by another running node; every node needs "
                                "its own name and location")
            node, pid, age, alive = holder
            if alive and age is not None and float(age) <= self.lease:
                raise SeatTaken(f"{what} is taken by node {node!r}, which is running (heard "
                                f"from {float(age):.0f} s ago); every node needs its own name "
                                "and location")
            # its holder stopped renewing: a session left half-open; end it and take over
            log.warning("seat_taken_over", node=seat.node, previous=node, pid=pid)
            await self._fetch("SELECT pg_terminate_backend(%s)", (pid,))
            await asyncio.sleep(0.2)
        await self._fetch(
            "INSERT INTO nodes (node, location, pid, address, version, started, heartbeat)"
            " VALUES (%s, %s, %s, %s, %s, now(), now())"
            " ON CONFLICT (node) DO UPDATE SET location = excluded.location, pid = excluded.pid,"
            " address = excluded.address, version = excluded.version, started = now(),"
            " heartbeat = now() RETURNING 1",
            (seat.node, seat.location, self._pid, seat.address, seat.version))
        if not self._seated:
            log.info("node_seated", node=seat.node, location=seat.location)
        self._seated = True

    async def _beat(self) -> float:
        """One round: renew the node (and the lease, if leading) or try to take over.
        Returns when the next round is due (monotonic)."""
        sent = self._clock.monotonic()
        if self.epoch is not None:
            budget = max(0.05, min(self.period, self._valid_until - sent))
            row = await self._fetch(
                "WITH n AS (UPDATE nodes SET heartbeat = now() WHERE node = %s)"
                " UPDATE leadership SET heartbeat = now()"
                " WHERE id = 1 AND epoch = %s AND node = %s RETURNING epoch",
                (self.seat.node, self.epoch, self.seat.node), timeout=budget)
            if row is None:
                self._depose("another node took over")
                return sent + self.period
            self._valid_until = sent + self.lease
            return sent + self.period
        row = await self._fetch(
            "WITH n AS (UPDATE nodes SET heartbeat = now() WHERE node = %s)"
            " SELECT epoch, node, pid,"
            " CASE WHEN isfinite(heartbeat) THEN extract(epoch FROM now() - heartbeat) END"
            " FROM leadership WHERE id = 1", (self.seat.node,))
        assert row is not None
        epoch, holder, pid, age = int(row[0]), row[1], row[2], row[3]
        age = float("inf") if age is None else float(age)
        if holder is not None and age <= self.lease:
            return sent + min(self.period, self.lease - age + 0.05)
        if holder is not None and holder != self.seat.node:
            # every session of the leader it replaces ends: its lock, and any transaction it
            # left open behind a broken network (holding the leadership row FOR SHARE, which
            # would block the epoch's increment until the server's idle timeout)
            await self._fetch(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE (pid = %s OR application_name = %s) AND usename = current_user"
                " AND pid <> pg_backend_pid()", (pid, session_name(holder)))
        elif pid is not None and pid != self._pid:
            await self._fetch(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE pid = %s AND usename = current_user", (pid,))
        got = await self._fetch("SELECT pg_try_advisory_lock(%s, %s)", (LOCK_CLASS, LEADER_KEY))
        if not got or not got[0]:
            return sent + min(self.period, 0.5)
        sent = self._clock.monotonic()
        won = await self._fetch(
            "UPDATE leadership SET epoch = epoch + 1, node = %s, pid = pg_backend_pid(),"
            " since = now(), heartbeat = now() WHERE id = 1 AND epoch = %s RETURNING epoch",
            (self.seat.node, epoch))
        if won is None:
            await self._fetch("SELECT pg_advisory_unlock(%s, %s)", (LOCK_CLASS, LEADER_KEY))
            return sent + self.period
        self.epoch, self._valid_until = int(won[0]), sent + self.lease
        log.warning("leadership_taken", node=self.seat.node, epoch=self.epoch,
                    previous=holder)
        self._on_elected(self.epoch)
        return sent + self.period

    # -- machinery ------------------------------------------------------------------------

    def _depose(self, reason: str) -> None:
        epoch, self.epoch = self.epoch, None
        if epoch is None:
            return
        log.error("leadership_lost", node=self.seat.node, epoch=epoch, reason=reason)
        self._on_deposed(reason)
        # the session goes with it (and the leader lock): the seat is taken again next round
        self._close()

    def _lost(self, reason: str) -> None:
        if self.connected or self.last_error != reason:
            log.error("cluster_connection_lost", node=self.seat.node, reason=reason,
                      leading=self.epoch is not None)
        self.connected, self.last_error = False, reason
        self._close()

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._reap(conn)

    async def _fetch(self, sql: str, params: tuple[Any, ...] = (), *,
                     timeout: float | None = None) -> tuple[Any, ...] | None:
        async def work(conn: psycopg.AsyncConnection[Any]) -> tuple[Any, ...] | None:
            cur = await conn.execute(sql, params)
            return await cur.fetchone()
        return await self._call(work, timeout=timeout)

    async def _one(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...]:
        row = await self._fetch(sql, params)
        if row is None:
            raise psycopg.OperationalError(f"no row from: {sql.split(maxsplit=1)[0]}")
        return row

    async def _call(self, work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]], *,
                    timeout: float | None = None) -> T:
        """Run ``work`` on the dedicated connection within a hard deadline. A call stuck on a
        half-dead connection is abandoned at once (its cancellation may itself hang behind
        the broken network) and the connection dropped."""
        conn = self._conn
        if conn is None:
            raise psycopg.OperationalError("not connected")
        task = asyncio.ensure_future(work(conn))
        try:
            done, _ = await asyncio.wait({task}, timeout=timeout or self.period)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if task not in done:
            task.cancel()
            self._close()
            raise TimeoutError("the database did not answer in time")
        return task.result()

    def _reap(self, conn: psycopg.AsyncConnection[Any]) -> None:
        async def close() -> None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), timeout=5)
        task = asyncio.ensure_future(close())
        self._reapers.add(task)
        task.add_done_callback(self._reapers.discard)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "the database did not answer in time"
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
