"""The three ArmoniK status enums, with their wire numbers, and their legal transitions."""

from __future__ import annotations

from enum import IntEnum


class TaskStatus(IntEnum):
    UNSPECIFIED = 0
    CREATING = 1
    SUBMITTED = 2
    DISPATCHED = 3
    COMPLETED = 4
    ERROR = 5
    TIMEOUT = 6
    CANCELLING = 7
    CANCELLED = 8
    PROCESSING = 9
    PROCESSED = 10
    RETRIED = 11
    PENDING = 12
    PAUSED = 13

    @property
    def is_final(self) -> bool:
        return self in FINAL_TASK_STATUSES


FINAL_TASK_STATUSES = frozenset(
    {
        TaskStatus.COMPLETED,
        TaskStatus.ERROR,
        TaskStatus.TIMEOUT,
        TaskStatus.CANCELLED,
        TaskStatus.RETRIED,
    }
)
# Statuses a task may be cancelled from (anything not final and not already cancelling).
CANCELLABLE_TASK_STATUSES = frozenset(
    {
        TaskStatus.CREATING,
        TaskStatus.PENDING,
        TaskStatus.SUBMITTED,
        TaskStatus.DISPATCHED,
        TaskStatus.PROCESSING,
        TaskStatus.PAUSED,
    }
)
# Tasks that have not been queued yet: failures upstream terminate them directly.
WAITING_TASK_STATUSES = frozenset({TaskStatus.CREATING, TaskStatus.PENDING})


class ResultStatus(IntEnum):
    UNSPECIFIED = 0
    CREATED = 1
    COMPLETED = 2
    ABORTED = 3
    DELETED = 4
    NOTFOUND = 127


class SessionStatus(IntEnum):
    UNSPECIFIED = 0
    RUNNING = 1
    CANCELLED = 2
    PAUSED = 3
    CLOSED = 4
    PURGED = 5
    DELETED = 6


class SessionAction(IntEnum):
    """The lifecycle operations a client can ask for on a session."""

    PAUSE = 1
    RESUME = 2
    CLOSE = 3
    CANCEL = 4
    PURGE = 5


# From which statuses each action is legal (reference §2.8). RESUME on RUNNING is a no-op.
SESSION_TRANSITIONS: dict[SessionAction, tuple[frozenset[SessionStatus], SessionStatus]] = {
    SessionAction.PAUSE: (frozenset({SessionStatus.RUNNING}), SessionStatus.PAUSED),
    SessionAction.RESUME: (
        frozenset({SessionStatus.PAUSED, SessionStatus.RUNNING}),
        SessionStatus.RUNNING,
    ),
    SessionAction.CLOSE: (
        frozenset({SessionStatus.RUNNING, SessionStatus.PAUSED}),
        SessionStatus.CLOSED,
    ),
    SessionAction.CANCEL: (
        frozenset({SessionStatus.RUNNING, SessionStatus.PAUSED, SessionStatus.CLOSED}),
        SessionStatus.CANCELLED,
    ),
    SessionAction.PURGE: (
        frozenset({SessionStatus.CLOSED, SessionStatus.CANCELLED}),
        SessionStatus.PURGED,
    ),
}
