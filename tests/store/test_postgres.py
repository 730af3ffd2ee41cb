"""The PostgreSQL backend against a real server: the store contract, and what is its own:
migrations (once, whoever starts first), one-line errors without the password, a deadline on
every call that holds on a dead path, a server restart, and locations sharing one database."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import psycopg
import pytest
from tests.helpers.faultproxy import Fault, FaultProxy
from tests.helpers.ports import free_port
from tests.helpers.store_contract import LedgerContract, StoreContract, envelope, sample

from outagewatch.core.evaluator import Health, Verdict
from outagewatch.core.incidents import Book
from outagewatch.core.quorum import Seen
from outagewatch.core.rollup import Rollup
from outagewatch.store import Changes, OutageSpan, StoreError
from outagewatch.store.postgres import MIGRATIONS, PostgresStore

if TYPE_CHECKING:
    from tests.helpers.postgres import Postgres

SLACK = 2.0  # seconds a cut call may take beyond its deadline (two cancellations, a close)


async def open_store(pg: Postgres, *, port: int | None = None, **kwargs) -> PostgresStore:
    url = pg.url if port is None else f"postgresql://{pg.user}@127.0.0.1:{port}/{pg.dbname}"
    return await PostgresStore.open(url, password=pg.password, **kwargs)


@pytest.fixture(name="store")
async def _store(pg: Postgres):
    store = await open_store(pg, call_timeout=5.0)
    yield store
    await store.close()


class TestPostgresContract(StoreContract, LedgerContract):
    pass


class TestMigrations:
    async def test_a_second_open_migrates_nothing_and_keeps_the_state(self, pg):
        store = await open_store(pg)
        await store.apply(Changes(samples=[sample("t", 1.0)]))
        installation = (await store.load(recent=1)).installation
        await store.close()
        before = pg.psql("SELECT version, applied_at FROM schema_version ORDER BY version")
        again = await open_store(pg)
        try:
            state = await again.load(recent=1)
            assert [1.0] == [s.start for s in state.recent["t"]]
            assert installation == state.installation
            assert len(MIGRATIONS) == again.version
        finally:
            await again.close()
        assert before == pg.psql("SELECT version, applied_at FROM schema_version"
                                 " ORDER BY version")

    async def test_nodes_starting_at_once_migrate_once(self, pg):
        stores = await asyncio.gather(*(open_store(pg) for _ in range(4)))
        try:
            assert {len(MIGRATIONS)} == {s.version for s in stores}
            tokens = {(await s.load(recent=1)).installation for s in stores}
            assert 1 == len(tokens)
        finally:
            for store in stores:
                await store.close()
        expected = "\n".join(str(n) for n in range(1, len(MIGRATIONS) + 1))
        assert expected == pg.psql("SELECT version FROM schema_version ORDER BY version")
        assert "1|0|-infinity" == pg.psql("SELECT id, epoch, heartbeat FROM leadership")

    async def test_a_newer_schema_is_refused_in_one_line(self, pg):
        store = await open_store(pg)
        await store.close()
        newer = len(MIGRATIONS) + 1
        pg.psql(f"INSERT INTO schema_version (version) VALUES ({newer})")
        with pytest.raises(StoreError) as caught:
            await open_store(pg)
        message = str(caught.value)
        assert (f"the database at 127.0.0.1:{pg.port}/outagewatch has schema {newer}, newer "
                f"than this outagewatch understands ({len(MIGRATIONS)}): refusing to touch it"
                == message)

    async def test_the_cluster_tables_are_there(self, pg):
        store = await open_store(pg)
        await store.close()
        columns = pg.psql(
            "SELECT table_name || '.' || column_name || ':' || data_type"
            " || ':' || is_nullable FROM information_schema.columns"
            " WHERE table_schema = 'public' AND table_name IN"
            " ('nodes', 'leadership', 'views')"
            " ORDER BY table_name, ordinal_position").splitlines()
        assert [
            "leadership.id:integer:NO", "leadership.epoch:bigint:NO",
            "leadership.node:text:YES", "leadership.pid:integer:YES",
            "leadership.since:timestamp with time zone:YES",
            "leadership.heartbeat:timestamp with time zone:NO",
            "nodes.node:text:NO", "nodes.location:text:NO", "nodes.pid:integer:NO",
            "nodes.address:text:NO", "nodes.version:text:NO",
            "nodes.started:timestamp with time zone:NO",
            "nodes.heartbeat:timestamp with time zone:NO",
            "views.target:text:NO", "views.location:text:NO", "views.health:text:NO",
            "views.last_run:double precision:YES", "views.outage_start:double precision:YES",
            "views.restored_at:double precision:YES", "views.node:text:NO",
            "views.seq:xid8:NO",
        ] == columns


class TestErrors:
    """Each failure is one line naming host:port/db and the reason, never the password."""

    async def test_a_wrong_password(self, pg):
        wrong = "wrong-" + pg.password
        with pytest.raises(StoreError) as caught:
            await PostgresStore.open(pg.url, password=wrong)
        message = str(caught.value)
        assert (f"cannot reach the database at 127.0.0.1:{pg.port}/outagewatch: password "
                f'authentication failed for user "outagewatch"' == message)
        assert wrong not in message
        assert pg.password not in message

    async def test_a_refused_port(self):
        port = free_port()
        with pytest.raises(StoreError) as caught:
            await PostgresStore.open(f"postgresql://outagewatch@127.0.0.1:{port}/outagewatch",
                                     password="s3cret-pass")
        assert (f"cannot reach the database at 127.0.0.1:{port}/outagewatch: connection "
                "refused" == str(caught.value))

    async def test_no_such_database(self, pg):
        with pytest.raises(StoreError, match=r"^cannot reach the database at 127\.0\.0\.1:\d+"
                           r'/nope: database "nope" does not exist$'):
            await PostgresStore.open(pg.url.rsplit("/", 1)[0] + "/nope", password=pg.password)

    async def test_a_server_that_never_answers_is_given_up_at_connect_timeout(self, pg):
        async with FaultProxy(pg.port, Fault("stall")) as proxy:
            started = time.monotonic()
            with pytest.raises(StoreError) as caught:
                await open_store(pg, port=proxy.port, connect_timeout=0.5)
            assert time.monotonic() - started < 0.5 + SLACK
        assert (f"cannot reach the database at 127.0.0.1:{proxy.port}/outagewatch: no answer "
                "within 0.5 s (connect_timeout)" == str(caught.value))

    async def test_a_statement_the_database_refuses(self, store, pg):
        pg.psql("ALTER TABLE samples ADD CONSTRAINT positive CHECK (duration >= 0)")
        bad = sample("t", 1.0)
        with pytest.raises(StoreError) as caught:
            await store.apply(Changes(samples=[type(bad)("t", 1.0, -1.0, "ok", None, False)]))
        assert str(caught.value).startswith(
            f"the database at 127.0.0.1:{pg.port}/outagewatch refused the write: new row for "
            'relation "samples" violates check constraint "positive"')
        assert "\n" not in str(caught.value)
        await store.apply(Changes(samples=[bad]))  # the connection is fine for the next

    async def test_a_closed_store(self, pg):
        store = await open_store(pg)
        await store.close()
        with pytest.raises(StoreError, match="the store is closed"):
            await store.load(recent=1)


class HoldingProxy(FaultProxy):
    """A FaultProxy whose answers (server to client) can be held back on every connection,
    open or new: the path goes dead mid-session (``hold``), and comes back (``release``)."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__(upstream_port)
        self.flowing = asyncio.Event()
        self.flowing.set()

    async def _downstream(self, up, writer, mode):
        while data := await up.read(65536):
            while not self.flowing.is_set():
                if self._closing.is_set():
                    raise ConnectionAbortedError
                await asyncio.sleep(0.01)
            writer.write(data)
            await writer.drain()


