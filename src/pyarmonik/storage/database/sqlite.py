"""SQLite adapter: the embedded database (WAL mode), shared by the processes of one machine.

Statements run on the event loop itself. SQLite is a library, not a server: a statement on
this schema is an indexed, in-memory operation of microseconds, while handing it to a
thread costs more than running it (a future, a wake-up, the GIL) and was the largest cost of
an agent. What could block is kept off the loop: lock waits are asynchronous retries
(busy_timeout is 0), commits do not fsync (WAL with synchronous=NORMAL), and checkpoints,
which do, run in a thread.

Writes are group-committed: the write blocks of this process that start while a transaction
is open join it, each in a savepoint of its own (a block that fails undoes only itself), and
every block returns once the shared COMMIT is done. Between processes a commit is what costs
(WAL frames written, the other connections' page caches invalidated): the agent's start of
task n, completion of task n-1 and acquisition of task n+1, woken by the same event, become
one transaction instead of three.

Other processes hear of a commit through wakeups.py: `wait_for_changes` returns at once after
a write of this process, and after a write of another process too once this process waits
(the first wait binds its wake-up socket). Its timeout only covers a lost wake-up.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, closing, suppress
from pathlib import Path
from typing import Any, TypeVar

from pyarmonik.domain.filters import SQLITE_DIALECT
from pyarmonik.domain.records import Row
from pyarmonik.storage.database.sql import Repository
from pyarmonik.storage.database.wakeups import Wakeups
from pyarmonik.storage.database.writelock import WriteLock

log = logging.getLogger(__name__)

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
    duration REAL,
    created_by_user TEXT NOT NULL DEFAULT ''
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

-- Ready tasks whose queue message could not be pushed (scheduling/graph.py parks them).
CREATE TABLE IF NOT EXISTS unqueued (
    task_id TEXT PRIMARY KEY,
    partition_id TEXT NOT NULL,
    priority INTEGER NOT NULL,
    since REAL NOT NULL
);

-- Users, roles, client certificates and HTTP tokens (ArmoniK's data model); lists are JSON.
CREATE TABLE IF NOT EXISTS auth_roles (
    role_id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    permissions TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS auth_users (
    user_id INTEGER PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    roles TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS auth_certificates (
    auth_id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL,
    cn TEXT NOT NULL,
    fingerprint TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS auth_certificates_cn_fingerprint
    ON auth_certificates (cn, fingerprint);
CREATE UNIQUE INDEX IF NOT EXISTS auth_certificates_cn_only
    ON auth_certificates (cn) WHERE fingerprint IS NULL;
CREATE INDEX IF NOT EXISTS auth_certificates_user ON auth_certificates (user_id);
CREATE TABLE IF NOT EXISTS auth_tokens (
    name TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS auth_tokens_user ON auth_tokens (user_id);

-- Small blobs (storage/objects/inline.py): opaque ids start with "db:"; owner '' when none.
CREATE TABLE IF NOT EXISTS objects (
    opaque_id BLOB PRIMARY KEY,
    owner TEXT NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS objects_owner ON objects (owner);

-- Agents' heartbeats (scheduling/liveness.py), on the database's clock; `lost_at` is set when
-- a control plane hands the tasks of a silent agent back.
CREATE TABLE IF NOT EXISTS agents (
    owner_id TEXT PRIMARY KEY,
    hostname TEXT NOT NULL,
    heartbeat_at REAL NOT NULL,
    lost_at REAL
);

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

-- Status and owner changes are logged by triggers, so that no update can forget them.
-- kind = the Events API's EventsEnum: 1 new task, 2 task status, 3 new result,
-- 4 result status, 5 result owner. New tasks and results (kinds 1 and 3) are logged by
-- Repository.insert, the one way rows get into those tables: the mere presence of an insert
-- trigger made SQLite insert into these many-indexed tables three times slower.
DROP TRIGGER IF EXISTS tasks_log_insert;
DROP TRIGGER IF EXISTS results_log_insert;
CREATE TRIGGER IF NOT EXISTS tasks_log_status AFTER UPDATE OF status ON tasks
WHEN OLD.status <> NEW.status BEGIN
    INSERT INTO changes (at, session_id, kind, entity_id, status)
    VALUES ((julianday('now') - 2440587.5) * 86400.0, NEW.session_id, 2, NEW.task_id, NEW.status);
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

BUSY_TIMEOUT = 60.0  # seconds another process may hold the write lock (a huge submission)
# Loop iterations a batch stays open for more blocks to join (blocks queued for the lock by
# then join too; later ones make the next batch).
BATCH_WINDOW = 2
CHECKPOINT_EVERY = 1.0
RESTART_WAIT = 0.05  # seconds a checkpoint's RESTART waits for readers
T = TypeVar("T")


# Columns added after a table was first released: a file made before gets them at start.
# (table, column, definition); append only.
ADDED_COLUMNS = (("sessions", "created_by_user", "TEXT NOT NULL DEFAULT ''"),)


def _add_missing_columns(connection: sqlite3.Connection) -> None:
    for table, column, definition in ADDED_COLUMNS:
        present = {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}
        if column not in present:
            connection.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
    # Indexes on added columns: only once the column exists.
    connection.execute(
        "CREATE INDEX IF NOT EXISTS sessions_created_by_user ON sessions (created_by_user)"
    )


def _is_busy(error: sqlite3.OperationalError) -> bool:
    message = str(error)
    return "locked" in message or "busy" in message


async def _when_free(function: Callable[..., T], *args: Any) -> T:
    """Run a statement, retrying while another connection holds the lock it needs."""
    deadline = time.monotonic() + BUSY_TIMEOUT
    pause = 0.0001
    while True:
        try:
            return function(*args)
        except sqlite3.OperationalError as error:
            if not _is_busy(error) or time.monotonic() > deadline:
                raise
        await asyncio.sleep(pause)
        pause = min(pause * 1.5, 0.005)


# Set on every connection. `synchronous` reads the schema, so it needs the lock a process
# takes while it recovers the WAL or closes the file last (dozens of agents starting or
# stopping together do): it waits for it like any statement.
# `journal_size_limit`: a WAL grown by a burst is cut back to this when it starts over.
PRAGMAS = (
    "PRAGMA synchronous = NORMAL",
    "PRAGMA wal_autocheckpoint = 0",
    "PRAGMA mmap_size = 268435456",
    "PRAGMA journal_size_limit = 67108864",
)


async def _connect(path: Path) -> sqlite3.Connection:
    """A connection for the event loop: no busy handler, lock waits are `_when_free`'s."""
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        connection.execute("PRAGMA busy_timeout = 0")
        for pragma in PRAGMAS:
            await _when_free(connection.execute, pragma)
    except BaseException:
        connection.close()
        raise
    return connection


