"""NATS JetStream as pyarmonik's queue: `nats://[USER:PASSWORD@]HOST:PORT[?OPTIONS]`.

- One work-queue stream per partition (`{prefix}_{partition}`), one subject per priority
  level (`{prefix}.{partition}.{level}`) and one durable pull consumer per level: ArmoniK's
  priorities 1..99 are folded onto `levels` levels (default 5), higher levels pulled first,
  arrival order within a level (JetStream keeps a stream in order; a redelivered message
  comes back at its place).
- Leases: a consumer's ack wait is fixed (`ack_wait`, default 10 s) while pulls ask for any
  lease, so this adapter keeps each held message alive with `+WPI` (work in progress) every
  third of the ack wait until its lease is over; when the process dies, JetStream redelivers
  within one ack wait. A lease is thus at least `ack_wait`.
- ack `+ACK`, release `-NAK` (with a delay: `-NAK {"delay": ns}`), extend: a later deadline.
  The receipt is the delivery's reply subject, so any connection can settle it.
- No fair share between sessions (a stream cannot be reordered): declared `unsupported`.

Options: `prefix` (default `pyarmonik`), `levels`, `ack_wait` (seconds), `pull_wait`
(seconds a waiting pull polls for a first message, default 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import time
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig
from nats.js.errors import NotFoundError

from pyarmonik.domain.errors import Unavailable
from pyarmonik.storage.database import Database
from pyarmonik.storage.queue import QueueMessage

__all__ = ["NatsQueue", "open_queue"]
log = logging.getLogger(__name__)

MAX_PRIORITY = 99
POLL = 0.05
PUBLISH_WINDOW = 256


def open_queue(url: str, database: Database, fair: bool) -> NatsQueue:
    """The `pyarmonik.queues` entry point for `nats://` URLs."""
    return NatsQueue(url, fair=fair)


def _token(name: str) -> str:
    """`name` as one subject token and stream-name part ([A-Za-z0-9_-]); a hash keeps
    distinct names distinct when characters had to be replaced."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", name)
    if safe != name or not safe:
        safe += "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return safe


