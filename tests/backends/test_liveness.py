"""Agents' heartbeats and the hand-back of a silent agent's tasks (scheduling/liveness.py) on
SQLite and PostgreSQL with the table queue, and SQLite connections opened under a held lock."""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
import time
from pathlib import Path
from typing import Any

from pyarmonik.domain.options import TaskOptions
from pyarmonik.domain.records import Partition, Task
from pyarmonik.domain.statuses import TaskStatus
from pyarmonik.scheduling.backends import Backends, now
from pyarmonik.scheduling.liveness import SILENT_AFTER, hand_back_lost, watch_agents
from pyarmonik.scheduling.processing import TaskProcessing, Verdict
from pyarmonik.scheduling.results import ResultService
from pyarmonik.scheduling.sessions import SessionService
from pyarmonik.scheduling.tasks import TaskCreation, TaskService
from pyarmonik.storage.database import Database
from pyarmonik.storage.database.sqlite import SqliteDatabase, _connect
from pyarmonik.storage.objects.files import FileStorage
from pyarmonik.storage.queue.table import TableQueue

DEAD = "127.0.0.1:1"  # agent ids are the address of their liveness endpoint
LIVE = "127.0.0.1:2"
LONG = 30.0  # a lease that does not run out during a test


async def _alive(owner: str, task_id: str) -> bool:
    """A probe that would keep every task with its owner: only the heartbeat can tell."""
    return True


async def _backends(database: Database, tmp_path: Path) -> Backends:
    backends = Backends(
        database,
        TableQueue(database),
        FileStorage(tmp_path / "objects"),
        partitions=[Partition("default")],
    )
    await backends.queue.start()
    await backends.objects.start()
    return backends


async def _submit(backends: Backends, count: int, max_retries: int = 2) -> list[str]:
    session = await SessionService(backends).create(
        TaskOptions(max_duration=60, max_retries=max_retries, priority=1), []
    )
    results = ResultService(backends, 1024)
    (payload,) = await results.create_with_data(session.session_id, [("in", b"x", False)])
    outputs = await results.create_metadata(
        session.session_id, [(f"out-{i}", False) for i in range(count)]
    )
    tasks = await TaskService(backends).submit(
        session.session_id,
        None,
        [TaskCreation(payload.result_id, [output.result_id]) for output in outputs],
    )
    return [task.task_id for task in tasks]


async def _age_beats(database: Database, owner: str) -> None:
    """As if `owner` had been silent for longer than SILENT_AFTER."""
    async with database.write() as repository:
        await repository.connection.execute(
            "UPDATE agents SET heartbeat_at = heartbeat_at - ? WHERE owner_id = ?",
            [SILENT_AFTER + 5, owner],
        )


async def _acquired_by_live_agent(
    backends: Backends, queue: TableQueue, count: int
) -> dict[str, Verdict]:
    """Another agent pulls `count` messages and tries to acquire their tasks: the verdicts."""
    live = TaskProcessing(backends, LIVE, "host-b")
    return {
        m.task_id: (await live.acquire(m.task_id, _alive, now(), tried_take=True)).verdict
        for m in await queue.pull("default", count, LONG)
    }


async def test_beats_and_silence(database: Database) -> None:
    async with database.write() as repository:
        await repository.beat(DEAD, "host-a")
    async with database.read() as repository:
        # Silent for -10 s: beaten before now + 10 s, on the database's clock.
        assert await repository.silent_owners(-10) == []  # holds no task: nobody cares
        assert not await repository.agent_lost(DEAD)
    async with database.write() as repository:
        assert await repository.mark_lost([DEAD], SILENT_AFTER) == []  # not silent
        assert await repository.mark_lost([DEAD], -10) == [DEAD]
        assert await repository.mark_lost([DEAD], -10) == []  # marked once
    async with database.read() as repository:
        assert await repository.agent_lost(DEAD)
    async with database.write() as repository:
        await repository.beat(DEAD, "host-a")  # it was alive after all
    async with database.read() as repository:
        assert not await repository.agent_lost(DEAD)
    async with database.write() as repository:
        assert await repository.forget_agents(SILENT_AFTER) == 0
        assert await repository.forget_agents(-10) == 1
        assert await repository.mark_lost([DEAD], -10) == []  # no row any more


async def test_a_silent_agents_tasks_are_handed_back_and_recovered(
    database: Database, tmp_path: Path
) -> None:
    """An agent holds a running task and one fetched ahead, with their messages leased for
    30 s, then stops beating: its messages are visible again at the next sweep, and the
    agent that pulls them retries the running task and takes the other over, without
    asking the lost owner (the probe here would say it holds them)."""
    backends = await _backends(database, tmp_path)
    running_id, ahead_id = await _submit(backends, 2)
    queue = backends.queue
    assert isinstance(queue, TableQueue)
    dead = TaskProcessing(backends, DEAD, "host-a")
    async with database.write() as repository:
        messages = await queue.pull_within(repository, "default", 2, LONG)
        taken = await dead.take(repository, [m.task_id for m in messages], now())
    assert {a.task.task_id for a in taken if a.task} == {running_id, ahead_id}
    running = next(a.task for a in taken if a.task and a.task.task_id == running_id)
    assert await dead.start(running, now()) is not None

    assert await hand_back_lost(backends) == {}  # it beat when it took them
    assert await queue.pull("default", 2, LONG) == []
    async with database.read() as repository:
        assert await repository.silent_owners(-10) == [DEAD]
    await _age_beats(database, DEAD)
    assert await hand_back_lost(backends) == {DEAD: 2}
    assert await hand_back_lost(backends) == {}  # handed back once

    verdicts = await _acquired_by_live_agent(backends, queue, 2)
    assert verdicts == {running_id: Verdict.DROP, ahead_id: Verdict.ACQUIRED}
    async with database.read() as repository:
        retried = await repository.get(Task, running_id)
        taken_over = await repository.get(Task, ahead_id)
        attempts = await repository.find(Task, {"initial_task_id": running_id})
    assert retried is not None and retried.status == TaskStatus.RETRIED
    assert taken_over is not None and taken_over.owner_pod_id == LIVE
    (attempt,) = [t for t in attempts if t.task_id != running_id]
    assert attempt.status == TaskStatus.SUBMITTED
    assert [m.task_id for m in await queue.pull("default", 5, LONG)] == [attempt.task_id]


