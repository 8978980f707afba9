"""A queue kept in a table of the database itself (SQLite, or PostgreSQL with SKIP LOCKED).

Messages are rows; pulling leases them (`visible_at` in the future) under a fresh receipt,
so a consumer that dies simply lets its lease run out and the message is seen again.

Idle consumers wait on `Database.wait_for_changes`: a message pushed with `push_within` comes
with its task becoming SUBMITTED in the same transaction, which grows the change log and so
wakes them (SQLite wakes them on any commit). On PostgreSQL, whose NOTIFY comes from the
change log only, a message made visible without a task change (`push`, `release` without
delay) sends the notification itself; messages that become visible with time (a delay or a
lease that ran out) are seen at the consumers' fallback look.

Fair share (`fair=True`, the default): within a partition and a priority, sessions are served
in turn. Each message carries a virtual time `vtime`: a session's messages take the next
values after its own last queued one, and a session with nothing queued starts at the head of
the queue (the lowest `vtime` waiting), so its first message is served next and the rest
alternate with the other sessions' (start-time fair queuing, one share per session). Pulls
take `ORDER BY priority DESC, vtime, id`: priority first, then turns, then arrival. With
`fair=False` every message gets `vtime` 0: strict FIFO within a priority, ArmoniK's order.
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
            receipt TEXT NOT NULL DEFAULT '',
            session_id TEXT NOT NULL DEFAULT '',
            vtime INTEGER NOT NULL DEFAULT 0
        )""",
    "postgres": """
        CREATE TABLE IF NOT EXISTS queue (
            id BIGSERIAL PRIMARY KEY,
            partition_id TEXT NOT NULL,
            priority INTEGER NOT NULL,
            task_id TEXT NOT NULL,
            visible_at DOUBLE PRECISION NOT NULL,
            receipt TEXT NOT NULL DEFAULT '',
            session_id TEXT NOT NULL DEFAULT '',
            vtime BIGINT NOT NULL DEFAULT 0
        )""",
}
# Columns of fair share, added to a queue table made before them (`start`); BIGINT is an
# integer to SQLite too.
FAIR_COLUMNS = (("session_id", "TEXT NOT NULL DEFAULT ''"), ("vtime", "BIGINT NOT NULL DEFAULT 0"))
COLUMNS = {
    "sqlite": "SELECT name FROM pragma_table_info('queue')",
    "postgres": "SELECT column_name AS name FROM information_schema.columns "
    "WHERE table_schema = current_schema() AND table_name = 'queue'",
}
INDEXES = (
    # The pull order; it replaces `queue_pull` (partition_id, priority DESC, id).
    "CREATE INDEX IF NOT EXISTS queue_fair ON queue (partition_id, priority DESC, vtime, id)",
    # A session's last virtual time, read at each push.
    "CREATE INDEX IF NOT EXISTS queue_session ON queue (partition_id, session_id, priority, vtime)",
    "DROP INDEX IF EXISTS queue_pull",
)
# PostgreSQL lets concurrent pullers skip each other's rows instead of queueing on them.
SKIP_LOCKED = {"sqlite": "", "postgres": " FOR UPDATE SKIP LOCKED"}


