"""Leadership against a real PostgreSQL: seats, one leader, takeover in database time,
fencing of a leader cut from the database."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import psycopg
import pytest
from tests.helpers.faultproxy import FaultProxy

from outagewatch.clock import SystemClock
from outagewatch.cluster.leadership import Leadership, Seat, SeatTaken, session_name

LEASE = 1.2


@dataclass
class Node:
    leadership: Leadership
    task: asyncio.Task[None] | None = None
    elected: list[tuple[float, int]] = field(default_factory=list)
    deposed: list[tuple[float, str]] = field(default_factory=list)

    async def stop(self, *, resign: bool = True) -> None:
        if resign:
            await self.leadership.resign()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, SeatTaken):
                await self.task
        await asyncio.sleep(0)  # let the connection's reaper run


def node(db, name: str, location: str | None = None, *, port: int | None = None) -> Node:
    holder: list[Node] = []

    def elected(epoch: int) -> None:
        holder[0].elected.append((time.monotonic(), epoch))

    def deposed(reason: str) -> None:
        holder[0].deposed.append((time.monotonic(), reason))

    leadership = Leadership(connect=lambda: db.connect(port=port),
                            seat=Seat(name, location or name, "127.0.0.1:0", "test"),
                            lease=LEASE, clock=SystemClock(),
                            on_elected=elected, on_deposed=deposed)
    holder.append(Node(leadership))
    holder[0].task = asyncio.create_task(leadership.run())
    return holder[0]


async def until(predicate, timeout: float = 10.0) -> float:
    """Wait until ``predicate()`` holds; return when it did (monotonic)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)
    return time.monotonic()


async def test_one_node_leads_and_the_row_says_so(db):
    a = node(db, "a")
    try:
        await until(lambda: a.leadership.acting)
        assert [1] == [epoch for _, epoch in a.elected]
        assert "1|a" == db.psql("SELECT epoch, node FROM leadership")
        assert "a|a" == db.psql("SELECT node, location FROM nodes")
    finally:
        await a.stop()


async def test_a_second_node_with_the_same_name_is_refused_in_one_line(db):
    a = node(db, "a", "fra")
    try:
        await until(lambda: a.leadership.acting)
        b = node(db, "a", "ams")
        with pytest.raises(SeatTaken) as refused:
            await asyncio.wait_for(b.task, 10)  # type: ignore[arg-type]
        message = str(refused.value)
        assert "\n" not in message
        assert "cluster.node 'a' is taken by node 'a', which is running" in message
        c = node(db, "c", "fra")
        with pytest.raises(SeatTaken, match=r"cluster\.location 'fra' is taken"):
            await asyncio.wait_for(c.task, 10)  # type: ignore[arg-type]
        assert a.leadership.acting, "the refused nodes did not disturb the leader"
    finally:
        await a.stop()


async def test_of_two_nodes_one_leads_and_a_clean_stop_hands_over_at_once(db):
    a, b = node(db, "a"), node(db, "b")
    try:
        await until(lambda: a.leadership.acting or b.leadership.acting)
        await asyncio.sleep(3 * LEASE)
        assert 1 == [a.leadership.acting, b.leadership.acting].count(True), "one leader"
        leader, other = (a, b) if a.leadership.acting else (b, a)
        stopped = time.monotonic()
        await leader.stop()
        took = await until(lambda: other.leadership.acting) - stopped
        assert took < LEASE, "a resigned leader is replaced at once, not after its lease"
        assert [2] == [epoch for _, epoch in other.elected]
    finally:
        await a.stop()
        await b.stop()


async def test_a_leader_that_dies_is_replaced_after_its_lease_with_a_new_epoch(db):
    a = node(db, "a")
    await until(lambda: a.leadership.acting)
    b = node(db, "b")
    try:
        await asyncio.sleep(LEASE)
        assert not b.leadership.acting
        died = time.monotonic()
        await a.stop(resign=False)  # as kill -9: no resignation, the heartbeat stays
        took = await until(lambda: b.leadership.acting) - died
        assert LEASE * 0.5 < took < LEASE + 5
        assert "2|b" == db.psql("SELECT epoch, node FROM leadership")
    finally:
        await b.stop()


async def test_a_leader_cut_from_the_database_stops_acting_before_another_takes_over(db):
    proxy = await FaultProxy(db.server.port).start()
    a = node(db, "a", port=proxy.port)
    try:
        await until(lambda: a.leadership.acting)
        b = node(db, "b")
        await asyncio.sleep(LEASE)
        proxy.cut()
        await until(lambda: b.leadership.acting, timeout=LEASE * 4 + 10)
        assert a.deposed, "the cut-off leader deposed itself"
        fenced_at = a.deposed[0][0]
        elected_at = b.elected[0][0]
        assert fenced_at < elected_at, "no moment with two acting leaders"
        assert not a.leadership.acting
        assert "2|b" == db.psql("SELECT epoch, node FROM leadership")
        await b.stop()
    finally:
        await a.stop(resign=False)
        await proxy.stop()


async def test_a_seat_left_half_open_is_taken_over(db):
    """A node whose session hangs behind a broken network keeps its advisory lock until
    PostgreSQL notices (hours with default keepalives); its restarted self takes the seat."""
    proxy = await FaultProxy(db.server.port).start()
    old = node(db, "a", port=proxy.port)
    try:
        await until(lambda: old.leadership.acting)
        proxy.cut()
        await asyncio.sleep(LEASE * 1.5)  # its heartbeat is now older than the lease
        new = node(db, "a")
        await until(lambda: new.leadership.acting, timeout=LEASE * 4 + 10)
        assert "a" == db.psql("SELECT node FROM leadership")
        await new.stop()
    finally:
        await old.stop(resign=False)
        await proxy.stop()


async def test_a_transaction_left_open_by_a_cut_off_leader_does_not_block_the_next(db):
    """A leader cut off mid-write leaves a transaction holding the leadership row FOR SHARE
    (its fencing check) until the server's idle timeout; the next leader ends the old one's
    sessions and takes over within its lease, not after that timeout."""
    proxy = await FaultProxy(db.server.port).start()
    a = node(db, "a", port=proxy.port)
    writing = await psycopg.AsyncConnection.connect(
        host=db.server.host, port=proxy.port, dbname=db.name, user=db.server.user,
        password=db.server.password, application_name=session_name("a"))
    b: Node | None = None
    try:
        await until(lambda: a.leadership.acting)
        await writing.execute("SELECT epoch FROM leadership WHERE id = 1 FOR SHARE")
        b = node(db, "b")
        proxy.cut()
        cut = time.monotonic()
        took = await until(lambda: b.leadership.acting, timeout=LEASE * 4 + 10) - cut
        assert took < LEASE + 5
        assert "2|b" == db.psql("SELECT epoch, node FROM leadership")
    finally:
        if b is not None:
            await b.stop()
        await a.stop(resign=False)
        await proxy.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writing.close(), 1)
