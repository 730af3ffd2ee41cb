"""The SQLite backend: the store contract, on its thread and inline, and what is SQLite's
own: the file, its schema, the lock, the upgrade from release 0.1."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from pathlib import Path

import pytest
from tests.helpers.store_contract import LedgerContract, StoreContract, sample

from outagewatch.core.evaluator import Health, Run, Status
from outagewatch.store import Changes, StateLocked, StoreError
from outagewatch.store.sqlite import MIGRATIONS, SqliteStore

UPGRADE = Path(__file__).parent.parent / "testdata" / "state" / "state-0.1.db"


@pytest.fixture(name="store", params=["threaded", "inline"])
async def _store(request, tmp_path):
    store = await SqliteStore.open(tmp_path / "state.db", threaded=request.param == "threaded")
    yield store
    await store.close()


class TestSqliteContract(StoreContract, LedgerContract):
    pass


class TestFile:
    async def test_state_survives_a_reopen(self, tmp_path):
        store = await SqliteStore.open(tmp_path / "s.db")
        await store.apply(Changes(samples=[sample("t", 1.0)]))
        await store.close()
        again = await SqliteStore.open(tmp_path / "s.db")
        try:
            assert [1.0] == [s.start for s in (await again.load(recent=1)).recent["t"]]
            assert len(MIGRATIONS) == again.version
        finally:
            await again.close()

    async def test_newer_schema_is_refused(self, tmp_path):
        path = tmp_path / "s.db"
        db = sqlite3.connect(path)
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
        db.close()
        with pytest.raises(StoreError, match="newer than this outagewatch"):
            await SqliteStore.open(path)

    async def test_unusable_path_is_one_line(self, tmp_path):
        with pytest.raises(StoreError, match=r"state\.path: cannot create"):
            await SqliteStore.open(tmp_path / "missing-dir" / "s.db")

    async def test_calls_do_not_run_on_the_event_loop(self, tmp_path):
        """On its thread, a store held by another connection's write lock waits there: the
        event loop keeps going round (5 s of SQLite busy wait used to freeze it)."""
        path = tmp_path / "s.db"
        store = await SqliteStore.open(path)
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            writing = asyncio.create_task(store.apply(Changes(forgotten={"x"})))
            ticks = 0
            for _ in range(20):
                await asyncio.sleep(0.01)
                ticks += 1
            assert not writing.done()
            assert 20 == ticks
        finally:
            other.execute("ROLLBACK")
            other.close()
        await writing
        await store.close()


class TestSingleInstance:
    async def test_a_second_store_on_the_same_file_is_refused(self, tmp_path):
        store = await SqliteStore.open(tmp_path / "s.db")
        try:
            with pytest.raises(StateLocked, match=rf"{tmp_path}/s.db is in use by another "
                               rf"outagewatch \(pid \d+\)"):
                await SqliteStore.open(tmp_path / "s.db")
        finally:
            await store.close()
        again = await SqliteStore.open(tmp_path / "s.db")  # free once the first closed
        await again.close()

    async def test_the_lock_is_released_when_its_process_dies(self, tmp_path):
        path = tmp_path / "s.db"
        holder = await asyncio.create_subprocess_exec(
            sys.executable, "-c", HOLD, str(path), stdout=asyncio.subprocess.PIPE)
        assert holder.stdout is not None
        try:
            assert b"held\n" == await holder.stdout.readline()
            with pytest.raises(StateLocked, match=f"pid {holder.pid}"):
                await SqliteStore.open(path)
        finally:
            holder.kill()
            await holder.wait()
        store = await SqliteStore.open(path)
        await store.close()


HOLD = """
import asyncio, sys
from outagewatch.store.sqlite import SqliteStore
async def main():
    await SqliteStore.open(sys.argv[1])
    print("held", flush=True)
    await asyncio.sleep(60)
asyncio.run(main())
"""


class TestUpgrade:
    """A state file written by release 0.1 (tests/testdata/state/README.md) is read right."""

    @pytest.fixture(name="old")
    async def _old(self, tmp_path):
        copy = tmp_path / "state.db"
        copy.write_bytes(UPGRADE.read_bytes())
        store = await SqliteStore.open(copy)
        yield store
        await store.close()

    async def test_verdicts_of_every_shape(self, old):
        t0 = 1_780_000_000.0
        verdicts = (await old.load(recent=5)).verdicts
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

    async def test_incidents_windows_and_outbox(self, old):
        state = await old.load(recent=5)
        (incident,) = await old.incidents()
        assert incident == state.books["eu"].open
        (mail,) = await old.thread(f"incident:{incident.id}")
        assert ("open", "sent", "smtp") == (mail.kind, mail.status, mail.channel)
        assert "<eu-2026-0001.0@example.com>" == mail.payload["message_id"]
        assert ["oncall@example.com"] == mail.payload["to"]
        assert ["db-upgrade"] == list(state.windows)
        ((pending, delivery),) = state.outbox
        assert ("maintenance:db-upgrade", "", "announcement", "pending") == (
            pending.key.thread, pending.key.lane, pending.kind, delivery.status)
        assert ["info@example.com"] == pending.payload["to"]
        assert 1 == len(state.recent["imap-eu"])