class TestDeadlines:
    """A half-dead path (the kernel acks, nothing answers) never hangs the daemon: the call
    fails at its deadline with one line, and the store works again once the path does."""

    async def test_a_path_that_goes_dead_mid_session(self, pg):
        async with HoldingProxy(pg.port) as proxy:
            store = await open_store(pg, port=proxy.port, call_timeout=1.0)
            try:
                await store.apply(Changes(samples=[sample("t", 1.0)]))
                proxy.flowing.clear()
                started = time.monotonic()
                with pytest.raises(StoreError) as caught:
                    await store.apply(Changes(samples=[sample("t", 2.0)]))
                assert time.monotonic() - started < 1.0 + SLACK
                assert (f"cannot reach the database at 127.0.0.1:{proxy.port}/outagewatch: "
                        "no working connection within 1 s" == str(caught.value))
                started = time.monotonic()
                assert "no working connection within 1 s" in (await store.health() or "")
                assert time.monotonic() - started < 1.0 + SLACK
                proxy.flowing.set()
                await store.apply(Changes(samples=[sample("t", 3.0)]))
                assert await store.health() is None
                assert [1.0, 3.0] == [s.start for s in (await store.load(recent=5)).recent["t"]]
            finally:
                await store.close()

    async def test_a_path_that_goes_dead_mid_transaction(self, pg, monkeypatch):
        async with HoldingProxy(pg.port) as proxy:
            store = await open_store(pg, port=proxy.port, call_timeout=1.0)
            original = PostgresStore._apply

            async def dying(self, conn, changes, fence):  # the connection passed its check
                proxy.flowing.clear()
                await original(self, conn, changes, fence)

            try:
                monkeypatch.setattr(PostgresStore, "_apply", dying)
                started = time.monotonic()
                with pytest.raises(StoreError) as caught:
                    await store.apply(Changes(samples=[sample("t", 1.0)]))
                assert time.monotonic() - started < 1.0 + SLACK
                assert (f"the database at 127.0.0.1:{proxy.port}/outagewatch did not answer "
                        "within 1 s (write); the connection was dropped" == str(caught.value))
                monkeypatch.undo()
                proxy.flowing.set()
                await store.apply(Changes(samples=[sample("t", 2.0)]))
                assert [2.0] == [s.start for s in (await store.load(recent=5)).recent["t"]]
            finally:
                await store.close()

    async def test_a_server_that_accepts_but_never_answers(self, pg):
        async with FaultProxy(pg.port) as proxy:
            store = await open_store(pg, port=proxy.port, call_timeout=1.0, connect_timeout=2.0)
            try:
                await store.apply(Changes(samples=[sample("t", 1.0)]))
                proxy.mode = Fault("stall")  # new connections: accepted, never answered
                pg.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        f" WHERE usename = '{pg.user}'")  # and the pooled ones are cut
                started = time.monotonic()
                with pytest.raises(StoreError) as caught:
                    await store.apply(Changes(samples=[sample("t", 2.0)]))
                assert time.monotonic() - started < 1.0 + SLACK
                assert str(caught.value).startswith(
                    f"cannot reach the database at 127.0.0.1:{proxy.port}/outagewatch: no "
                    "working connection within 1 s")
                # attempts already under way are given up at connect_timeout (2 s), then the
                # pool connects again: a later write works
                proxy.mode = Fault()
                await _eventually(lambda: store.apply(Changes(samples=[sample("t", 3.0)])))
                assert [1.0, 3.0] == [s.start for s in (await store.load(recent=5)).recent["t"]]
            finally:
                await store.close()

    async def test_a_restart_between_two_writes(self, pg):
        store = await open_store(pg, call_timeout=2.0)
        try:
            await store.apply(Changes(samples=[sample("t", 1.0)]))
            await asyncio.to_thread(pg.restart)
            await _eventually(lambda: store.apply(Changes(samples=[sample("t", 2.0)])))
            assert [1.0, 2.0] == [s.start for s in (await store.load(recent=5)).recent["t"]]
        finally:
            await store.close()


