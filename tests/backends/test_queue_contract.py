"""The Queue port's contract, run against every adapter."""

from __future__ import annotations

import asyncio
import time

import pytest

from pyarmonik.domain.errors import Unavailable
from pyarmonik.storage.queue import Queue, QueueMessage, unsupported
from tests.backends import conftest_queue_objects as fixtures
from tests.backends.conftest_queue_objects import QueueBackend

pytestmark = pytest.mark.timeout(60)
queue_backend = fixtures.queue_backend  # the parametrised fixture, used by name
s3_endpoint = fixtures.s3_endpoint  # moto's server, for the SQS plugin

LEASE = 30.0


async def pull_until(
    queue: Queue, partition: str, n: int, lease: float = LEASE, within: float = 5.0
) -> list[QueueMessage]:
    """Pull until `n` messages came or `within` seconds passed (a pull may return fewer)."""
    got: list[QueueMessage] = []
    deadline = time.monotonic() + within
    while len(got) < n and time.monotonic() < deadline:
        pulled = await queue.pull(partition, n - len(got), lease)
        got += pulled
        if not pulled:
            await asyncio.sleep(0.02)
    return got


async def eventually_depth(queue: Queue, partition: str, expected: int) -> int:
    """Depth once it settles on `expected` (deliveries reach a broker consumer asynchronously)."""
    for _ in range(60):
        if (depth := await queue.depth(partition)) == expected:
            break
        await asyncio.sleep(0.05)
    return depth


def ids(messages: list[QueueMessage]) -> list[str]:
    return [message.task_id for message in messages]


def requires(queue: Queue, *capabilities: str) -> None:
    """Skip, with the adapter's reason, a case needing what the queue declares it lacks."""
    for capability in capabilities:
        if capability in (lacking := unsupported(queue)):
            pytest.skip(f"the queue declares no {capability}: {lacking[capability]}")


async def test_healthy_once_started(queue_backend: QueueBackend) -> None:
    queue = await queue_backend.make()
    await queue.check_health()


async def test_priority_first(queue_backend: QueueBackend) -> None:
    """Higher priorities first, whatever the order within one."""
    queue = await queue_backend.make()
    requires(queue, "priority")
    await queue.push("p", [("a", 1), ("b", 50), ("c", 99), ("d", 50), ("e", 1), ("f", 99)])
    got = [message for _ in range(6) for message in await pull_until(queue, "p", 1)]
    assert [sorted(ids(got[n : n + 2])) for n in (0, 2, 4)] == [["c", "f"], ["b", "d"], ["a", "e"]]


async def test_priority_first_then_fifo(queue_backend: QueueBackend) -> None:
    queue = await queue_backend.make()
    requires(queue, "priority", "arrival_order")
    # Priorities far apart: RabbitMQ folds 1..99 onto max_priority levels.
    await queue.push("p", [("a", 1), ("b", 50), ("c", 99), ("d", 50), ("e", 1), ("f", 99)])
    await queue.push("p", [("g", 99)])
    # One at a time: the order in which messages are selected is the contract.
    got = [message for _ in range(7) for message in await pull_until(queue, "p", 1)]
    assert ids(got) == ["c", "f", "g", "b", "d", "a", "e"]
    assert all(message.partition_id == "p" for message in got)
    assert len({message.receipt for message in got}) == 7


async def test_partitions_are_separate(queue_backend: QueueBackend) -> None:
    queue = await queue_backend.make()
    await queue.push("p1", [("a", 1)])
    assert await queue.pull("p2", 10, LEASE) == []
    assert ids(await pull_until(queue, "p1", 1)) == ["a"]


async def test_ack_removes(queue_backend: QueueBackend) -> None:
    queue = await queue_backend.make()
    await queue.push("p", [("a", 1), ("b", 1)])
    got = await pull_until(queue, "p", 2)
    await queue.ack(got)
    await queue.ack(got)  # acking twice is harmless
    assert await queue.pull("p", 10, LEASE) == []
    assert await eventually_depth(queue, "p", 0) == 0


async def test_release_now_redelivers(queue_backend: QueueBackend) -> None:
    queue = await queue_backend.make()
    await queue.push("p", [("a", 1)])
    [first] = await pull_until(queue, "p", 1)
    assert await queue.pull("p", 1, LEASE) == []  # invisible while held
    await queue.release([first])
    [again] = await pull_until(queue, "p", 1)
    assert again.task_id == "a"
    assert again.receipt != first.receipt
    await queue.ack([again])
    assert await eventually_depth(queue, "p", 0) == 0


