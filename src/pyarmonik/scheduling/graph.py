"""The task graph inside one transaction: creating tasks, resolving dependencies, and
terminating what a failure or a cancellation leaves without inputs.

Every function takes a Repository already inside `Database.write()` and returns the tasks
that became ready; the caller pushes them to the queue once the transaction committed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from pyarmonik.domain.errors import FailedPrecondition, NotFound
from pyarmonik.domain.records import Result, Session, Task
from pyarmonik.domain.statuses import (
    WAITING_TASK_STATUSES,
    ResultStatus,
    SessionStatus,
    TaskStatus,
)
from pyarmonik.scheduling.backends import Backends, now
from pyarmonik.storage.database import Repository

log = logging.getLogger(__name__)

UNUSABLE_RESULTS = frozenset({ResultStatus.ABORTED, ResultStatus.DELETED})


@dataclass(frozen=True)
class ReadyTask:
    """A task to push to its partition's queue."""

    task_id: str
    partition_id: str
    priority: int
    session_id: str  # the queue shares turns between sessions


def _by_queue(ready: Sequence[ReadyTask]) -> dict[tuple[str, str], list[tuple[str, int]]]:
    """Messages grouped by (partition, session), highest priority first."""
    grouped: dict[tuple[str, str], list[tuple[str, int]]] = {}
    for task in sorted(ready, key=lambda t: -t.priority):
        key = (task.partition_id, task.session_id)
        grouped.setdefault(key, []).append((task.task_id, task.priority))
    return grouped


# A parked message younger than this may be on its way to the broker from a live process:
# `push_parked` leaves it alone (pushing it too would only make a duplicate).
PARKED_GRACE = 5.0


async def push_ready_within(
    backends: Backends, repository: Repository, ready: list[ReadyTask]
) -> list[ReadyTask]:
    """Queue ready tasks from inside the caller's transaction, so that no task is ever left
    SUBMITTED without a message. A queue in the database takes them right there. For a broker,
    they are parked in the database (an outbox, committed with the tasks) and returned, for
    `push_ready` after the commit; a process that dies before pushing leaves them parked, and
    `push_parked` pushes them."""
    if not ready:
        return ready
    queue = backends.queue_in_database
    if queue is None:
        await repository.park_unqueued(
            [(t.task_id, t.partition_id, t.priority) for t in ready], now()
        )
        return ready
    for (partition_id, session_id), messages in _by_queue(ready).items():
        await queue.push_within(repository, partition_id, messages, session_id)
    return []


async def push_ready(backends: Backends, ready: Sequence[ReadyTask]) -> None:
    """Push the tasks `push_ready_within` parked, once their transaction committed, and
    unpark them. Messages the broker refuses (down for longer than its reconnection window)
    stay parked for `push_parked`."""
    pushed: list[str] = []
    for (partition_id, session_id), messages in _by_queue(ready).items():
        try:
            await backends.queue.push(partition_id, messages, session_id)
        except Exception as error:
            log.warning(
                "queueing %d ready tasks failed (%r); parked until the queue is back",
                len(messages),
                error,
            )
            continue
        pushed += [task_id for task_id, _ in messages]
    if pushed:
        try:
            async with backends.database.write() as repository:
                await repository.unpark(pushed)
        except Exception as error:  # pushed again later: a duplicate, which agents drop
            log.warning("unparking %d pushed tasks failed: %r", len(pushed), error)


async def push_parked(backends: Backends, limit: int = 1000) -> int:
    """Push parked messages (oldest first, parked more than PARKED_GRACE ago) while the queue
    takes them; how many it took. A message pushed twice (two control planes, or a failure
    before the unpark) is harmless: agents drop the message of a task not theirs to run."""
    async with backends.database.read() as repository:
        rows = await repository.unqueued(limit, parked_before=now() - PARKED_GRACE)
        # The outbox keeps no session: read it from the tasks (rare: a broker was down).
        sessions = (
            {
                task.task_id: task.session_id
                for task in await repository.find(Task, {"task_id": [row[0] for row in rows]})
            }
            if rows
            else {}
        )
    parked = [ReadyTask(*row, sessions.get(row[0], "")) for row in rows]
    pushed: list[str] = []
    try:
        for (partition_id, session_id), messages in _by_queue(parked).items():
            await backends.queue.push(partition_id, messages, session_id)
            pushed += [task_id for task_id, _ in messages]
    finally:
        if pushed:
            async with backends.database.write() as repository:
                await repository.unpark(pushed)
    return len(pushed)


