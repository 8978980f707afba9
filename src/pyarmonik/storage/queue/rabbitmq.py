"""RabbitMQ queue (AMQP 0-9-1, aio-pika): one durable priority queue per partition.

- `{prefix}.{partition}` is declared durable with `x-max-priority` and `x-queue-version` 2
  (QUEUE_VERSION; a queue made before without it is used as made); messages are persistent,
  their body is the task id and their AMQP priority the ArmoniK priority (1..99) scaled onto
  0..max_priority-1, so ordering is as fine as `max_priority` levels (FIFO within a level).
- Pulling uses one long-lived consumer per partition (on its own channel) whose deliveries
  land in a local buffer sorted by priority; `pull` takes from it, waiting at most
  `pull_wait`. Deliveries handed out stay unacked until their task is done and keep counting
  against the consumer's prefetch window, so the window has to cover what we hold plus what
  a pull asks for. RabbitMQ applies a (per-consumer) prefetch only to consumers made after
  basic.qos, so changing a window means a new consumer: basic.qos + basic.consume, and
  basic.cancel of the old one, whose deliveries stay ours and ackable (they belong to the
  channel) but no longer count against any window. A resize on every pull that finds the
  window full of held tasks costs three round trips per task, in the agent and the broker
  (bench indep, PostgreSQL + RabbitMQ: about 10 ms of agent CPU per task against 6-7, and
  2 ms of RabbitMQ's against 0.9). So:
  - a pull starts a consumer only when the current one cannot bring what it asks for; the
    new window is what we hold plus what is asked, and a quarter more, so that the swings
    of an agent's holdings (its window of tasks ahead, its commits in groups) need none;
  - a window wider than needed would let the broker fill our buffer with work we do not
    run soon while other agents idle. Shrinking it at pulls followed those swings (a
    resize every few pulls); what matters is whether deliveries wait: when one has
    lingered in the buffer `LINGER` seconds with more than `prefetch` (default 1) there,
    the consumer is cancelled and all but the `prefetch` first are given back (nack,
    requeued). Likewise before more than `prefetch` deliveries are released at once (an
    agent handing back its tasks ahead of a long one), or the room they leave would be
    filled again with the same messages. The next pull that finds the buffer short starts
    a consumer sized anew. Right after a resize the old consumer's held deliveries make
    the new window that much too wide until acked: one or two for an agent of long tasks.
  Channel-wide prefetch (basic.qos global=true) can change on a live consumer, but RabbitMQ
  deprecated it (`global_qos`) and denies it by default from 4.3: not used.
- There are no leases: a delivery stays ours until ack/nack, and RabbitMQ redelivers it when
  our connection dies. `extend` is therefore a no-op. RabbitMQ's `consumer_timeout` (30 min
  by default) would close the channel under a long task: the queues are declared with
  `x-consumer-timeout` (honoured by RabbitMQ >= 3.12; older brokers need
  `consumer_timeout` raised in rabbitmq.conf).
- `release(delay > 0)` publishes a copy to `{prefix}.{partition}.delay.{ms}`, a queue without
  consumers whose queue-wide TTL is the delay and whose dead-letter target is the main queue,
  then acks the original (after the publisher confirm: at least once). One queue per delay
  value, because per-message TTLs only expire at the head of a queue (a long delay would
  hold back a short one behind it); delays are rounded up to 100 ms to bound their number,
  and each such queue expires (`x-expires`) a minute after its last use.
- Fair share (`fair=True`): RabbitMQ cannot reorder what it holds, so each ArmoniK priority
  level is split into BANDS AMQP priorities and a message's band says how many messages of
  its session were queued in the partition before it: the first BAND_BASE take the top band,
  the next ones (up to BAND_BASE², then BAND_BASE³) the lower ones, the rest the bottom one.
  A session with few queued tasks thus goes ahead of the bulk of a big one; within a band
  it is FIFO, and a higher level always wins. The count is this publisher's own (what it
  pushed per session and partition), capped by the queue's ready messages (a session cannot
  have more waiting than the queue holds, read at most every WAITING_TTL): exact for one
  publisher, an estimate with several. A queue then has `max_priority * BANDS` AMQP
  priorities. RabbitMQ refuses to redeclare a durable queue with another `x-max-priority`,
  so a queue made with the other layout (by an earlier version, or with `fair=False`) is
  kept as it is: its layout is probed at first use, and a fair publisher on a FIFO queue
  serves FIFO (logged); delete the queue when empty, or use another prefix, to change it.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import math
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

from pyarmonik.domain.errors import Unavailable
from pyarmonik.storage.queue import QueueMessage
from pyarmonik.storage.urls import pop_query

log = logging.getLogger(__name__)

DELAY_STEP_MS = 100
# Fair share: AMQP priorities per ArmoniK priority level, and the growth of the bands (see the
# module docstring).
BANDS = 4
BAND_BASE = 8
# Seconds the ready count of a queue, read at a push, serves the next pushes.
WAITING_TTL = 0.5
DELAY_QUEUE_IDLE_MS = 60_000
WEEK_MS = 7 * 24 * 3600 * 1000
MAX_PREFETCH = 65_535  # basic.qos prefetch_count is a short
# Classic queues of version 2 (RabbitMQ >= 3.10, the only version from 4.0): a persistent
# message costs the broker a third less CPU, and their priorities almost nothing (3.10.8,
# 39 priorities: 150 µs a message published, delivered and acked, against 210 in version 1).
QUEUE_VERSION = 2
# A queue's layout: bands per priority level, and its `x-queue-version` (None: not given).
Layout = tuple[int, int | None]
# Seconds a delivery may wait in a buffer holding more than `prefetch` before the buffer is
# given back (see the module docstring): long enough for an agent pulling short tasks.
LINGER = 0.5


@dataclass
class _Consumer:
    """The consuming side of one partition: its channel, its current consumer (none while
    `tag` is empty) with that consumer's prefetch window, and the deliveries not handed out
    yet (a heap on AMQP priority, then arrival order)."""

    channel: AbstractChannel
    queue: AbstractQueue
    tag: str = ""
    window: int = 0
    # Returns the buffer to the broker when it lingers unpulled (RabbitQueue._watch).
    watcher: asyncio.Task[None] | None = None
    qos: int = 0  # the prefetch_count last set on the channel
    buffer: list[tuple[int, int, AbstractIncomingMessage]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    # Resizing awaits RPCs: two at once would leave a consumer running unseen.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class RabbitQueue:
    """The Queue port on RabbitMQ (see the module docstring for the scheme)."""

    def __init__(
        self,
        url: str,
        prefix: str | None = None,
        max_priority: int = 10,
        *,
        prefetch: int = 1,
        pull_wait: float = 0.2,
        consumer_timeout_ms: int | None = WEEK_MS,
        reconnect_for: float = 60.0,
        fair: bool = True,
    ):
        if not 2 <= max_priority <= 256 // BANDS:
            raise ValueError(f"max_priority must be between 2 and {256 // BANDS}")
        # `?prefix=NAME` in the URL names the queues (deployments or tests sharing a broker);
        # the `prefix` argument wins over it, "pyarmonik" is the default. `?reconnect_for=S`
        # sets `reconnect_for`.
        url, url_prefix = pop_query(url, "prefix")
        self.url, url_reconnect_for = pop_query(url, "reconnect_for")
        if url_reconnect_for is not None:
            try:
                reconnect_for = float(url_reconnect_for)
            except ValueError:
                raise ValueError("reconnect_for must be a number of seconds") from None
        self.prefix = prefix or url_prefix or "pyarmonik"
        self.max_priority = max_priority
        self.fair = fair
        # Bands per level of each partition's queue (its layout, probed at first use).
        self._bands: dict[str, int] = {}
        # Fair share: messages pushed per partition and session that may still be waiting.
        self._queued: dict[str, dict[str, int]] = {}
        # Ready messages of each partition's queue as last read (plus what we pushed since),
        # and when it was read.
        self._waiting: dict[str, tuple[int, float]] = {}
        self.prefetch = max(1, prefetch)
        self.pull_wait = pull_wait
        self.consumer_timeout_ms = consumer_timeout_ms
        # How long `push` waits for a lost connection to come back before it gives up (the
        # scheduler then parks the messages in the database and pushes them later).
        self.reconnect_for = reconnect_for
        # Names of every queue this instance declared (tests and admin tools delete them).
        self.declared: set[str] = set()
        self._connection: AbstractRobustConnection | None = None
        self._publisher: AbstractChannel | None = None
        self._queues: dict[str, AbstractQueue] = {}
        self._consumers: dict[str, _Consumer] = {}
        self._consumer_lock = asyncio.Lock()
        # Deliveries handed out by `pull`, by receipt, until acked or released.
        self._held: dict[str, tuple[str, AbstractIncomingMessage]] = {}
        self._serial = itertools.count()
        self._closing = False
        # Consumers started (each a basic.consume, most after a basic.qos): how often the
        # windows were resized.
        self.subscriptions = 0

    @property
    def _where(self) -> str:
        parts = urlsplit(self.url)
        return f"RabbitMQ at {parts.hostname or 'localhost'}:{parts.port or 5672}"

    async def start(self) -> None:
        try:
            connection = await aio_pika.connect_robust(self.url, timeout=10)
        except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as exc:
            # The exception text may quote the URL: name the host only, never the password.
            raise Unavailable(f"{self._where} is unreachable ({type(exc).__name__})") from None
        connection.close_callbacks.add(self._on_close)
        connection.reconnect_callbacks.add(self._on_reconnect)
        self._connection = connection
        self._publisher = await connection.channel(publisher_confirms=True)

    async def check_health(self) -> None:
        connection = self._connection
        if connection is None or connection.is_closed or not connection.connected.is_set():
            raise Unavailable(f"{self._where} is not connected")

    def _on_close(self, _connection: Any, exc: BaseException | None = None) -> None:
        if not self._closing:
            log.warning("lost the connection to %s (%r); reconnecting", self._where, exc)

    def _on_reconnect(self, _connection: Any) -> None:
        # The broker requeued whatever the dead channels held; drop our stale copies.
        log.info("reconnected to %s", self._where)
        for consumer in self._consumers.values():
            consumer.buffer = [entry for entry in consumer.buffer if _alive(entry[2])]
        self._held = {key: held for key, held in self._held.items() if _alive(held[1])}

    async def close(self) -> None:
        # Closing the connection hands every unacked delivery back to the broker.
        self._closing = True
        for consumer in self._consumers.values():
            if consumer.watcher is not None:
                consumer.watcher.cancel()
        if self._connection is not None:
            await self._connection.close()
        self._connection = self._publisher = None
        self._queues.clear()
        self._consumers.clear()
        self._held.clear()

    def queue_name(self, partition_id: str) -> str:
        return f"{self.prefix}.{partition_id}"

    def amqp_priority(self, priority: int) -> int:
        """Scale an ArmoniK priority (1..99, higher first) onto 0..max_priority-1."""
        return (min(max(priority, 1), 99) - 1) * self.max_priority // 99

    def fair_priority(self, priority: int, ahead: int, bands: int = BANDS) -> int:
        """The AMQP priority of a message of `priority` with `ahead` messages of its session
        queued before it: its level, then its band within the level (the fewer ahead, the
        higher)."""
        depth, limit = 0, BAND_BASE
        while ahead >= limit and depth < bands - 1:
            depth, limit = depth + 1, limit * BAND_BASE
        return self.amqp_priority(priority) * bands + bands - 1 - depth

    def _arguments(self, layout: Layout) -> dict[str, Any]:
        bands, version = layout
        arguments: dict[str, Any] = {"x-max-priority": self.max_priority * bands - 1}
        if version is not None:
            arguments["x-queue-version"] = version
        if self.consumer_timeout_ms is not None:
            arguments["x-consumer-timeout"] = self.consumer_timeout_ms
        return arguments

    async def _queue(self, partition_id: str) -> AbstractQueue:
        """The partition's main queue, declared once per instance."""
        queue = self._queues.get(partition_id)
        if queue is None:
            name = self.queue_name(partition_id)
            layout = await self._layout(name)
            queue = await self._channel().declare_queue(
                name, durable=True, arguments=self._arguments(layout)
            )
            self.declared.add(name)
            self._bands[partition_id] = layout[0]
            self._queues[partition_id] = queue
        return queue

    async def _layout(self, name: str) -> Layout:
        """The layout of the queue `name`: ours when it is new or made alike, else the one it
        was made with (a queue is never redeclared with other arguments): the other order,
        or the queue version of before (none given). Probed on a channel of its own: a
        refused declaration closes the channel."""
        if self._connection is None:
            raise Unavailable(f"{self._where}: queue not started")
        wanted = BANDS if self.fair else 1
        for bands, version in itertools.product(
            (wanted, 1 if self.fair else BANDS), (QUEUE_VERSION, None)
        ):
            channel = await self._connection.channel()
            try:
                await channel.declare_queue(
                    name, durable=True, arguments=self._arguments((bands, version)), robust=False
                )
            except aio_pika.exceptions.ChannelPreconditionFailed:
                continue
            finally:
                if not channel.is_closed:
                    await channel.close()
            if bands != wanted:
                log.warning(
                    "queue %s was made for %s order and is kept so: delete it when empty (or "
                    "use another prefix) to serve in %s order",
                    name,
                    "fair" if bands > 1 else "FIFO",
                    "fair" if self.fair else "FIFO",
                )
            return bands, version
        raise Unavailable(f"{self._where}: queue {name} exists with other arguments")

    def _channel(self) -> AbstractChannel:
        if self._publisher is None:
            raise Unavailable(f"{self._where}: queue not started")
        return self._publisher

    async def push(
        self, partition_id: str, messages: list[tuple[str, int]], session_id: str = ""
    ) -> None:
        """Publish, waiting up to `reconnect_for` seconds for a lost connection to be back:
        the tasks are already SUBMITTED in the database, a message not sent would leave them
        there for good. Republishing a batch partly sent before is fine (at least once)."""
        if not messages:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.reconnect_for
        pause = 0.1
        while True:
            try:
                # Declaring and counting wait for a lost connection without end: bounded by
                # what is left of `reconnect_for`, as the retries are.
                left = max(deadline - loop.time(), 0.1)
                async with asyncio.timeout(left):
                    queue = await self._queue(partition_id)
                left = max(deadline - loop.time(), 0.1)
                async with asyncio.timeout(left):
                    bodies = await self._bodies(queue, partition_id, messages, session_id)
                await self._publish(self.queue_name(partition_id), bodies)
                return
            except (
                Unavailable,
                aio_pika.exceptions.AMQPError,
                ConnectionError,
                RuntimeError,
                TimeoutError,
            ) as exc:
                connection = self._connection
                if connection is None or self._closing or loop.time() + pause > deadline:
                    if isinstance(exc, Unavailable):
                        raise
                    raise Unavailable(f"publishing to {self._where} failed: {exc}") from exc
                log.warning("publishing to %s failed (%s); retrying", self._where, exc)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(deadline - loop.time(), 0.0)):
                        await connection.connected.wait()
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)

    async def _bodies(
        self,
        queue: AbstractQueue,
        partition_id: str,
        messages: list[tuple[str, int]],
        session_id: str,
    ) -> list[tuple[bytes, int | None]]:
        """Bodies and AMQP priorities of messages of one session (see the module docstring)."""
        bands = self._bands[partition_id]
        if bands == 1:
            return [(task_id.encode(), self.amqp_priority(p)) for task_id, p in messages]
        if not self.fair:  # a FIFO publisher on a fair queue: everything in the bottom band
            return [(task_id.encode(), self.amqp_priority(p) * bands) for task_id, p in messages]
        counts = self._queued.setdefault(partition_id, {})
        now = asyncio.get_running_loop().time()
        waiting, read_at = self._waiting.get(partition_id, (0, -math.inf))
        if now - read_at > WAITING_TTL:  # a round trip per push would slow small pushes
            waiting = int((await queue.declare()).message_count or 0)
            if waiting == 0 or len(counts) > 10_000:
                counts.clear()  # nothing waits any more (or too many sessions to remember)
            read_at = now
        ahead = min(counts.get(session_id, 0), waiting)
        counts[session_id] = ahead + len(messages)
        self._waiting[partition_id] = (waiting + len(messages), read_at)
        return [
            (task_id.encode(), self.fair_priority(priority, ahead + index, bands))
            for index, (task_id, priority) in enumerate(messages)
        ]

    async def _publish(self, queue_name: str, messages: list[tuple[bytes, int | None]]) -> None:
        """Publish persistent messages in order; return once the broker confirmed them all."""
        exchange = self._channel().default_exchange
        try:
            # Pipelined: the channel writes them in call order, confirms are awaited together.
            await asyncio.gather(
                *(
                    exchange.publish(
                        aio_pika.Message(
                            body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, priority=priority
                        ),
                        routing_key=queue_name,
                    )
                    for body, priority in messages
                )
            )
        except (aio_pika.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
            raise Unavailable(f"publishing to {self._where} failed: {exc}") from exc

    async def _consumer(self, partition_id: str) -> _Consumer:
        consumer = self._consumers.get(partition_id)
        if consumer is not None:
            return consumer
        async with self._consumer_lock:
            if partition_id in self._consumers:
                return self._consumers[partition_id]
            await self._queue(partition_id)
            if self._connection is None:
                raise Unavailable(f"{self._where}: queue not started")
            channel = await self._connection.channel()
            queue = await channel.declare_queue(self.queue_name(partition_id), passive=True)
            # Not consuming yet: the first pull starts a consumer sized for what it asks.
            consumer = self._consumers[partition_id] = _Consumer(channel, queue)
            return consumer

    def _size(self, want: int) -> int:
        """The window for `want` deliveries in hand (held + asked for): a quarter more, so
        that the usual ups and downs of what an agent holds need no resize."""
        return want + max(self.prefetch - 1, want // 4)

    def _occupancy(self, partition_id: str, consumer: _Consumer) -> tuple[int, int]:
        """Deliveries of the partition we hold: in all, and those of the current consumer."""
        total = current = 0
        for partition, message in self._held.values():
            if partition == partition_id:
                total += 1
                current += message.consumer_tag == consumer.tag
        return total, current

    def _unseen(self, consumer: _Consumer, held_current: int) -> int:
        """Deliveries we have or may get without asking: the buffer, and the room the current
        consumer's window leaves (deliveries on their way are part of it)."""
        buffered_current = sum(
            1 for entry in consumer.buffer if entry[2].consumer_tag == consumer.tag
        )
        room = consumer.window - held_current - buffered_current
        return len(consumer.buffer) + max(room, 0)

    async def _fit(self, partition_id: str, consumer: _Consumer, count: int) -> None:
        """Start a consumer with a wider window when the current one (if any) cannot bring
        `count` deliveries more (see the module docstring)."""
        held, held_current = self._occupancy(partition_id, consumer)
        if self._unseen(consumer, held_current) < count:
            await self._resubscribe(consumer, self._size(held + count))

    async def _resubscribe(self, consumer: _Consumer, window: int) -> None:
        """Start a consumer with `window` unacked deliveries at most (cancelling the current
        one). Its predecessors' deliveries stay ours and ackable: they belong to the channel."""

        async def on_message(message: AbstractIncomingMessage) -> None:
            entry = (-(message.priority or 0), next(self._serial), message)
            heapq.heappush(consumer.buffer, entry)
            consumer.arrived.set()
            if consumer.watcher is None and len(consumer.buffer) > self.prefetch:
                consumer.watcher = asyncio.create_task(self._watch(consumer))

        window = min(window, MAX_PREFETCH)
        if consumer.tag:
            await self._cancel(consumer)
        if consumer.qos != window:
            await consumer.channel.set_qos(prefetch_count=window)
            consumer.qos = window
        consumer.tag = await consumer.queue.consume(on_message, no_ack=False)
        consumer.window = window
        self.subscriptions += 1

    async def _watch(self, consumer: _Consumer) -> None:
        """Give back the buffer when deliveries linger in it: acks free room in the window
        that the broker fills at once, and an agent busy with long tasks pulls seldom or
        not at all. When a delivery has waited LINGER seconds or more while the buffer holds
        more than `prefetch`, the consumer is cancelled and all but the `prefetch` first
        go back to the broker, for the other agents; the next pull that finds the buffer
        short starts a consumer sized for what is held then."""
        try:
            seen = -1  # the newest delivery in the buffer at the last look
            while len(consumer.buffer) > self.prefetch:
                if any(entry[1] <= seen for entry in consumer.buffer):
                    async with consumer.lock:
                        if consumer.tag:
                            await self._cancel(consumer)
                        await self._give_back_buffer(consumer, keep=self.prefetch)
                    return
                seen = max(entry[1] for entry in consumer.buffer)
                await asyncio.sleep(LINGER)
        except (aio_pika.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
            log.debug("could not give back the buffer of %s: %s", consumer.queue.name, exc)
        finally:
            consumer.watcher = None

    async def _cancel(self, consumer: _Consumer) -> None:
        # Deliveries sent before CancelOk still reach on_message (frames are ordered).
        tag, consumer.tag, consumer.window = consumer.tag, "", 0
        await consumer.queue.cancel(tag)

    async def _give_back_buffer(self, consumer: _Consumer, keep: int) -> None:
        """Requeue the buffered deliveries but the `keep` first in order."""
        kept = [heapq.heappop(consumer.buffer) for _ in range(min(keep, len(consumer.buffer)))]
        surplus, consumer.buffer = consumer.buffer, kept  # a sorted list is a heap
        for _, _, message in surplus:
            if _alive(message):
                await _settle(message.nack(requeue=True))

    async def pull(
        self, partition_id: str, count: int, lease: float, wait: bool = True
    ) -> list[QueueMessage]:
        """Up to `count` buffered deliveries, waiting at most `pull_wait` for the first one
        (unless `wait` is False).

        `lease` is not needed: a delivery stays ours until acked, released, or our
        connection is lost."""
        if count <= 0:
            return []
        consumer = await self._consumer(partition_id)
        async with consumer.lock:
            await self._fit(partition_id, consumer, count)
        if not consumer.buffer:
            if not wait:
                return []
            consumer.arrived.clear()
            try:
                async with asyncio.timeout(self.pull_wait):
                    await consumer.arrived.wait()
            except TimeoutError:
                return []
        pulled: list[QueueMessage] = []
        while consumer.buffer and len(pulled) < count:
            message = heapq.heappop(consumer.buffer)[2]
            if not _alive(message):
                continue  # its channel died: the broker has requeued it already
            receipt = f"{partition_id}:{next(self._serial)}:{message.delivery_tag}"
            self._held[receipt] = (partition_id, message)
            pulled.append(QueueMessage(message.body.decode(), partition_id, receipt))
        return pulled

    def _held_on(self, partition_id: str) -> int:
        return sum(1 for partition, _ in self._held.values() if partition == partition_id)

    def _take(self, messages: list[QueueMessage]) -> list[tuple[str, AbstractIncomingMessage]]:
        """The deliveries behind these receipts that are still ours (unknown ones are ignored)."""
        taken = [self._held.pop(message.receipt, None) for message in messages]
        return [held for held in taken if held is not None and _alive(held[1])]

    async def ack(self, messages: list[QueueMessage]) -> None:
        for _, message in self._take(messages):
            await _settle(message.ack())

    async def release(self, messages: list[QueueMessage], delay: float = 0.0) -> None:
        deliveries = self._take(messages)
        await self._stop_refill(deliveries)
        if delay <= 0:
            for _, message in deliveries:
                await _settle(message.nack(requeue=True))
            return
        ttl = max(1, math.ceil(delay * 1000 / DELAY_STEP_MS)) * DELAY_STEP_MS
        by_partition: dict[str, list[AbstractIncomingMessage]] = {}
        for partition_id, message in deliveries:
            by_partition.setdefault(partition_id, []).append(message)
        for partition_id, group in by_partition.items():
            name = f"{self.queue_name(partition_id)}.delay.{ttl}"
            self.declared.add(name)
            try:
                # Redeclared on every use: `x-expires` counts from the last declaration, and
                # publishing alone would not keep the queue (and its messages) alive.
                await self._channel().declare_queue(
                    name,
                    durable=True,
                    robust=False,
                    arguments={
                        "x-message-ttl": ttl,
                        "x-expires": ttl + DELAY_QUEUE_IDLE_MS,
                        "x-dead-letter-exchange": "",
                        "x-dead-letter-routing-key": self.queue_name(partition_id),
                    },
                )
                await self._publish(name, [(m.body, m.priority) for m in group])
            except Exception:
                # Not delayed then, but not stuck with us either: visible again right away.
                for message in group:
                    await _settle(message.nack(requeue=True))
                raise
            for message in group:
                await _settle(message.ack())

    async def _stop_refill(self, deliveries: list[tuple[str, AbstractIncomingMessage]]) -> None:
        """Before more than `prefetch` deliveries of a consumer are given back (an agent
        hands back its window of tasks ahead: the one it runs is long): cancel it, so that
        the room they leave is not filled again by the same messages, and trim its buffer
        to `prefetch`. The next pull that finds the buffer short starts a consumer sized
        for what is held then."""
        for partition_id in {partition for partition, _ in deliveries}:
            consumer = self._consumers.get(partition_id)
            if consumer is None or not consumer.tag:
                continue
            freed = sum(
                1
                for partition, message in deliveries
                if partition == partition_id and message.consumer_tag == consumer.tag
            )
            if freed > self.prefetch:
                async with consumer.lock:
                    if consumer.tag:
                        await self._cancel(consumer)
                    await self._give_back_buffer(consumer, keep=self.prefetch)

    async def extend(self, messages: list[QueueMessage], lease: float) -> None:
        """Nothing to do: RabbitMQ keeps a delivery with its consumer until it is settled."""

    async def depth(self, partition_id: str) -> int:
        """Ready messages in the broker plus the deliveries this instance holds.

        AMQP reports only ready messages; other consumers' unacked deliveries and delayed
        releases are not visible without the management API, so they are not counted."""
        result = await (await self._queue(partition_id)).declare()
        consumer = self._consumers.get(partition_id)
        buffered = sum(1 for entry in consumer.buffer if _alive(entry[2])) if consumer else 0
        return int(result.message_count or 0) + buffered + self._held_on(partition_id)


def _alive(message: AbstractIncomingMessage) -> bool:
    """Whether the delivery's channel is still open (otherwise it was requeued by the broker)."""
    try:
        message.channel  # noqa: B018 - raises once the channel is closed
    except aio_pika.exceptions.ChannelInvalidStateError:
        return False
    return True


async def _settle(operation: Any) -> None:
    """Ack/nack, tolerating a channel lost meanwhile (the broker then redelivers: at least once)."""
    try:
        await operation
    except (aio_pika.exceptions.AMQPError, RuntimeError) as exc:
        log.warning("could not settle a RabbitMQ delivery (%s); it will be redelivered", exc)
