"""The table queue (storage/queue/table.py) on both databases: the queue port's basic contract."""

from __future__ import annotations

import asyncio

from pyarmonik.storage.database import Database
from pyarmonik.storage.queue import QueueMessage
from pyarmonik.storage.queue.table import TableQueue
from tests.backends.conftest import Backend

LONG = 30.0  # a lease that does not expire during a test


async def make_queue(database: Database) -> TableQueue:
    queue = TableQueue(database)
    await queue.start()
    return queue


def ids(messages: list[QueueMessage]) -> list[str]:
    return [m.task_id for m in messages]


async def test_priority_then_fifo(database: Database) -> None:
    queue = await make_queue(database)
    await queue.push("p", [("a", 1), ("b", 5), ("c", 5), ("d", 1), ("e", 9)])
    await queue.push("p", [("f", 5)])
    order = [ids(await queue.pull("p", 1, LONG)) for _ in range(7)]
    assert order == [["e"], ["b"], ["c"], ["f"], ["a"], ["d"], []]


async def test_a_batch_takes_the_highest_priorities(database: Database) -> None:
    queue = await make_queue(database)
    await queue.push("p", [("low", 1), ("high1", 7), ("mid", 3), ("high2", 7)])
    assert sorted(ids(await queue.pull("p", 2, LONG))) == ["high1", "high2"]
    assert sorted(ids(await queue.pull("p", 5, LONG))) == ["low", "mid"]


async def test_partitions_are_separate(database: Database) -> None:
    queue = await make_queue(database)
    await queue.push("p1", [("a", 1)])
    await queue.push("p2", [("b", 1), ("c", 1)])
    await queue.push("p3", [])
    assert (await queue.depth("p1"), await queue.depth("p2"), await queue.depth("p3")) == (1, 2, 0)
    pulled = await queue.pull("p2", 10, LONG)
    assert ids(pulled) == ["b", "c"]
    assert {m.partition_id for m in pulled} == {"p2"}
    assert ids(await queue.pull("p1", 10, LONG)) == ["a"]


async def test_lease_expiry_redelivers(database: Database) -> None:
    queue = await make_queue(database)
    await queue.push("p", [("a", 1)])
    [first] = await queue.pull("p", 1, 0.2)
    assert await queue.pull("p", 1, LONG) == []
    await asyncio.sleep(0.3)
    [again] = await queue.pull("p", 1, LONG)
    assert again.task_id == "a"
    assert again.receipt != first.receipt


async def test_ack_removes(database: Database) -> None:
    queue = await make_queue(database)
    await queue.push("p", [("a", 1), ("b", 1)])
    pulled = await queue.pull("p", 2, 0.2)
    await queue.ack(pulled[:1])
    await queue.ack([])
    assert await queue.depth("p") == 1
    await asyncio.sleep(0.3)
    assert ids(await queue.pull("p", 5, LONG)) == ["b"]


async def test_release_with_and_without_delay(database: Database) -> None:
    queue = await make_queue(database)
    await queue.push("p", [("a", 1), ("b", 1)])
    a, b = await queue.pull("p", 2, LONG)
    await queue.release([a])
    assert ids(await queue.pull("p", 5, LONG)) == ["a"]
    await queue.release([b], delay=0.4)
    assert await queue.pull("p", 5, LONG) == []
    await asyncio.sleep(0.5)
    assert ids(await queue.pull("p", 5, LONG)) == ["b"]
    assert await queue.depth("p") == 2


async def test_extend_keeps_the_message_invisible(database: Database) -> None:
    queue = await make_queue(database)
    await queue.push("p", [("a", 1)])
    held = await queue.pull("p", 1, 0.3)
    await queue.extend(held, 2.0)
    await asyncio.sleep(0.4)
    assert await queue.pull("p", 1, LONG) == []
    await queue.ack(held)
    assert await queue.depth("p") == 0


async def test_depth_counts_waiting_and_held(database: Database) -> None:
    queue = await make_queue(database)
    assert await queue.depth("p") == 0
    await queue.push("p", [(f"t{i}", i % 3) for i in range(5)])
    held = await queue.pull("p", 2, LONG)
    assert await queue.depth("p") == 5
    await queue.ack(held)
    assert await queue.depth("p") == 3


async def test_a_stale_receipt_cannot_touch_the_new_delivery(backend: Backend) -> None:
    first = await make_queue(await backend.open())
    second = await make_queue(await backend.open())
    await first.push("p", [("a", 1)])
    [stale] = await first.pull("p", 1, 0.2)
    await asyncio.sleep(0.3)  # the first consumer is presumed dead; the lease runs out
    [fresh] = await second.pull("p", 1, LONG)
    assert fresh.task_id == "a"
    await first.ack([stale])
    await first.release([stale])
    await first.extend([stale], 0.0)
    assert await second.depth("p") == 1
    assert await second.pull("p", 1, LONG) == []  # still leased to the second consumer
    await second.ack([fresh])
    assert await second.depth("p") == 0