async def create_tasks(
    repository: Repository, session: Session, tasks: list[Task], parent: Task | None = None
) -> list[ReadyTask]:
    """Insert new tasks (status PENDING), claim their outputs, hand the parent's outputs over
    to them, register their dependencies and mark those already satisfied as SUBMITTED."""
    dependency_ids = sorted({dep for task in tasks for dep in task.dependencies})
    # Locked reads: a concurrent completion of one of these results must either be seen
    # here or see our dependency rows (PostgreSQL; SQLite serialises writers anyway).
    found = {
        r.result_id: r
        for r in await repository.find(Result, {"result_id": dependency_ids}, lock=True)
    }
    missing = [
        d for d in dependency_ids if d not in found or found[d].session_id != session.session_id
    ]
    if missing:
        raise NotFound(f"Some dependencies do not exist: {', '.join(missing[:10])}")
    unusable = [d for d in dependency_ids if found[d].status in UNUSABLE_RESULTS]
    if unusable:
        raise FailedPrecondition(
            f"Some dependencies are aborted or deleted: {', '.join(unusable[:10])}"
        )
    output_ids = sorted({out for task in tasks for out in task.expected_output_ids})
    outputs = {r.result_id: r for r in await repository.find(Result, {"result_id": output_ids})}
    missing = [
        o for o in output_ids if o not in outputs or outputs[o].session_id != session.session_id
    ]
    if missing:
        raise NotFound(f"Some expected outputs do not exist: {', '.join(missing[:10])}")
    closed = [o for o in output_ids if outputs[o].status != ResultStatus.CREATED]
    if closed:
        raise FailedPrecondition(
            f"Some expected outputs are not in status CREATED: {', '.join(closed[:10])}"
        )

    for task in tasks:
        task.status = TaskStatus.PENDING
    await repository.insert(tasks)

    parent_outputs = set(parent.expected_output_ids) if parent else set()
    delegated = [
        (out, task.task_id)
        for task in tasks
        for out in task.expected_output_ids
        if out in parent_outputs
    ]
    if parent is not None and delegated:
        await repository.set_owners(delegated, expected_owner=parent.task_id)
    claims = [(out, task.task_id) for task in tasks for out in task.expected_output_ids]
    await repository.set_owners(claims, expected_owner="")

    completed = {d for d, r in found.items() if r.status == ResultStatus.COMPLETED}
    await repository.add_dependencies(
        (task.task_id, dep) for task in tasks for dep in set(task.dependencies) - completed
    )
    ready = [t.task_id for t in tasks if not set(t.dependencies) - completed]
    return await submit(repository, session, ready)


async def submit(
    repository: Repository, session: Session, task_ids: Sequence[str]
) -> list[ReadyTask]:
    """Move waiting tasks whose inputs are all available to SUBMITTED (PAUSED if the session is
    paused, and then nothing is pushed until it resumes)."""
    if not task_ids:
        return []
    paused = session.status == SessionStatus.PAUSED
    rows = await repository.update_columns(
        Task,
        {"task_id": list(task_ids), "status": WAITING_TASK_STATUSES},
        {
            "status": TaskStatus.PAUSED if paused else TaskStatus.SUBMITTED,
            "submitted_at": now(),
        },
        ("task_id", "opt_partition_id", "opt_priority"),
    )
    if paused:
        return []
    return [
        ReadyTask(
            row["task_id"],
            row["opt_partition_id"] or "",
            row["opt_priority"] or 0,
            session.session_id,
        )
        for row in rows
    ]


async def released_by(repository: Repository, completed: Sequence[str]) -> list[str]:
    """Results just became COMPLETED: the tasks that were waiting only for them (to `submit`)."""
    waiting = await repository.remove_dependencies(completed)
    return await repository.without_dependencies(waiting)


async def resolve(
    repository: Repository, session: Session, completed: Sequence[str]
) -> list[ReadyTask]:
    """Results just became COMPLETED: submit the tasks that were waiting only for them."""
    return await submit(repository, session, await released_by(repository, completed))


async def terminate(
    repository: Repository,
    task_ids: Sequence[str],
    result_ids: Sequence[str],
    reason: str,
    status: TaskStatus = TaskStatus.ERROR,
) -> None:
    """End waiting tasks (CREATING/PENDING) in `status`, abort their outputs and the given
    results when still CREATED, then do the same for every task that waited on an aborted
    result, recursively (reference §4.8)."""
    tasks, results, cause = list(task_ids), list(result_ids), reason
    while tasks or results:
        ended = await repository.update_returning(
            Task,
            {"task_id": tasks, "status": WAITING_TASK_STATUSES},
            {"status": status, "error": cause, "ended_at": now()},
        )
        owners = {t.task_id for t in ended} | set(tasks)
        candidates = sorted(set(results) | {o for t in ended for o in t.expected_output_ids})
        aborted = [
            r.result_id
            for r in await repository.find(
                Result, {"result_id": candidates, "status": ResultStatus.CREATED}
            )
            if r.owner_task_id in owners or r.owner_task_id == ""
        ]
        if aborted:
            await repository.update(
                Result,
                {"result_id": aborted, "status": ResultStatus.CREATED},
                {"status": ResultStatus.ABORTED, "completed_at": now()},
            )
        tasks = await repository.waiting_on(aborted)
        await repository.delete_dependencies_of(tasks)
        results = []
        cause = f"Dependency aborted: {', '.join(aborted[:5])}\n{reason}" if aborted else reason
