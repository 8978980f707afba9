"""Waiting for other processes' writes: `Database.wait_for_changes` wakes when another
instance (another process) commits, on SQLite (wake-up datagrams) and PostgreSQL (NOTIFY).

Every wait here has a 60 s fallback: were the notification missing, the test would hit
pytest's timeout instead of passing.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Awaitable
from pathlib import Path

import pytest

from pyarmonik.compute.agent import ChangeWaiter
from pyarmonik.compute.group import ChangeFanout, Changes
from pyarmonik.domain.statuses import TaskStatus
from pyarmonik.storage.database import Database
from pyarmonik.storage.database.sqlite import SqliteDatabase
from pyarmonik.storage.database.wakeups import wake_folder
from pyarmonik.storage.queue.table import TableQueue
from tests.backends.conftest import Backend
from tests.backends.test_database import insert, make_task

pytestmark = pytest.mark.timeout(40)
FALLBACK = 60.0  # never reached when the notification arrives


async def settled(database: Database) -> None:
    """Consume what earlier writes (and a first wait) left pending."""
    await database.wait_for_changes(0.01)
    await asyncio.sleep(0.2)  # a NOTIFY of a setup write may still be on its way
    await database.wait_for_changes(0.01)


async def woken_by(waiter_of: ChangeWaiter, write: Awaitable[None]) -> None:
    """Start waiting (on a database, or an agent's share of a group's), then run `write` (a
    coroutine); return once the wait returned."""
    waiter = asyncio.create_task(waiter_of.wait_for_changes(FALLBACK))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    await write
    await waiter


def received(database: Database) -> int:
    """Wake-up datagrams an SQLite instance received (PostgreSQL: not applicable)."""
    return database.wakeups.received if isinstance(database, SqliteDatabase) else 0


async def test_a_write_of_another_instance_wakes_the_waiter(
    backend: Backend, database: Database
) -> None:
    other = await backend.open()
    await settled(database)
    before = received(database)
    await woken_by(database, insert(other, make_task("t1")))
    if backend.name == "sqlite":
        assert received(database) > before  # woken by the datagram, not by the timeout


async def test_a_task_made_ready_with_its_message_wakes_the_waiter(
    backend: Backend, database: Database
) -> None:
    # An idle agent waits on wait_for_changes: pushing a message in the transaction that makes
    # its task SUBMITTED must wake it (PostgreSQL: by the change log's NOTIFY).
    other = await backend.open()
    queue = TableQueue(other)
    await queue.start()
    await insert(other, make_task("t1", status=TaskStatus.PENDING))
    await settled(database)
    before = received(database)

    async def make_ready() -> None:
        async with other.write() as repository:
            changed = await repository.connection.execute(
                "UPDATE tasks SET status = ? WHERE task_id = ?", [int(TaskStatus.SUBMITTED), "t1"]
            )
            assert changed == 1
            await queue.push_within(repository, "p", [("t1", 1)])

    await woken_by(database, make_ready())
    if backend.name == "sqlite":
        assert received(database) > before
    assert [m.task_id for m in await TableQueue(database).pull("p", 1, 30)] == ["t1"]


async def test_queue_messages_made_visible_alone_wake_the_waiter(
    backend: Backend, database: Database
) -> None:
    # No task changes with them: PostgreSQL's change log stays the same, the queue notifies.
    other = await backend.open()
    queue = TableQueue(other)
    await queue.start()
    await settled(database)
    await woken_by(database, queue.push("p", [("t1", 1)]))
    [message] = await queue.pull("p", 1, 30)
    await settled(database)
    await woken_by(database, queue.release([message]))
    assert [m.task_id for m in await TableQueue(database).pull("p", 1, 30)] == ["t1"]


# -- SQLite: real processes ------------------------------------------------------------------

CHILD = """
import asyncio, sys
from pyarmonik.storage.database.sqlite import SqliteDatabase
from pyarmonik.storage.queue.table import TableQueue

