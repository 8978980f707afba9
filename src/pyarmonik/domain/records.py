"""Records stored by the database: sessions, tasks, results, partitions.

Each record converts to and from a *row*: a dict keyed by column name holding plain Python
values (lists and dicts stay Python objects; the database adapter encodes them). Filters are
evaluated on the same rows, so a column name is the one name of a field everywhere.
Times are seconds since the epoch (float), durations are seconds; None means "not set".
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from pyarmonik.domain.options import TaskOptions
from pyarmonik.domain.statuses import ResultStatus, SessionStatus, TaskStatus

Row = dict[str, Any]

# A task's timestamps (seconds since the epoch) and durations (seconds), in wire order.
TASK_TIMES = (
    "created_at",
    "submitted_at",
    "received_at",
    "acquired_at",
    "fetched_at",
    "started_at",
    "processed_at",
    "ended_at",
    "pod_ttl",
)
TASK_DURATIONS = (
    "creation_to_end_duration",
    "processing_to_end_duration",
    "received_to_end_duration",
)
# Every float column holding a time or a duration, whatever the record.
TIME_COLUMNS = frozenset(
    {
        *TASK_TIMES,
        *TASK_DURATIONS,
        "cancelled_at",
        "closed_at",
        "purged_at",
        "deleted_at",
        "completed_at",
        "duration",
        "opt_max_duration",
    }
)


def _plain_row(record: Any, skip: tuple[str, ...] = ()) -> Row:
    return {name: getattr(record, name) for name in _field_names(type(record)) if name not in skip}


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(kind: type) -> tuple[str, ...]:
    """The fields of a record type, looked up once (rows are converted by the thousand)."""
    names = _FIELD_NAMES.get(kind)
    if names is None:
        names = _FIELD_NAMES[kind] = tuple(f.name for f in fields(kind))
    return names


@dataclass
class Session:
    session_id: str
    status: SessionStatus = SessionStatus.RUNNING
    client_submission: bool = True
    worker_submission: bool = True
    partition_ids: list[str] = field(default_factory=list)
    options: TaskOptions = field(default_factory=TaskOptions)
    created_at: float | None = None
    cancelled_at: float | None = None
    closed_at: float | None = None
    purged_at: float | None = None
    deleted_at: float | None = None
    duration: float | None = None
    # The user who created the session ('' without authentication): session isolation.
    created_by_user: str = ""

    TABLE: ClassVar[str] = "sessions"
    KEY: ClassVar[str] = "session_id"

    def to_row(self) -> Row:
        row = _plain_row(self, skip=("options",))
        row["status"] = int(self.status)
        row.update(self.options.to_columns())
        return row

    @staticmethod
    def from_row(row: Row) -> Session:
        return Session(
            session_id=row["session_id"],
            status=SessionStatus(row["status"]),
            client_submission=bool(row["client_submission"]),
            worker_submission=bool(row["worker_submission"]),
            partition_ids=list(row["partition_ids"]),
            options=TaskOptions.from_columns(row),
            created_at=row["created_at"],
            cancelled_at=row["cancelled_at"],
            closed_at=row["closed_at"],
            purged_at=row["purged_at"],
            deleted_at=row["deleted_at"],
            duration=row["duration"],
            created_by_user=row["created_by_user"] or "",
        )


@dataclass
class Task:
    task_id: str
    session_id: str
    payload_id: str
    options: TaskOptions
    status: TaskStatus = TaskStatus.CREATING
    initial_task_id: str = ""
    owner_pod_id: str = ""
    pod_hostname: str = ""
    parent_task_ids: list[str] = field(default_factory=list)
    data_dependencies: list[str] = field(default_factory=list)
    expected_output_ids: list[str] = field(default_factory=list)
    retry_of_ids: list[str] = field(default_factory=list)
    created_by: str = ""
    status_message: str = ""
    error: str = ""
    created_at: float | None = None
    submitted_at: float | None = None
    received_at: float | None = None
    acquired_at: float | None = None
    fetched_at: float | None = None
    started_at: float | None = None
    processed_at: float | None = None
    ended_at: float | None = None
    pod_ttl: float | None = None
    creation_to_end_duration: float | None = None
    processing_to_end_duration: float | None = None
    received_to_end_duration: float | None = None

    TABLE: ClassVar[str] = "tasks"
    KEY: ClassVar[str] = "task_id"

    def to_row(self) -> Row:
        row = _plain_row(self, skip=("options",))
        row["status"] = int(self.status)
        row.update(self.options.to_columns())
        return row

    @staticmethod
    def from_row(row: Row) -> Task:
        values = {name: row[name] for name in _field_names(Task) if name != "options"}
        values["status"] = TaskStatus(row["status"])
        for name in ("parent_task_ids", "data_dependencies", "expected_output_ids", "retry_of_ids"):
            values[name] = list(row[name])
        return Task(options=TaskOptions.from_columns(row), **values)

    @property
    def dependencies(self) -> list[str]:
        """Every result this task needs before it can run: its payload and data dependencies."""
        return [self.payload_id, *self.data_dependencies]


@dataclass
class Result:
    result_id: str
    session_id: str
    name: str = ""
    status: ResultStatus = ResultStatus.CREATED
    owner_task_id: str = ""
    created_by: str = ""
    completed_by: str = ""
    opaque_id: bytes = b""
    size: int = 0
    manual_deletion: bool = False
    created_at: float | None = None
    completed_at: float | None = None

    TABLE: ClassVar[str] = "results"
    KEY: ClassVar[str] = "result_id"

    def to_row(self) -> Row:
        row = _plain_row(self)
        row["status"] = int(self.status)
        return row

    @staticmethod
    def from_row(row: Row) -> Result:
        values = {name: row[name] for name in _field_names(Result)}
        values["status"] = ResultStatus(row["status"])
        values["opaque_id"] = bytes(row["opaque_id"] or b"")
        values["manual_deletion"] = bool(row["manual_deletion"])
        return Result(**values)


@dataclass
class Partition:
    partition_id: str
    parent_partition_ids: list[str] = field(default_factory=list)
    pod_reserved: int = 0
    pod_max: int = 0
    preemption_percentage: int = 0
    priority: int = 0
    pod_configuration: dict[str, str] = field(default_factory=dict)

    TABLE: ClassVar[str] = "partitions"
    KEY: ClassVar[str] = "partition_id"

    def to_row(self) -> Row:
        return _plain_row(self)

    @staticmethod
    def from_row(row: Row) -> Partition:
        values = {name: row[name] for name in _field_names(Partition)}
        values["parent_partition_ids"] = list(row["parent_partition_ids"])
        values["pod_configuration"] = dict(row["pod_configuration"])
        return Partition(**values)


@dataclass(frozen=True)
class Application:
    """A distinct (name, version, namespace, service) found in the options of stored tasks."""

    name: str
    version: str
    namespace: str
    service: str