def _checkpoint(path: Path, lock: WriteLock) -> None:
    """One checkpoint, in a thread of its own: there a lock is waited for by SQLite.

    PASSIVE first, beside the writers; then RESTART under the write lock: it copies what was
    written meanwhile, and the next writer starts the WAL over from its beginning. PASSIVE
    alone never catches up with writers that never stop, and the WAL grew as long as they
    wrote (hundreds of MB a minute under `bench indep`, every page of it a new one for the
    file system to write back). Readers are waited for RESTART_WAIT at the most: a long read
    leaves the WAL for the next turn rather than hold the writers up."""
    connection = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT)
    try:
        for pragma in PRAGMAS:
            connection.execute(pragma)
        connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
        connection.execute(f"PRAGMA busy_timeout = {int(RESTART_WAIT * 1000)}")
        with lock.held_in_thread():
            connection.execute("PRAGMA wal_checkpoint(RESTART)")
    finally:
        connection.close()


def _checkpoint_turn(mark: Path) -> bool:
    """Whether no process checkpointed in the last CHECKPOINT_EVERY seconds; if so, the turn
    is ours (the mark's mtime says when the last one was). One checkpoint a second is enough
    for the machine: 64 agents each making their own were 8% of their CPU."""
    try:
        if time.time() - mark.stat().st_mtime < CHECKPOINT_EVERY:
            return False
        os.utime(mark)
    except FileNotFoundError:
        mark.touch()
    return True


