"""Contract of the database port (Repository over a Database), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pyarmonik.domain.errors import Unavailable
from pyarmonik.domain.filters import (
    MATCH_ALL,
    Condition,
    Filter,
    Kind,
    ListQuery,
    Op,
    Sort,
    matches,
)
from pyarmonik.domain.options import TaskOptions
from pyarmonik.domain.records import Application, Partition, Result, Session, Task
from pyarmonik.domain.statuses import ResultStatus, SessionStatus, TaskStatus
from pyarmonik.storage.database import Database
from pyarmonik.storage.database.postgres import PostgresDatabase, numbered, redact
from pyarmonik.storage.database.sql import CHUNK
from pyarmonik.storage.database.sqlite import SqliteDatabase
from tests.backends.conftest import Backend, postgres_schema

NOW = 1_700_000_000.125

OPTIONS = TaskOptions(
    max_duration=12.5,
    max_retries=3,
    priority=7,
    partition_id="part-a",
    application_name="app",
    application_version="1.2",
    application_namespace="ns",
    application_service="svc",
    engine_type="python",
    options={"key": "value", "quote'\"": "ü €", "empty": ""},
)


def make_session(session_id: str = "s1") -> Session:
    return Session(
        session_id=session_id,
        status=SessionStatus.PAUSED,
        client_submission=False,
        worker_submission=True,
        partition_ids=["part-a", "part-b"],
        options=OPTIONS,
        created_at=NOW,
        cancelled_at=None,
        closed_at=NOW + 1,
        purged_at=None,
        deleted_at=None,
        duration=0.5,
    )


def make_task(task_id: str, session_id: str = "s1", **changes: Any) -> Task:
    values: dict[str, Any] = dict(
        task_id=task_id,
        session_id=session_id,
        payload_id=f"{task_id}-payload",
        options=OPTIONS,
        status=TaskStatus.SUBMITTED,
        initial_task_id=task_id,
        owner_pod_id="",
        pod_hostname="host",
        parent_task_ids=["p1", "p2"],
        data_dependencies=["d1"],
        expected_output_ids=["o1", "o2"],
        retry_of_ids=[],
        created_by="creator",
        status_message="msg",
        error="",
        created_at=NOW,
        submitted_at=NOW + 1,
        received_at=None,
        acquired_at=None,
        fetched_at=None,
        started_at=None,
        processed_at=None,
        ended_at=None,
        pod_ttl=None,
        creation_to_end_duration=None,
        processing_to_end_duration=None,
        received_to_end_duration=2.25,
    )
    values.update(changes)
    return Task(**values)


def make_result(result_id: str, session_id: str = "s1", **changes: Any) -> Result:
    values: dict[str, Any] = dict(
        result_id=result_id,
        session_id=session_id,
        name=f"name-{result_id}",
        status=ResultStatus.CREATED,
        owner_task_id="",
        created_by="creator",
        completed_by="",
        opaque_id=b"\x00\xff\x10binary",
        size=2**40,
        manual_deletion=True,
        created_at=NOW,
        completed_at=None,
    )
    values.update(changes)
    return Result(**values)


PARTITION = Partition(
    partition_id="part-a",
    parent_partition_ids=["root"],
    pod_reserved=2,
    pod_max=10,
    preemption_percentage=50,
    priority=3,
    pod_configuration={"image": "python:3.11", "cpu": "2"},
)


def cond(column: str, kind: Kind, op: Op, value: Any, key: str = "") -> Condition:
    return Condition(column=column, kind=kind, op=op, value=value, key=key)


def eq(column: str, value: Any, kind: Kind = Kind.STRING) -> Filter:
    return ((cond(column, kind, Op.EQ, value),),)


async def insert(database: Database, *records: Any) -> None:
    async with database.write() as repository:
        for record in records:
            await repository.insert([record])


# ---------------------------------------------------------------- round trips and updates


@pytest.mark.parametrize(
    "record",
    [make_session(), make_task("t1"), make_result("r1"), PARTITION],
    ids=["session", "task", "result", "partition"],
)
async def test_round_trip_of_every_field(database: Database, record: Any) -> None:
    async with database.write() as repository:
        await repository.insert([record])
    async with database.read() as repository:
        assert await repository.get(type(record), getattr(record, record.KEY)) == record
        assert await repository.get(type(record), "missing") is None
        assert await repository.find(type(record), {record.KEY: [getattr(record, record.KEY)]}) == [
            record
        ]


async def test_round_trip_of_defaults(database: Database) -> None:
    records: list[Any] = [
        Session("s0"),
        Task("t0", "s0", "p0", TaskOptions()),
        Result("r0", "s0"),
        Partition("p0"),
    ]
    async with database.write() as repository:
        for record in records:
            await repository.insert([record])
    async with database.read() as repository:
        for record in records:
            assert await repository.get(type(record), getattr(record, record.KEY)) == record


async def test_find_with_conditions_and_lock(database: Database) -> None:
    tasks = [
        make_task("t1", status=TaskStatus.SUBMITTED),
        make_task("t2", status=TaskStatus.DISPATCHED, owner_pod_id="agent"),
        make_task("t3", session_id="s2", status=TaskStatus.SUBMITTED),
    ]
    async with database.write() as repository:
        await repository.insert(tasks)
        locked = await repository.find(
            Task, {"session_id": "s1", "status": {TaskStatus.SUBMITTED}}, lock=True
        )
        assert [t.task_id for t in locked] == ["t1"]
    async with database.read() as repository:
        found = await repository.find(
            Task, {"status": [TaskStatus.SUBMITTED, TaskStatus.DISPATCHED]}
        )
        assert sorted(t.task_id for t in found) == ["t1", "t2", "t3"]
        assert await repository.find(Task, {"task_id": []}) == []
        assert await repository.find(Task, {"owner_pod_id": "agent", "task_id": "t2"}) == [tasks[1]]
        assert len(await repository.find(Task, {})) == 3
    await insert(database, make_result("r1"), make_result("r2", manual_deletion=False))
    async with database.read() as repository:
        # Booleans bind as booleans, alone or in a list (PostgreSQL wants a bool for BOOLEAN).
        found_results = await repository.find(Result, {"manual_deletion": [True, False]})
        assert sorted(r.result_id for r in found_results) == ["r1", "r2"]
        assert [r.result_id for r in await repository.find(Result, {"manual_deletion": False})] == [
            "r2"
        ]


async def test_update_returns_changed_keys_and_records(database: Database) -> None:
    await insert(database, make_task("t1"), make_task("t2"), make_result("r1"))
    async with database.write() as repository:
        keys = await repository.update(
            Task,
            {"task_id": ["t1", "t2"], "status": TaskStatus.SUBMITTED},
            {
                "status": TaskStatus.DISPATCHED,
                "owner_pod_id": "agent",
                "acquired_at": NOW + 5,
                "retry_of_ids": ["old"],
            },
        )
        assert sorted(keys) == ["t1", "t2"]
        changed = await repository.update_returning(
            Result,
            {"result_id": "r1"},
            {
                "status": ResultStatus.COMPLETED,
                "opaque_id": b"\x01\x02",
                "size": 0,
                "manual_deletion": False,
                "completed_at": None,
            },
        )
    expected_result = make_result(
        "r1", status=ResultStatus.COMPLETED, opaque_id=b"\x01\x02", size=0, manual_deletion=False
    )
    assert changed == [expected_result]
    async with database.read() as repository:
        expected = make_task(
            "t1",
            status=TaskStatus.DISPATCHED,
            owner_pod_id="agent",
            acquired_at=NOW + 5,
            retry_of_ids=["old"],
        )
        assert await repository.get(Task, "t1") == expected
        assert await repository.get(Result, "r1") == expected_result


async def test_update_of_json_and_boolean_columns(database: Database) -> None:
    await insert(database, make_session(), PARTITION)
    async with database.write() as repository:
        updated = await repository.update(
            Partition,
            {"partition_id": "part-a"},
            {"pod_configuration": {"x": "y"}, "parent_partition_ids": []},
        )
        assert updated == ["part-a"]
        sessions = await repository.update_returning(
            Session,
            {"session_id": "s1", "client_submission": False},
            {"client_submission": True, "opt_options": {"k": "v"}},
        )
    assert sessions[0].client_submission is True
    assert sessions[0].options.options == {"k": "v"}
    async with database.read() as repository:
        partition = await repository.get(Partition, "part-a")
    assert partition is not None
    assert partition.pod_configuration == {"x": "y"}
    assert partition.parent_partition_ids == []


async def test_conditional_update_that_does_not_match_changes_nothing(database: Database) -> None:
    task = make_task("t1", status=TaskStatus.SUBMITTED, owner_pod_id="")
    await insert(database, task)
    async with database.write() as repository:
        for where in (
            {"task_id": "t1", "status": TaskStatus.DISPATCHED, "owner_pod_id": ""},
            {"task_id": "t1", "status": TaskStatus.SUBMITTED, "owner_pod_id": "someone"},
            {"task_id": "t1", "status": [TaskStatus.COMPLETED, TaskStatus.ERROR]},
            {"task_id": "missing"},
        ):
            assert await repository.update(Task, where, {"status": TaskStatus.ERROR}) == []
            assert await repository.update_returning(Task, where, {"error": "x"}) == []
    async with database.read() as repository:
        assert await repository.get(Task, "t1") == task


async def test_one_of_two_concurrent_conditional_updates_wins(database: Database) -> None:
    await insert(database, make_task("t1", status=TaskStatus.SUBMITTED, owner_pod_id=""))

    async def acquire(agent: str) -> list[str]:
        async with database.write() as repository:
            keys = await repository.update(
                Task,
                {"task_id": "t1", "status": TaskStatus.SUBMITTED, "owner_pod_id": ""},
                {"status": TaskStatus.DISPATCHED, "owner_pod_id": agent},
            )
            # Hold the transaction open so that the other update really races this one.
            await asyncio.sleep(0.1)
            return keys

    first, second = await asyncio.gather(acquire("a"), acquire("b"))
    assert sorted([first, second]) == [[], ["t1"]]
    async with database.read() as repository:
        task = await repository.get(Task, "t1")
    assert task is not None
    assert task.owner_pod_id == ("a" if first else "b")


async def test_update_each(database: Database) -> None:
    await insert(database, make_result("r1"), make_result("r2"), make_result("r3"))
    async with database.write() as repository:
        assert await repository.update_each(Result, []) == []
        changed = await repository.update_each(
            Result,
            [
                ("r1", {"size": 1, "opaque_id": b"one", "manual_deletion": False}),
                ("r2", {"size": 2, "opaque_id": b"two", "manual_deletion": True}),
            ],
        )
    assert sorted(changed) == ["r1", "r2"]
    async with database.read() as repository:
        found = {r.result_id: r for r in await repository.find(Result, {})}
    assert (found["r1"].size, found["r1"].opaque_id, found["r1"].manual_deletion) == (
        1,
        b"one",
        False,
    )
    assert (found["r2"].size, found["r2"].opaque_id) == (2, b"two")
    assert found["r3"] == make_result("r3")


async def test_update_each_where_sets_common_and_own_values_on_the_matching_only(
    database: Database,
) -> None:
    """One statement: each record's own values (a column NULL for all of them included) and
    the common ones, only where the condition holds; the keys changed come back."""
    await insert(database, make_result("r1"), make_result("r2"), make_result("r3"))
    async with database.write() as repository:
        await repository.update(Result, {"result_id": "r2"}, {"status": ResultStatus.ABORTED})
        changed = await repository.update_each(
            Result,
            [
                (key, {"size": size, "completed_at": None, "completed_by": by})
                for key, size, by in (("r1", 10, "t1"), ("r2", 20, "t2"), ("r3", 30, "t3"))
            ],
            where={"status": ResultStatus.CREATED},
            values={"status": ResultStatus.COMPLETED, "created_at": 5.5},
        )
        assert (
            await repository.update_each(
                Result, [("r1", {"size": 99})], where={"status": ResultStatus.CREATED}
            )
            == []
        )
    assert sorted(changed) == ["r1", "r3"]
    async with database.read() as repository:
        found = {r.result_id: r for r in await repository.find(Result, {})}
    assert [(found[k].status, found[k].size, found[k].completed_by) for k in ("r1", "r3")] == [
        (ResultStatus.COMPLETED, 10, "t1"),
        (ResultStatus.COMPLETED, 30, "t3"),
    ]
    assert found["r1"].created_at == 5.5 and found["r1"].completed_at is None
    assert (found["r2"].status, found["r2"].size) == (ResultStatus.ABORTED, make_result("r2").size)


async def test_delete(database: Database) -> None:
    await insert(database, make_session("s1"), make_session("s2"), make_task("t1"), PARTITION)
    async with database.write() as repository:
        assert await repository.delete(Session, {"session_id": ["s1", "s2", "s3"]}) == 2
        assert await repository.delete(Task, {"task_id": "t1", "status": TaskStatus.ERROR}) == 0
        assert await repository.delete(Partition, {"partition_id": "part-a"}) == 1
    async with database.read() as repository:
        assert await repository.find(Session, {}) == []
        assert [t.task_id for t in await repository.find(Task, {})] == ["t1"]


async def test_rollback_on_exception(database: Database) -> None:
    await insert(database, make_task("t1"))
    with pytest.raises(RuntimeError, match="boom"):
        async with database.write() as repository:
            await repository.insert([make_task("t2"), make_task("t3")])
            await repository.update(Task, {"task_id": "t1"}, {"status": TaskStatus.ERROR})
            raise RuntimeError("boom")
    async with database.read() as repository:
        assert [t.task_id for t in await repository.find(Task, {})] == ["t1"]
        assert (await repository.get(Task, "t1")) == make_task("t1")
    # The database stays usable after a rollback.
    await insert(database, make_task("t4"))


async def test_concurrent_write_blocks_are_each_committed_or_undone(
    backend: Backend, database: Database
) -> None:
    """Blocks running at once (grouped in one transaction on SQLite): a failing one undoes
    only itself (the first as well as a later one), and each successful block returns once
    another connection sees its data."""
    other = await backend.open()

    async def write(task_id: str, fail: bool = False) -> bool:
        async with database.write() as repository:
            await repository.insert([make_task(task_id)])
            if fail:
                raise RuntimeError("boom")
        async with other.read() as repository:  # committed when the block returns
            return await repository.get(Task, task_id) is not None

    outcomes = await asyncio.gather(
        *(write(f"t{i}", fail=i in (0, 3)) for i in range(8)), return_exceptions=True
    )
    assert isinstance(outcomes[0], RuntimeError) and isinstance(outcomes[3], RuntimeError)
    assert [o for i, o in enumerate(outcomes) if i not in (0, 3)] == [True] * 6
    async with other.read() as repository:
        stored = sorted(t.task_id for t in await repository.find(Task, {}))
    assert stored == [f"t{i}" for i in range(8) if i not in (0, 3)]


async def test_sqlite_groups_concurrent_write_blocks_in_one_commit(tmp_path: Path) -> None:
    database = SqliteDatabase(tmp_path / "grouped.db")
    await database.start()
    assert database._writer is not None
    statements: list[str] = []
    database._writer.set_trace_callback(statements.append)

    async def write(task_id: str) -> None:
        async with database.write() as repository:
            await repository.insert([make_task(task_id)])

    await asyncio.gather(*(write(f"t{i}") for i in range(5)))
    assert statements.count("COMMIT") == 1
    assert statements.count("BEGIN IMMEDIATE") == 1
    # Alone, a block commits by itself, without waiting for company.
    await write("alone")
    assert statements.count("COMMIT") == 2
    await database.close()


async def test_duplicate_key_fails_the_transaction(database: Database) -> None:
    await insert(database, make_result("r1"))
    with pytest.raises(Exception):  # noqa: B017 (each driver has its own IntegrityError)
        async with database.write() as repository:
            await repository.insert([make_result("r2")])
            await repository.insert([make_result("r1")])
    async with database.read() as repository:
        assert [r.result_id for r in await repository.find(Result, {})] == ["r1"]


# ---------------------------------------------------------------- listing


def listing_tasks() -> list[Task]:
    tasks = []
    for i in range(12):
        options = TaskOptions(
            priority=i % 3,
            application_name=f"app{i % 2}",
            options={"group": f"g{i % 4}", **({"odd": "yes"} if i % 2 else {})},
        )
        tasks.append(
            make_task(
                f"t{i:02d}",
                session_id="s1" if i < 8 else "s2",
                status=[TaskStatus.SUBMITTED, TaskStatus.COMPLETED, TaskStatus.ERROR][i % 3],
                options=options,
                created_at=None if i == 5 else NOW + i,
                parent_task_ids=[f"p{i % 2}"],
                status_message=f"Message {i}",
            )
        )
    return tasks


async def test_list_with_filters_sort_and_paging(database: Database) -> None:
    tasks = listing_tasks()
    async with database.write() as repository:
        await repository.insert(tasks)
    rows = {t.task_id: t.to_row() for t in tasks}
    filters: list[Filter] = [
        MATCH_ALL,
        eq("session_id", "s1"),
        ((cond("status", Kind.STATUS, Op.NE, TaskStatus.COMPLETED),),),
        ((cond("created_at", Kind.DATE, Op.GE, NOW + 6),), (eq("task_id", "t00")[0])),
        ((cond("opt_options", Kind.OPTION, Op.EQ, "g1", key="group"),),),
        ((cond("opt_options", Kind.OPTION, Op.NE, "yes", key="odd"),),),
        ((cond("parent_task_ids", Kind.ARRAY, Op.CONTAINS, "p1"),),),
        ((cond("parent_task_ids", Kind.ARRAY, Op.NOT_CONTAINS, "p1"),),),
        ((cond("status_message", Kind.STRING, Op.CONTAINS, "age 1"),),),
        ((cond("status_message", Kind.STRING, Op.STARTS_WITH, "message"),),),
        (
            (
                cond("opt_priority", Kind.NUMBER, Op.LT, 2),
                cond("session_id", Kind.STRING, Op.EQ, "s2"),
            ),
        ),
    ]
    async with database.read() as repository:
        for f in filters:
            expected = sorted(key for key, row in rows.items() if matches(f, row))
            found, total = await repository.list_page(Task, ListQuery(filter=f, page_size=100))
            assert [t.task_id for t in found] == expected, f
            assert total == len(expected)

        # Sorted by creation time, newest first (NULL last), two pages of 5 and a last one.
        query = ListQuery(sort=Sort("created_at", descending=True), page_size=5)
        pages = []
        for page in range(3):
            found, total = await repository.list_page(
                Task, ListQuery(sort=query.sort, page=page, page_size=5)
            )
            assert total == 12
            pages.append([t.task_id for t in found])
        assert [len(p) for p in pages] == [5, 5, 2]
        assert [task_id for page in pages for task_id in page] == [
            f"t{i:02d}" for i in (11, 10, 9, 8, 7, 6, 4, 3, 2, 1, 0, 5)
        ]

        # Ascending puts NULL first; ties follow the key in the sort's direction.
        found, _ = await repository.list_page(Task, ListQuery(sort=Sort("created_at"), page_size=2))
        assert [t.task_id for t in found] == ["t05", "t00"]
        found, _ = await repository.list_page(
            Task, ListQuery(sort=Sort("session_id", descending=True), page_size=3)
        )
        assert [t.task_id for t in found] == ["t11", "t10", "t09"]
        found, _ = await repository.list_page(
            Task, ListQuery(sort=Sort("opt_options", key="group"), page_size=4)
        )
        assert [t.task_id for t in found] == ["t00", "t04", "t08", "t01"]

        # page_size 0 counts only; a scope is ANDed with the filter; past the end is empty.
        assert await repository.list_page(Task, ListQuery(page_size=0)) == ([], 12)
        found, total = await repository.list_page(
            Task,
            ListQuery(filter=((cond("status", Kind.STATUS, Op.EQ, TaskStatus.SUBMITTED),),)),
            scope=eq("session_id", "s2"),
        )
        assert ([t.task_id for t in found], total) == (["t09"], 1)
        assert await repository.list_page(Task, ListQuery(page=5, page_size=10)) == ([], 12)


async def test_list_other_records(database: Database) -> None:
    async with database.write() as repository:
        await repository.insert([make_session("s1"), make_session("s2")])
        await repository.insert([make_result("r1"), make_result("r2", manual_deletion=False)])
        await repository.insert([PARTITION, Partition("part-b", priority=1)])
    async with database.read() as repository:
        sessions, total = await repository.list_page(
            Session, ListQuery(sort=Sort("session_id", descending=True))
        )
        assert ([s.session_id for s in sessions], total) == (["s2", "s1"], 2)
        results, total = await repository.list_page(
            Result, ListQuery(filter=eq("manual_deletion", True, Kind.BOOLEAN))
        )
        assert ([r.result_id for r in results], total) == (["r1"], 1)
        partitions, total = await repository.list_page(
            Partition, ListQuery(filter=((cond("priority", Kind.NUMBER, Op.GT, 2),),))
        )
        assert (partitions, total) == ([PARTITION], 1)


async def test_count_tasks_by_status(database: Database) -> None:
    async with database.write() as repository:
        await repository.insert(listing_tasks())
    async with database.read() as repository:
        assert await repository.count_tasks_by_status(MATCH_ALL) == {2: 4, 4: 4, 5: 4}
        assert await repository.count_tasks_by_status(eq("session_id", "s2")) == {
            TaskStatus.ERROR: 2,
            TaskStatus.SUBMITTED: 1,
            TaskStatus.COMPLETED: 1,
        }
        assert await repository.count_tasks_by_status(eq("session_id", "none")) == {}


async def test_list_applications(database: Database) -> None:
    tags = [("b", "1"), ("a", "2"), ("a", "1"), ("b", "1"), ("c", "0"), ("a", "1")]
    tasks = [
        make_task(
            f"t{i}",
            options=TaskOptions(
                application_name=name,
                application_version=version,
                application_namespace="ns",
                application_service="svc",
            ),
        )
        for i, (name, version) in enumerate(tags)
    ]
    async with database.write() as repository:
        await repository.insert(tasks)
    app = Application
    async with database.read() as repository:
        found, total = await repository.list_applications(ListQuery(), [])
        assert total == 4
        assert found == [
            app("a", "1", "ns", "svc"),
            app("a", "2", "ns", "svc"),
            app("b", "1", "ns", "svc"),
            app("c", "0", "ns", "svc"),
        ]
        found, total = await repository.list_applications(
            ListQuery(page=1, page_size=2),
            [Sort("opt_application_version", descending=True), Sort("opt_application_name")],
        )
        assert total == 4
        # By version descending: (a,2), then version 1: (b,1) and (a,1) tie-broken by name
        # descending, then (c,0); page 1 of size 2.
        assert found == [app("a", "1", "ns", "svc"), app("c", "0", "ns", "svc")]
        found, total = await repository.list_applications(
            ListQuery(filter=eq("opt_application_name", "a"), page_size=0), []
        )
        assert (found, total) == ([], 2)


# ---------------------------------------------------------------- ownership and dependencies


async def test_take_tasks_only_takes_submitted_unowned_tasks_of_running_sessions(
    database: Database,
) -> None:
    running = make_session("run")
    running.status = SessionStatus.RUNNING
    await insert(database, running, make_session("paused"))
    await insert(
        database,
        make_task("free", "run"),
        make_task("owned", "run", owner_pod_id="other:1"),
        make_task("pending", "run", status=TaskStatus.PENDING),
        make_task("of-paused", "paused"),
    )
    ids = ["free", "owned", "pending", "of-paused", "unknown"]
    values = {"status": TaskStatus.DISPATCHED, "owner_pod_id": "me:1", "acquired_at": NOW}
    async with database.write() as repository:
        taken = await repository.take_tasks(ids, values)
    assert [(t.task_id, t.status, t.owner_pod_id) for t in taken] == [
        ("free", TaskStatus.DISPATCHED, "me:1")
    ]
    async with database.write() as repository:  # taken: not free any more
        assert await repository.take_tasks(ids, values) == []


async def test_take_tasks_retryable_leaves_last_attempts(database: Database) -> None:
    running = make_session("run")
    running.status = SessionStatus.RUNNING
    await insert(database, running)
    one_retry = replace(OPTIONS, max_retries=1)
    await insert(
        database,
        make_task("first", "run", options=one_retry),
        make_task("last", "run", options=one_retry, retry_of_ids=["first-attempt"]),
    )
    values = {"status": TaskStatus.PROCESSING, "owner_pod_id": "me:1"}
    async with database.write() as repository:
        taken = await repository.take_tasks(["first", "last"], values, retryable=True)
    assert [t.task_id for t in taken] == ["first"]
    async with database.read() as repository:
        last = await repository.get(Task, "last")
    assert last is not None and (last.status, last.owner_pod_id) == (TaskStatus.SUBMITTED, "")


async def test_set_owners_first_claimant_wins(database: Database) -> None:
    await insert(
        database, make_result("r1"), make_result("r2"), make_result("r3", owner_task_id="x")
    )
    async with database.write() as repository:
        await repository.set_owners([], "")
        await repository.set_owners([("r1", "t1"), ("r1", "t2"), ("r2", "t3"), ("r3", "t4")], "")
    async with database.read() as repository:
        owners = {r.result_id: r.owner_task_id for r in await repository.find(Result, {})}
    assert owners == {"r1": "t1", "r2": "t3", "r3": "x"}
    async with database.write() as repository:
        await repository.set_owners([("r3", "t5")], "x")
    async with database.read() as repository:
        result = await repository.get(Result, "r3")
    assert result is not None
    assert result.owner_task_id == "t5"


async def test_dependencies(database: Database) -> None:
    await insert(database, make_task("t1"), make_task("t2"), make_task("t3"))
    async with database.write() as repository:
        await repository.add_dependencies([])
        await repository.add_dependencies([("t1", "r1"), ("t1", "r2"), ("t2", "r1")])
        await repository.add_dependencies([("t1", "r1")])  # already known: ignored
    async with database.read() as repository:
        assert await repository.waiting_on(["r1"]) == ["t1", "t2"]
        assert await repository.waiting_on(["r2", "r3"]) == ["t1"]
        assert await repository.waiting_on([]) == []
        assert await repository.without_dependencies(["t1", "t2", "t3", "missing"]) == ["t3"]
    async with database.write() as repository:
        assert await repository.remove_dependencies(["r1"]) == ["t1", "t2"]
        assert await repository.remove_dependencies(["r1"]) == []
    async with database.read() as repository:
        assert sorted(await repository.without_dependencies(["t1", "t2", "t3"])) == ["t2", "t3"]
    async with database.write() as repository:
        await repository.add_dependencies([("t3", "r9")])
        await repository.delete_dependencies_of(["t1", "t3"])
    async with database.read() as repository:
        assert sorted(await repository.without_dependencies(["t1", "t2", "t3"])) == [
            "t1",
            "t2",
            "t3",
        ]
        assert await repository.waiting_on(["r2", "r9"]) == []


async def test_parked_messages(database: Database) -> None:
    async with database.write() as repository:
        await repository.park_unqueued([("t2", "part-b", 5), ("t3", "part-a", 1)], NOW + 1)
        await repository.park_unqueued([("t1", "part-a", 9)], NOW)
        await repository.park_unqueued([("t1", "part-a", 9)], NOW + 2)  # parked already
    async with database.read() as repository:
        assert (await repository.unqueued(10))[0] == ("t1", "part-a", 9)  # the oldest first
        assert sorted(await repository.unqueued(10)) == [
            ("t1", "part-a", 9),
            ("t2", "part-b", 5),
            ("t3", "part-a", 1),
        ]
        assert await repository.unqueued(1) == [("t1", "part-a", 9)]
        # Only those parked before a moment (younger ones may be on their way to the broker).
        assert await repository.unqueued(10, parked_before=NOW + 1) == [("t1", "part-a", 9)]
    async with database.write() as repository:
        await repository.unpark(["t1", "t3", "missing"])
    async with database.read() as repository:
        assert await repository.unqueued(10) == [("t2", "part-b", 5)]


async def test_large_in_lists(database: Database) -> None:
    count = CHUNK + 17
    ids = [f"r{i:05d}" for i in range(count)]
    async with database.write() as repository:
        await repository.insert([make_result(i) for i in ids])
        await repository.insert([make_task("t1")])
        await repository.add_dependencies([("t1", i) for i in ids])
    async with database.write() as repository:
        found = await repository.find(Result, {"result_id": ids, "status": ResultStatus.CREATED})
        assert len(found) == count
        keys = await repository.update(
            Result, {"result_id": ids}, {"status": ResultStatus.COMPLETED}
        )
        assert sorted(keys) == ids
        changed = await repository.update_returning(Result, {"result_id": ids}, {"size": 1})
        assert len(changed) == count
        assert await repository.waiting_on(ids) == ["t1"]
        assert await repository.without_dependencies(["t1"]) == []
        assert await repository.remove_dependencies(ids) == ["t1"]
        assert await repository.without_dependencies(["t1", *ids]) == ["t1"]
        assert await repository.delete(Result, {"result_id": ids[1:]}) == count - 1
    async with database.read() as repository:
        assert [r.result_id for r in await repository.find(Result, {})] == ids[:1]


# ---------------------------------------------------------------- change log


def summary(change: dict[str, Any]) -> tuple[Any, ...]:
    return (
        change["kind"],
        change["session_id"],
        change["entity_id"],
        change["status"],
        change["previous_owner"],
        change["current_owner"],
    )


async def test_change_log(database: Database) -> None:
    async with database.read() as repository:
        start = await repository.last_change()
    before = time.time()
    async with database.write() as repository:
        await repository.insert([make_task("t1", status=TaskStatus.CREATING)])
        await repository.insert([make_result("r1", owner_task_id="t1")])
    async with database.write() as repository:
        await repository.update(Task, {"task_id": "t1"}, {"status": TaskStatus.SUBMITTED})
        # No change of status or owner: nothing logged.
        await repository.update(Task, {"task_id": "t1"}, {"status": TaskStatus.SUBMITTED})
        await repository.update(Task, {"task_id": "t1"}, {"status_message": "x", "error": "y"})
        await repository.update(Result, {"result_id": "r1"}, {"owner_task_id": "t1", "size": 3})
        await repository.set_owners([("r1", "t2")], "t1")
        await repository.update(Result, {"result_id": "r1"}, {"status": ResultStatus.COMPLETED})
    async with database.write() as repository:
        # Status and owner at once: the owner entry comes first (as SQLite's triggers fire).
        await repository.update(
            Result, {"result_id": "r1"}, {"status": ResultStatus.ABORTED, "owner_task_id": "t3"}
        )
        await repository.update(Task, {"task_id": "t1"}, {"status": TaskStatus.CANCELLED})
    async with database.read() as repository:
        changes = await repository.changes_after(start)
        last = await repository.last_change()
    assert [summary(c) for c in changes] == [
        (1, "s1", "t1", TaskStatus.CREATING, "", ""),
        (3, "s1", "r1", ResultStatus.CREATED, "", "t1"),
        (2, "s1", "t1", TaskStatus.SUBMITTED, "", ""),
        (5, "s1", "r1", ResultStatus.CREATED, "t1", "t2"),
        (4, "s1", "r1", ResultStatus.COMPLETED, "", ""),
        (5, "s1", "r1", ResultStatus.ABORTED, "t2", "t3"),
        (4, "s1", "r1", ResultStatus.ABORTED, "", ""),
        (2, "s1", "t1", TaskStatus.CANCELLED, "", ""),
    ]
    seqs = [c["seq"] for c in changes]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) and seqs[0] > start
    assert last == seqs[-1]
    assert all(before - 1 <= c["at"] <= time.time() + 1 for c in changes)

    async with database.read() as repository:
        assert [c["seq"] for c in await repository.changes_after(seqs[2], limit=2)] == seqs[3:5]
        assert await repository.changes_after(last) == []
    async with database.write() as repository:
        assert await repository.prune_changes(before - 3600) == 0
        assert await repository.prune_changes(time.time() + 1) == len(changes)
    async with database.read() as repository:
        assert await repository.changes_after(start) == []


async def test_rolled_back_changes_are_not_logged(database: Database) -> None:
    async with database.read() as repository:
        start = await repository.last_change()
    with pytest.raises(RuntimeError):
        async with database.write() as repository:
            await repository.insert([make_task("t1")])
            raise RuntimeError
    async with database.read() as repository:
        assert await repository.changes_after(start) == []


async def test_tailing_the_change_log_misses_no_commit(
    backend: Backend, database: Database
) -> None:
    """A tailer that saw seq N never finds a later commit below N, whatever the commit order."""
    async with database.read() as repository:
        start = await repository.last_change()
    inserted = asyncio.Event()

    async def slow_writer() -> None:
        async with database.write() as repository:
            await repository.insert([make_task("slow")])
            inserted.set()
            await asyncio.sleep(0.3)

    slow = asyncio.create_task(slow_writer())
    await inserted.wait()
    await insert(database, make_task("fast"))  # commits first where writers may overlap
    async with database.read() as repository:
        first = await repository.changes_after(start)
    if backend.name == "postgres":  # writers overlap there: the later commit is seen first
        assert [c["entity_id"] for c in first] == ["fast"]
    await slow
    position = first[-1]["seq"]
    async with database.read() as repository:
        second = await repository.changes_after(position)
    seen = [c["entity_id"] for c in first + second]
    assert sorted(seen) == ["fast", "slow"]


async def test_wait_for_changes(backend: Backend, database: Database) -> None:
    # Nothing happens: returns after the timeout.
    await database.wait_for_changes(0.01)
    started = time.monotonic()
    await database.wait_for_changes(0.2)
    assert time.monotonic() - started >= 0.15

    # A write of this instance wakes its waiters at once.
    waiter = asyncio.create_task(database.wait_for_changes(10))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    await insert(database, make_task("t1"))
    await asyncio.wait_for(waiter, 2)
    await asyncio.sleep(0.2)  # let a NOTIFY of that write arrive, then forget it
    await database.wait_for_changes(0.01)

    # A write of another instance on the same store: PostgreSQL's NOTIFY wakes us; SQLite
    # sees other connections' writes only when the timeout expires.
    other = await backend.open()
    timeout = 10.0 if backend.name == "postgres" else 0.5
    waiter = asyncio.create_task(database.wait_for_changes(timeout))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    started = time.monotonic()
    await insert(other, make_task("t2"))
    await asyncio.wait_for(waiter, timeout + 2)
    assert time.monotonic() - started < 2
    async with database.read() as repository:
        assert [c["entity_id"] for c in await repository.changes_after(0)] == ["t1", "t2"]


async def test_check_health(database: Database) -> None:
    await database.check_health()


# ---------------------------------------------------------------- the PostgreSQL adapter


def test_postgres_placeholders() -> None:
    assert numbered("SELECT 1") == "SELECT 1"
    assert numbered("a = ? AND b IN (?,?) LIMIT ?") == "a = $1 AND b IN ($2,$3) LIMIT $4"
    # Quoted text keeps its question marks.
    assert numbered("x = '?''?' AND \"c?\" = ? AND y LIKE ? ESCAPE '\\'") == (
        "x = '?''?' AND \"c?\" = $1 AND y LIKE $2 ESCAPE '\\'"
    )
    assert redact("postgresql://u:secret@db:5432/x?schema=s") == "postgresql://u@db:5432/x?schema=s"
    assert redact("postgresql://u@db/x") == "postgresql://u@db/x"
    assert redact("postgresql://db/x?password=secret&schema=s") == "postgresql://db/x?schema=s"


async def test_postgres_unreachable_is_unavailable() -> None:
    database = PostgresDatabase("postgresql://user:secret@127.0.0.1:1/x", connect_timeout=2)
    with pytest.raises(Unavailable, match=r"postgresql://user@127\.0\.0\.1:1/x") as raised:
        await database.start()
    assert "secret" not in str(raised.value)


async def test_postgres_concurrent_starts_and_restart() -> None:
    async with postgres_schema() as url:
        databases = [PostgresDatabase(url, max_size=2) for _ in range(4)]
        await asyncio.gather(*(d.start() for d in databases))
        try:
            await insert(databases[0], make_task("t1"))
            async with databases[3].read() as repository:
                assert [t.task_id for t in await repository.find(Task, {})] == ["t1"]
                versions = await repository.connection.fetch("SELECT version FROM schema_version")
                assert [row["version"] for row in versions] == [1, 2, 3, 4, 5]
        finally:
            for database in databases:
                await database.close()
        again = PostgresDatabase(url)  # a restart finds the schema up to date
        await again.start()
        try:
            async with again.read() as repository:
                assert await repository.get(Task, "t1") == make_task("t1")
        finally:
            await again.close()


async def test_postgres_schema_of_version_1_is_upgraded() -> None:
    """A database made before the `unqueued` table (version 1) gets it at the next start."""
    async with postgres_schema() as url:
        database = PostgresDatabase(url)
        await database.start()
        async with database.write() as repository:
            await repository.connection.execute("DROP TABLE unqueued")
            await repository.connection.execute("DELETE FROM schema_version WHERE version >= 2")
        await database.close()
        again = PostgresDatabase(url)
        await again.start()
        try:
            async with again.write() as repository:
                await repository.park_unqueued([("t1", "default", 1)], NOW)
                assert await repository.unqueued(5) == [("t1", "default", 1)]
        finally:
            await again.close()


async def test_postgres_listener_reconnects() -> None:
    async with postgres_schema() as url:
        store = Backend("postgres", lambda: PostgresDatabase(url, max_size=2))
        try:
            await check_listener_reconnects(store)
        finally:
            await store.close()


async def check_listener_reconnects(store: Backend) -> None:
    database, other = await store.open(), await store.open()
    assert isinstance(database, PostgresDatabase)
    # Only a process that waits for changes listens (a broker's agents never do).
    await insert(other, make_task("t0"))
    assert database.listening is None
    await asyncio.wait_for(database.wait_for_changes(10), 5)  # woken when listening starts
    assert database.listening is not None
    pid = database.listening.get_server_pid()
    async with other.read() as repository:
        await repository.connection.fetch("SELECT pg_terminate_backend(?)", [pid])
    # Losing the connection wakes the waiters (notifications may have been missed) ...
    await asyncio.wait_for(database.wait_for_changes(10), 5)
    for _ in range(50):
        if database.listening is not None:
            break
        await asyncio.sleep(0.1)
    assert database.listening is not None
    assert database.listening.get_server_pid() != pid
    await database.wait_for_changes(0.01)
    # ... and the new connection hears the other instance's writes again.
    waiter = asyncio.create_task(database.wait_for_changes(10))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    await insert(other, make_task("t1"))
    await asyncio.wait_for(waiter, 2)


async def test_insert_with_replace_is_an_upsert(database: Database) -> None:
    """Control planes starting together register the same partitions at the same moment."""

    async def register(priority: int) -> None:
        async with database.write() as repository:
            await repository.insert(
                [Partition("shared", priority=priority), Partition("other")], replace=True
            )

    await asyncio.gather(*(register(priority) for priority in range(1, 5)))
    async with database.read() as repository:
        shared = await repository.get(Partition, "shared")
        assert shared is not None and shared.priority in range(1, 5)
        assert len(await repository.find(Partition, {"partition_id": ["shared", "other"]})) == 2


async def test_update_each_of_more_records_than_one_statement_holds(database: Database) -> None:
    keys = [f"r{i:04}" for i in range(CHUNK // 2 + 7)]  # two statements of (key, size)
    await insert(database, *(make_result(key) for key in keys))
    async with database.write() as repository:
        changed = await repository.update_each(
            Result, [(key, {"size": i}) for i, key in enumerate(keys)]
        )
    assert sorted(changed) == keys
    async with database.read() as repository:
        found = {r.result_id: r.size for r in await repository.find(Result, {})}
    assert found == {key: i for i, key in enumerate(keys)}
