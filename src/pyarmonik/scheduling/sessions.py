"""Session lifecycle: create, pause, resume, close, cancel, purge, delete, stop submission."""

from __future__ import annotations

from pyarmonik.domain.errors import FailedPrecondition, InvalidArgument, NotFound
from pyarmonik.domain.filters import ListQuery
from pyarmonik.domain.ids import new_id
from pyarmonik.domain.options import TaskOptions
from pyarmonik.domain.records import Result, Session, Task
from pyarmonik.domain.statuses import (
    SESSION_TRANSITIONS,
    ResultStatus,
    SessionAction,
    SessionStatus,
    TaskStatus,
)
from pyarmonik.scheduling.backends import Backends, now
from pyarmonik.scheduling.graph import ReadyTask, push_ready, push_ready_within, terminate
from pyarmonik.storage.database import Repository

# Tasks that no agent holds: a cancellation ends them at once.
IDLE_STATUSES = frozenset(
    {TaskStatus.CREATING, TaskStatus.PENDING, TaskStatus.SUBMITTED, TaskStatus.PAUSED}
)
# Tasks an agent holds: they become CANCELLING and the agent stops them.
HELD_STATUSES = frozenset({TaskStatus.DISPATCHED, TaskStatus.PROCESSING})


async def load_session(repository: Repository, session_id: str) -> Session:
    if not session_id:
        raise InvalidArgument("session_id is required")
    session = await repository.get(Session, session_id)
    if session is None:
        raise NotFound(f"Session {session_id} not found")
    return session


async def cancel_tasks_in(repository: Repository, where: dict[str, object], reason: str) -> None:
    """Cancel the tasks matching `where`: idle ones end CANCELLED, held ones CANCELLING, their
    outputs are aborted and whatever waited on those outputs ends in ERROR."""
    stamp = now()
    idle = await repository.update_returning(
        Task,
        {**where, "status": IDLE_STATUSES},
        {"status": TaskStatus.CANCELLED, "ended_at": stamp},
    )
    held = await repository.update_returning(
        Task, {**where, "status": HELD_STATUSES}, {"status": TaskStatus.CANCELLING}
    )
    cancelled = [t.task_id for t in idle + held]
    await repository.delete_dependencies_of([t.task_id for t in idle])
    outputs = [o for t in idle + held for o in t.expected_output_ids]
    await terminate(repository, cancelled, outputs, reason)