async def main(path, action):
    database = SqliteDatabase(path)
    await database.start()
    if action == "push":
        queue = TableQueue(database)
        await queue.start()
        await queue.push("p", [("from-child", 1)])
    else:  # listen, then wait to be killed
        await database.wait_for_changes(0)
        print("listening", flush=True)
        await asyncio.sleep(3600)
    await database.close()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def child(path: Path, action: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, str(path), action, stdout=asyncio.subprocess.PIPE
    )


async def test_sqlite_a_commit_of_another_process_wakes_the_waiter(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    database = SqliteDatabase(path)
    await database.start()
    try:
        queue = TableQueue(database)
        await queue.start()
        await settled(database)
        assert database.wakeups.listening

        async def push_from_a_child() -> None:
            process = await child(path, "push")
            assert await process.wait() == 0

        await woken_by(database, push_from_a_child())
        assert database.wakeups.received >= 1
        assert [m.task_id for m in await queue.pull("p", 1, 30)] == ["from-child"]
    finally:
        await database.close()
    assert not wake_folder(path).exists()


async def test_sqlite_the_socket_of_a_killed_process_is_removed(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    database = SqliteDatabase(path)
    await database.start()
    process = await child(path, "listen")
    try:
        assert process.stdout is not None
        assert await process.stdout.readline() == b"listening\n"
        [socket_name] = os.listdir(wake_folder(path))
        assert socket_name.startswith(f"{process.pid}-")
        process.send_signal(signal.SIGKILL)
        await process.wait()
        assert (wake_folder(path) / socket_name).exists()  # nobody removed it
        await insert(database, make_task("t1"))  # the commit notifies the folder
        assert database.wakeups.removed == 1
        assert not (wake_folder(path) / socket_name).exists()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await database.close()


async def test_sqlite_wakeups_work_when_the_path_is_long(tmp_path: Path) -> None:
    folder = tmp_path / ("d" * 80) / ("e" * 80)
    path = folder / "pyarmonik.db"
    first, second = SqliteDatabase(path), SqliteDatabase(path)
    await first.start()
    await second.start()
    try:
        assert first.wakeups.folder.parent == Path("/tmp")
        await settled(first)
        await woken_by(first, insert(second, make_task("t1")))
        assert first.wakeups.received >= 1
    finally:
        await second.close()
        await first.close()
    assert not first.wakeups.folder.exists()


# -- several agents of one process (compute/group.py) ------------------------------------------


async def fanout_of_two(database: Database) -> tuple[ChangeFanout, Changes, Changes]:
    """A fan-out and two agents of it, past their first look (which returns at once)."""
    fanout = ChangeFanout(database)
    first, second = fanout.subscribe(), fanout.subscribe()
    for agent in (first, second):
        await asyncio.wait_for(agent.wait_for_changes(FALLBACK), 5)
    await settled(database)
    return fanout, first, second


async def test_a_group_fanout_wakes_every_waiting_agent(
    backend: Backend, database: Database
) -> None:
    other = await backend.open()
    fanout, first, second = await fanout_of_two(database)
    waiters = [asyncio.create_task(agent.wait_for_changes(FALLBACK)) for agent in (first, second)]
    await asyncio.sleep(0.05)
    assert not any(waiter.done() for waiter in waiters) and fanout.listening
    await insert(other, make_task("t1"))
    await asyncio.gather(*waiters)
    for _ in range(100):  # its waiter task ends the database wait within a few loop turns
        if not fanout.listening:
            break
        await asyncio.sleep(0.01)
    assert not fanout.listening, "nobody waits: the database is not waited on"
    await fanout.close()


async def test_a_change_that_came_while_an_agent_was_busy_wakes_its_next_wait(
    backend: Backend, database: Database
) -> None:
    other = await backend.open()
    fanout, waiting, busy = await fanout_of_two(database)
    await woken_by(waiting, insert(other, make_task("t1")))
    # `busy` was reading the queue meanwhile: its next wait returns at once, not after 60 s.
    await asyncio.wait_for(busy.wait_for_changes(FALLBACK), 5)
    await fanout.close()
