"""RabbitMQ's prefetch windows (storage/queue/rabbitmq.py), on a real broker: steady pulls,
with deliveries held as an agent holds its tasks, resize no consumer; a long-task agent does
not take more than it asked for; a window given back goes to the other agents."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiormq
import pytest

from pyarmonik.storage.queue import QueueMessage
from pyarmonik.storage.queue.rabbitmq import RabbitQueue
from tests.backends.conftest_queue_objects import RABBITMQ_URL, require_service

pytestmark = pytest.mark.timeout(60)

LEASE = 30.0
WINDOW_RPCS = ("Qos", "Consume", "Cancel")

Make = Callable[[], Awaitable[RabbitQueue]]


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    """Started queues of one fresh prefix (each its own connection, as agents are)."""
    require_service("RabbitMQ", "127.0.0.1", 5672)
    prefix = f"pyarmonik-test-{uuid.uuid4().hex[:12]}"
    opened: list[RabbitQueue] = []

    async def one() -> RabbitQueue:
        queue = RabbitQueue(RABBITMQ_URL, prefix=prefix)
        await queue.start()
        opened.append(queue)
        return queue

    yield one
    declared = set().union(*(queue.declared for queue in opened))
    for queue in opened:
        await queue.close()
    import aio_pika

    connection = await aio_pika.connect(RABBITMQ_URL)
    async with connection:
        channel = await connection.channel()
        for name in declared:
            await channel.queue_delete(name)


@pytest.fixture
def rpcs(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """The synchronous AMQP methods sent by every channel of this process, by name (the
    broker is real: this only counts what goes to it)."""
    sent: Counter[str] = Counter()
    rpc = aiormq.channel.Channel.rpc

    async def counting(self: Any, frame: Any, timeout: Any = None) -> Any:
        sent[type(frame).__name__] += 1
        return await rpc(self, frame, timeout=timeout)

    monkeypatch.setattr(aiormq.channel.Channel, "rpc", counting)
    return sent


def window_rpcs(sent: Counter[str]) -> int:
    return sum(sent[name] for name in WINDOW_RPCS)


async def pull_exactly(
    queue: RabbitQueue, n: int, within: float = 5.0, partition: str = "p"
) -> list[QueueMessage]:
    got: list[QueueMessage] = []
    deadline = time.monotonic() + within
    while len(got) < n and time.monotonic() < deadline:
        got += await queue.pull(partition, n - len(got), LEASE)
    assert len(got) == n, f"{len(got)} of {n} came"
    return got


async def test_long_tasks_pull_without_resizing(make: Make, rpcs: Counter[str]) -> None:
    """One task running and one prepared, as an agent running long tasks holds them: once
    started, the pulls that follow each completion send no qos/consume/cancel."""
    queue = await make()
    await queue.push("p", [(f"t{n}", 1) for n in range(30)])
    [running] = await pull_exactly(queue, 1)
    [prepared] = await pull_exactly(queue, 1)
    before = window_rpcs(rpcs)
    for _ in range(20):
        await queue.ack([running])
        running = prepared
        [prepared] = await pull_exactly(queue, 1)
    assert window_rpcs(rpcs) == before, dict(rpcs)
    await queue.ack([running, prepared])


async def test_a_window_of_short_tasks_pulls_without_resizing(
    make: Make, rpcs: Counter[str]
) -> None:
    """20 tasks held (16 ahead of the worker, one running, three being committed), refilled
    by pulls of 8 to 16 as they complete in uneven groups: after the first few pulls, no
    qos/consume/cancel."""
    queue = await make()
    await queue.push("p", [(f"t{n}", 1) for n in range(800)])
    held = await pull_exactly(queue, 16)  # the window first, then the others
    held += await pull_exactly(queue, 4)
    for round_ in range(30):
        if round_ == 3:
            before = window_rpcs(rpcs)
        done = 8 + round_ % 9  # 8 to 16 completed since the last pull
        await queue.ack(held[:done])
        held = held[done:] + await pull_exactly(queue, done)
    assert window_rpcs(rpcs) == before, dict(rpcs)
    await queue.ack(held)


async def test_a_long_task_agent_leaves_the_rest_to_others(make: Make) -> None:
    """An agent holding a running and a prepared task has at most `prefetch` more waiting
    with it: another agent gets every other message."""
    long, other = await make(), await make()
    await long.push("p", [(f"t{n}", 1) for n in range(12)])
    held = await pull_exactly(long, 1) + await pull_exactly(long, 1)
    await asyncio.sleep(0.3)  # whatever the broker sends `long` has come by now
    rest: list[QueueMessage] = []
    while pulled := await other.pull("p", 5, LEASE, wait=False) or await other.pull("p", 5, LEASE):
        rest += pulled
    assert len(rest) >= 12 - len(held) - long.prefetch
    # Everything is still ours and ackable; nothing is lost or doubled.
    await long.ack(held)
    await other.ack(rest)
    last = await pull_exactly(long, 12 - len(held) - len(rest))
    assert sorted(m.task_id for m in held + rest + last) == sorted(f"t{n}" for n in range(12))


async def test_deliveries_not_pulled_go_to_the_other_agents(make: Make) -> None:
    """An agent that held a window of tasks and completed all but a long one gets room for
    more it does not pull: within a second or so (LINGER), they go to an idle agent."""
    busy, idle = await make(), await make()
    await busy.push("p", [(f"t{n}", 1) for n in range(20)])
    [running, *done] = await pull_exactly(busy, 8)
    await busy.ack(done)  # the broker sends `busy` as many more
    await asyncio.sleep(0.1)
    taken: list[QueueMessage] = []
    deadline = time.monotonic() + 4.0
    while len(taken) < 12 - busy.prefetch and time.monotonic() < deadline:
        got = await idle.pull("p", 12, LEASE)
        await idle.ack(got)
        taken += got
    assert len(taken) >= 12 - busy.prefetch
    await busy.ack([running])


async def test_a_window_given_back_goes_to_the_other_agents(make: Make) -> None:
    """An agent gives back the 7 tasks it held ahead of a task that turned out long: they go
    to an idle agent, not back to it; the task it runs stays ackable."""
    giver, idle = await make(), await make()
    await giver.push("p", [(f"t{n}", 1) for n in range(8)])
    [running, *ahead] = await pull_exactly(giver, 8)
    assert await idle.pull("p", 8, LEASE, wait=False) == []  # consuming, with room for 8
    await giver.release(ahead)
    taken = await pull_exactly(idle, 7)
    assert sorted(m.task_id for m in taken) == sorted(m.task_id for m in ahead)
    await giver.ack([running])
    await idle.ack(taken)
    assert await giver.pull("p", 1, LEASE) == []
    for _ in range(40):
        if await idle.depth("p") == 0:
            break
        await asyncio.sleep(0.05)
    assert await idle.depth("p") == 0


async def test_priorities_hold_across_resizes(make: Make) -> None:
    """A window that grew wide, then narrow: the highest priority still comes first."""
    queue = await make()
    await queue.push("p", [(f"low{n}", 1) for n in range(20)])
    await queue.ack(await pull_exactly(queue, 16))
    await queue.push("p", [(f"high{n}", 99) for n in range(3)])
    await asyncio.sleep(0.2)
    served = [m.task_id for _ in range(7) for m in await pull_exactly(queue, 1)]
    assert sorted(served[:3]) == ["high0", "high1", "high2"]
    assert sorted(served[3:]) == [f"low{n}" for n in range(16, 20)]


async def test_queues_are_made_version_2_and_a_queue_made_before_still_serves(
    make: Make,
) -> None:
    """A new queue is a classic queue of version 2; one an earlier version made without
    `x-queue-version` (RabbitMQ refuses to redeclare it with another) is used as made."""
    import aio_pika

    queue = await make()
    await queue.push("p", [("a", 1)])
    older = queue.queue_name("older")
    connection = await aio_pika.connect(RABBITMQ_URL)
    async with connection:
        channel = await connection.channel()
        made = queue._arguments((4, None))
        await channel.declare_queue(older, durable=True, arguments=made)
        queue.declared.add(older)
        probe = await connection.channel()
        with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed):
            await probe.declare_queue(queue.queue_name("p"), durable=True, arguments=made)
    await queue.push("older", [("b", 1), ("c", 1)])
    assert [m.task_id for m in await pull_exactly(queue, 1)] == ["a"]
    older_served = await pull_exactly(queue, 2, partition="older")
    assert sorted(m.task_id for m in older_served) == ["b", "c"]