async def _eventually(write, *, within: float = 15.0) -> None:
    """The first writes after a fault may fail (one line each); a later one succeeds."""
    deadline = time.monotonic() + within
    failures: list[str] = []
    while True:
        try:
            await write()
        except StoreError as exc:
            failures.append(str(exc))
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
        else:
            break
    assert [] == [f for f in failures if "\n" in f]


class TestLostCommitAnswer:
    """The connection breaks as the commit is sent: the store asks the database whether it
    committed, so the unit is reported as it is (a retry would duplicate its messages)."""

    async def test_a_commit_that_happened_counts(self, store, monkeypatch):
        original = psycopg.AsyncConnection.commit

        async def commit_then_cut(self):
            await original(self)
            self.pgconn.finish()
            raise psycopg.OperationalError("server closed the connection unexpectedly")

        monkeypatch.setattr(psycopg.AsyncConnection, "commit", commit_then_cut)
        await store.apply(Changes(envelopes=[envelope("incident:A", 0)]))
        monkeypatch.undo()
        assert ["pending"] == [m.status for m in await store.thread("incident:A")]

    async def test_a_commit_that_did_not_happen_fails(self, store, monkeypatch):
        async def cut(self):
            self.pgconn.finish()
            raise psycopg.OperationalError("server closed the connection unexpectedly")

        monkeypatch.setattr(psycopg.AsyncConnection, "commit", cut)
        with pytest.raises(StoreError, match="server closed the connection unexpectedly"):
            await store.apply(Changes(envelopes=[envelope("incident:A", 0)]))
        monkeypatch.undo()
        assert [] == await store.thread("incident:A")
        await store.apply(Changes(envelopes=[envelope("incident:A", 0)]))  # the retry
        assert 1 == len(await store.thread("incident:A"))


    async def test_a_commit_cut_by_the_deadline_is_asked_about_at_the_next_write(
            self, pg, monkeypatch):
        """The commit happened, its answer never came: the call fails at its deadline, and
        the writer's retry of the same unit is not refused as a duplicate of itself; a real
        duplicate later still is."""
        store = await open_store(pg, call_timeout=1.0)
        original = psycopg.AsyncConnection.commit

        async def commit_then_silence(self):
            await original(self)
            await asyncio.sleep(30)

        unit = Changes(envelopes=[envelope("incident:A", 0)], samples=[sample("t", 1.0)])
        try:
            monkeypatch.setattr(psycopg.AsyncConnection, "commit", commit_then_silence)
            with pytest.raises(StoreError, match="did not answer within 1 s"):
                await store.apply(unit)
            monkeypatch.undo()
            await store.apply(Changes(envelopes=[*unit.envelopes, envelope("incident:A", 1)]))
            assert [0, 1] == [m.number for m in await store.thread("incident:A")]
            with pytest.raises(StoreError, match="exists already"):
                await store.apply(unit)
        finally:
            await store.close()