class SessionService:
    def __init__(self, backends: Backends):
        self.backends = backends

    async def create(
        self, options: TaskOptions, partition_ids: list[str], created_by_user: str = ""
    ) -> Session:
        known = {p.partition_id for p in self.backends.partitions}
        partitions = list(dict.fromkeys(partition_ids)) or [self.backends.default_partition]
        if not options.partition_id:
            options = options.with_partition(partitions[0])
        if options.partition_id not in partitions:
            partitions.append(options.partition_id)
        unknown = [p for p in partitions if p not in known]
        if unknown:
            raise NotFound(f"Partitions not found: {', '.join(unknown)}")
        options.validate()
        session = Session(
            session_id=new_id(),
            partition_ids=partitions,
            options=options,
            created_at=now(),
            created_by_user=created_by_user,
        )
        async with self.backends.database.write() as repository:
            await repository.insert([session])
        return session

    async def get(self, session_id: str) -> Session:
        async with self.backends.database.read() as repository:
            return await load_session(repository, session_id)

    async def list_page(self, query: ListQuery) -> tuple[list[Session], int]:
        async with self.backends.database.read() as repository:
            return await repository.list_page(Session, query)

    async def _transition(
        self, repository: Repository, session_id: str, action: SessionAction
    ) -> tuple[Session, Session]:
        """Apply a lifecycle transition to the session row; return it before and after."""
        session = await load_session(repository, session_id)
        allowed, target = SESSION_TRANSITIONS[action]
        if session.status not in allowed:
            raise FailedPrecondition(
                f"Session {session_id} is {session.status.name}: cannot {action.name.lower()} it"
            )
        stamp = now()
        values: dict[str, object] = {"status": target}
        if action in (SessionAction.CLOSE, SessionAction.CANCEL):
            values.update(client_submission=False, worker_submission=False)
        if action is SessionAction.CLOSE:
            values.update(closed_at=stamp, duration=stamp - (session.created_at or stamp))
        elif action is SessionAction.CANCEL:
            values["cancelled_at"] = stamp
        elif action is SessionAction.PURGE:
            values["purged_at"] = stamp
        updated = await repository.update_returning(
            Session, {"session_id": session_id, "status": session.status}, values
        )
        if not updated:
            raise FailedPrecondition(f"Session {session_id} changed concurrently; retry")
        return session, updated[0]

    async def pause(self, session_id: str) -> Session:
        async with self.backends.database.write() as repository:
            _, session = await self._transition(repository, session_id, SessionAction.PAUSE)
            await repository.update(
                Task,
                {"session_id": session_id, "status": [TaskStatus.SUBMITTED, TaskStatus.DISPATCHED]},
                {"status": TaskStatus.PAUSED, "owner_pod_id": ""},
            )
        return session

    async def resume(self, session_id: str) -> Session:
        async with self.backends.database.write() as repository:
            before, session = await self._transition(repository, session_id, SessionAction.RESUME)
            resumed: list[Task] = []
            if before.status == SessionStatus.PAUSED:
                resumed = await repository.update_returning(
                    Task,
                    {"session_id": session_id, "status": TaskStatus.PAUSED},
                    {"status": TaskStatus.SUBMITTED, "owner_pod_id": "", "submitted_at": now()},
                )
            ready = await push_ready_within(
                self.backends,
                repository,
                [
                    ReadyTask(t.task_id, t.options.partition_id, t.options.priority, session_id)
                    for t in resumed
                ],
            )
        await push_ready(self.backends, ready)
        return session

    async def close(self, session_id: str) -> Session:
        async with self.backends.database.write() as repository:
            return (await self._transition(repository, session_id, SessionAction.CLOSE))[1]

    async def cancel(self, session_id: str) -> Session:
        async with self.backends.database.write() as repository:
            _, session = await self._transition(repository, session_id, SessionAction.CANCEL)
            await cancel_tasks_in(
                repository, {"session_id": session_id}, f"Session {session_id} was cancelled"
            )
            await repository.update(
                Result,
                {"session_id": session_id, "status": ResultStatus.CREATED},
                {"status": ResultStatus.ABORTED, "completed_at": now()},
            )
        return session

    async def purge(self, session_id: str) -> Session:
        async with self.backends.database.write() as repository:
            _, session = await self._transition(repository, session_id, SessionAction.PURGE)
            purged = await repository.update_returning(
                Result,
                {
                    "session_id": session_id,
                    "manual_deletion": False,
                    "status": [ResultStatus.CREATED, ResultStatus.COMPLETED, ResultStatus.ABORTED],
                },
                {"status": ResultStatus.DELETED, "opaque_id": b""},
            )
        # Metadata first, then blobs: a crash in between leaves orphan blobs, never dangling ids.
        await self.backends.objects.delete([r.opaque_id for r in purged if r.opaque_id])
        return session

    async def delete(self, session_id: str) -> Session:
        if not session_id:
            raise InvalidArgument("session_id is required")
        async with self.backends.database.write() as repository:
            session = await repository.get(Session, session_id)
            if session is None:
                return Session(
                    session_id=session_id, status=SessionStatus.DELETED, deleted_at=now()
                )
            tasks = [t.task_id for t in await repository.find(Task, {"session_id": session_id})]
            await repository.delete_dependencies_of(tasks)
            await repository.delete(Task, {"session_id": session_id})
            await repository.delete(Result, {"session_id": session_id})
            await repository.delete(Session, {"session_id": session_id})
        session.status = SessionStatus.DELETED
        session.deleted_at = now()
        return session

    async def stop_submission(self, session_id: str, client: bool, worker: bool) -> Session:
        values: dict[str, object] = {}
        if client:
            values["client_submission"] = False
        if worker:
            values["worker_submission"] = False
        async with self.backends.database.write() as repository:
            session = await load_session(repository, session_id)
            if not values:
                return session
            return (await repository.update_returning(Session, {"session_id": session_id}, values))[
                0
            ]