def _fetch(connection: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[Row]:
    cursor = connection.execute(sql, params)
    rows = cursor.fetchall()
    names = [d[0] for d in cursor.description or ()]
    cursor.close()
    return [dict(zip(names, row, strict=True)) for row in rows]


def _execute(connection: sqlite3.Connection, sql: str, params: Sequence[Any]) -> int:
    cursor = connection.execute(sql, params)
    cursor.fetchall()
    count = cursor.rowcount
    cursor.close()
    return int(count)


def _executemany(connection: sqlite3.Connection, sql: str, params: list[tuple[Any, ...]]) -> None:
    connection.executemany(sql, params).close()


class _Connection:
    """The SqlConnection protocol on a sqlite3 connection. In a write block the transaction
    begins with the block's first statement (BEGIN IMMEDIATE, waited for asynchronously),
    unless an earlier block of the batch began it: then the block runs in a savepoint."""

    def __init__(self, connection: sqlite3.Connection, batch: _Batch | None = None):
        self._connection = connection
        self._batch = batch
        self.wrote = False  # the block sent a statement
        self._opened = False  # the block began the transaction (else it has a savepoint)

    async def _begun(self) -> None:
        if self._batch is not None and not self.wrote:
            if self._batch.begun:
                self._connection.execute("SAVEPOINT block")
            else:
                # Our writers queue on the write lock, not by polling SQLite's (writelock.py).
                await self._batch.lock.acquire()
                try:
                    await _when_free(self._connection.execute, "BEGIN IMMEDIATE")
                except BaseException:
                    self._batch.lock.release()
                    raise
                self._batch.begun = self._opened = True
            self.wrote = True

    async def execute(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> int:
        await self._begun()
        return await _when_free(_execute, self._connection, sql, params)

    async def executemany(self, sql: str, params: list[tuple[Any, ...]]) -> None:
        await self._begun()
        await _when_free(_executemany, self._connection, sql, params)

    async def fetch(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[Row]:
        await self._begun()
        return await _when_free(_fetch, self._connection, sql, params)

    def end_block(self, keep: bool) -> None:
        """Keep or undo what the block did (only it: blocks run one after the other, so the
        block that began the transaction undoes it whole, nobody else being in it yet)."""
        if not self.wrote:
            return
        if self._opened:
            if not keep:
                assert self._batch is not None
                self._connection.execute("ROLLBACK")
                self._batch.begun = False
                self._batch.lock.release()
        else:
            if not keep:
                self._connection.execute("ROLLBACK TO block")
            self._connection.execute("RELEASE block")


class _Batch:
    """Write blocks sharing one transaction, and the COMMIT they all wait for."""

    def __init__(self, lock: WriteLock) -> None:
        self.lock = lock  # held from BEGIN to COMMIT or ROLLBACK
        self.begun = False
        self.committed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.unannounced = 0  # rows changed by blocks that wake nobody


class SqliteDatabase:
    """The embedded database: one file, WAL, one writer connection per process."""

    dialect = SQLITE_DIALECT
    name = "sqlite"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._batch: _Batch | None = None
        self._committers: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()
        self.wakeups = Wakeups(self.path, self._changed.set)
        self.write_lock = WriteLock(self.path)
        self._wrote = asyncio.Event()  # a commit of ours since the last checkpoint
        self._paused_version = -1  # `_data_version` when our last wait ended
        self._total_changes = 0  # the writer's count of changed rows at its last commit
        self._checkpointer: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.write_lock.open()
        await asyncio.to_thread(self._create)
        self._writer, self._reader = await _connect(self.path), await _connect(self.path)
        self._checkpointer = asyncio.create_task(self._checkpoints(), name="sqlite-checkpoints")

    def _create(self) -> None:
        """Create the file and the schema (in a thread: it may wait for other processes).
        Under our write lock: switching a new file to WAL needs SQLite's exclusive lock, and
        when dozens of processes start together SQLite may refuse it at once (`database is
        locked`) rather than call its busy handler, which it skips where waiting could
        deadlock."""
        with (
            self.write_lock.held_in_thread(),
            closing(
                sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT)
            ) as connection,
        ):
            connection.execute("PRAGMA journal_mode = WAL")
            # executescript commits whatever is pending first: BEGIN goes inside the script.
            connection.executescript("BEGIN IMMEDIATE;" + SCHEMA)
            _add_missing_columns(connection)
            connection.execute("COMMIT")

    async def _checkpoints(self) -> None:
        """Move the WAL into the database file now and then, off the loop (this fsyncs).
        Each checkpoint has a connection of its own, opened and closed in its thread: a
        connection closed while another thread runs on it crashes the process (CI saw it
        when a cancelled checkpointer closed its connection under a running checkpoint)."""
        while True:
            # The writers checkpoint, one at a time: an idle process has no timer at all.
            wrote = asyncio.ensure_future(self._wrote.wait())
            closing = asyncio.ensure_future(self._closing.wait())
            await asyncio.wait((wrote, closing), return_when=asyncio.FIRST_COMPLETED)
            wrote.cancel()
            closing.cancel()
            with suppress(TimeoutError):
                async with asyncio.timeout(CHECKPOINT_EVERY):
                    await self._closing.wait()
                return
            if not _checkpoint_turn(self.write_lock.path.with_suffix(".ckpt")):
                continue  # another process did one lately; ours stays due
            self._wrote.clear()
            try:
                await asyncio.to_thread(_checkpoint, self.path, self.write_lock)
            except sqlite3.Error as error:  # the next one catches up
                log.warning("checkpoint of %s failed: %r", self.path, error)

    async def close(self) -> None:
        if self._committers:  # writes under way are committed, not dropped
            await asyncio.gather(*self._committers, return_exceptions=True)
        if self._checkpointer is not None:
            self._closing.set()
            await self._checkpointer
        self.wakeups.close()
        self.write_lock.close()
        for connection in (self._writer, self._reader):
            if connection is not None:
                connection.close()
        self._writer = self._reader = None

    @asynccontextmanager
    async def read(self) -> AsyncIterator[Repository]:
        if self._reader is None:
            raise RuntimeError("database not started")
        yield Repository(_Connection(self._reader), self.dialect)

    @asynccontextmanager
    async def write(self, announce: bool = True) -> AsyncIterator[Repository]:
        """A write block: returns once its changes are committed (see the module docstring).
        `announce=False`: its changes alone wake no other process (heartbeats)."""
        if self._writer is None:
            raise RuntimeError("database not started")
        async with self._write_lock:
            batch = self._batch
            if batch is None:
                batch = self._batch = _Batch(self.write_lock)
                committer = asyncio.get_running_loop().create_task(self._commit(batch))
                self._committers.add(committer)
                committer.add_done_callback(self._committers.discard)
            connection = _Connection(self._writer, batch)
            before = self._writer.total_changes
            try:
                yield Repository(connection, self.dialect)
            except BaseException:
                connection.end_block(keep=False)
                raise
            connection.end_block(keep=True)
            if not announce:
                batch.unannounced += self._writer.total_changes - before
            if not connection.wrote:
                return
        await asyncio.shield(batch.committed)

    async def _commit(self, batch: _Batch) -> None:
        for _ in range(BATCH_WINDOW):
            await asyncio.sleep(0)
        async with self._write_lock:
            if self._batch is batch:
                self._batch = None
            assert self._writer is not None
            try:
                if batch.begun:
                    self._writer.execute("COMMIT")
            except BaseException as error:
                with suppress(sqlite3.Error):
                    self._writer.execute("ROLLBACK")
                batch.lock.release()
                batch.committed.set_exception(error)
                batch.committed.exception()  # retrieved: each waiting block raises it
                if not isinstance(error, Exception):
                    raise
            else:
                batch.lock.release()
                if batch.begun:
                    self._wrote.set()
                batch.committed.set_result(None)
                # Rows changed: tell the other processes (an empty pull changes none).
                if batch.begun and self._writer.total_changes != self._total_changes:
                    changed = self._writer.total_changes - self._total_changes
                    self._total_changes = self._writer.total_changes
                    if changed > batch.unannounced:
                        self.wakeups.notify()
        self._changed.set()

    async def wait_for_changes(self, timeout: float) -> None:
        # Writes of this process wake us at once, those of other processes by a wake-up
        # datagram; `timeout` only bounds the wait for a lost one. One waiter per instance:
        # a wake-up is consumed by the wait that returns.
        if not self.wakeups.listening and self.wakeups.listen():
            # Listening from now on: a commit between the caller's last read and now was
            # not sent to us, so the caller looks again first.
            self._changed.set()
        else:
            self.wakeups.resume()
            if self._data_version() != self._paused_version:
                self._changed.set()  # committed while we did not listen: look again first
        try:
            with suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._changed.wait()
        finally:
            # Between two waits the caller is busy reading: other processes' commits are
            # not even sent to us (wakeups.py); the next wait learns of them from SQLite.
            self.wakeups.pause()
            self._paused_version = self._data_version()
        self._changed.clear()

    def _data_version(self) -> int:
        """SQLite's count of commits by other connections, as our reader sees it."""
        try:
            assert self._reader is not None
            return int(self._reader.execute("PRAGMA data_version").fetchone()[0])
        except (sqlite3.Error, AssertionError):
            return -1  # unknown: changed, to be safe

    async def check_health(self) -> None:
        async with self.read() as repository:
            await repository.connection.fetch("SELECT 1 AS ok")
