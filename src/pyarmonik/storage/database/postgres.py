"""PostgreSQL adapter (asyncpg): the database of a cluster, shared by many machines.

Same tables as the SQLite adapter; lists and maps are `jsonb`, times DOUBLE PRECISION seconds
since the epoch. The repository (sql.py) writes `?` placeholders and JSON text: the connection
wrapper numbers the placeholders and a text codec passes jsonb through unchanged.

The change log must be tailed without gaps: a reader that has seen seq N must never later find
a newly committed seq < N. A BIGSERIAL alone does not promise that (numbers are taken at insert
time, transactions commit in any order), so the log triggers are *deferred*: they run at commit,
after every row lock of the transaction is held, and number the entries under one advisory lock
that commit releases. Committers serialise on it only for those last inserts, as they already do
on NOTIFY's own commit-time lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
from asyncpg.transaction import Transaction

from pyarmonik.aio import cancel_and_wait
from pyarmonik.domain.errors import Unavailable
from pyarmonik.domain.filters import POSTGRES_DIALECT
from pyarmonik.domain.records import Row
from pyarmonik.storage.database.sql import Repository

log = logging.getLogger(__name__)

CHANNEL = "pyarmonik_changes"
CLOSE_TIMEOUT = 10.0  # seconds close() waits for the pool's connections

# Text columns sort by code point, like SQLite and Python, whatever the database's locale.
_TABLES = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id {text} PRIMARY KEY,
    status INTEGER NOT NULL,
    client_submission BOOLEAN NOT NULL,
    worker_submission BOOLEAN NOT NULL,
    partition_ids JSONB NOT NULL,
    opt_max_duration DOUBLE PRECISION, opt_max_retries INTEGER, opt_priority INTEGER,
    opt_partition_id {text}, opt_application_name {text}, opt_application_version {text},
    opt_application_namespace {text}, opt_application_service {text}, opt_engine_type {text},
    opt_options JSONB,
    created_at DOUBLE PRECISION, cancelled_at DOUBLE PRECISION, closed_at DOUBLE PRECISION,
    purged_at DOUBLE PRECISION, deleted_at DOUBLE PRECISION, duration DOUBLE PRECISION
);
CREATE INDEX IF NOT EXISTS sessions_status ON sessions (status);
CREATE INDEX IF NOT EXISTS sessions_created_at ON sessions (created_at);

CREATE TABLE IF NOT EXISTS tasks (
    task_id {text} PRIMARY KEY,
    session_id {text} NOT NULL,
    payload_id {text} NOT NULL,
    status INTEGER NOT NULL,
    initial_task_id {text} NOT NULL,
    owner_pod_id {text} NOT NULL,
    pod_hostname {text} NOT NULL,
    parent_task_ids JSONB NOT NULL,
    data_dependencies JSONB NOT NULL,
    expected_output_ids JSONB NOT NULL,
    retry_of_ids JSONB NOT NULL,
    created_by {text} NOT NULL,
    status_message {text} NOT NULL,
    error {text} NOT NULL,
    opt_max_duration DOUBLE PRECISION, opt_max_retries INTEGER, opt_priority INTEGER,
    opt_partition_id {text}, opt_application_name {text}, opt_application_version {text},
    opt_application_namespace {text}, opt_application_service {text}, opt_engine_type {text},
    opt_options JSONB,
    created_at DOUBLE PRECISION, submitted_at DOUBLE PRECISION, received_at DOUBLE PRECISION,
    acquired_at DOUBLE PRECISION, fetched_at DOUBLE PRECISION, started_at DOUBLE PRECISION,
    processed_at DOUBLE PRECISION, ended_at DOUBLE PRECISION, pod_ttl DOUBLE PRECISION,
    creation_to_end_duration DOUBLE PRECISION, processing_to_end_duration DOUBLE PRECISION,
    received_to_end_duration DOUBLE PRECISION
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
    result_id {text} PRIMARY KEY,
    session_id {text} NOT NULL,
    name {text} NOT NULL,
    status INTEGER NOT NULL,
    owner_task_id {text} NOT NULL,
    created_by {text} NOT NULL,
    completed_by {text} NOT NULL,
    opaque_id BYTEA NOT NULL,
    size BIGINT NOT NULL,
    manual_deletion BOOLEAN NOT NULL,
    created_at DOUBLE PRECISION,
    completed_at DOUBLE PRECISION
);
CREATE INDEX IF NOT EXISTS results_session_status ON results (session_id, status);
CREATE INDEX IF NOT EXISTS results_session_name ON results (session_id, name);
CREATE INDEX IF NOT EXISTS results_owner ON results (owner_task_id);
CREATE INDEX IF NOT EXISTS results_created_by ON results (created_by);

CREATE TABLE IF NOT EXISTS partitions (
    partition_id {text} PRIMARY KEY,
    parent_partition_ids JSONB NOT NULL,
    pod_reserved INTEGER NOT NULL,
    pod_max INTEGER NOT NULL,
    preemption_percentage INTEGER NOT NULL,
    priority INTEGER NOT NULL,
    pod_configuration JSONB NOT NULL
);

CREATE TABLE IF NOT EXISTS task_dependencies (
    task_id {text} NOT NULL,
    result_id {text} NOT NULL,
    PRIMARY KEY (task_id, result_id)
);
CREATE INDEX IF NOT EXISTS task_dependencies_result ON task_dependencies (result_id);

CREATE TABLE IF NOT EXISTS changes (
    seq BIGSERIAL PRIMARY KEY,
    at DOUBLE PRECISION NOT NULL,
    session_id {text} NOT NULL,
    kind INTEGER NOT NULL,
    entity_id {text} NOT NULL,
    status INTEGER NOT NULL,
    previous_owner {text} NOT NULL DEFAULT '',
    current_owner {text} NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS changes_at ON changes (at);
"""

