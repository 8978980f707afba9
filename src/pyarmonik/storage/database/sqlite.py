"""SQLite adapter: the embedded database (WAL mode), shared by the processes of one machine."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

from pyarmonik.domain.filters import SQLITE_DIALECT
from pyarmonik.domain.records import Row
from pyarmonik.storage.database.sql import Repository

# Lists and maps are JSON text; times are REAL seconds since the epoch.
SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    status INTEGER NOT NULL,
    client_submission INTEGER NOT NULL,
    worker_submission INTEGER NOT NULL,
    partition_ids TEXT NOT NULL,
    opt_max_duration REAL, opt_max_retries INTEGER, opt_priority INTEGER,
    opt_partition_id TEXT, opt_application_name TEXT, opt_application_version TEXT,
    opt_application_namespace TEXT, opt_application_service TEXT, opt_engine_type TEXT,
    opt_options TEXT,
    created_at REAL, cancelled_at REAL, closed_at REAL, purged_at REAL, deleted_at REAL,
    duration REAL
);
CREATE INDEX IF NOT EXISTS sessions_status ON sessions (status);
CREATE INDEX IF NOT EXISTS sessions_created_at ON sessions (created_at);

CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    payload_id TEXT NOT NULL,
    status INTEGER NOT NULL,
    initial_task_id TEXT NOT NULL,
    owner_pod_id TEXT NOT NULL,
    pod_hostname TEXT NOT NULL,
    parent_task_ids TEXT NOT NULL,
    data_dependencies TEXT NOT NULL,
    expected_output_ids TEXT NOT NULL,
    retry_of_ids TEXT NOT NULL,
    created_by TEXT NOT NULL,
    status_message TEXT NOT NULL,
    error TEXT NOT NULL,
    opt_max_duration REAL, opt_max_retries INTEGER, opt_priority INTEGER,
    opt_partition_id TEXT, opt_application_name TEXT, opt_application_version TEXT,
    opt_application_namespace TEXT, opt_application_service TEXT, opt_engine_type TEXT,
    opt_options TEXT,
    created_at REAL, submitted_at REAL, received_at REAL, acquired_at REAL, fetched_at REAL,
    started_at REAL, processed_at REAL, ended_at REAL, pod_ttl REAL,
    creation_to_end_duration REAL, processing_to_end_duration REAL,
    received_to_end_duration REAL
);
CREATE INDEX IF NOT EXISTS tasks_session_status ON tasks (session_id, status);
CREATE INDEX IF NOT EXISTS tasks_status ON tasks (status);
CREATE INDEX IF NOT EXISTS tasks_session_created ON tasks (session_id, created_at);
CREATE INDEX IF NOT EXISTS tasks_session_ended ON tasks (session_id, ended_at);
CREATE INDEX IF NOT EXISTS tasks_initial ON tasks (initial_task_id);
CREATE INDEX IF NOT EXISTS tasks_created_by ON tasks (created_by);
CREATE INDEX IF NOT EXISTS tasks_owner ON tasks (owner_pod_id);
CREATE INDEX IF NOT EXISTS tasks_partition ON tasks (opt_partition_id, status);
CREATE INDEX IF NOT EXISTS tasks_application ON tasks (opt_application_name,
    opt_application_version, opt_application_namespace, opt_application_service);

CREATE TABLE IF NOT EXISTS results (
    result_id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    name TEXT NOT NULL,
    status INTEGER NOT NULL,
    owner_task_id TEXT NOT NULL,
    created_by TEXT NOT NULL,
    completed_by TEXT NOT NULL,
    opaque_id BLOB NOT NULL,
    size INTEGER NOT NULL,
    manual_deletion INTEGER NOT NULL,
    created_at REAL,
    completed_at REAL
);
CREATE INDEX IF NOT EXISTS results_session_status ON results (session_id, status);
CREATE INDEX IF NOT EXISTS results_session_name ON results (session_id, name);
CREATE INDEX IF NOT EXISTS results_owner ON results (owner_task_id);
CREATE INDEX IF NOT EXISTS results_created_by ON results (created_by);

CREATE TABLE IF NOT EXISTS partitions (
    partition_id TEXT PRIMARY KEY,
    parent_partition_ids TEXT NOT NULL,
    pod_reserved INTEGER NOT NULL,
    pod_max INTEGER NOT NULL,
    preemption_percentage INTEGER NOT NULL,
    priority INTEGER NOT NULL,
    pod_configuration TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS task_dependencies (
    task_id TEXT NOT NULL,
    result_id TEXT NOT NULL,
    PRIMARY KEY (task_id, result_id)
);
CREATE INDEX IF NOT EXISTS task_dependencies_result ON task_dependencies (result_id);

CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    session_id TEXT NOT NULL,
    kind INTEGER NOT NULL,
    entity_id TEXT NOT NULL,
    status INTEGER NOT NULL,
    previous_owner TEXT NOT NULL DEFAULT '',
    current_owner TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS changes_at ON changes (at);

-- The change log is written by triggers so that no code path can forget it.
-- kind = the Events API's EventsEnum: 1 new task, 2 task status, 3 new result,
-- 4 result status, 5 result owner.
CREATE TRIGGER IF NOT EXISTS tasks_log_insert AFTER INSERT ON tasks BEGIN
    INSERT INTO changes (at, session_id, kind, entity_id, status)
    VALUES ((julianday('now') - 2440587.5) * 86400.0, NEW.session_id, 1, NEW.task_id, NEW.status);
END;
CREATE TRIGGER IF NOT EXISTS tasks_log_status AFTER UPDATE OF status ON tasks
WHEN OLD.status <> NEW.status BEGIN
    INSERT INTO changes (at, session_id, kind, entity_id, status)
    VALUES ((julianday('now') - 2440587.5) * 86400.0, NEW.session_id, 2, NEW.task_id, NEW.status);
END;
CREATE TRIGGER IF NOT EXISTS results_log_insert AFTER INSERT ON results BEGIN
    INSERT INTO changes (at, session_id, kind, entity_id, status, current_owner)
    VALUES ((julianday('now') - 2440587.5) * 86400.0, NEW.session_id, 3, NEW.result_id, NEW.status,
            NEW.owner_task_id);
END;
CREATE TRIGGER IF NOT EXISTS results_log_status AFTER UPDATE OF status ON results
WHEN OLD.status <> NEW.status BEGIN
    INSERT INTO changes (at, session_id, kind, entity_id, status)
    VALUES ((julianday('now') - 2440587.5) * 86400.0, NEW.session_id, 4, NEW.result_id, NEW.status);
END;
CREATE TRIGGER IF NOT EXISTS results_log_owner AFTER UPDATE OF owner_task_id ON results
WHEN OLD.owner_task_id <> NEW.owner_task_id BEGIN
    INSERT INTO changes (at, session_id, kind, entity_id, status, previous_owner, current_owner)
    VALUES ((julianday('now') - 2440587.5) * 86400.0, NEW.session_id, 5, NEW.result_id, NEW.status,
            OLD.owner_task_id, NEW.owner_task_id);
END;
"""