class TableQueue:
    def __init__(self, database: Database, fair: bool = True):
        self.database = database
        self.kind: str = getattr(database, "name", "sqlite")
        self.fair = fair

    async def start(self) -> None:
        async with self.database.write() as repository:
            if self.kind == "postgres":
                # CREATE ... IF NOT EXISTS races when several processes start at once.
                await repository.connection.execute("SELECT pg_advisory_xact_lock(4242)")
            await repository.connection.execute(SCHEMAS[self.kind])
            await self._add_fair_columns(repository)
            for statement in INDEXES:
                await repository.connection.execute(statement)

    async def _add_fair_columns(self, repository: Repository) -> None:
        """A queue table made by an earlier version gets the fair-share columns (looked up
        first: on PostgreSQL even a no-op ALTER TABLE waits for every transaction on it)."""
        rows = await repository.connection.fetch(COLUMNS[self.kind])
        present = {row["name"] for row in rows}
        for column, definition in FAIR_COLUMNS:
            if column not in present:
                await repository.connection.execute(
                    f"ALTER TABLE queue ADD COLUMN {column} {definition}"
                )

    async def close(self) -> None:
        return None

    async def check_health(self) -> None:
        await self.database.check_health()

    async def push(
        self, partition_id: str, messages: list[tuple[str, int]], session_id: str = ""
    ) -> None:
        if messages:
            async with self.database.write() as repository:
                await self.push_within(repository, partition_id, messages, session_id)
                await self._notify_within(repository)

    async def _notify_within(self, repository: Repository) -> None:
        """Wake PostgreSQL's waiters at commit (the listeners' payload is the schema)."""
        if self.kind == "postgres":
            await repository.connection.execute("SELECT pg_notify(?, current_schema())", [CHANNEL])

    async def push_within(
        self,
        repository: Repository,
        partition_id: str,
        messages: list[tuple[str, int]],
        session_id: str = "",
    ) -> None:
        now = time.time()
        vtimes = [0] * len(messages)
        if self.fair:
            by_priority: dict[int, list[int]] = {}
            for index, (_, priority) in enumerate(messages):
                by_priority.setdefault(priority, []).append(index)
            for priority, indexes in by_priority.items():
                start = await self._next_vtime(repository, partition_id, priority, session_id, now)
                for offset, index in enumerate(indexes):
                    vtimes[index] = start + offset
        await repository.connection.executemany(
            "INSERT INTO queue (partition_id, priority, task_id, visible_at, session_id, vtime) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [
                (partition_id, priority, task_id, now, session_id, vtime)
                for (task_id, priority), vtime in zip(messages, vtimes, strict=True)
            ],
        )

    @staticmethod
    async def _next_vtime(
        repository: Repository, partition_id: str, priority: int, session_id: str, now: float
    ) -> int:
        """The virtual time of a session's next message at a priority: right after its last
        queued one, and never before the head of the queue (the lowest one waiting; with
        none waiting, the highest one held), so that a session that had nothing queued is
        served next and then in turn with the others. Two processes pushing at once may
        compute the same value: a tie, broken by arrival (`id`)."""
        [row] = await repository.connection.fetch(
            "SELECT (SELECT MIN(vtime) FROM queue WHERE partition_id = ? AND priority = ? "
            "AND visible_at <= ?) AS head, "
            "(SELECT MAX(vtime) FROM queue WHERE partition_id = ? AND priority = ?) AS top, "
            "(SELECT MAX(vtime) FROM queue WHERE partition_id = ? AND session_id = ? "
            "AND priority = ?) AS last",
            [partition_id, priority, now, partition_id, priority]
            + [partition_id, session_id, priority],
        )
        head = row["head"] if row["head"] is not None else (row["top"] or 0)
        last = row["last"]
        return int(head if last is None else max(head, last + 1))

    async def pull(
        self, partition_id: str, count: int, lease: float, wait: bool = True
    ) -> list[QueueMessage]:
        async with self.database.write() as repository:
            return await self.pull_within(repository, partition_id, count, lease)

    async def next_visible(self, partition_ids: list[str]) -> float | None:
        marks = ",".join("?" * len(partition_ids))
        async with self.database.read() as repository:
            # A visible message is found at once; only when none is (COALESCE stops at the
            # first value), the rows are scanned: then they are few, held or delayed ones.
            [row] = await repository.connection.fetch(
                f"SELECT COALESCE((SELECT visible_at FROM queue WHERE partition_id IN ({marks}) "
                f"AND visible_at <= ? LIMIT 1), (SELECT MIN(visible_at) FROM queue "
                f"WHERE partition_id IN ({marks}))) AS at",
                [*partition_ids, time.time(), *partition_ids],
            )
        return None if row["at"] is None else float(row["at"])

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
            f"ORDER BY priority DESC, vtime, id LIMIT ?{SKIP_LOCKED[self.kind]}) "
            "RETURNING id, task_id, priority, vtime",
            [now + lease, receipt, partition_id, now, count],
        )
        rows.sort(key=lambda row: (-row["priority"], row["vtime"], row["id"]))
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

    async def reclaim_within(self, repository: Repository, task_ids: list[str]) -> None:
        """Make the messages of these tasks visible now, whoever holds them: their holder
        was found dead (scheduling/liveness.py), its lease need not run out."""
        now = time.time()
        for part in chunks(task_ids, 500):
            await repository.connection.execute(
                "UPDATE queue SET visible_at = ?, receipt = '' "
                f"WHERE task_id IN ({','.join('?' * len(part))}) AND visible_at > ?",
                [now, *part, now],
            )
        await self._notify_within(repository)

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
