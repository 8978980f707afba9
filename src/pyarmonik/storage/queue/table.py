"""A queue kept in a table of the database itself (SQLite, or PostgreSQL with SKIP LOCKED).

Messages are rows; pulling leases them (`visible_at` in the future) under a fresh receipt,
so a consumer that dies simply lets its lease run out and the message is seen again.

Idle consumers wait on `Database.wait_for_changes`: a message pushed with `push_within` comes
with its task becoming SUBMITTED in the same transaction, which grows the change log and so
wakes them (SQLite wakes them on any commit). On PostgreSQL, whose NOTIFY comes from the
change log only, a message made visible without a task change (`push`, `release` without
delay) sends the notification itself; messages that become visible with time (a delay or a
lease that ran out) are seen at the consumers' fallback look.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from pyarmonik.storage.database import Database, Repository
from pyarmonik.storage.database.postgres import CHANNEL
from pyarmonik.storage.database.sql import chunks
from pyarmonik.storage.queue import QueueMessage

SCHEMAS = {
    "sqlite": """
        CREATE TABLE IF NOT EXISTS queue (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            partition_id TEXT NOT NULL,
            priority INTEGER NOT NULL,
            task_id TEXT NOT NULL,
            visible_at REAL NOT NULL,
            receipt TEXT NOT NULL DEFAULT ''
        )""",
    "postgres": """
        CREATE TABLE IF NOT EXISTS queue (
            id BIGSERIAL PRIMARY KEY,
            partition_id TEXT NOT NULL,
            priority INTEGER NOT NULL,
            task_id TEXT NOT NULL,
            visible_at DOUBLE PRECISION NOT NULL,
            receipt TEXT NOT NULL DEFAULT ''
        )""",
}
INDEX = "CREATE INDEX IF NOT EXISTS queue_pull ON queue (partition_id, priority DESC, id)"
# PostgreSQL lets concurrent pullers skip each other's rows instead of queueing on them.
SKIP_LOCKED = {"sqlite": "", "postgres": " FOR UPDATE SKIP LOCKED"}


class TableQueue:
    def __init__(self, database: Database):
        self.database = database
        self.kind: str = getattr(database, "name", "sqlite")

    async def start(self) -> None:
        async with self.database.write() as repository:
            if self.kind == "postgres":
                # CREATE ... IF NOT EXISTS races when several processes start at once.
                await repository.connection.execute("SELECT pg_advisory_xact_lock(4242)")
            await repository.connection.execute(SCHEMAS[self.kind])
            await repository.connection.execute(INDEX)

    async def close(self) -> None:
        return None

    async def check_health(self) -> None:
        await self.database.check_health()

    async def push(self, partition_id: str, messages: list[tuple[str, int]]) -> None:
        if messages:
            async with self.database.write() as repository:
                await self.push_within(repository, partition_id, messages)
                await self._notify_within(repository)

    async def _notify_within(self, repository: Repository) -> None:
        """Wake PostgreSQL's waiters at commit (the listeners' payload is the schema)."""
        if self.kind == "postgres":
            await repository.connection.execute("SELECT pg_notify(?, current_schema())", [CHANNEL])

    async def push_within(
        self, repository: Repository, partition_id: str, messages: list[tuple[str, int]]
    ) -> None:
        now = time.time()
        await repository.connection.executemany(
            "INSERT INTO queue (partition_id, priority, task_id, visible_at) VALUES (?, ?, ?, ?)",
            [(partition_id, priority, task_id, now) for task_id, priority in messages],
        )

    async def pull(self, partition_id: str, count: int, lease: float) -> list[QueueMessage]:
        async with self.database.write() as repository:
            return await self.pull_within(repository, partition_id, count, lease)

    async def visible(self, partition_id: str) -> bool:
        async with self.database.read() as repository:
            rows = await repository.connection.fetch(
                "SELECT 1 AS found FROM queue WHERE partition_id = ? AND visible_at <= ? LIMIT 1",
                [partition_id, time.time()],
            )
        return bool(rows)

    async def pull_within(
        self, repository: Repository, partition_id: str, count: int, lease: float
    ) -> list[QueueMessage]:
        now = time.time()
        receipt = uuid.uuid4().hex
        rows = await repository.connection.fetch(
            "UPDATE queue SET visible_at = ?, receipt = ? WHERE id IN ("
            "SELECT id FROM queue WHERE partition_id = ? AND visible_at <= ? "
            f"ORDER BY priority DESC, id LIMIT ?{SKIP_LOCKED[self.kind]}) "
            "RETURNING id, task_id, priority",
            [now + lease, receipt, partition_id, now, count],
        )
        rows.sort(key=lambda row: (-row["priority"], row["id"]))
        return [
            QueueMessage(row["task_id"], partition_id, f"{row['id']}:{receipt}") for row in rows
        ]

    async def ack(self, messages: list[QueueMessage]) -> None:
        await self._by_receipt(messages, "DELETE FROM queue", [])

    async def release(self, messages: list[QueueMessage], delay: float = 0.0) -> None:
        if not messages:
            return
        async with self.database.write() as repository:
            await self._apply(
                repository,
                messages,
                "UPDATE queue SET visible_at = ?, receipt = ''",
                [time.time() + delay],
            )
            if delay <= 0:
                await self._notify_within(repository)

    async def extend(self, messages: list[QueueMessage], lease: float) -> None:
        await self._by_receipt(messages, "UPDATE queue SET visible_at = ?", [time.time() + lease])

    async def depth(self, partition_id: str) -> int:
        async with self.database.read() as repository:
            rows = await repository.connection.fetch(
                "SELECT COUNT(*) AS n FROM queue WHERE partition_id = ?", [partition_id]
            )
        return int(rows[0]["n"])

    def shares(self, database: object) -> bool:
        return database is self.database

    async def ack_within(self, repository: Repository, messages: list[QueueMessage]) -> None:
        await self._apply(repository, messages, "DELETE FROM queue", [])

    async def _by_receipt(
        self, messages: list[QueueMessage], statement: str, params: list[Any]
    ) -> None:
        if messages:
            async with self.database.write() as repository:
                await self._apply(repository, messages, statement, params)

    @staticmethod
    async def _apply(
        repository: Repository, messages: list[QueueMessage], statement: str, params: list[Any]
    ) -> None:
        """Apply a statement to the rows still held under these deliveries' receipts
        (a message whose lease expired and was pulled again is someone else's now)."""
        pairs = [message.receipt.split(":", 1) for message in messages]
        for part in chunks(pairs, 500):
            condition = " OR ".join("(id = ? AND receipt = ?)" for _ in part)
            flat = [value for id_, receipt in part for value in (int(id_), receipt)]
            await repository.connection.execute(f"{statement} WHERE {condition}", [*params, *flat])
