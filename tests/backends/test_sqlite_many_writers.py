"""Many processes on one SQLite file: writers queue on a lock waited for in the kernel
(writelock.py) instead of polling SQLite's, and a process that is not waiting is sent no
wake-ups, yet learns on its next wait what was committed meanwhile."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pyarmonik.storage.database import sqlite
from pyarmonik.storage.database.sqlite import SqliteDatabase
from pyarmonik.storage.database.writelock import WriteLock
from tests.backends.test_database import insert, make_task

pytestmark = pytest.mark.timeout(60)


async def test_a_writer_waits_for_the_lock_and_gets_it_once_released(tmp_path: Path) -> None:
    # Two open files of one lock conflict even within a process, as two processes do.
    first, second = WriteLock(tmp_path / "db"), WriteLock(tmp_path / "db")
    first.open()
    second.open()
    try:
        await first.acquire()
        waiting = asyncio.create_task(second.acquire())
        await asyncio.sleep(0.2)
        assert not waiting.done()  # blocked in a thread, not failing
        first.release()
        await asyncio.wait_for(waiting, 10)
        assert second.held and second.waits == 1
        second.release()
    finally:
        first.close()
        second.close()


async def test_an_abandoned_wait_gives_the_lock_back(tmp_path: Path) -> None:
    first, second = WriteLock(tmp_path / "db"), WriteLock(tmp_path / "db")
    first.open()
    second.open()
    try:
        await first.acquire()
        waiting = asyncio.create_task(second.acquire())
        await asyncio.sleep(0.2)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        first.release()  # the abandoned wait gets it, then lets it go
        await asyncio.wait_for(first.acquire(), 10)
        assert first.held and not second.held
        first.release()
        await asyncio.wait_for(second.acquire(), 10)  # and the abandoner may come back
        second.release()
    finally:
        first.close()
        second.close()


async def test_writers_of_many_instances_all_commit(tmp_path: Path) -> None:
    databases = [SqliteDatabase(tmp_path / "db.sqlite") for _ in range(8)]
    for database in databases:
        await database.start()
    try:
        await asyncio.gather(
            *(
                insert(database, make_task(f"t{i}-{j}"))
                for i, database in enumerate(databases)
                for j in range(5)
            )
        )
        async with databases[0].read() as repository:
            rows = await repository.connection.fetch("SELECT COUNT(*) AS n FROM tasks")
        assert rows[0]["n"] == 40
        assert any(database.write_lock.waits for database in databases)
    finally:
        for database in databases:
            await database.close()


async def test_a_paused_process_is_sent_nothing_but_sees_the_commit(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    writer, waiter = SqliteDatabase(path), SqliteDatabase(path)
    await writer.start()
    await waiter.start()
    try:
        await waiter.wait_for_changes(0.01)  # listens from now on; paused between waits
        await waiter.wait_for_changes(0.01)
        before = waiter.wakeups.received
        # Paused, its socket is aside: the writer's listing of waiters does not hold it.
        assert [p.suffix for p in waiter.wakeups.folder.iterdir()] == [".p"]
        await insert(writer, make_task("t1"))
        # Its next wait returns at once: SQLite's data_version tells of the commit.
        await asyncio.wait_for(waiter.wait_for_changes(30), 5)
        # And while it waits, a commit wakes it by a datagram.
        waiting = asyncio.create_task(waiter.wait_for_changes(30))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        await insert(writer, make_task("t2"))
        await asyncio.wait_for(waiting, 5)
        assert waiter.wakeups.received > before
    finally:
        await writer.close()
        await waiter.close()


async def test_the_wal_starts_over_while_writers_never_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A checkpoint beside writers that never pause cannot catch up with them: unless the WAL
    # is restarted, it grows with everything written (hundreds of MB a minute under load).
    monkeypatch.setattr(sqlite, "CHECKPOINT_EVERY", 0.1)
    database = SqliteDatabase(tmp_path / "db")
    await database.start()
    try:
        blob, written, count = b"x" * 16384, 0, 0
        deadline = asyncio.get_running_loop().time() + 3.0
        while asyncio.get_running_loop().time() < deadline or written < 16 << 20:
            async with database.write() as repository:
                await repository.put_blobs([(f"db:{count}".encode(), "", blob)])
            written, count = written + len(blob), count + 1
        wal = (tmp_path / "db-wal").stat().st_size
        assert wal < written / 4, f"WAL of {wal} bytes after {written} bytes written"
    finally:
        await database.close()
