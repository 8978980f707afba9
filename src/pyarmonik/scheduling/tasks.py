"""Tasks: submission (by clients and by running tasks), queries and cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable
from dataclasses import dataclass, field

from pyarmonik.domain.errors import FailedPrecondition, InvalidArgument, NotFound
from pyarmonik.domain.filters import Filter, ListQuery
from pyarmonik.domain.ids import new_id
from pyarmonik.domain.options import TaskOptions
from pyarmonik.domain.records import Result, Session, Task
from pyarmonik.domain.statuses import ResultStatus, SessionStatus
from pyarmonik.scheduling.backends import Backends, now
from pyarmonik.scheduling.graph import ReadyTask, create_tasks, push_ready, push_ready_within
from pyarmonik.scheduling.results import delete_unreferenced
from pyarmonik.scheduling.sessions import cancel_tasks_in, load_session
from pyarmonik.storage.database import Repository
from pyarmonik.storage.objects import single_chunk
from pyarmonik.storage.objects.inline import InlineObjects


@dataclass
class TaskCreation:
    """One task of a SubmitTasks request."""

    payload_id: str
    expected_output_ids: list[str]
    data_dependencies: list[str] = field(default_factory=list)
    options: TaskOptions | None = None


@dataclass
class NewTask:
    """A task of the SDK's one-call submission (control/sdk_service.py): its payload's data and
    its output are created with it."""

    payload_name: str
    payload: bytes
    output_name: str
    data_dependencies: list[str] = field(default_factory=list)
    options: TaskOptions | None = None


@dataclass
class PayloadTask:
    """A task of the legacy Submitter service (control/submitter.py): its payload travels with
    it, and becomes a completed result of its own."""

    payload: bytes
    expected_output_ids: list[str]
    data_dependencies: list[str] = field(default_factory=list)
    payload_name: str = ""


def plan_tasks(
    session: Session,
    request_options: TaskOptions | None,
    creations: list[TaskCreation],
    parent: Task | None = None,
) -> list[Task]:
    """Validate a submission against its session and build the task records (not stored)."""
    if not creations:
        raise InvalidArgument("task_creations must not be empty")
    allowed = session.worker_submission if parent else session.client_submission
    if not allowed:
        raise FailedPrecondition("Submission for the session is closed")
    defaults = request_options.merged_over(session.options) if request_options else session.options
    stamp = now()
    tasks: list[Task] = []
    for creation in creations:
        if not creation.payload_id:
            raise InvalidArgument("payload_id is required for every task")
        if len(set(creation.expected_output_ids)) != len(creation.expected_output_ids):
            raise InvalidArgument("expected outputs of a task must be distinct")
        options = creation.options.merged_over(defaults) if creation.options else defaults
        if options.partition_id not in session.partition_ids:
            raise InvalidArgument(
                f"Partition {options.partition_id!r} is not a partition of session {session.session_id}"
            )
        options.validate()
        task_id = new_id()
        tasks.append(
            Task(
                task_id=task_id,
                session_id=session.session_id,
                payload_id=creation.payload_id,
                options=options,
                initial_task_id=task_id,
                parent_task_ids=(
                    [*parent.parent_task_ids, parent.task_id] if parent else [session.session_id]
                ),
                data_dependencies=list(dict.fromkeys(creation.data_dependencies)),
                expected_output_ids=list(creation.expected_output_ids),
                created_by=parent.task_id if parent else "",
                created_at=stamp,
            )
        )
    return tasks


class TaskService:
    def __init__(self, backends: Backends):
        self.backends = backends

    async def submit(
        self, session_id: str, request_options: TaskOptions | None, creations: list[TaskCreation]
    ) -> list[Task]:
        """A client submission: tasks are stored, and queued once their inputs exist."""
        async with self.backends.database.write() as repository:
            session = await load_session(repository, session_id)
            tasks = plan_tasks(session, request_options, creations)
            ready: list[ReadyTask] = await create_tasks(repository, session, tasks)
            ready = await push_ready_within(self.backends, repository, ready)
        await push_ready(self.backends, ready)
        return tasks

    async def submit_new(self, session_id: str, new: list[NewTask]) -> list[Task]:
        """Create each task's payload (its data in the database) and output, and submit the
        tasks, in one transaction. Payloads must fit in the database (`inline_threshold`)."""
        if not new:
            raise InvalidArgument("tasks must not be empty")
        inline = self.backends.objects
        if not isinstance(inline, InlineObjects) or inline.threshold <= 0:
            raise FailedPrecondition("this server keeps no data in its database")
        too_big = [n.payload_name for n in new if not inline.fits(len(n.payload))]
        if too_big:
            raise InvalidArgument(
                f"payloads over {inline.threshold} bytes are uploaded as results first: "
                f"{', '.join(too_big[:10])}"
            )
        stamp = now()
        blobs = [(inline.inline_id(), "", n.payload) for n in new]
        payloads = [
            payload_result(session_id, n.payload_name, opaque_id, len(n.payload), stamp)
            for n, (opaque_id, _, _) in zip(new, blobs, strict=True)
        ]
        outputs = [
            Result(result_id=new_id(), session_id=session_id, name=n.output_name, created_at=stamp)
            for n in new
        ]
        creations = [
            TaskCreation(p.result_id, [o.result_id], n.data_dependencies, n.options)
            for n, p, o in zip(new, payloads, outputs, strict=True)
        ]
        async with self.backends.database.write() as repository:
            session = await load_session(repository, session_id)
            if session.status not in (SessionStatus.RUNNING, SessionStatus.PAUSED):
                raise FailedPrecondition(f"Session {session_id} is {session.status.name}")
            tasks = plan_tasks(session, None, creations)
            await repository.put_blobs(blobs)
            await repository.insert(payloads + outputs)
            ready: list[ReadyTask] = await create_tasks(repository, session, tasks)
            ready = await push_ready_within(self.backends, repository, ready)
        await push_ready(self.backends, ready)
        return tasks

    async def submit_with_payloads(
        self,
        session_id: str,
        request_options: TaskOptions | None,
        new: AsyncIterable[PayloadTask],
    ) -> list[Task]:
        """Store each task's payload as it comes (small ones wait for the transaction), then,
        in one transaction, create the payloads as COMPLETED results owned by the session and
        submit the tasks. On any failure, a stream broken halfway included, nothing is kept."""
        async with self.backends.database.read() as repository:
            await self._open_session(repository, session_id)  # refused before storing anything
        objects = self.backends.objects
        inline = objects if isinstance(objects, InlineObjects) else None
        blobs: list[tuple[bytes, str, bytes]] = []
        stored: list[tuple[PayloadTask, bytes]] = []
        try:
            async for task in new:
                if inline is not None and inline.fits(len(task.payload)):
                    blobs.append((inline.inline_id(), "", task.payload))
                    stored.append((task, blobs[-1][0]))
                else:
                    stored.append((task, (await objects.put(single_chunk(task.payload)))[0]))
            if not stored:
                return []
            stamp = now()
            payloads = [
                payload_result(session_id, task.payload_name, opaque_id, len(task.payload), stamp)
                for task, opaque_id in stored
            ]
            creations = [
                TaskCreation(payload.result_id, task.expected_output_ids, task.data_dependencies)
                for (task, _), payload in zip(stored, payloads, strict=True)
            ]
            async with self.backends.database.write() as repository:
                session = await self._open_session(repository, session_id)
                tasks = plan_tasks(session, request_options, creations)
                await repository.put_blobs(blobs)
                await repository.insert(payloads)
                ready: list[ReadyTask] = await create_tasks(repository, session, tasks)
                ready = await push_ready_within(self.backends, repository, ready)
        except BaseException:
            outer = [o for _, o in stored if inline is None or not inline.is_inline(o)]
            await asyncio.shield(delete_unreferenced(self.backends, outer))
            raise
        await push_ready(self.backends, ready)
        return tasks

    @staticmethod
    async def _open_session(repository: Repository, session_id: str) -> Session:
        session = await load_session(repository, session_id)
        if session.status not in (SessionStatus.RUNNING, SessionStatus.PAUSED):
            raise FailedPrecondition(f"Session {session_id} is {session.status.name}")
        return session

    async def get(self, task_id: str) -> Task:
        if not task_id:
            raise InvalidArgument("task_id is required")
        async with self.backends.database.read() as repository:
            task = await repository.get(Task, task_id)
        if task is None:
            raise NotFound(f"Task {task_id} not found")
        return task

    async def list_page(self, query: ListQuery) -> tuple[list[Task], int]:
        async with self.backends.database.read() as repository:
            return await repository.list_page(Task, query)

    async def count_by_status(self, task_filter: Filter) -> dict[int, int]:
        async with self.backends.database.read() as repository:
            return await repository.count_tasks_by_status(task_filter)

    async def count_ended_by_interval(
        self, task_filter: Filter, since: float, interval: float
    ) -> list[tuple[int, int, int]]:
        """(interval number from `since`, status, count) of the tasks ended since `since`."""
        async with self.backends.database.read() as repository:
            return await repository.count_tasks_ended_by_interval(task_filter, since, interval)

    async def _load(self, repository: Repository, task_ids: list[str]) -> list[Task]:
        if not all(task_ids):
            raise InvalidArgument("task ids must not be empty")
        found = {t.task_id: t for t in await repository.find(Task, {"task_id": task_ids})}
        missing = [i for i in task_ids if i not in found]
        if missing:
            raise NotFound(f"Tasks not found: {', '.join(missing[:10])}")
        return [found[i] for i in task_ids]

    async def result_ids(self, task_ids: list[str]) -> list[Task]:
        async with self.backends.database.read() as repository:
            return await self._load(repository, task_ids)

    async def cancel(self, task_ids: list[str]) -> list[Task]:
        """Cancel tasks: those not started end CANCELLED, running ones are stopped by their
        agent (CANCELLING then CANCELLED); outputs are aborted, dependents end in ERROR."""
        async with self.backends.database.write() as repository:
            await self._load(repository, task_ids)
            await cancel_tasks_in(repository, {"task_id": task_ids}, "Task was cancelled")
            return await self._load(repository, task_ids)


def payload_result(session_id: str, name: str, opaque_id: bytes, size: int, stamp: float) -> Result:
    """The completed result holding a payload sent with its task."""
    return Result(
        result_id=new_id(),
        session_id=session_id,
        name=name,
        status=ResultStatus.COMPLETED,
        owner_task_id=session_id,  # as for any data a client creates
        opaque_id=opaque_id,
        size=size,
        created_at=stamp,
        completed_at=stamp,
    )
