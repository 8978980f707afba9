"""Amazon SQS as pyarmonik's queue: `sqs://[KEY:SECRET@]REGION/[?OPTIONS]`.

- One standard queue per partition and priority level, `{prefix}-{partition}-{level}`:
  ArmoniK's priorities 1..99 are folded onto `levels` levels (default 5) and a pull takes
  from the highest level first. Within a level the order is SQS's best effort (standard
  queues are not FIFO, and FIFO queues would serialise a whole message group): declared.
  A consumer lists a partition's level queues at most every LIST_TTL (1 s), so a level
  first used by another process is seen up to a second late.
- Leases are SQS visibility timeouts (whole seconds, at least 1, at most 12 h): a pull sets
  the lease, `extend` and `release(delay)` change it, `ack` deletes. A dead consumer's
  messages come back when their visibility timeout ends.
- Queues keep messages 14 days (SQS's maximum retention): a task waiting longer is lost.
- No fair share between sessions (SQS cannot reorder): declared `unsupported`.

Options: `endpoint` (an SQS-compatible server, e.g. moto or ElasticMQ), `prefix` (default
`pyarmonik`), `levels`, `pull_wait` (seconds a waiting pull polls for a first message,
default 1). Credentials: from the URL, else the standard AWS environment and files.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import time
from contextlib import AsyncExitStack
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from pyarmonik.domain.errors import Unavailable
from pyarmonik.storage.database import Database
from pyarmonik.storage.queue import QueueMessage

__all__ = ["SqsQueue", "open_queue"]

MAX_PRIORITY = 99
MAX_VISIBILITY = 12 * 3600
RETENTION = 14 * 24 * 3600
BATCH = 10  # SQS's limit for every batch call
LIST_TTL = 1.0  # seconds the list of a partition's queues serves pulls
POLL = 0.05


def open_queue(url: str, database: Database, fair: bool) -> SqsQueue:
    """The `pyarmonik.queues` entry point for `sqs://` URLs."""
    return SqsQueue(url, fair=fair)


def _token(name: str) -> str:
    """`name` within SQS's queue-name alphabet; a hash keeps distinct names distinct."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", name)
    if safe != name or not safe or len(safe) > 40:
        safe = safe[:30] + "_" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return safe


def _seconds(value: float) -> int:
    return min(MAX_VISIBILITY, max(0, math.ceil(value)))


