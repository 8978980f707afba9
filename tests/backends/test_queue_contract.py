"""The Queue port's contract, run against every adapter."""

from __future__ import annotations

import asyncio
import time

import pytest

from pyarmonik.domain.errors import Unavailable
from pyarmonik.storage.queue import Queue, QueueMessage
from tests.backends import conftest_queue_objects as fixtures
from tests.backends.conftest_queue_objects import QueueBackend

pytestmark = pytest.mark.timeout(60)
queue_backend = fixtures.queue_backend  # the parametrised fixture, used by name

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


async def test_healthy_once_started(queue_backend: QueueBackend) -> None:
    queue = await queue_backend.make()
    await queue.check_health()


async def test_priority_first_then_fifo(queue_backend: QueueBackend) -> None:
    queue = await queue_backend.make()
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
    assert await queue.pull("p", 2, LEASE) == []
    await asyncio.sleep(0.5)
    assert await queue.pull("p", 2, LEASE) == []
    again = await pull_until(queue, "p", 2, within=5)
    assert sorted(ids(again)) == ["a", "b"]
    assert time.monotonic() - released_at >= 0.95


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