async def test_last_attempts_are_not_started_ahead(database: Database, tmp_path: Path) -> None:
    """A window of tasks taken and started with their pull: a task's last allowed attempt
    stays DISPATCHED, so that a death of its agent before it runs costs it nothing (it is
    taken over), where a started one would end in error without having run."""
    backends = await _backends(database, tmp_path)
    first, last = await _submit(backends, 2, max_retries=1)
    async with database.write() as repository:  # as if `last` were a retry already
        await repository.connection.execute(
            "UPDATE tasks SET retry_of_ids = ? WHERE task_id = ?", ['["earlier"]', last]
        )
    queue = backends.queue
    assert isinstance(queue, TableQueue)
    dead = TaskProcessing(backends, DEAD, "host-a")
    async with database.write() as repository:
        messages = await queue.pull_within(repository, "default", 2, LONG)
        taken = await dead.take(repository, [m.task_id for m in messages], now(), start=True)
    statuses = {a.task.task_id: a.task.status for a in taken if a.task}
    assert statuses == {first: TaskStatus.PROCESSING, last: TaskStatus.DISPATCHED}

    await _age_beats(database, DEAD)
    assert await hand_back_lost(backends) == {DEAD: 2}
    verdicts = await _acquired_by_live_agent(backends, queue, 2)
    # The started one is retried (its retry runs it), the last attempt is taken over.
    assert verdicts == {first: Verdict.DROP, last: Verdict.ACQUIRED}
    async with database.read() as repository:
        taken_over = await repository.get(Task, last)
    assert taken_over is not None
    assert (taken_over.status, taken_over.owner_pod_id) == (TaskStatus.DISPATCHED, LIVE)


async def test_connecting_waits_for_a_lock_another_connection_holds(tmp_path: Path) -> None:
    """Connect-time pragmas that read the schema wait for the lock, as statements do (with
    64 agents starting, one used to fail with `database is locked`)."""
    path = tmp_path / "pyarmonik.db"
    first = SqliteDatabase(path)
    await first.start()
    await first.close()
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    # The lock a process holds while it recovers the WAL or closes the file last: readers
    # too are kept out.
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("DELETE FROM agents")
    released_at = 0.0

    async def release() -> None:
        nonlocal released_at
        await asyncio.sleep(0.3)
        holder.execute("COMMIT")
        holder.close()
        released_at = time.monotonic()

    releasing = asyncio.create_task(release())
    try:
        connection = await asyncio.wait_for(_connect(path), 10)
    finally:
        await releasing
    try:
        assert released_at and time.monotonic() >= released_at, "it waited for the lock"
        assert connection.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
    finally:
        connection.close()
    database = SqliteDatabase(path)  # and a whole start, the lock free again
    await database.start()
    await database.close()


def _start_and_close(path: Path, barrier: Any, outcomes: Any) -> None:
    async def main() -> str:
        barrier.wait(30)
        database = SqliteDatabase(path)
        try:
            await database.start()
            await database.close()
        except Exception as error:
            return repr(error)
        return "ok"

    outcomes.put(asyncio.run(main()))


def test_many_processes_open_one_new_file_at_once(tmp_path: Path) -> None:
    """As `pyarmonik local --agents 64` starts: none fails with `database is locked` (before,
    about one start in ten did, on a PRAGMA of the connect)."""
    context = multiprocessing.get_context("fork")  # cheap: the modules are loaded already
    failures: list[str] = []
    for attempt in range(3):
        path = tmp_path / f"db-{attempt}.sqlite"
        barrier, outcomes = context.Barrier(32), context.Queue()
        processes = [
            context.Process(target=_start_and_close, args=(path, barrier, outcomes))
            for _ in range(32)
        ]
        for process in processes:
            process.start()
        failures += [outcome for _ in processes if (outcome := outcomes.get(timeout=60)) != "ok"]
        for process in processes:
            process.join(30)
    assert failures == []


async def test_a_control_plane_judges_silence_after_the_database_answered_a_while(
    database: Database, tmp_path: Path
) -> None:
    """After its start (or an outage of the database), a control plane gives the agents
    SILENT_AFTER seconds to beat before it judges them: nobody could beat meanwhile."""
    backends = await _backends(database, tmp_path)
    (task_id,) = await _submit(backends, 1)
    queue = backends.queue
    assert isinstance(queue, TableQueue)
    async with database.write() as repository:
        await queue.pull_within(repository, "default", 1, LONG)
        await TaskProcessing(backends, DEAD, "host-a").take(repository, [task_id], now())
    await _age_beats(database, DEAD)  # silent already
    watching = asyncio.create_task(watch_agents(backends))
    try:
        started = time.monotonic()
        while not await queue.visible("default"):
            assert time.monotonic() - started < 15, "never handed back"
            await asyncio.sleep(0.1)
        assert time.monotonic() - started >= SILENT_AFTER
    finally:
        watching.cancel()
    async with database.read() as repository:
        assert await repository.agent_lost(DEAD)