class SqsQueue:
    unsupported = {
        "fair_share": "SQS cannot reorder the messages it holds; sessions take no turns",
        "arrival_order": "SQS standard queues deliver in best-effort order",
    }

    def __init__(self, url: str, fair: bool = True) -> None:
        parts = urlsplit(url)
        options = dict(parse_qsl(parts.query))
        self.region = parts.hostname or "us-east-1"
        self.endpoint = options.get("endpoint")
        self.prefix = _token(options.get("prefix", "pyarmonik"))
        self.levels = max(1, int(options.get("levels", "5")))
        self.pull_wait = float(options.get("pull_wait", "1"))
        self.fair = fair  # accepted for the port; SQS's order is its own
        self._access_key = unquote(parts.username) if parts.username else None
        self._secret_key = unquote(parts.password) if parts.password else None
        self._stack: AsyncExitStack | None = None
        self._client: Any = None
        self.urls: dict[tuple[str, int], str] = {}  # (partition, level) -> queue URL
        self.listed: dict[str, tuple[float, dict[int, str]]] = {}

    @property
    def _where(self) -> str:
        return f"SQS at {self.endpoint or 'AWS ' + self.region}"

    # ------------------------------------------------------------------------- life cycle

    def _connect(self, attempts: int) -> Any:
        return get_session().create_client(
            "sqs",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=self._access_key,
            aws_secret_access_key=self._secret_key,
            config=AioConfig(
                retries={"max_attempts": attempts, "mode": "standard"}, connect_timeout=5
            ),
        )

    async def start(self) -> None:
        try:
            # Without retries, so that a wrong address or credentials fail fast and clearly.
            async with self._connect(attempts=1) as probe:
                await probe.list_queues(QueueNamePrefix=self.prefix, MaxResults=1)
        except (BotoCoreError, ClientError, OSError) as error:
            raise Unavailable(f"{self._where} is unavailable ({type(error).__name__})") from None
        # From now on, transient errors (a restarting server, throttling) are retried.
        stack = AsyncExitStack()
        self._client = await stack.enter_async_context(self._connect(attempts=5))
        self._stack = stack

    async def close(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()
        self._stack = self._client = None

    async def check_health(self) -> None:
        try:
            await self.client.list_queues(QueueNamePrefix=self.prefix, MaxResults=1)
        except (BotoCoreError, ClientError, OSError) as error:
            raise Unavailable(f"{self._where} is unavailable ({type(error).__name__})") from None

    @property
    def client(self) -> Any:
        if self._client is None:
            raise Unavailable(f"{self._where}: queue not started")
        return self._client

    async def drop(self) -> None:
        """Delete every queue of this prefix (test teardown)."""
        listed = await self.client.list_queues(QueueNamePrefix=f"{self.prefix}-")
        for url in listed.get("QueueUrls", []):
            await self.client.delete_queue(QueueUrl=url)

    # ---------------------------------------------------------------------------- naming

    def name(self, partition_id: str, level: int) -> str:
        return f"{self.prefix}-{_token(partition_id)}-{level}"

    def level(self, priority: int) -> int:
        """1..99 onto 0..levels-1, monotonic; out-of-range priorities clamp."""
        clamped = min(max(priority, 1), MAX_PRIORITY)
        return (clamped - 1) * self.levels // MAX_PRIORITY

    async def _queue_url(self, partition_id: str, level: int) -> str:
        key = (partition_id, level)
        if key not in self.urls:
            made = await self.client.create_queue(
                QueueName=self.name(partition_id, level),
                Attributes={"MessageRetentionPeriod": str(RETENTION)},
            )
            self.urls[key] = made["QueueUrl"]
            self.listed.pop(partition_id, None)
        return self.urls[key]

    async def _existing(self, partition_id: str) -> dict[int, str]:
        """The level queues of a partition that exist (made by any process)."""
        now = time.monotonic()
        cached = self.listed.get(partition_id)
        if cached and now - cached[0] < LIST_TTL:
            return cached[1]
        stem = f"{self.prefix}-{_token(partition_id)}-"
        listed = await self.client.list_queues(QueueNamePrefix=stem)
        found: dict[int, str] = {}
        for url in listed.get("QueueUrls", []):
            level = url.rsplit("/", 1)[-1].removeprefix(stem)
            if level.isdigit() and url.rsplit("/", 1)[-1] == stem + level:
                found[int(level)] = url
                self.urls[(partition_id, int(level))] = url
        self.listed[partition_id] = (now, found)
        return found

    # ------------------------------------------------------------------------------ port

    async def push(
        self, partition_id: str, messages: list[tuple[str, int]], session_id: str = ""
    ) -> None:
        by_level: dict[int, list[str]] = {}
        for task_id, priority in messages:
            by_level.setdefault(self.level(priority), []).append(task_id)
        for level, task_ids in by_level.items():
            url = await self._queue_url(partition_id, level)
            for start in range(0, len(task_ids), BATCH):
                entries = [
                    {"Id": str(n), "MessageBody": task_id}
                    for n, task_id in enumerate(task_ids[start : start + BATCH])
                ]
                sent = await self.client.send_message_batch(QueueUrl=url, Entries=entries)
                if sent.get("Failed"):
                    failed = sent["Failed"][0]
                    raise Unavailable(f"{self._where} refused a message ({failed.get('Code')})")

    async def pull(
        self, partition_id: str, count: int, lease: float, wait: bool = True
    ) -> list[QueueMessage]:
        deadline = time.monotonic() + (self.pull_wait if wait else 0.0)
        visibility = max(1, _seconds(lease))
        while True:
            got: list[QueueMessage] = []
            existing = await self._existing(partition_id)
            for level in sorted(existing, reverse=True):
                while len(got) < count:
                    received = await self.client.receive_message(
                        QueueUrl=existing[level],
                        MaxNumberOfMessages=min(BATCH, count - len(got)),
                        VisibilityTimeout=visibility,
                        WaitTimeSeconds=0,
                    )
                    batch = received.get("Messages", [])
                    got += [
                        QueueMessage(
                            m["Body"], partition_id, f"{existing[level]}\n{m['ReceiptHandle']}"
                        )
                        for m in batch
                    ]
                    if not batch:
                        break
            if got or time.monotonic() >= deadline:
                return got
            await asyncio.sleep(POLL)

    @staticmethod
    def _by_queue(messages: list[QueueMessage]) -> dict[str, list[str]]:
        grouped: dict[str, list[str]] = {}
        for message in messages:
            url, handle = message.receipt.split("\n", 1)
            grouped.setdefault(url, []).append(handle)
        return grouped

    async def ack(self, messages: list[QueueMessage]) -> None:
        # A stale receipt (acked twice, or redelivered since) fails quietly: nothing to undo.
        for url, handles in self._by_queue(messages).items():
            for start in range(0, len(handles), BATCH):
                entries = [
                    {"Id": str(n), "ReceiptHandle": handle}
                    for n, handle in enumerate(handles[start : start + BATCH])
                ]
                await self.client.delete_message_batch(QueueUrl=url, Entries=entries)

    async def _visibility(self, messages: list[QueueMessage], seconds: int) -> None:
        for url, handles in self._by_queue(messages).items():
            for start in range(0, len(handles), BATCH):
                entries = [
                    {"Id": str(n), "ReceiptHandle": handle, "VisibilityTimeout": seconds}
                    for n, handle in enumerate(handles[start : start + BATCH])
                ]
                await self.client.change_message_visibility_batch(QueueUrl=url, Entries=entries)

    async def release(self, messages: list[QueueMessage], delay: float = 0.0) -> None:
        await self._visibility(messages, _seconds(delay))

    async def extend(self, messages: list[QueueMessage], lease: float) -> None:
        await self._visibility(messages, max(1, _seconds(lease)))

    async def depth(self, partition_id: str) -> int:
        self.listed.pop(partition_id, None)
        total = 0
        for url in (await self._existing(partition_id)).values():
            attributes = await self.client.get_queue_attributes(
                QueueUrl=url,
                AttributeNames=[
                    "ApproximateNumberOfMessages",
                    "ApproximateNumberOfMessagesNotVisible",
                    "ApproximateNumberOfMessagesDelayed",
                ],
            )
            total += sum(int(value) for value in attributes.get("Attributes", {}).values())
        return total
