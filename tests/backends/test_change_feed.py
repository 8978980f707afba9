"""The change feed (scheduling/changes.py) over each database: it reads the log only while
someone subscribes, and every subscriber gets each change after its position, once."""

from __future__ import annotations

import asyncio

from pyarmonik.scheduling.changes import Change, ChangeFeed, ChangeKind, Subscription
from pyarmonik.storage.database import Database
from tests.backends.test_database import insert, make_task


async def next_changes(subscription: Subscription, count: int) -> list[Change]:
    """The next `count` changes the subscription yields (fails after 5 s)."""
    seen: list[Change] = []

    async def collect() -> None:
        async for batch in subscription.batches():
            seen.extend(batch)
            if len(seen) >= count:
                return

    await asyncio.wait_for(collect(), 5)
    return seen


async def test_each_subscriber_gets_the_changes_after_its_position_once(
    database: Database,
) -> None:
    feed = ChangeFeed(database, poll_interval=0.2)
    await feed.start()
    try:
        # Written while nobody listens: nobody receives these.
        await insert(database, make_task("before-1"), make_task("before-2"))
        first = await feed.subscribe("")
        await insert(database, make_task("a"))
        second = await feed.subscribe("")
        await insert(database, make_task("b", session_id="s2"))

        firsts = await next_changes(first, 2)
        seconds = await next_changes(second, 1)
        assert [(c.kind, c.entity_id) for c in firsts] == [
            (ChangeKind.NEW_TASK, "a"),
            (ChangeKind.NEW_TASK, "b"),
        ]
        assert [(c.kind, c.entity_id, c.session_id) for c in seconds] == [
            (ChangeKind.NEW_TASK, "b", "s2")
        ]

        # Nobody left, then a subscriber again: it starts at its own position.
        first.close()
        second.close()
        await insert(database, make_task("unheard"))
        await asyncio.sleep(0.3)
        third = await feed.subscribe("s1")
        await insert(database, make_task("c"), make_task("d", session_id="s2"))
        await insert(database, make_task("e"))
        thirds = await next_changes(third, 2)
        assert [c.entity_id for c in thirds] == ["c", "e"]
        await insert(database, make_task("f"))
        assert [c.entity_id for c in await next_changes(third, 1)] == ["f"]
    finally:
        await feed.stop()


async def test_stop_ends_the_feed_when_a_change_arrives_with_the_cancellation(
    database: Database,
) -> None:
    # On Python 3.11 asyncio.wait_for returned when its event was set in the same turn as the
    # cancellation and dropped the cancellation: the tail went on and stop() waited forever.
    feed = ChangeFeed(database, poll_interval=30)
    await feed.start()
    await asyncio.sleep(0.2)  # the tail waits for a change
    database._changed.set()  # type: ignore[attr-defined]  # the notification's own effect
    stopping = asyncio.create_task(feed.stop())
    done, _ = await asyncio.wait((stopping,), timeout=5)
    assert stopping in done, "the feed's tail went on after its cancellation"
