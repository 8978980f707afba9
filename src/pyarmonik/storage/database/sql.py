"""Every query of pyarmonik, written once in the SQL that SQLite and PostgreSQL share.

`Where` is a conjunction of column conditions: a scalar means `=`, a list/set/tuple means
`IN`. It covers the conditional updates the scheduler needs (`status IN (...) AND owner = ''`).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Iterator, Sequence
from typing import Any, Protocol, TypeVar, cast

from pyarmonik.domain.auth import Certificate, Role, Token, User
from pyarmonik.domain.errors import InvalidArgument
from pyarmonik.domain.filters import MATCH_ALL, Filter, ListQuery, SqlDialect, order_by_sql, to_sql
from pyarmonik.domain.records import (
    TIME_COLUMNS,
    Application,
    Partition,
    Result,
    Row,
    Session,
    Task,
)
from pyarmonik.domain.statuses import ResultStatus, SessionStatus, TaskStatus

Record = Session | Task | Result | Partition
R = TypeVar("R", bound=Record)
Where = dict[str, Any]

JSON_COLUMNS = frozenset(
    {
        "partition_ids",
        "opt_options",
        "parent_task_ids",
        "data_dependencies",
        "expected_output_ids",
        "retry_of_ids",
        "parent_partition_ids",
        "pod_configuration",
    }
)
# Stay well below SQLite's limit on bound parameters.
CHUNK = 2000


class SqlConnection(Protocol):
    """The few calls the repository makes; placeholders are `?`, rows come back as dicts."""

    async def execute(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> int:
        """Run one statement; return the number of rows it touched."""
        ...

    async def executemany(self, sql: str, params: list[tuple[Any, ...]]) -> None: ...

    async def fetch(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[Row]: ...


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _has_nul(value: Any) -> bool:
    """Whether text, or the text inside a list or map (JSON columns), holds NUL."""
    kind = type(value)
    if kind is str:
        return "\0" in value
    if kind in _SCALARS:  # the usual values, told apart at once (this runs per column)
        return False
    if isinstance(value, str):
        return "\0" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(item) for item in value)
    return False


_SCALARS = frozenset({int, float, bool, bytes, type(None)})


def _encode(column: str, value: Any) -> Any:
    """A value as stored; text holding NUL is refused (PostgreSQL cannot store it, so no
    backend does: the same request gets the same answer everywhere)."""
    if _has_nul(value):
        raise InvalidArgument(f"{column}: text must not contain NUL characters")
    if column in JSON_COLUMNS:
        return json.dumps(value)
    if column in TIME_COLUMNS and isinstance(value, float):
        # Microseconds are all a client keeps (datetime, timedelta): stored at that precision,
        # a time read from the API and sent back in a filter (`created_at <= t`) matches itself.
        return round(value, 6)
    return value


def _decode(row: Row) -> Row:
    for column in JSON_COLUMNS.intersection(row):
        value = row[column]
        if isinstance(value, str):
            row[column] = json.loads(value)
    return row


def _records(kind: type[R], rows: list[Row]) -> list[R]:
    return [cast(R, kind.from_row(_decode(row))) for row in rows]


_AUTH_KEYS = {"auth_roles": "role_id", "auth_users": "user_id", "auth_certificates": "auth_id"}


def _json_list(value: Any) -> list[Any]:
    return list(json.loads(value) if isinstance(value, str) else value)


def _user(row: Row) -> User:
    return User(row["user_id"], row["username"], tuple(_json_list(row["roles"])))


def _certificate(row: Row) -> Certificate:
    return Certificate(row["auth_id"], row["user_id"], row["cn"], row["fingerprint"])


def _is_many(value: Any) -> bool:
    return isinstance(value, Collection) and not isinstance(value, str | bytes)


def where_sql(
    where: Where,
    key: str | None = None,
    dialect: SqlDialect | None = None,
    found_by_key: bool = False,
) -> tuple[str, list[Any]]:
    """SQL for a conjunction of `column = value` / `column IN (values)`. When `where` names
    the record's `key` (or the rows are `found_by_key` by a join), the other columns are kept
    off their indexes (`dialect.off_index`)."""
    clauses: list[str] = []
    params: list[Any] = []
    by_key = key is not None and dialect is not None and (found_by_key or key in where)
    for name, value in where.items():
        column = dialect.off_index(name) if by_key and dialect and name != key else name
        # Text holding NUL is never stored (see _encode): such a value matches nothing.
        if _is_many(value):
            values = [v for v in value if not _has_nul(v)]
            if not values:
                return "1=0", []
            clauses.append(f"{column} IN ({','.join('?' * len(values))})")
            params.extend(values)
        else:
            if _has_nul(value):
                return "1=0", []
            clauses.append(f"{column} = ?")
            params.append(_encode(name, value))
    return (" AND ".join(clauses) or "1=1"), params


def _set_clause(values: dict[str, Any]) -> tuple[str, list[Any]]:
    """`column = ?, ...` of an UPDATE, and its parameters as stored."""
    return ",".join(f"{column} = ?" for column in values), [
        _encode(c, v) for c, v in values.items()
    ]


def _filter_sql(where: Filter, dialect: SqlDialect) -> tuple[str, list[Any]]:
    """`to_sql`, refusing values holding NUL (PostgreSQL cannot compare them)."""
    sql, params = to_sql(where, dialect)
    if any(_has_nul(param) for param in params):
        raise InvalidArgument("filter values must not contain NUL characters")
    return sql, params


# The change-log entry of a new record where Repository.insert writes it (SqlDialect.
# logs_inserts): by table, the Events API's kind, the key column, the owner column if any.
_INSERT_LOG = {"tasks": (1, "task_id", ""), "results": (3, "result_id", "owner_task_id")}


class Repository:
    """Queries over one connection; inside `Database.write()` they share one transaction."""

    def __init__(self, connection: SqlConnection, dialect: SqlDialect, lock_suffix: str = ""):
        self.connection = connection
        self.dialect = dialect
        # Row locks for reads that must not race a concurrent writer (" FOR SHARE" in PostgreSQL;
        # SQLite serialises writers, so nothing there).
        self.lock_suffix = lock_suffix

    # -- generic record access -------------------------------------------------------------

    async def insert(self, records: Sequence[Record], replace: bool = False) -> None:
        """Insert records of one type; with `replace`, a record whose key exists replaces it
        (one statement: concurrent writers of the same records cannot collide)."""
        if not records:
            return
        first = records[0].to_row()
        columns = list(first)
        sql = (
            f"INSERT INTO {records[0].TABLE} ({','.join(columns)}) "
            f"VALUES ({','.join('?' * len(columns))})"
        )
        if replace:
            key = records[0].KEY
            updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c != key)
            sql += f" ON CONFLICT ({key}) DO UPDATE SET {updates}"
        rows = [first, *(r.to_row() for r in records[1:])]
        await self.connection.executemany(
            sql, [tuple(_encode(c, row[c]) for c in columns) for row in rows]
        )
        logged = _INSERT_LOG.get(records[0].TABLE) if self.dialect.logs_inserts else None
        if logged is not None:
            kind, key, owner = logged
            await self.connection.executemany(
                "INSERT INTO changes (at, session_id, kind, entity_id, status, current_owner) "
                f"VALUES ({self.dialect.clock}, ?, {kind}, ?, ?, ?)",
                [(r["session_id"], r[key], r["status"], r[owner] if owner else "") for r in rows],
            )

    async def find(self, kind: type[R], where: Where, lock: bool = False) -> list[R]:
        """Records of `kind` matching `where` (chunked on the first IN-list)."""
        rows: list[Row] = []
        for part in self._split(where):
            sql, params = where_sql(part, kind.KEY, self.dialect)
            suffix = self.lock_suffix if lock else ""
            rows += await self.connection.fetch(
                f"SELECT * FROM {kind.TABLE} WHERE {sql}{suffix}", params
            )
        return _records(kind, rows)

    async def get(self, kind: type[R], key: str) -> R | None:
        found = await self.find(kind, {kind.KEY: key})
        return found[0] if found else None

    async def update(self, kind: type[R], where: Where, values: dict[str, Any]) -> list[str]:
        """Conditional update; returns the keys of the records it changed."""
        rows = await self.update_columns(kind, where, values, (kind.KEY,))
        return [row[kind.KEY] for row in rows]

    async def update_returning(
        self, kind: type[R], where: Where, values: dict[str, Any]
    ) -> list[R]:
        """Conditional update; returns the changed records as they are after it."""
        return _records(kind, await self.update_columns(kind, where, values, ("*",)))

    async def update_columns(
        self, kind: type[R], where: Where, values: dict[str, Any], columns: Sequence[str]
    ) -> list[Row]:
        """Conditional update; returns these columns of the changed rows (stored values: a
        caller that needs a few of them is spared decoding whole records)."""
        assignments, set_params = _set_clause(values)
        rows: list[Row] = []
        for part in self._split(where):
            sql, params = where_sql(part, kind.KEY, self.dialect)
            rows += await self.connection.fetch(
                f"UPDATE {kind.TABLE} SET {assignments} WHERE {sql} RETURNING {','.join(columns)}",
                set_params + params,
            )
        return rows

    async def take_tasks(
        self, task_ids: Sequence[str], values: dict[str, Any], retryable: bool = False
    ) -> list[Task]:
        """Set `values` on those of the tasks that are SUBMITTED, unowned and in a RUNNING
        session (a polling agent acquiring them), and, when `retryable`, not their last
        allowed attempt; return them as they are after it."""
        assignments, set_params = _set_clause(values)
        taken: list[Task] = []
        status, owner, session = (
            self.dialect.off_index(c) for c in ("status", "owner_pod_id", "session_id")
        )
        attempts = self.dialect.array_length("retry_of_ids")
        retries = f" AND {attempts} < opt_max_retries" if retryable else ""
        for part in chunks(list(task_ids)):
            rows = await self.connection.fetch(
                f"UPDATE tasks SET {assignments} WHERE task_id IN ({','.join('?' * len(part))}) "
                f"AND {status} = ? AND {owner} = ''{retries} AND {session} IN "
                "(SELECT session_id FROM sessions WHERE status = ?) RETURNING *",
                [*set_params, *part, int(TaskStatus.SUBMITTED), int(SessionStatus.RUNNING)],
            )
            taken += _records(Task, rows)
        return taken

    async def update_each(
        self,
        kind: type[R],
        key_values: list[tuple[str, dict[str, Any]]],
        where: Where | None = None,
        values: dict[str, Any] | None = None,
    ) -> list[str]:
        """Per-record updates in one statement: on the records of these keys that also match
        `where`, set `values` and each record's own values (scalars, the same columns for
        every record); a key given twice counts once, with its first values. Returns the keys
        of the records changed. One statement, not one per record: in PostgreSQL a second
        UPDATE of a row writes it, and each of its indexes, anew (a completion set the
        status, then the times: twice)."""
        firsts: dict[str, dict[str, Any]] = {}
        for key, own in key_values:
            firsts.setdefault(key, own)
        if not firsts:
            return []
        records = list(firsts.items())
        columns: list[str] = list(records[0][1])
        common, common_params = _set_clause(values or {})
        condition, condition_params = where_sql(
            where or {}, kind.KEY, self.dialect, found_by_key=True
        )
        table = kind.TABLE
        changed: list[str] = []
        for part in chunks(records, CHUNK // (len(columns) + 1)):
            # A column NULL in every record is set as such: no value would give its type.
            typed = [c for c in columns if any(own[c] is not None for _, own in part)]
            assignments = [common] if common else []
            assignments += [f"{c} = NULL" for c in columns if c not in typed]
            assignments += [f"{c} = v.column{i}" for i, c in enumerate(typed, start=2)]
            # The first row's casts type the VALUES list's columns (and its parameters).
            first_values = [
                part[0][0],
                *(next(o[c] for _, o in part if o[c] is not None) for c in typed),
            ]
            first = ",".join(f"CAST(? AS {self.dialect.parameter_type(v)})" for v in first_values)
            rest = ",".join("?" * len(first_values))
            rows = ",".join([f"({first})", *(f"({rest})" for _ in part[1:])])
            params: list[Any] = list(common_params)
            for key, own in part:
                params += [key, *(_encode(c, own[c]) for c in typed)]
            found = await self.connection.fetch(
                f"UPDATE {table} SET {','.join(assignments)} FROM (VALUES {rows}) AS v "
                f"WHERE {table}.{kind.KEY} = v.column1 AND {condition} "
                f"RETURNING {table}.{kind.KEY}",
                params + condition_params,
            )
            changed += [row[kind.KEY] for row in found]
        return changed

    async def delete(self, kind: type[Record], where: Where) -> int:
        count = 0
        for part in self._split(where):
            sql, params = where_sql(part, kind.KEY, self.dialect)
            count += await self.connection.execute(f"DELETE FROM {kind.TABLE} WHERE {sql}", params)
        return count

    async def list_page(
        self, kind: type[R], query: ListQuery, scope: Filter = MATCH_ALL
    ) -> tuple[list[R], int]:
        """One page of records matching `query.filter` AND `scope`, and the total count."""
        from pyarmonik.domain.filters import and_filters

        sql, params = _filter_sql(and_filters(query.filter, scope), self.dialect)
        if query.sort is not None and "\0" in query.sort.key:
            raise InvalidArgument("sort: an option key must not contain NUL characters")
        total_rows = await self.connection.fetch(
            f"SELECT COUNT(*) AS n FROM {kind.TABLE} WHERE {sql}", params
        )
        total = int(total_rows[0]["n"])
        if query.page_size == 0:
            return [], total
        order = (
            order_by_sql(query.sort, self.dialect, kind.KEY) if query.sort else f"{kind.KEY} ASC"
        )
        rows = await self.connection.fetch(
            f"SELECT * FROM {kind.TABLE} WHERE {sql} ORDER BY {order} LIMIT ? OFFSET ?",
            params + [query.page_size, query.page * query.page_size],
        )
        return _records(kind, rows), total  # type: ignore[misc]

    async def count_tasks_by_status(self, task_filter: Filter) -> dict[int, int]:
        sql, params = _filter_sql(task_filter, self.dialect)
        rows = await self.connection.fetch(
            f"SELECT status, COUNT(*) AS n FROM tasks WHERE {sql} GROUP BY status", params
        )
        return {int(row["status"]): int(row["n"]) for row in rows}

    async def count_tasks_by_partition_status(self) -> list[tuple[str, int, int]]:
        """(partition, status, count) over every task (metrics)."""
        rows = await self.connection.fetch(
            "SELECT opt_partition_id AS p, status, COUNT(*) AS n FROM tasks "
            "GROUP BY opt_partition_id, status"
        )
        return [(row["p"] or "", int(row["status"]), int(row["n"])) for row in rows]

    async def count_tasks_ended_by_interval(
        self, task_filter: Filter, since: float, interval: float
    ) -> list[tuple[int, int, int]]:
        """(interval number counted from `since`, status, count) of the tasks matching the
        filter that ended at or after `since`: throughput over time, counted in the database
        (with a session in the filter, the (session_id, ended_at) index bounds the scan)."""
        from pyarmonik.domain.filters import Condition, Kind, Op, and_filters

        recent: Filter = ((Condition("ended_at", Kind.DATE, Op.GE, since),),)
        sql, params = _filter_sql(and_filters(task_filter, recent), self.dialect)
        rows = await self.connection.fetch(
            "SELECT FLOOR((ended_at - ?) / ?) AS k, status, COUNT(*) AS n FROM tasks "
            f"WHERE {sql} GROUP BY k, status",
            [since, interval, *params],
        )
        return [(int(row["k"]), int(row["status"]), int(row["n"])) for row in rows]

    async def list_applications(
        self, query: ListQuery, sorts: Sequence[Any]
    ) -> tuple[list[Application], int]:
        """Distinct application tags of stored tasks, filtered, sorted and paged."""
        columns = (
            "opt_application_name, opt_application_version, "
            "opt_application_namespace, opt_application_service"
        )
        sql, params = _filter_sql(query.filter, self.dialect)
        distinct = f"SELECT DISTINCT {columns} FROM tasks WHERE {sql}"
        total_rows = await self.connection.fetch(
            f"SELECT COUNT(*) AS n FROM ({distinct}) AS apps", params
        )
        total = int(total_rows[0]["n"])
        if query.page_size == 0:
            return [], total
        order = (
            ", ".join(order_by_sql(s, self.dialect, "opt_application_name") for s in sorts)
            or "opt_application_name ASC"
        )
        rows = await self.connection.fetch(
            f"{distinct} ORDER BY {order}, {columns} LIMIT ? OFFSET ?",
            params + [query.page_size, query.page * query.page_size],
        )
        apps = [
            Application(
                name=row["opt_application_name"],
                version=row["opt_application_version"],
                namespace=row["opt_application_namespace"],
                service=row["opt_application_service"],
            )
            for row in rows
        ]
        return apps, total

    async def set_owners(self, pairs: Iterable[tuple[str, str]], expected_owner: str) -> None:
        """Give each result (first) to a task (second) if its owner is still `expected_owner`;
        in a batch, the first claimant of a result wins."""
        await self.update_each(
            Result,
            [(result_id, {"owner_task_id": owner}) for result_id, owner in pairs],
            where={"owner_task_id": expected_owner},
        )

    async def ended_results(
        self, session_id: str, name_prefix: str, after: str, limit: int
    ) -> list[Result]:
        """Results of a session COMPLETED or ABORTED whose name starts with `name_prefix`,
        by id after `after` (pages for control/sdk_service.py)."""
        rows = await self.connection.fetch(
            "SELECT * FROM results WHERE session_id = ? AND status IN (?, ?) "
            "AND substr(name, 1, ?) = ? AND result_id > ? ORDER BY result_id LIMIT ?",
            [
                session_id,
                int(ResultStatus.COMPLETED),
                int(ResultStatus.ABORTED),
                len(name_prefix),
                name_prefix,
                after,
                limit,
            ],
        )
        return _records(Result, rows)

    # -- tasks ready but not queued -------------------------------------------------------

    async def park_unqueued(self, messages: Sequence[tuple[str, str, int]], since: float) -> None:
        """Remember (task_id, partition_id, priority) messages not pushed (yet)."""
        if messages:
            await self.connection.executemany(
                "INSERT INTO unqueued (task_id, partition_id, priority, since) "
                "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [(*message, since) for message in messages],
            )

    async def unqueued(
        self, limit: int, parked_before: float = float("inf")
    ) -> list[tuple[str, str, int]]:
        """The oldest parked messages (parked before `parked_before`)."""
        rows = await self.connection.fetch(
            "SELECT task_id, partition_id, priority FROM unqueued WHERE since < ? "
            "ORDER BY since LIMIT ?",
            [parked_before, limit],
        )
        return [(row["task_id"], row["partition_id"], row["priority"]) for row in rows]

    async def unpark(self, task_ids: Sequence[str]) -> None:
        for part in chunks(list(task_ids)):
            await self.connection.execute(
                f"DELETE FROM unqueued WHERE task_id IN ({','.join('?' * len(part))})", list(part)
            )

    # -- data dependencies ----------------------------------------------------------------

    async def add_dependencies(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Record that each task (first) waits for each result (second)."""
        rows = list(pairs)
        if rows:
            await self.connection.executemany(
                "INSERT INTO task_dependencies (task_id, result_id) VALUES (?, ?) "
                "ON CONFLICT DO NOTHING",
                rows,
            )

    async def remove_dependencies(self, result_ids: Sequence[str]) -> list[str]:
        """Forget that tasks wait for these results; return the tasks that were waiting."""
        waiting: set[str] = set()
        for part in chunks(list(result_ids)):
            rows = await self.connection.fetch(
                f"DELETE FROM task_dependencies WHERE result_id IN ({','.join('?' * len(part))}) "
                "RETURNING task_id",
                list(part),
            )
            waiting.update(row["task_id"] for row in rows)
        return sorted(waiting)

    async def waiting_on(self, result_ids: Sequence[str]) -> list[str]:
        """Tasks still waiting for any of these results."""
        found: set[str] = set()
        for part in chunks(list(result_ids)):
            rows = await self.connection.fetch(
                "SELECT DISTINCT task_id FROM task_dependencies "
                f"WHERE result_id IN ({','.join('?' * len(part))})",
                list(part),
            )
            found.update(row["task_id"] for row in rows)
        return sorted(found)

    async def without_dependencies(self, task_ids: Sequence[str]) -> list[str]:
        """Of these tasks, those that wait for nothing any more.

        Two transactions removing a task's last two dependencies at once would each still
        see the other's (uncommitted) one and neither would release the task. Where writers
        run concurrently (PostgreSQL: `lock_suffix` is set), the tasks' rows are locked first,
        in one order: the second transaction waits for the first to commit, then its next
        statement sees that commit."""
        ids = sorted(set(task_ids))
        if self.lock_suffix:
            for part in chunks(ids):
                await self.connection.fetch(
                    f"SELECT task_id FROM tasks WHERE task_id IN ({','.join('?' * len(part))}) "
                    "ORDER BY task_id FOR UPDATE",
                    list(part),
                )
        ready: list[str] = []
        for part in chunks(ids):
            rows = await self.connection.fetch(
                f"SELECT task_id FROM tasks t WHERE task_id IN ({','.join('?' * len(part))}) "
                "AND NOT EXISTS (SELECT 1 FROM task_dependencies d WHERE d.task_id = t.task_id)",
                list(part),
            )
            ready += [row["task_id"] for row in rows]
        return ready

    async def delete_dependencies_of(self, task_ids: Sequence[str]) -> None:
        for part in chunks(list(task_ids)):
            await self.connection.execute(
                f"DELETE FROM task_dependencies WHERE task_id IN ({','.join('?' * len(part))})",
                list(part),
            )

    # -- agents' heartbeats (scheduling/liveness.py), on the database's clock ---------------

    async def beat(self, owner_id: str, hostname: str) -> None:
        """Agent `owner_id` is alive now (and no longer lost, if it was found so)."""
        await self.connection.execute(
            "INSERT INTO agents (owner_id, hostname, heartbeat_at, lost_at) "
            f"VALUES (?, ?, {self.dialect.clock}, NULL) ON CONFLICT (owner_id) DO UPDATE "
            "SET heartbeat_at = excluded.heartbeat_at, lost_at = NULL",
            [owner_id, hostname],
        )

    async def agent_lost(self, owner_id: str) -> bool:
        """Whether agent `owner_id` was found lost (`mark_lost`) and has not beaten since."""
        rows = await self.connection.fetch(
            "SELECT 1 AS found FROM agents WHERE owner_id = ? AND lost_at IS NOT NULL",
            [owner_id],
        )
        return bool(rows)

    async def silent_owners(self, silent_for: float) -> list[str]:
        """Agents not found lost yet that hold tasks (DISPATCHED or PROCESSING) and have not
        beaten for `silent_for` seconds."""
        # From the few tasks held to their agents, never from an agent to all the tasks it
        # ever ran (SQLite's CROSS JOIN keeps this order; PostgreSQL has the statistics).
        rows = await self.connection.fetch(
            "SELECT DISTINCT owner_id FROM tasks CROSS JOIN agents WHERE owner_pod_id = owner_id "
            f"AND tasks.status IN (?, ?) AND lost_at IS NULL "
            f"AND heartbeat_at < {self.dialect.clock} - ?",
            [int(TaskStatus.DISPATCHED), int(TaskStatus.PROCESSING), silent_for],
        )
        return sorted(row["owner_id"] for row in rows)

    async def mark_lost(self, owner_ids: Sequence[str], silent_for: float) -> list[str]:
        """Mark lost those of the agents still silent for `silent_for` seconds and not marked
        yet; returns them (of concurrent callers, one marks each agent)."""
        lost: list[str] = []
        for part in chunks(list(owner_ids)):
            rows = await self.connection.fetch(
                f"UPDATE agents SET lost_at = {self.dialect.clock} "
                f"WHERE owner_id IN ({','.join('?' * len(part))}) AND lost_at IS NULL "
                f"AND heartbeat_at < {self.dialect.clock} - ? RETURNING owner_id",
                [*part, silent_for],
            )
            lost += [row["owner_id"] for row in rows]
        return lost

    async def forget_agents(self, silent_for: float) -> int:
        """Delete the rows of agents silent for `silent_for` seconds; how many."""
        return await self.connection.execute(
            f"DELETE FROM agents WHERE heartbeat_at < {self.dialect.clock} - ?", [silent_for]
        )

    # -- change log ----------------------------------------------------------------------------

    async def last_change(self) -> int:
        rows = await self.connection.fetch("SELECT COALESCE(MAX(seq), 0) AS seq FROM changes")
        return int(rows[0]["seq"])

    async def changes_after(self, seq: int, limit: int = 5000) -> list[Row]:
        """Change-log entries after `seq`, oldest first."""
        return await self.connection.fetch(
            "SELECT * FROM changes WHERE seq > ? ORDER BY seq LIMIT ?", [seq, limit]
        )

    async def prune_changes(self, before: float) -> int:
        return await self.connection.execute("DELETE FROM changes WHERE at < ?", [before])

    # -- authentication: roles, users, certificates, tokens -----------------------------------

    async def lock_authentication(self) -> None:
        """Serialise the transactions that change the authentication tables: each reads them
        to choose ids (PostgreSQL: a self-exclusive table lock, readers unaffected; SQLite
        serialises writers already)."""
        if self.lock_suffix:
            await self.connection.execute("LOCK TABLE auth_roles IN SHARE ROW EXCLUSIVE MODE")

    async def roles(self, role_ids: Sequence[int] | None = None) -> list[Role]:
        """Every role, or those of these ids, by id."""
        if role_ids is None:
            rows = await self.connection.fetch("SELECT * FROM auth_roles ORDER BY role_id")
        elif not role_ids:
            return []
        else:
            rows = await self.connection.fetch(
                f"SELECT * FROM auth_roles WHERE role_id IN ({','.join('?' * len(role_ids))}) "
                "ORDER BY role_id",
                list(role_ids),
            )
        return [Role(r["role_id"], r["name"], tuple(_json_list(r["permissions"]))) for r in rows]

    async def put_role(self, role: Role) -> None:
        """Create or replace the role of this id."""
        await self.connection.execute(
            "INSERT INTO auth_roles (role_id, name, permissions) VALUES (?, ?, ?) "
            "ON CONFLICT (role_id) DO UPDATE SET name = excluded.name, "
            "permissions = excluded.permissions",
            [role.role_id, role.name, json.dumps(list(role.permissions))],
        )

    async def delete_role(self, role_id: int) -> int:
        return await self.connection.execute("DELETE FROM auth_roles WHERE role_id = ?", [role_id])

    async def users(self, user_id: int | None = None, username: str | None = None) -> list[User]:
        """Every user, or the one of this id, or of this name."""
        where: Where = {}
        if user_id is not None:
            where = {"user_id": user_id}
        elif username is not None:
            where = {"username": username}
        sql, params = where_sql(where)
        rows = await self.connection.fetch(
            f"SELECT * FROM auth_users WHERE {sql} ORDER BY user_id", params
        )
        return [_user(row) for row in rows]

    async def put_user(self, user: User) -> None:
        """Create or replace the user of this id."""
        await self.connection.execute(
            "INSERT INTO auth_users (user_id, username, roles) VALUES (?, ?, ?) "
            "ON CONFLICT (user_id) DO UPDATE SET username = excluded.username, "
            "roles = excluded.roles",
            [user.user_id, user.username, json.dumps(list(user.roles))],
        )

    async def delete_user(self, user_id: int) -> int:
        """Delete a user with its certificates and tokens."""
        await self.connection.execute("DELETE FROM auth_certificates WHERE user_id = ?", [user_id])
        await self.connection.execute("DELETE FROM auth_tokens WHERE user_id = ?", [user_id])
        return await self.connection.execute("DELETE FROM auth_users WHERE user_id = ?", [user_id])

    async def certificates(self) -> list[Certificate]:
        rows = await self.connection.fetch("SELECT * FROM auth_certificates ORDER BY auth_id")
        return [_certificate(row) for row in rows]

    async def certificate(self, cn: str, fingerprint: str | None) -> Certificate | None:
        """The certificate entry of exactly this CN and fingerprint (None: the CN-only one)."""
        if fingerprint is None:
            sql, params = "cn = ? AND fingerprint IS NULL", [cn]
        else:
            sql, params = "cn = ? AND fingerprint = ?", [cn, fingerprint]
        rows = await self.connection.fetch(f"SELECT * FROM auth_certificates WHERE {sql}", params)
        return _certificate(rows[0]) if rows else None

    async def put_certificate(self, certificate: Certificate) -> None:
        """Create or replace the certificate entry of this id."""
        await self.connection.execute(
            "INSERT INTO auth_certificates (auth_id, user_id, cn, fingerprint) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (auth_id) DO UPDATE SET "
            "user_id = excluded.user_id, cn = excluded.cn, fingerprint = excluded.fingerprint",
            [certificate.auth_id, certificate.user_id, certificate.cn, certificate.fingerprint],
        )

    async def delete_certificate(self, auth_id: int) -> int:
        return await self.connection.execute(
            "DELETE FROM auth_certificates WHERE auth_id = ?", [auth_id]
        )

    async def certificate_user(self, cn: str, fingerprint: str) -> User | None:
        """ArmoniK's lookup: the entry of this CN with this fingerprint, else its CN-only
        entry; only that first entry counts, and None when its user does not exist."""
        rows = await self.connection.fetch(
            "SELECT u.user_id, u.username, u.roles FROM auth_certificates c "
            "LEFT JOIN auth_users u ON u.user_id = c.user_id "
            "WHERE c.cn = ? AND (c.fingerprint = ? OR c.fingerprint IS NULL) "
            "ORDER BY c.fingerprint IS NULL LIMIT 1",
            [cn, fingerprint],
        )
        return _user(rows[0]) if rows and rows[0]["user_id"] is not None else None

    async def next_auth_id(self, table: str) -> int:
        """One more than the largest id of an authentication table (0 when empty)."""
        column = _AUTH_KEYS[table]
        rows = await self.connection.fetch(
            f"SELECT COALESCE(MAX({column}), -1) + 1 AS n FROM {table}"
        )
        return int(rows[0]["n"])

    async def insert_token(self, name: str, user_id: int, token_hash: str, at: float) -> None:
        await self.connection.execute(
            "INSERT INTO auth_tokens (name, user_id, token_hash, created_at) VALUES (?, ?, ?, ?)",
            [name, user_id, token_hash, at],
        )

    async def tokens(self, name: str | None = None) -> list[Token]:
        """Every token (or the one of this name), without its hash."""
        where, params = ("WHERE t.name = ?", [name]) if name is not None else ("", [])
        rows = await self.connection.fetch(
            "SELECT t.name, t.user_id, COALESCE(u.username, '') AS username, t.created_at "
            f"FROM auth_tokens t LEFT JOIN auth_users u ON u.user_id = t.user_id {where} "
            "ORDER BY t.created_at, t.name",
            params,
        )
        return [Token(r["name"], r["user_id"], r["username"], r["created_at"]) for r in rows]

    async def token_user(self, token_hash: str) -> User | None:
        rows = await self.connection.fetch(
            "SELECT u.user_id, u.username, u.roles FROM auth_tokens t "
            "JOIN auth_users u ON u.user_id = t.user_id WHERE t.token_hash = ?",
            [token_hash],
        )
        return _user(rows[0]) if rows else None

    async def delete_token(self, name: str) -> int:
        return await self.connection.execute("DELETE FROM auth_tokens WHERE name = ?", [name])

    # -- helpers ----------------------------------------------------------------------------

    @staticmethod
    def _split(where: Where) -> Iterator[Where]:
        """Split a condition on its first long IN-list so each statement stays small."""
        for column, value in where.items():
            if _is_many(value) and len(value) > CHUNK:
                for part in chunks(list(value)):
                    yield {**where, column: part}
                return
        yield where

    # -- small blobs stored in the database (storage/objects/inline.py) ---------------------

    async def put_blobs(self, blobs: Sequence[tuple[bytes, str, bytes]]) -> None:
        """Store (opaque_id, owner, data) blobs. An id already stored is left as it is: ids
        are fresh, so only a transaction retried after an unsure commit meets its own."""
        if blobs:
            await self.connection.executemany(
                "INSERT INTO objects (opaque_id, owner, data) VALUES (?, ?, ?) "
                "ON CONFLICT (opaque_id) DO NOTHING",
                [(bytes(i), owner, bytes(data)) for i, owner, data in blobs],
            )

    async def blobs(self, opaque_ids: Sequence[bytes]) -> dict[bytes, bytes]:
        """The data of those of the blobs that are stored, by id."""
        found: dict[bytes, bytes] = {}
        for part in chunks(list(dict.fromkeys(opaque_ids))):
            rows = await self.connection.fetch(
                f"SELECT opaque_id, data FROM objects WHERE opaque_id IN "
                f"({','.join('?' * len(part))})",
                list(part),
            )
            found.update((bytes(row["opaque_id"]), bytes(row["data"])) for row in rows)
        return found

    async def blob_sizes(self, opaque_ids: Sequence[bytes]) -> dict[bytes, int]:
        """The size of those of the blobs that are stored, by id (their data is not read)."""
        found: dict[bytes, int] = {}
        for part in chunks(list(dict.fromkeys(opaque_ids))):
            rows = await self.connection.fetch(
                f"SELECT opaque_id, LENGTH(data) AS n FROM objects WHERE opaque_id IN "
                f"({','.join('?' * len(part))})",
                list(part),
            )
            found.update((bytes(row["opaque_id"]), int(row["n"])) for row in rows)
        return found

    async def delete_blobs(self, opaque_ids: Sequence[bytes]) -> None:
        """Delete blobs; absent ones are ignored."""
        for part in chunks(list(dict.fromkeys(opaque_ids))):
            await self.connection.execute(
                f"DELETE FROM objects WHERE opaque_id IN ({','.join('?' * len(part))})",
                list(part),
            )

    async def delete_blobs_owned_by(self, owner: str) -> int:
        """Delete the blobs stored with this owner; how many."""
        return await self.connection.execute("DELETE FROM objects WHERE owner = ?", [owner])

    # -- pictures of the admin GUI (scheduling/timeline.py) ---------------------------------
    # Each reads few columns or counts in the database: a picture of a 100,000-task session
    # never decodes 100,000 records.

    async def task_span(
        self, task_filter: Filter
    ) -> tuple[float | None, float | None, float | None]:
        """The first creation, the first acquisition and the last end (or acquisition) of
        the matching tasks."""
        sql, params = _filter_sql(task_filter, self.dialect)
        rows = await self.connection.fetch(
            "SELECT MIN(created_at) AS first, MIN(acquired_at) AS acquired, "
            f"MAX(ended_at) AS ended, MAX(acquired_at) AS last FROM tasks WHERE {sql}",
            params,
        )
        row = rows[0]
        last = max((t for t in (row["ended"], row["last"]) if t is not None), default=None)
        return row["first"], row["acquired"], last

    async def task_attempts(
        self, task_filter: Filter, since: float, until: float, limit: int
    ) -> list[Row]:
        """Up to `limit` matching tasks an agent held during [since, until], by acquisition:
        their agent, partition, status and stage times."""
        sql, params = _filter_sql(task_filter, self.dialect)
        return await self.connection.fetch(
            "SELECT task_id, status, owner_pod_id, opt_partition_id, acquired_at, fetched_at, "
            f"started_at, processed_at, ended_at FROM tasks WHERE {sql} AND owner_pod_id <> '' "
            "AND acquired_at IS NOT NULL AND acquired_at <= ? "
            "AND (ended_at IS NULL OR ended_at >= ?) ORDER BY acquired_at, task_id LIMIT ?",
            [*params, until, since, limit],
        )

    async def count_tasks_by_bucket(
        self,
        task_filter: Filter,
        event: str,
        since: float,
        until: float,
        interval: float,
        keys: Sequence[str],
    ) -> list[Row]:
        """Matching tasks whose `event` (a key of BUCKET_EVENTS) falls in [since, until),
        counted per `interval`-long bucket (`k`, from 0 at `since`) and per `keys` columns."""
        if event not in BUCKET_EVENTS or not set(keys) <= BUCKET_KEYS:
            raise InvalidArgument(f"cannot count tasks by {event} and {', '.join(keys)}")
        at = BUCKET_EVENTS[event]
        sql, params = _filter_sql(task_filter, self.dialect)
        columns = "".join(f"{key}, " for key in keys)
        return await self.connection.fetch(
            f"SELECT {columns}FLOOR(({at} - ?) / ?) AS k, COUNT(*) AS n FROM tasks "
            f"WHERE {sql} AND {at} >= ? AND {at} < ? GROUP BY {columns}k",
            [since, interval, *params, since, until],
        )

    async def count_queued_at(self, task_filter: Filter, at: float) -> dict[str, int]:
        """Per partition, matching tasks submitted before `at` and not yet acquired (nor
        ended without an agent) at `at`."""
        sql, params = _filter_sql(task_filter, self.dialect)
        left = BUCKET_EVENTS["dequeued"]
        rows = await self.connection.fetch(
            f"SELECT opt_partition_id AS p, COUNT(*) AS n FROM tasks WHERE {sql} "
            f"AND submitted_at < ? AND ({left} IS NULL OR {left} >= ?) GROUP BY opt_partition_id",
            [*params, at, at],
        )
        return {row["p"] or "": int(row["n"]) for row in rows}

    async def agent_busy(self, task_filter: Filter, since: float, until: float) -> list[Row]:
        """Per agent (`owner`, `p` its partition): seconds of [since, until] during which it
        held matching tasks (`busy`, summed over them) and how many (`n`)."""
        sql, params = _filter_sql(task_filter, self.dialect)
        # min(end, until) - max(acquired, since) in CASEs: SQLite's min/max are PostgreSQL's
        # LEAST/GREATEST; a task still held counts until `until`.
        end = "COALESCE(ended_at, ?)"
        rows = await self.connection.fetch(
            f"SELECT owner_pod_id AS owner, MAX(opt_partition_id) AS p, COUNT(*) AS n, "
            f"SUM((CASE WHEN {end} > ? THEN ? ELSE {end} END) - "
            "(CASE WHEN acquired_at < ? THEN ? ELSE acquired_at END)) AS busy "
            f"FROM tasks WHERE {sql} AND owner_pod_id <> '' AND acquired_at IS NOT NULL "
            f"AND acquired_at <= ? AND {end} >= ? GROUP BY owner_pod_id",
            [until, until, until, until, since, since, *params, until, until, since],
        )
        return rows

    async def count_generations(self, task_filter: Filter) -> list[tuple[int, int, int]]:
        """(generation, status, count) of the matching tasks: a task submitted by a client is
        generation 0, its subtasks 1, theirs 2... (the commas of `parent_task_ids`: ids hold
        none; the same text function in both dialects)."""
        sql, params = _filter_sql(task_filter, self.dialect)
        text = "CAST(parent_task_ids AS TEXT)"
        rows = await self.connection.fetch(
            f"SELECT LENGTH({text}) - LENGTH(REPLACE({text}, ',', '')) AS g, status, "
            f"COUNT(*) AS n FROM tasks WHERE {sql} GROUP BY g, status",
            params,
        )
        return [(int(row["g"]), int(row["status"]), int(row["n"])) for row in rows]

    async def graph_tasks(self, task_filter: Filter, limit: int) -> list[Row]:
        """Up to `limit` matching tasks, first created first, with what links them."""
        sql, params = _filter_sql(task_filter, self.dialect)
        rows = await self.connection.fetch(
            "SELECT task_id, status, created_by, initial_task_id, parent_task_ids, "
            "data_dependencies, expected_output_ids, owner_pod_id, opt_partition_id, "
            f"created_at FROM tasks WHERE {sql} ORDER BY created_at, task_id LIMIT ?",
            [*params, limit],
        )
        return [_decode(row) for row in rows]

    async def result_owners(self, result_ids: Sequence[str]) -> dict[str, str]:
        """The task that must produce each of these results now (`owner_task_id`)."""
        found: dict[str, str] = {}
        for part in chunks(list(dict.fromkeys(result_ids))):
            rows = await self.connection.fetch(
                "SELECT result_id, owner_task_id FROM results WHERE result_id IN "
                f"({','.join('?' * len(part))})",
                list(part),
            )
            found.update((row["result_id"], row["owner_task_id"]) for row in rows)
        return found

    async def task_times(self, task_filter: Filter) -> list[Row]:
        """Status and stage times of the matching tasks (no other column)."""
        sql, params = _filter_sql(task_filter, self.dialect)
        return await self.connection.fetch(
            "SELECT status, created_at, submitted_at, acquired_at, fetched_at, started_at, "
            f"processed_at, ended_at FROM tasks WHERE {sql}",
            params,
        )


# The time of each event tasks are counted by (count_tasks_by_bucket), and what they are
# grouped by besides. A task leaves its queue when an agent acquires it, or ends without one.
BUCKET_EVENTS = {
    "submitted": "submitted_at",
    "acquired": "acquired_at",
    "ended": "ended_at",
    "dequeued": "COALESCE(acquired_at, ended_at)",
}
BUCKET_KEYS = frozenset({"status", "owner_pod_id", "opt_partition_id"})