async def test_concurrent_pullers_never_share_a_message(backend: Backend) -> None:
    producer = await make_queue(await backend.open())
    pullers = [await make_queue(await backend.open()) for _ in range(3)]
    expected = [f"t{i:03d}" for i in range(90)]
    await producer.push("p", [(task_id, int(task_id[1:]) % 4) for task_id in expected])

    async def drain(queue: TableQueue) -> list[str]:
        got: list[str] = []
        while batch := await queue.pull("p", 4, LONG):
            got += ids(batch)
            await asyncio.sleep(0)
        return got

    results = await asyncio.gather(*(drain(queue) for queue in pullers))
    everything = [task_id for got in results for task_id in got]
    assert sorted(everything) == expected  # each message exactly once
    if backend.name == "postgres":
        # SKIP LOCKED lets every puller work at once (SQLite's busy wait may favour one).
        assert all(results)


async def test_visible_sees_only_messages_ready_now(database: Database) -> None:
    queue = await make_queue(database)
    assert not await queue.visible("p")
    await queue.push("p", [("a", 1)])
    assert await queue.visible("p") and not await queue.visible("other")
    [held] = await queue.pull("p", 1, LONG)
    assert not await queue.visible("p")
    await queue.release([held])
    assert await queue.visible("p")


async def test_work_inside_a_transaction_commits_or_rolls_back_with_it(database: Database) -> None:
    """push/pull/ack within a caller's transaction take effect only if it commits."""
    queue = await make_queue(database)

    class Undo(Exception):
        pass

    try:
        async with database.write() as repository:
            await queue.push_within(repository, "p", [("a", 1)])
            raise Undo
    except Undo:
        pass
    assert await queue.depth("p") == 0

    async with database.write() as repository:
        await queue.push_within(repository, "p", [("a", 1), ("b", 2)])
    try:
        async with database.write() as repository:
            assert ids(await queue.pull_within(repository, "p", 1, LONG)) == ["b"]
            raise Undo
    except Undo:
        pass
    async with database.write() as repository:
        pulled = await queue.pull_within(repository, "p", 1, LONG)
        assert ids(pulled) == ["b"]  # the rolled back delivery left it visible
        await queue.ack_within(repository, pulled)
    assert ids(await queue.pull("p", 5, LONG)) == ["a"]


async def test_sessions_take_turns_on_both_databases(database: Database) -> None:
    """Fair share: at equal priority, sessions alternate (a newcomer is served next); the
    order of each session and the priority levels are kept."""
    queue = await make_queue(database)
    await queue.push("p", [(f"a{n}", 1) for n in range(6)], session_id="A")
    assert ids(await queue.pull("p", 2, LONG)) == ["a0", "a1"]
    await queue.push("p", [("b0", 1), ("b1", 1)], session_id="B")
    await queue.push("p", [("c0", 1)], session_id="C")
    await queue.push("p", [("a6", 1)], session_id="A")
    await queue.push("p", [("high", 2)], session_id="A")
    order = [task_id for _ in range(9) for task_id in ids(await queue.pull("p", 1, LONG))]
    assert order == ["high", "a2", "b0", "c0", "a3", "b1", "a4", "a5", "a6"]


async def test_fifo_queue_keeps_arrival_order(database: Database) -> None:
    queue = TableQueue(database, fair=False)
    await queue.start()
    await queue.push("p", [("a0", 1), ("a1", 1)], session_id="A")
    await queue.push("p", [("b0", 1)], session_id="B")
    await queue.push("p", [("a2", 1)], session_id="A")
    assert ids(await queue.pull("p", 4, LONG)) == ["a0", "a1", "b0", "a2"]


async def test_a_queue_table_made_before_fair_share_is_upgraded(database: Database) -> None:
    """The columns of fair share are added at start; messages queued before are kept (and
    served first: they wait already)."""
    await (await make_queue(database)).push("p", [("old", 1)])
    async with database.write() as repository:  # back to the table of before
        for statement in (
            "DROP INDEX queue_fair",
            "DROP INDEX queue_session",
            "ALTER TABLE queue DROP COLUMN session_id",
            "ALTER TABLE queue DROP COLUMN vtime",
            "CREATE INDEX queue_pull ON queue (partition_id, priority DESC, id)",
        ):
            await repository.connection.execute(statement)
    queue = await make_queue(database)
    await make_queue(database)  # a second start finds the columns there
    await queue.push("p", [("new", 1)], session_id="A")
    assert ids(await queue.pull("p", 5, LONG)) == ["old", "new"]