class TestLocations:
    async def test_each_location_has_its_own_verdicts_and_samples(self, pg):
        eu = await open_store(pg, location="eu-1")
        us = await open_store(pg, location="us-1")
        try:
            await eu.apply(Changes(verdicts={"imap": Verdict(last_start=1.0)},
                                   samples=[sample("imap", 1.0)], keep_after={"imap": 0.0}))
            await us.apply(Changes(verdicts={"imap": Verdict(last_start=2.0)},
                                   samples=[sample("imap", 2.0, bad=True)],
                                   keep_after={"imap": 0.0}))
            await us.apply(Changes(books={"eu": Book(last_id="EU-1")}))
            eu_state, us_state = await eu.load(recent=5), await us.load(recent=5)
            assert 1.0 == eu_state.verdicts["imap"].last_start
            assert 2.0 == us_state.verdicts["imap"].last_start
            assert [1.0] == [s.start for s in eu_state.recent["imap"]]
            assert [2.0] == [s.start for s in us_state.recent["imap"]]
            assert eu_state.books == us_state.books  # the rest is shared
            assert eu_state.installation == us_state.installation
            await eu.apply(Changes(forgotten={"imap"}))
            assert {} == dict((await eu.load(recent=5)).verdicts)
            assert ["imap"] == list((await us.load(recent=5)).verdicts)
            assert [2.0] == [s.start for s in (await us.load(recent=5)).recent["imap"]]
            assert "eu-1|0\nus-1|1" == pg.psql(
                "SELECT l, count(s.target) FROM (VALUES ('eu-1'), ('us-1')) AS v(l)"
                " LEFT JOIN samples s ON s.location = l GROUP BY l ORDER BY l")
        finally:
            await eu.close()
            await us.close()