# kind = the Events API's EventsEnum: 1 new task, 2 task status, 3 new result, 4 result
# status, 5 result owner (the trigger passes it). Functions run with the caller's search_path,
# hence the qualified names. NOTIFY carries the schema so that other schemas' listeners skip
# it; PostgreSQL sends identical notifications of one transaction only once.
_LOG_FUNCTIONS = """
CREATE OR REPLACE FUNCTION {schema}.pyarmonik_log_task() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock({lock});
    INSERT INTO {schema}.changes (at, session_id, kind, entity_id, status)
    VALUES (extract(epoch FROM clock_timestamp()), NEW.session_id, TG_ARGV[0]::integer,
            NEW.task_id, NEW.status);
    PERFORM pg_notify('{channel}', {payload});
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION {schema}.pyarmonik_log_result() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    kind integer := TG_ARGV[0]::integer;
BEGIN
    PERFORM pg_advisory_xact_lock({lock});
    INSERT INTO {schema}.changes
        (at, session_id, kind, entity_id, status, previous_owner, current_owner)
    VALUES (extract(epoch FROM clock_timestamp()), NEW.session_id, kind, NEW.result_id,
            NEW.status,
            CASE WHEN kind = 5 THEN OLD.owner_task_id ELSE '' END,
            CASE WHEN kind IN (3, 5) THEN NEW.owner_task_id ELSE '' END);
    PERFORM pg_notify('{channel}', {payload});
    RETURN NULL;
END $$;
"""

# Deferred to commit (see the module docstring); WHEN is still evaluated at the update, so
# each entry records the row as that update left it. Triggers of one event fire by name:
# results_log_owner before results_log_status, the order SQLite uses.
_LOG_TRIGGERS = """
CREATE CONSTRAINT TRIGGER tasks_log_insert AFTER INSERT ON tasks
DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
EXECUTE FUNCTION {schema}.pyarmonik_log_task('1');
CREATE CONSTRAINT TRIGGER tasks_log_status AFTER UPDATE OF status ON tasks
DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (OLD.status <> NEW.status)
EXECUTE FUNCTION {schema}.pyarmonik_log_task('2');
CREATE CONSTRAINT TRIGGER results_log_insert AFTER INSERT ON results
DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
EXECUTE FUNCTION {schema}.pyarmonik_log_result('3');
CREATE CONSTRAINT TRIGGER results_log_status AFTER UPDATE OF status ON results
DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (OLD.status <> NEW.status)
EXECUTE FUNCTION {schema}.pyarmonik_log_result('4');
CREATE CONSTRAINT TRIGGER results_log_owner AFTER UPDATE OF owner_task_id ON results
DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (OLD.owner_task_id <> NEW.owner_task_id)
EXECUTE FUNCTION {schema}.pyarmonik_log_result('5');
"""

# Ready tasks whose queue message could not be pushed (scheduling/graph.py parks them).
_UNQUEUED = """
CREATE TABLE IF NOT EXISTS unqueued (
    task_id {text} PRIMARY KEY,
    partition_id {text} NOT NULL,
    priority INTEGER NOT NULL,
    since DOUBLE PRECISION NOT NULL
);
"""