async def test_release_with_delay(queue_backend: QueueBackend) -> None:
    queue = await queue_backend.make()
    await queue.push("p", [("a", 1), ("b", 1)])
    held = await pull_until(queue, "p", 2)
    released_at = time.monotonic()
    await queue.release(held, delay=1.0)
    # Whenever a pull brings them back, the delay has passed (on a loaded machine the first
    # pull may itself end after it: the check holds at any speed).
    again: list[QueueMessage] = []
    while len(again) < 2 and time.monotonic() - released_at < 6:
        pulled = await queue.pull("p", 2 - len(again), LEASE)
        if pulled:
            assert time.monotonic() - released_at >= 0.95, "delivered before its delay"
        again += pulled
        await asyncio.sleep(0.05)
    assert sorted(ids(again)) == ["a", "b"]


async def test_dead_consumer_messages_go_to_another(queue_backend: QueueBackend) -> None:
    first, second = await queue_backend.make(), await queue_backend.make()
    await first.push("p", [("a", 1), ("b", 1)])
    # The table queue notices a dead consumer when its lease runs out; RabbitMQ when its
    # connection closes.
    held = await pull_until(first, "p", 2, lease=0.5)
    assert sorted(ids(held)) == ["a", "b"]
    await first.close()
    redelivered = await pull_until(second, "p", 2, within=5)
    assert sorted(ids(redelivered)) == ["a", "b"]
    await second.ack(redelivered)


async def test_concurrent_pullers_never_share(queue_backend: QueueBackend) -> None:
    producer = await queue_backend.make()
    pullers = [await queue_backend.make() for _ in range(2)]
    expected = {f"t{n}" for n in range(60)}
    await producer.push("p", [(task_id, 1 + n % 3 * 40) for n, task_id in enumerate(expected)])
    seen: list[list[str]] = [[], []]

    async def work(index: int) -> None:
        queue = pullers[index]
        deadline = time.monotonic() + 20
        while sum(map(len, seen)) < len(expected) and time.monotonic() < deadline:
            got = await queue.pull("p", 3, LEASE)
            seen[index] += ids(got)
            await queue.ack(got)
            await asyncio.sleep(0 if got else 0.02)

    await asyncio.gather(work(0), work(1))
    everything = seen[0] + seen[1]
    assert len(everything) == len(set(everything))
    assert set(everything) == expected


async def test_depth_counts_waiting_and_held(queue_backend: QueueBackend) -> None:
    queue = await queue_backend.make()
    assert await queue.depth("p") == 0
    await queue.push("p", [("a", 1), ("b", 1), ("c", 1)])
    assert await eventually_depth(queue, "p", 3) == 3
    held = await pull_until(queue, "p", 1)
    assert await eventually_depth(queue, "p", 3) == 3  # held, not yet acked
    await queue.extend(held, LEASE)
    await queue.ack(held)
    assert await eventually_depth(queue, "p", 2) == 2


# ------------------------------------------------------------- fair share between sessions


async def serve_one_by_one(queue: Queue, partition: str, n: int) -> list[str]:
    """Pull and ack `n` messages one at a time, as a single agent would; their ids in order."""
    served: list[str] = []
    for _ in range(n):
        got = await pull_until(queue, partition, 1)
        assert got, f"only {len(served)} of {n} messages came"
        served += ids(got)
        await queue.ack(got)
    return served


async def test_a_small_session_is_not_stuck_behind_a_big_one(queue_backend: QueueBackend) -> None:
    queue = await queue_backend.make()
    requires(queue, "fair_share")
    big = [f"a{n}" for n in range(200)]
    small = [f"b{n}" for n in range(20)]
    await queue.push("p", [(task_id, 5) for task_id in big], session_id="A")
    served = await serve_one_by_one(queue, "p", 10)  # A is being served when B comes
    await queue.push("p", [(task_id, 5) for task_id in small], session_id="B")
    while not set(small) <= set(served):
        served += await serve_one_by_one(queue, "p", 1)
    # B's 20 were all served while A still had more than half of its 200 to go.
    assert sum(task_id in big for task_id in served) < len(big) / 2
    rest = await serve_one_by_one(queue, "p", len(big) + len(small) - len(served))
    assert sorted(served + rest) == sorted(big + small)
    assert [t for t in served + rest if t in big] == big  # each session in its own order
    assert [t for t in served + rest if t in small] == small