class TestClusterState:
    """What a cluster keeps besides the contract: each location's views, read by the leader
    without missing one, the leader's consensus, and writes fenced by its epoch."""

    async def test_views_are_read_once_written_and_again_only_if_written_again(self, pg):
        a = await open_store(pg, location="a", node="node-a")
        b = await open_store(pg, location="b", node="node-b")
        try:
            seen = Seen(Health.OUTAGE, 100.0, 40.0, None)
            await a.apply(Changes(views={"web": seen}))
            rows, cursor = await b.views_since(0)
            assert [("web", "a", seen)] == rows
            await b.apply(Changes(views={"web": Seen(Health.OK, 101.0, None, 20.0)}))
            rows, cursor = await a.views_since(cursor)
            assert [("web", "b", Seen(Health.OK, 101.0, None, 20.0))] == rows
            rows, cursor = await a.views_since(cursor)
            assert [] == rows
        finally:
            await a.close()
            await b.close()

    async def test_a_view_committed_late_by_a_slow_writer_is_not_missed(self, pg):
        """A transaction that began before the reader read and commits after is read on the
        next call (a sequence number handed out in order would have been skipped)."""
        reader = await open_store(pg, location="leader")
        try:
            _, cursor = await reader.views_since(0)
            slow = await psycopg.AsyncConnection.connect(pg.dsn())
            await slow.execute("INSERT INTO views (target, location, health, outage_start,"
                               " node) VALUES ('web', 'slow', 'outage', 1.0, 'n')")
            fast = Seen(Health.OK, 5.0, None, None)
            quick = await open_store(pg, location="quick")
            await quick.apply(Changes(views={"web": fast}))
            await quick.close()
            rows, cursor = await reader.views_since(cursor)
            assert [("web", "quick", fast)] == rows
            await slow.commit()
            await slow.close()
            rows, cursor = await reader.views_since(cursor)
            assert ["slow"] == [location for _, location, _ in rows if location != "quick"]
        finally:
            await reader.close()

    async def test_load_gives_the_locations_own_views_and_the_consensus(self, pg):
        store = await open_store(pg, location="a")
        try:
            mine = Seen(Health.BAD, 9.0, None, None)
            await store.apply(Changes(views={"web": mine},
                                      consensus={"web": 3.0, "mx": None}))
            state = await store.load(recent=1)
            assert {"web": mine} == dict(state.views)
            assert {"web": 3.0} == dict(state.consensus)
        finally:
            await store.close()

    async def test_a_fenced_write_of_a_past_epoch_is_refused_and_leaves_nothing(self, pg):
        store = await open_store(pg)
        try:
            pg.psql("UPDATE leadership SET epoch = 7")
            await store.fenced(7).apply(Changes(books={"eu": Book()}))
            pg.psql("UPDATE leadership SET epoch = 8")
            with pytest.raises(StoreError, match="fenced: this node led in epoch 7, the cluster "
                                                 "is in epoch 8; not written"):
                await store.fenced(7).apply(Changes(samples=[sample("t", 1.0)]))
            assert "" == pg.psql("SELECT target FROM samples")
            assert "eu" == pg.psql("SELECT platform FROM books")
        finally:
            await store.close()

    async def test_a_deposed_leaders_outage_is_not_written(self, pg):
        """Outages are the leader's (its desk's): fenced like the rest of its writes."""
        store = await open_store(pg)
        try:
            pg.psql("UPDATE leadership SET epoch = 8")
            span = OutageSpan("web", "eu", 10.0, None, "EU-1")
            with pytest.raises(StoreError, match="fenced"):
                await store.fenced(7).apply(Changes(outages={("web", 10.0): span}))
            await store.fenced(8).apply(Changes(outages={("web", 10.0): span}))
            assert [span] == await store.outages(["web"], 0.0, 100.0)
        finally:
            await store.close()

    async def test_each_location_keeps_its_rollups_and_coverage(self, pg):
        """Every node writes its location's rollups and coverage; the reads give every
        location's rollups and the union of their coverage; load gives a node its own."""
        a = await open_store(pg, location="a")
        b = await open_store(pg, location="b")
        try:
            for store, where, runs, seen in ((a, "a", 2, (0.0, 100.0)),
                                             (b, "b", 3, (50.0, 200.0))):
                rollup = Rollup("web", where, 0.0, runs, 0, 1.0, 1.0, 1.0, {})
                await store.apply(Changes(verdicts={"web": Verdict(last_start=1.0)},
                                          rollups={("web", where, 0.0): rollup},
                                          coverage={("web", where, seen[0]): seen[1]}))
            assert [("a", 2), ("b", 3)] == [(r.location, r.runs)
                                            for r in await a.rollups(["web"], 0.0, 300.0)]
            assert {"web": [(0.0, 200.0)]} == await b.coverage(["web"], 0.0, 300.0)
            state = await b.load(recent=1)
            assert [("b", 3)] == [(r.location, r.runs) for r, _ in state.rollups.values()]
            assert {"web": (50.0, 200.0)} == dict(state.coverage)
        finally:
            await a.close()
            await b.close()

    async def test_cluster_status_and_the_leaders_address_in_database_time(self, pg):
        store = await open_store(pg)
        try:
            pg.psql("INSERT INTO nodes (node, location, pid, address, version) VALUES"
                    " ('n1', 'a', 1, '10.0.0.1:9817', '1'),"
                    " ('n2', 'b', 2, '10.0.0.2:9817', '1');"
                    "UPDATE nodes SET heartbeat = now() - interval '1 hour' WHERE node = 'n2';"
                    "UPDATE leadership SET epoch = 3, node = 'n1', since = now(),"
                    " heartbeat = now()")
            status = await store.cluster_status(15.0)
            assert [("n1", True), ("n2", False)] == [(n["node"], n["live"])
                                                     for n in status["nodes"]]
            assert (3, "n1", True) == (status["leader"]["epoch"], status["leader"]["node"],
                                       status["leader"]["live"])
            assert "10.0.0.1:9817" == await store.leader_address(15.0)
            pg.psql("UPDATE leadership SET heartbeat = '-infinity'")
            assert await store.leader_address(15.0) is None
            assert not (await store.cluster_status(15.0))["leader"]["live"]
        finally:
            await store.close()

    async def test_the_latest_samples_of_every_location(self, pg):
        a = await open_store(pg, location="a")
        b = await open_store(pg, location="b")
        try:
            await a.apply(Changes(samples=[sample("web", float(t)) for t in (1, 2, 3)]))
            await b.apply(Changes(samples=[sample("web", 2.5, bad=True)]))
            await a.refresh_recent(["web", "none"])
            assert [(2.0, "a"), (2.5, "b"), (3.0, "a")] == [
                (s.start, s.location) for s in a.recent_of("web")]
            assert [] == a.recent_of("none")
        finally:
            await a.close()
            await b.close()


async def test_nodes_silent_for_long_are_forgotten(pg):
    store = await open_store(pg)
    try:
        pg.psql("INSERT INTO nodes (node, location, pid) VALUES ('old', 'a', 1), ('new', 'b', 2);"
                "UPDATE nodes SET heartbeat = now() - interval '2 days' WHERE node = 'old'")
        assert ["old"] == await store.forget_nodes(86400.0)
        assert "new" == pg.psql("SELECT node FROM nodes")
    finally:
        await store.close()