# Users, roles, client certificates and HTTP tokens (ArmoniK's data model, reference
# armonik-auth.md §3), and the user who created each session.
_AUTHENTICATION = """
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS created_by_user {text} NOT NULL DEFAULT '';
CREATE INDEX IF NOT EXISTS sessions_created_by_user ON sessions (created_by_user);

CREATE TABLE IF NOT EXISTS auth_roles (
    role_id INTEGER PRIMARY KEY,
    name {text} NOT NULL UNIQUE,
    permissions JSONB NOT NULL
);
CREATE TABLE IF NOT EXISTS auth_users (
    user_id INTEGER PRIMARY KEY,
    username {text} NOT NULL UNIQUE,
    roles JSONB NOT NULL
);
CREATE TABLE IF NOT EXISTS auth_certificates (
    auth_id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL,
    cn {text} NOT NULL,
    fingerprint {text}
);
CREATE UNIQUE INDEX IF NOT EXISTS auth_certificates_cn_fingerprint
    ON auth_certificates (cn, fingerprint);
CREATE UNIQUE INDEX IF NOT EXISTS auth_certificates_cn_only
    ON auth_certificates (cn) WHERE fingerprint IS NULL;
CREATE INDEX IF NOT EXISTS auth_certificates_user ON auth_certificates (user_id);
CREATE TABLE IF NOT EXISTS auth_tokens (
    name {text} PRIMARY KEY,
    user_id INTEGER NOT NULL,
    token_hash {text} NOT NULL UNIQUE,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS auth_tokens_user ON auth_tokens (user_id);
"""

# Small blobs (storage/objects/inline.py): opaque ids start with "db:"; owner '' when none.
_OBJECTS = """
CREATE TABLE IF NOT EXISTS objects (
    opaque_id BYTEA PRIMARY KEY,
    owner {text} NOT NULL,
    data BYTEA NOT NULL
);
CREATE INDEX IF NOT EXISTS objects_owner ON objects (owner);
"""

# Agents' heartbeats (scheduling/liveness.py), on the database's clock; `lost_at` is set when
# a control plane hands the tasks of a silent agent back.
_AGENTS = """
CREATE TABLE IF NOT EXISTS agents (
    owner_id {text} PRIMARY KEY,
    hostname {text} NOT NULL,
    heartbeat_at DOUBLE PRECISION NOT NULL,
    lost_at DOUBLE PRECISION
);
"""

# Schema migrations, applied in order, each once (recorded in schema_version). Append only.
MIGRATIONS: list[str] = [
    _TABLES + _LOG_FUNCTIONS + _LOG_TRIGGERS,
    _UNQUEUED,
    _AUTHENTICATION,
    _OBJECTS,
    _AGENTS,
]

# What a connection attempt raises when the server is down, unknown, or refuses us.
_UNREACHABLE = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
# What using a pooled connection raises while the server restarts: it is gone (shut down,
# crashed, network), or not accepting connections yet ("the database system is starting up").
_LOST = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.InterfaceError,
)

_PLACEHOLDER = re.compile(r"'[^']*'|\"[^\"]*\"|\?")


@functools.lru_cache(maxsize=4096)
def numbered(sql: str) -> str:
    """`?` placeholders as `$1..$n`; quoted literals and identifiers are left alone."""
    if "?" not in sql:
        return sql
    count = 0

    def number(match: re.Match[str]) -> str:
        nonlocal count
        if match.group() != "?":
            return match.group()
        count += 1
        return f"${count}"

    return _PLACEHOLDER.sub(number, sql)


def _rowcount(status: str) -> int:
    """Rows touched, from a command status such as 'UPDATE 3' or 'INSERT 0 1'."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


def _identity(value: str) -> str:
    return value


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _lock_key(*parts: str) -> int:
    """A stable signed 64-bit advisory lock key."""
    digest = hashlib.sha256("\0".join(("pyarmonik", *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def redact(url: str) -> str:
    """The URL without its password (for messages and logs)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(key == "password" for key, _ in query):
        parts = parts._replace(query=urlencode([(k, v) for k, v in query if k != "password"]))
    if parts.password is not None:
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
        parts = parts._replace(netloc=f"{parts.username or ''}@{host}{port}")
    return urlunsplit(parts)