# Another process may hold the write lock for a while (a big submission): wait, don't fail.
BUSY_TIMEOUT_MS = 60_000
T = TypeVar("T")


class _Thread:
    """A sqlite3 connection owned by one thread. Each call runs a whole statement (execute,
    fetch, describe) there in a single hop; aiosqlite would make several hops per statement."""

    def __init__(self, path: Path, busy_timeout_ms: int):
        self.path = path
        self.busy_timeout_ms = busy_timeout_ms
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._connection: sqlite3.Connection | None = None

    async def call(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    def open(self) -> None:
        connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        connection.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
        connection.execute("PRAGMA synchronous = NORMAL")
        self._connection = connection

    @property
    def connection(self) -> sqlite3.Connection:
        if self._connection is None:
            raise RuntimeError("database not started")
        return self._connection

    def fetch(self, sql: str, params: Sequence[Any]) -> list[Row]:
        cursor = self.connection.execute(sql, params)
        rows = cursor.fetchall()
        names = [d[0] for d in cursor.description or ()]
        cursor.close()
        return [dict(zip(names, row, strict=True)) for row in rows]

    def execute(self, sql: str, params: Sequence[Any]) -> int:
        cursor = self.connection.execute(sql, params)
        cursor.fetchall()
        count = cursor.rowcount
        cursor.close()
        return int(count)

    def executemany(self, sql: str, params: list[tuple[Any, ...]]) -> None:
        self.connection.executemany(sql, params).close()

    def begin(self) -> None:
        """BEGIN IMMEDIATE, retried with sub-millisecond sleeps: SQLite's own busy handler
        sleeps 1 to 100 ms between tries, far longer than our transactions hold the lock."""
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        pause = 0.0001
        while True:
            try:
                self.connection.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() > deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 1.5, 0.002)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class _Connection:
    """The SqlConnection protocol over a _Thread; inside a write transaction, BEGIN travels
    with the first statement."""

    def __init__(self, thread: _Thread, begin: bool = False):
        self._thread = thread
        self._begin = begin

    def _opening(self, function: Callable[..., T]) -> Callable[..., T]:
        if not self._begin:
            return function
        self._begin = False
        thread = self._thread

        def begin_then(*args: Any) -> T:
            thread.begin()
            return function(*args)

        return begin_then

    async def execute(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> int:
        return await self._thread.call(self._opening(self._thread.execute), sql, params)

    async def executemany(self, sql: str, params: list[tuple[Any, ...]]) -> None:
        await self._thread.call(self._opening(self._thread.executemany), sql, params)

    async def fetch(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[Row]:
        return await self._thread.call(self._opening(self._thread.fetch), sql, params)

    async def finish(self, commit: bool) -> None:
        if self._begin:
            return  # nothing was sent: no transaction to end
        await self._thread.call(self._thread.execute, "COMMIT" if commit else "ROLLBACK", ())


class SqliteDatabase:
    """The embedded database: one file, WAL, one writer connection per process."""

    dialect = SQLITE_DIALECT
    name = "sqlite"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        # The writer handles busy waits itself (see _Thread.begin); readers never wait in
        # WAL mode but for rare checkpoints, where SQLite's handler is fine.
        self._writer = _Thread(self.path, busy_timeout_ms=0)
        self._reader = _Thread(self.path, busy_timeout_ms=BUSY_TIMEOUT_MS)
        self._write_lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._started = False

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await self._writer.call(self._writer.open)
        await self._writer.call(self._writer.fetch, "PRAGMA journal_mode = WAL", ())
        await self._writer.call(self._create_schema)
        await self._reader.call(self._reader.open)
        self._started = True

    def _create_schema(self) -> None:
        # executescript commits whatever is pending first, so BEGIN goes inside the script;
        # other processes may be creating it at the same moment: retry while locked.
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                self._writer.connection.executescript("BEGIN IMMEDIATE;" + SCHEMA + "COMMIT;")
                return
            except sqlite3.OperationalError as error:
                if self._writer.connection.in_transaction:
                    self._writer.connection.execute("ROLLBACK")
                if "locked" not in str(error) or time.monotonic() > deadline:
                    raise
            time.sleep(0.01)

    async def close(self) -> None:
        for thread in (self._writer, self._reader):
            await thread.call(thread.close)
        self._started = False

    @asynccontextmanager
    async def read(self) -> AsyncIterator[Repository]:
        if not self._started:
            raise RuntimeError("database not started")
        yield Repository(_Connection(self._reader), self.dialect)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[Repository]:
        if not self._started:
            raise RuntimeError("database not started")
        async with self._write_lock:
            connection = _Connection(self._writer, begin=True)
            try:
                yield Repository(connection, self.dialect)
            except BaseException:
                await connection.finish(commit=False)
                raise
            await connection.finish(commit=True)
        self._changed.set()

    async def wait_for_changes(self, timeout: float) -> None:
        # Writes of this process wake us at once; those of other processes within `timeout`.
        with suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)
        self._changed.clear()

    async def check_health(self) -> None:
        async with self.read() as repository:
            await repository.connection.fetch("SELECT 1 AS ok")