async def test_priority_wins_over_turns(queue_backend: QueueBackend) -> None:
    queue = await queue_backend.make()
    requires(queue, "priority")
    await queue.push("p", [(f"a{n}", 1) for n in range(30)], session_id="A")
    await queue.push("p", [(f"b{n}", 1) for n in range(5)], session_id="B")
    await queue.push("p", [(f"c{n}", 99) for n in range(3)], session_id="C")
    await queue.push("p", [("a-urgent", 99)], session_id="A")
    served = await serve_one_by_one(queue, "p", 39)
    assert sorted(served[:4]) == ["a-urgent", "c0", "c1", "c2"]
    assert sorted(served[4:]) == sorted([f"a{n}" for n in range(30)] + [f"b{n}" for n in range(5)])


async def test_strict_fifo_when_asked(queue_backend: QueueBackend) -> None:
    queue = await queue_backend.make(fair=False)
    requires(queue, "priority", "arrival_order")
    big = [f"a{n}" for n in range(50)]
    await queue.push("fifo", [(task_id, 5) for task_id in big], session_id="A")
    await queue.push("fifo", [("b0", 5), ("b1", 5)], session_id="B")
    await queue.push("fifo", [("c0", 99)], session_id="C")
    assert await serve_one_by_one(queue, "fifo", 53) == ["c0", *big, "b0", "b1"]


async def test_either_order_serves_a_queue_made_in_the_other(
    queue_backend: QueueBackend,
) -> None:
    """Processes of a cluster switched from one order to the other (RabbitMQ keeps the queue
    as it was made): every message is still served, once."""
    fifo, fair = await queue_backend.make(fair=False), await queue_backend.make()
    requires(fair, "priority")
    await fifo.push("made-fifo", [("a", 1), ("b", 1)], session_id="A")
    await fair.push("made-fifo", [("c", 1)], session_id="B")
    await fair.push("made-fair", [("d", 1), ("e", 1)], session_id="A")
    await fifo.push("made-fair", [("f", 99)], session_id="B")
    assert sorted(await serve_one_by_one(fair, "made-fifo", 3)) == ["a", "b", "c"]
    assert (await serve_one_by_one(fifo, "made-fair", 3))[0] == "f"
    for queue, partition in ((fair, "made-fifo"), (fifo, "made-fair")):
        assert await queue.pull(partition, 5, LEASE) == []


# ---------------------------------------------------------------------------- RabbitMQ only


async def test_rabbitmq_unreachable_names_host_not_password() -> None:
    from pyarmonik.storage.queue.rabbitmq import RabbitQueue

    port = 1  # nothing listens there
    with pytest.raises(Unavailable) as caught:
        await RabbitQueue(f"amqp://guest:s3cret@127.0.0.1:{port}/").start()
    assert "127.0.0.1:1" in str(caught.value)
    assert "s3cret" not in str(caught.value)


def test_rabbitmq_priority_scale_is_monotonic() -> None:
    from pyarmonik.storage.queue.rabbitmq import RabbitQueue

    queue = RabbitQueue("amqp://127.0.0.1/", max_priority=10)
    levels = [queue.amqp_priority(priority) for priority in range(0, 120)]
    assert levels == sorted(levels)
    assert levels[1] == 0 and levels[99] == 9 and levels[119] == 9


def test_rabbitmq_fair_bands_stay_within_their_level() -> None:
    from pyarmonik.storage.queue.rabbitmq import BANDS, RabbitQueue

    queue = RabbitQueue("amqp://127.0.0.1/", max_priority=10)
    for priority in (1, 50, 99):
        level = queue.amqp_priority(priority)
        bands = [queue.fair_priority(priority, ahead) for ahead in range(0, 5000, 7)]
        assert bands == sorted(bands, reverse=True)  # the more ahead, the lower
        assert {b // BANDS for b in bands} == {level}  # never into another level
    assert queue.fair_priority(1, 0) > queue.fair_priority(1, 1000)