class _Connection:
    """An asyncpg connection behind the SqlConnection protocol."""

    def __init__(self, connection: asyncpg.Connection):
        self._connection = connection

    async def execute(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> int:
        status: str = await self._connection.execute(numbered(sql), *params)
        return _rowcount(status)

    async def executemany(self, sql: str, params: list[tuple[Any, ...]]) -> None:
        if params:
            await self._connection.executemany(numbered(sql), params)

    async def fetch(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[Row]:
        rows = await self._connection.fetch(numbered(sql), *params)
        return [dict(row.items()) for row in rows]


class PostgresDatabase:
    """The cluster database: a pool of asyncpg connections and one LISTEN connection.

    `url` is a libpq-style URL; its query may name a PostgreSQL schema (`?schema=NAME`,
    overridden by the `schema` argument), created when missing and put first on the
    search_path of every connection, so that deployments or tests can share one database.

    A server that restarts is waited for: a repository is handed out once a connection works
    (acquired and, for writes, its transaction begun), retried for up to `reconnect_for`
    seconds, after which Unavailable is raised. A connection lost in the middle of a
    transaction raises asyncpg's error to the caller, who retries the whole transaction.
    """

    dialect = POSTGRES_DIALECT
    name = "postgres"

    def __init__(
        self,
        url: str,
        min_size: int = 1,
        max_size: int = 10,
        schema: str | None = None,
        connect_timeout: float = 10.0,
        reconnect_for: float = 60.0,
    ):
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        url_schema = next((value for key, value in query if key == "schema"), None)
        # asyncpg would send an unknown query parameter to the server as a setting.
        self._dsn = urlunsplit(
            parts._replace(query=urlencode([(k, v) for k, v in query if k != "schema"]))
        )
        self.url = url
        self.schema = schema or url_schema or None
        self.min_size = min_size
        self.max_size = max_size
        self.connect_timeout = connect_timeout
        self.reconnect_for = reconnect_for
        self._server_settings: dict[str, str] = {}
        if not any(key == "application_name" for key, _ in query):
            self._server_settings["application_name"] = "pyarmonik"
        if self.schema:
            self._server_settings["search_path"] = _identifier(self.schema)
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncio.Task[None] | None = None
        self.listening: asyncpg.Connection | None = None  # the LISTEN connection, if up
        self._changed = asyncio.Event()
        self._current_schema = ""

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=self.min_size,
                max_size=self.max_size,
                timeout=self.connect_timeout,
                server_settings=self._server_settings,
                init=self._init_connection,
                reset=self._reset_connection,
            )
            async with self._pool.acquire() as connection:
                await self._migrate(connection)
        except _UNREACHABLE as error:
            await self.close()
            raise Unavailable(
                f"PostgreSQL at {redact(self.url)} is unavailable: {error}"
            ) from error
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        await cancel_and_wait(self._listener)
        self._listener = None
        if self._pool is not None:
            # close() waits for every connection to come back: one never released (a bug,
            # a call stuck on the network) must not hang a shutdown.
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await self._pool.close()
            except TimeoutError:
                log.warning("PostgreSQL pool: connections still in use after %ss", CLOSE_TIMEOUT)
                self._pool.terminate()
            self._pool = None

    @staticmethod
    async def _init_connection(connection: asyncpg.Connection) -> None:
        # sql.py encodes and decodes JSON itself: jsonb travels as its text, untouched.
        await connection.set_type_codec(
            "jsonb", encoder=_identity, decoder=_identity, schema="pg_catalog", format="text"
        )

    @staticmethod
    async def _reset_connection(connection: asyncpg.Connection) -> None:
        # asyncpg's default reset is a round trip of four statements at every release (20% of
        # the server's statements here). Pool connections keep no session state: advisory
        # locks are transaction-scoped, LISTEN has its own connection, settings are the
        # startup's. Only a transaction left open (a cancelled block) must not be reused.
        if connection.is_in_transaction():
            await connection.execute("ROLLBACK")

    async def _migrate(self, connection: asyncpg.Connection) -> None:
        """Create or upgrade the schema; concurrent starts queue on an advisory lock."""
        async with connection.transaction():
            schema = self.schema or await connection.fetchval("SELECT current_schema()")
            if not schema:
                raise Unavailable("PostgreSQL: no schema on the search_path; set ?schema=NAME")
            await connection.execute(
                "SELECT pg_advisory_xact_lock($1)", _lock_key("schema", schema)
            )
            quoted = _identifier(schema)
            await connection.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
            await connection.execute(f"SET LOCAL search_path TO {quoted}")
            await connection.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                "version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
            )
            current = await connection.fetchval(
                "SELECT COALESCE(MAX(version), 0) FROM schema_version"
            )
            for version, script in enumerate(MIGRATIONS, start=1):
                if version <= current:
                    continue
                await connection.execute(
                    script.format(
                        text='TEXT COLLATE "C"',
                        schema=quoted,
                        lock=_lock_key("changes", schema),
                        channel=CHANNEL,
                        payload=_literal(schema),
                    )
                )
                await connection.execute(
                    "INSERT INTO schema_version (version, applied_at) VALUES ($1, $2)",
                    version,
                    time.time(),
                )
        self._current_schema = schema

    # -- repositories ----------------------------------------------------------------------

    def _started(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("database not started")
        return self._pool

    @asynccontextmanager
    async def read(self) -> AsyncIterator[Repository]:
        pool = self._started()
        connection, _ = await self._connect(pool, begin=False)
        try:
            yield Repository(_Connection(connection), self.dialect)
        except _LOST as error:
            raise Unavailable(f"PostgreSQL connection lost: {error}") from error
        finally:
            await pool.release(connection)

    @asynccontextmanager
    async def write(self, announce: bool = True) -> AsyncIterator[Repository]:
        # `announce` is SQLite's: here only the change log's triggers notify.
        pool = self._started()
        connection, transaction = await self._connect(pool, begin=True)
        assert transaction is not None
        try:
            try:
                yield Repository(_Connection(connection), self.dialect, lock_suffix=" FOR SHARE")
            except BaseException as error:
                # A lost connection cannot roll back (the server did); the error that ended
                # the transaction is the one to report, as a transient one when it is.
                with contextlib.suppress(Exception):
                    await transaction.rollback()
                if isinstance(error, _LOST):
                    raise Unavailable(f"PostgreSQL connection lost: {error}") from error
                raise
            try:
                await transaction.commit()
            except _LOST as error:
                raise Unavailable(f"PostgreSQL connection lost at commit: {error}") from error
        finally:
            await pool.release(connection)

    async def _connect(
        self, pool: asyncpg.Pool, begin: bool
    ) -> tuple[asyncpg.Connection, Transaction | None]:
        """A pooled connection that works (with its transaction begun, when `begin`). A server
        restarting (refusing connections, or the pool's connections killed by its shutdown)
        is waited for, up to `reconnect_for` seconds: nothing was sent yet, so retrying is
        safe."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.reconnect_for
        pause = 0.05
        while True:
            connection: asyncpg.Connection | None = None
            try:
                connection = await pool.acquire()
                if not begin:
                    return connection, None
                transaction = connection.transaction(isolation="read_committed")
                await transaction.start()
                return connection, transaction
            except _LOST as error:
                if connection is not None:
                    with contextlib.suppress(Exception):
                        await pool.release(connection)
                if loop.time() + pause > deadline:
                    raise Unavailable(
                        f"PostgreSQL at {redact(self.url)} is unavailable: {error!r}"
                    ) from error
                log.warning(
                    "PostgreSQL at %s is unavailable (%r); retrying in %.2fs",
                    redact(self.url),
                    error,
                    pause,
                )
                await asyncio.sleep(pause)
                pause = min(pause * 2, 1.0)
            except BaseException:  # cancelled meanwhile: the connection goes back
                if connection is not None:
                    with contextlib.suppress(Exception):
                        await pool.release(connection)
                raise

    async def check_health(self) -> None:
        async with self._started().acquire() as connection:
            await connection.fetchval("SELECT 1")

    # -- change notifications ----------------------------------------------------------------

    async def wait_for_changes(self, timeout: float) -> None:
        # NOTIFY wakes us after any process's commit that grew the log (ours included), and
        # only then: queue operations and other writes leave the tailers asleep. Only a
        # process that waits listens: agents fed by a broker never do, and would otherwise
        # be handed a notification for every commit of the cluster.
        if self._listener is None:
            self._listener = asyncio.create_task(self._keep_listening(), name="pg-listen")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._changed.wait()
        self._changed.clear()

    def _notified(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        if payload == self._current_schema:
            self._changed.set()

    async def _listen(self) -> asyncpg.Connection:
        connection = await asyncpg.connect(
            self._dsn, timeout=self.connect_timeout, server_settings=self._server_settings
        )
        try:
            await connection.add_listener(CHANNEL, self._notified)
        except BaseException:
            connection.terminate()
            raise
        self.listening = connection
        return connection

    async def _keep_listening(self) -> None:
        """Hold the LISTEN connection; when it drops, reconnect with backoff. Waiters wake at
        each (re)connection and loss: notifications may have been missed meanwhile."""
        delay = 0.5
        while True:
            try:
                connection = await self._listen()
            except _UNREACHABLE:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            delay = 0.5
            self._changed.set()
            lost = asyncio.Event()
            connection.add_termination_listener(lambda _connection, lost=lost: lost.set())
            if connection.is_closed():  # lost before we could hear of it
                lost.set()
            try:
                await lost.wait()
            finally:
                self.listening = None
                with contextlib.suppress(Exception):
                    await connection.close(timeout=1)
            self._changed.set()
            await asyncio.sleep(delay)