class NatsQueue:
    unsupported = {
        "fair_share": "a JetStream stream is served in its own order; sessions take no turns",
    }

    def __init__(self, url: str, fair: bool = True) -> None:
        parts = urlsplit(url)
        options = dict(parse_qsl(parts.query))
        self.prefix = _token(options.pop("prefix", "pyarmonik"))
        self.levels = max(1, int(options.pop("levels", "5")))
        self.ack_wait = float(options.pop("ack_wait", "10"))
        self.pull_wait = float(options.pop("pull_wait", "1"))
        self.fair = fair  # accepted for the port; the order is the stream's
        self.server = urlunsplit(parts._replace(query=urlencode(options)))
        self.address = f"{parts.hostname}:{parts.port or 4222}"
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self.ensured: set[tuple[str, int | None]] = set()
        self.held: dict[str, float] = {}  # receipt -> lease deadline (time.monotonic())
        self.keeper: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------------- life cycle

    async def start(self) -> None:
        try:
            # A few attempts first, so that a wrong address fails start() clearly...
            self.nc = await nats.connect(
                self.server,
                connect_timeout=5,
                max_reconnect_attempts=2,
                reconnect_time_wait=0.5,
                error_cb=self._error,
            )
        except Exception as error:  # nats raises several kinds; the password must not leak
            raise Unavailable(
                f"NATS unreachable at {self.address} ({type(error).__name__})"
            ) from None
        # ...then, once connected, reconnect for as long as it takes (a restarting server).
        self.nc.options["max_reconnect_attempts"] = -1
        self.js = self.nc.jetstream()
        self.keeper = asyncio.create_task(self._keep_leases())

    async def _error(self, error: Exception) -> None:
        log.warning("NATS at %s: %s", self.address, type(error).__name__)

    async def close(self) -> None:
        if self.keeper is not None:
            self.keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.keeper
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.close()

    async def check_health(self) -> None:
        try:
            await self._js().account_info()
        except Exception as error:
            raise Unavailable(f"NATS JetStream at {self.address}: {type(error).__name__}") from None

    async def drop(self) -> None:
        """Delete every stream of this prefix (test teardown)."""
        js = self._js()
        for info in await js.streams_info():
            if info.config.name and info.config.name.startswith(f"{self.prefix}_"):
                with contextlib.suppress(NotFoundError):
                    await js.delete_stream(info.config.name)

    # ---------------------------------------------------------------------------- naming

    def _js(self) -> JetStreamContext:
        if self.js is None:
            raise Unavailable("the NATS queue is not started")
        return self.js

    def stream(self, partition_id: str) -> str:
        return f"{self.prefix}_{_token(partition_id)}"

    def subject(self, partition_id: str, level: int) -> str:
        return f"{self.prefix}.{_token(partition_id)}.{level}"

    def level(self, priority: int) -> int:
        """1..99 onto 0..levels-1, monotonic; out-of-range priorities clamp."""
        clamped = min(max(priority, 1), MAX_PRIORITY)
        return (clamped - 1) * self.levels // MAX_PRIORITY

    async def _ensure_stream(self, partition_id: str) -> None:
        if (partition_id, None) in self.ensured:
            return
        name = self.stream(partition_id)
        config = StreamConfig(
            name=name,
            subjects=[f"{self.prefix}.{_token(partition_id)}.*"],
            retention=RetentionPolicy.WORK_QUEUE,
        )
        try:
            await self._js().add_stream(config)
        except Exception:
            # Made by another process, perhaps with other limits: use it as it is.
            await self._js().stream_info(name)
        self.ensured.add((partition_id, None))

    async def _ensure_consumer(self, partition_id: str, level: int) -> str:
        durable = f"level{level}"
        if (partition_id, level) not in self.ensured:
            await self._js().add_consumer(
                self.stream(partition_id),
                ConsumerConfig(
                    durable_name=durable,
                    filter_subject=self.subject(partition_id, level),
                    ack_policy=AckPolicy.EXPLICIT,
                    ack_wait=self.ack_wait,
                    max_deliver=-1,
                    max_ack_pending=-1,
                ),
            )
            self.ensured.add((partition_id, level))
        return durable

    # ------------------------------------------------------------------------------ port

    async def push(
        self, partition_id: str, messages: list[tuple[str, int]], session_id: str = ""
    ) -> None:
        await self._ensure_stream(partition_id)
        js = self._js()
        # Published concurrently, PUBLISH_WINDOW at a time, each acknowledged by the stream
        # (persisted) before this returns.
        for start in range(0, len(messages), PUBLISH_WINDOW):
            await asyncio.gather(
                *(
                    js.publish(self.subject(partition_id, self.level(priority)), task_id.encode())
                    for task_id, priority in messages[start : start + PUBLISH_WINDOW]
                )
            )

    async def pull(
        self, partition_id: str, count: int, lease: float, wait: bool = True
    ) -> list[QueueMessage]:
        deadline = time.monotonic() + (self.pull_wait if wait else 0.0)
        while True:
            got = await self._pull_once(partition_id, count)
            if got or time.monotonic() >= deadline:
                break
            await asyncio.sleep(POLL)
        until = time.monotonic() + lease
        for message in got:
            self.held[message.receipt] = until
        return got

    async def _pull_once(self, partition_id: str, count: int) -> list[QueueMessage]:
        try:
            info = await self._js().stream_info(
                self.stream(partition_id), subjects_filter=f"{self.prefix}.>"
            )
        except NotFoundError:
            return []
        waiting = info.state.subjects or {}
        got: list[QueueMessage] = []
        for level in reversed(range(self.levels)):
            if len(got) >= count:
                break
            if not waiting.get(self.subject(partition_id, level)):
                continue
            durable = await self._ensure_consumer(partition_id, level)
            got += await self._next(partition_id, durable, count - len(got))
        return got

    async def _next(self, partition_id: str, durable: str, batch: int) -> list[QueueMessage]:
        """Up to `batch` messages at hand on one consumer (a no-wait pull request)."""
        assert self.nc is not None
        inbox = self.nc.new_inbox()
        subscription = await self.nc.subscribe(inbox)
        got: list[QueueMessage] = []
        try:
            await self.nc.publish(
                f"$JS.API.CONSUMER.MSG.NEXT.{self.stream(partition_id)}.{durable}",
                json.dumps({"batch": batch, "no_wait": True}).encode(),
                reply=inbox,
            )
            while len(got) < batch:
                try:
                    message = await subscription.next_msg(timeout=5)
                except nats.errors.TimeoutError:
                    break
                if JetStreamContext.is_status_msg(message):
                    break  # 404 no messages / 408 request expired: nothing more at hand
                got.append(QueueMessage(message.data.decode(), partition_id, message.reply))
        finally:
            await subscription.unsubscribe()
        return got

    async def _settle(self, messages: list[QueueMessage], body: bytes) -> None:
        assert self.nc is not None
        for message in messages:
            self.held.pop(message.receipt, None)
            await self.nc.publish(message.receipt, body)
        await self.nc.flush()  # the server has read them when this returns

    async def ack(self, messages: list[QueueMessage]) -> None:
        await self._settle(messages, b"+ACK")

    async def release(self, messages: list[QueueMessage], delay: float = 0.0) -> None:
        body = b"-NAK"
        if delay > 0:
            body += b" " + json.dumps({"delay": int(delay * 1_000_000_000)}).encode()
        await self._settle(messages, body)

    async def extend(self, messages: list[QueueMessage], lease: float) -> None:
        until = time.monotonic() + lease
        assert self.nc is not None
        for message in messages:
            self.held[message.receipt] = until
            await self.nc.publish(message.receipt, b"+WPI")
        await self.nc.flush()

    async def depth(self, partition_id: str) -> int:
        try:
            info = await self._js().stream_info(self.stream(partition_id))
        except NotFoundError:
            return 0
        return int(info.state.messages)

    async def _keep_leases(self) -> None:
        """`+WPI` for each held message whose lease runs, every third of the ack wait."""
        while True:
            await asyncio.sleep(self.ack_wait / 3)
            now = time.monotonic()
            assert self.nc is not None
            for receipt, until in list(self.held.items()):
                if until <= now:
                    del self.held[receipt]  # lease over: JetStream redelivers it
                    continue
                with contextlib.suppress(Exception):
                    await self.nc.publish(receipt, b"+WPI")
