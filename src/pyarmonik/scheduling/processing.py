"""What a polling agent does to the database around one task: acquire it, start it, and end
it (completed, failed, retried, timed out or cancelled).

Post-processing of a success is ONE transaction (results created and completed, subtasks
created and outputs delegated, dependents released, task completed): a crash leaves either
nothing or everything, so recovery never has to guess what was committed (ArmoniK has to).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from pyarmonik.domain.errors import ArmoniKError
from pyarmonik.domain.ids import retry_id
from pyarmonik.domain.records import Result, Session, Task
from pyarmonik.domain.statuses import FINAL_TASK_STATUSES, ResultStatus, SessionStatus, TaskStatus
from pyarmonik.faults import crash_point
from pyarmonik.observability import tracing
from pyarmonik.scheduling.backends import Backends, now
from pyarmonik.scheduling.graph import (
    ReadyTask,
    create_tasks,
    push_ready,
    push_ready_within,
    released_by,
    submit,
    terminate,
)
from pyarmonik.scheduling.liveness import Heartbeat
from pyarmonik.scheduling.sessions import load_session
from pyarmonik.storage.database import Repository

ENDED_SESSIONS = frozenset(
    {SessionStatus.CANCELLED, SessionStatus.CLOSED, SessionStatus.PURGED, SessionStatus.DELETED}
)
SESSIONS_KEPT = 1024  # sessions an agent remembers (TaskProcessing.take); then it starts over


class Verdict(Enum):
    """What to do with a queue message after trying to acquire its task."""

    ACQUIRED = "acquired"  # run it
    DROP = "drop"  # ack: nothing to run (done, cancelled, paused, unknown)
    LATER = "later"  # release with a delay: not runnable yet, or someone else has it


@dataclass
class Acquisition:
    verdict: Verdict
    task: Task | None = None
    session: Session | None = None  # for its options: its status may be an earlier one
    reason: str = ""


@dataclass
class StoredResult:
    """A result whose data the agent already put in object storage."""

    result_id: str
    opaque_id: bytes
    size: int


@dataclass
class TaskOutcome:
    """Everything a worker produced through the Agent API during a successful task."""

    created: list[Result] = field(default_factory=list)
    stored: list[StoredResult] = field(default_factory=list)
    subtasks: list[Task] = field(default_factory=list)
    replaced: list[bytes] = field(default_factory=list)  # blobs stored, then written anew
    # Small data of `stored` results, kept in the database by the completion's own
    # transaction: (opaque id, owner, data).
    inline: list[tuple[bytes, str, bytes]] = field(default_factory=list)


@dataclass
class Success:
    """A task that succeeded, for `complete_many`."""

    task: Task
    outcome: TaskOutcome
    processed_at: float


# Liveness probe of another agent: True when it is alive and still holds the task.
OwnerProbe = Callable[[str, str], Awaitable[bool]]


class TaskProcessing:
    def __init__(self, backends: Backends, owner_id: str, hostname: str):
        self.backends = backends
        self.owner_id = owner_id
        self.hostname = hostname
        self.heartbeat = Heartbeat(backends.database, owner_id, hostname)
        # Sessions met by `take`, as first read: what an agent uses of them (options,
        # partitions) never changes, and `take_tasks` checks the status itself.
        self._sessions: dict[str, Session] = {}

    # -- acquisition -------------------------------------------------------------------------

    async def acquire(
        self, task_id: str, probe: OwnerProbe, received_at: float, tried_take: bool = False
    ) -> Acquisition:
        """ArmoniK's acquisition (reference §4.2), on conditional updates. `tried_take`: the
        caller's `take` just failed for this task (the common case is not worth retrying)."""
        if not tried_take:
            fast = await self._try_dispatch(task_id, received_at)
            if fast is not None:
                return fast
        async with self.backends.database.write() as repository:
            task = await repository.get(Task, task_id)
            if task is None:
                return Acquisition(Verdict.DROP, reason="unknown task")
            session = await repository.get(Session, task.session_id)
            if session is None:
                return Acquisition(Verdict.DROP, task, reason="unknown session")
            if session.status in ENDED_SESSIONS and task.status not in FINAL_TASK_STATUSES:
                await self._cancel(
                    repository, task, f"Session {session.session_id} is {session.status.name}"
                )
                return Acquisition(Verdict.DROP, task, session, "session ended")
            if session.status == SessionStatus.PAUSED or task.status == TaskStatus.PAUSED:
                return Acquisition(Verdict.DROP, task, session, "paused: resume pushes it again")
            if task.status == TaskStatus.CANCELLING:
                await self._cancel(repository, task, "Task was cancelled")
                return Acquisition(Verdict.DROP, task, session, "cancelled")
            if task.status in FINAL_TASK_STATUSES:
                return Acquisition(Verdict.DROP, task, session, "already final")
            if task.status in (TaskStatus.CREATING, TaskStatus.PENDING):
                return Acquisition(Verdict.LATER, task, session, "inputs not ready")
        if task.status in (TaskStatus.DISPATCHED, TaskStatus.PROCESSING) and task.owner_pod_id:
            # Our own id here means a previous life of this agent (or a message we dropped):
            # the caller checked that we do not hold the task now.
            mine = task.owner_pod_id == self.owner_id
            # An owner found lost (its heartbeat stopped) is dead without asking it: a lost
            # host would keep the probe waiting for its timeouts.
            if (
                not mine
                and not await self.heartbeat.lost(task.owner_pod_id)
                and await probe(task.owner_pod_id, task.task_id)
            ):
                return Acquisition(Verdict.LATER, task, session, "held by a live agent")
            return await self._recover(task, session)
        return await self._dispatch(task, session, received_at)

    async def _try_dispatch(self, task_id: str, received_at: float) -> Acquisition | None:
        """The common case in one transaction: a SUBMITTED task of a RUNNING session."""
        async with self.backends.database.write() as repository:
            taken = await self.take(repository, [task_id], received_at)
        return taken[0] if taken else None

    async def take(
        self, repository: Repository, task_ids: list[str], received_at: float, start: bool = False
    ) -> list[Acquisition]:
        """Acquire, inside the caller's transaction, those of the tasks in the common case
        (SUBMITTED, unowned, session RUNNING); the others need `acquire`'s full analysis.
        `start`: PROCESSING at once (the batched path hands them to its worker now), unless
        it is the task's last allowed attempt: a death of this agent before it runs would
        end the task in error, so it stays DISPATCHED until it reaches the worker."""
        values = self._dispatched(received_at)
        taken: list[Task] = []
        rest = list(task_ids)
        if start:
            taken = await repository.take_tasks(
                rest, {**values, **self._started(now())}, retryable=True
            )
            started = {task.task_id for task in taken}
            rest = [i for i in rest if i not in started]
        if rest:  # with `start`, rare: last attempts, or tasks not in the common case
            taken += await repository.take_tasks(rest, values)
        if not taken:
            return []
        await self.heartbeat.within(repository)  # no task is held under an old beat
        sessions = self._sessions
        if unknown := list({t.session_id for t in taken if t.session_id not in sessions}):
            if len(sessions) + len(unknown) > SESSIONS_KEPT:
                sessions.clear()
            for session in await repository.find(Session, {"session_id": unknown}):
                sessions[session.session_id] = session
        return [Acquisition(Verdict.ACQUIRED, task, sessions[task.session_id]) for task in taken]

    def _dispatched(self, received_at: float) -> dict[str, object]:
        return {
            "status": TaskStatus.DISPATCHED,
            "owner_pod_id": self.owner_id,
            "pod_hostname": self.hostname,
            "received_at": received_at,
            "acquired_at": now(),
        }

    async def _dispatch(
        self, task: Task, session: Session, received_at: float, previous_owner: str = ""
    ) -> Acquisition:
        async with self.backends.database.write() as repository:
            where: dict[str, object] = {"task_id": task.task_id, "owner_pod_id": previous_owner}
            where["status"] = (
                [TaskStatus.SUBMITTED, TaskStatus.DISPATCHED]
                if previous_owner
                else TaskStatus.SUBMITTED
            )
            taken = await repository.update_returning(Task, where, self._dispatched(received_at))
            if taken:
                await self.heartbeat.within(repository)
        if not taken:
            return Acquisition(Verdict.LATER, task, session, "lost the race for it")
        return Acquisition(Verdict.ACQUIRED, taken[0], session)

    async def _recover(self, task: Task, session: Session) -> Acquisition:
        """The recorded owner is dead. DISPATCHED: take the task over. PROCESSING: its attempt
        died mid-run (a success would have committed COMPLETED atomically): retry it."""
        if task.status == TaskStatus.DISPATCHED:
            return await self._dispatch(task, session, now(), previous_owner=task.owner_pod_id)
        await self.fail(
            task,
            f"Agent {task.owner_pod_id} holding the task died",
            retry=True,
            expected_owner=task.owner_pod_id,
        )
        # What the dead attempt stored was never committed (a success commits COMPLETED
        # atomically): nothing refers to it.
        await self.backends.objects.delete_owned_by(task.task_id)
        return Acquisition(Verdict.DROP, task, session, "recovered a dead agent's task")

    # -- running -----------------------------------------------------------------------------

    @staticmethod
    def _started(fetched_at: float) -> dict[str, Any]:
        stamp = now()
        return {
            "status": TaskStatus.PROCESSING,
            "fetched_at": fetched_at,
            "started_at": stamp,
            "pod_ttl": stamp,
        }

    async def start(self, task: Task, fetched_at: float) -> Task | None:
        """DISPATCHED → PROCESSING; None when the task was paused or cancelled meanwhile."""
        values = self._started(fetched_at)
        async with self.backends.database.write() as repository:
            started = await repository.update(
                Task,
                {
                    "task_id": task.task_id,
                    "status": TaskStatus.DISPATCHED,
                    "owner_pod_id": self.owner_id,
                },
                values,
            )
            if started:  # nothing else of a task we hold changes meanwhile
                return replace(task, **values)
            current = await repository.get(Task, task.task_id)
            if current is not None and current.status == TaskStatus.CANCELLING:
                await self._cancel(repository, current, "Task was cancelled")
        return None

    async def start_many(self, tasks: list[Task], fetched_at: float) -> list[Task]:
        """DISPATCHED → PROCESSING for many tasks in one statement; those paused or
        cancelled meanwhile are left out (see `start`)."""
        values = self._started(fetched_at)
        async with self.backends.database.write() as repository:
            started = set(
                await repository.update(
                    Task,
                    {
                        "task_id": [t.task_id for t in tasks],
                        "status": TaskStatus.DISPATCHED,
                        "owner_pod_id": self.owner_id,
                    },
                    values,
                )
            )
        result = [replace(t, **values) for t in tasks if t.task_id in started]
        for task in tasks:  # rare: the single-task path cancels what must be
            if task.task_id not in started and (again := await self.start(task, fetched_at)):
                result.append(again)
        return result

    async def release(self, tasks: list[Task]) -> None:
        """Give back tasks acquired but not started (agent stopping, or held behind a long
        task): SUBMITTED, no owner. In the batched path a task is PROCESSING from the moment
        it is sent to the worker, which may hand it back unstarted."""
        async with self.backends.database.write() as repository:
            await repository.update(
                Task,
                {
                    "task_id": [task.task_id for task in tasks],
                    "status": [TaskStatus.DISPATCHED, TaskStatus.PROCESSING],
                    "owner_pod_id": self.owner_id,
                },
                {"status": TaskStatus.SUBMITTED, "owner_pod_id": "", "pod_hostname": ""},
            )

    async def status_of(self, task_id: str) -> tuple[TaskStatus, SessionStatus] | None:
        async with self.backends.database.read() as repository:
            task = await repository.get(Task, task_id)
            session = await repository.get(Session, task.session_id) if task else None
        if task is None or session is None:
            return None
        return task.status, session.status

    # -- ending ------------------------------------------------------------------------------

    async def complete(
        self,
        task: Task,
        outcome: TaskOutcome,
        processed_at: float,
        within: Callable[[Repository], Awaitable[None]] | None = None,
    ) -> bool:
        """Commit a success; False when the task is no longer ours to complete. `within` runs
        inside the same transaction (the queue acks there when it lives in the database)."""
        stamp = now()
        ready: list[ReadyTask] = []
        try:
            async with self.backends.database.write() as repository:
                # Read only when tasks are to be created or submitted (most tasks have
                # neither): submitting needs its current status (paused or not).
                session: Session | None = None
                await repository.insert(outcome.created)
                if outcome.inline:
                    await repository.put_blobs(outcome.inline)
                completed = await _complete_results(
                    repository, [(stored, task.task_id) for stored in outcome.stored], stamp
                )
                if outcome.subtasks:
                    session = await load_session(repository, task.session_id)
                    ready += await create_tasks(repository, session, outcome.subtasks, parent=task)
                if released := await released_by(repository, completed):
                    if session is None:
                        session = await load_session(repository, task.session_id)
                    ready += await submit(repository, session, released)
                await self._abort_forgotten(repository, task, outcome)
                crash_point("complete_in_transaction")
                done = await repository.update(
                    Task,
                    {
                        "task_id": task.task_id,
                        "status": TaskStatus.PROCESSING,
                        "owner_pod_id": self.owner_id,
                    },
                    self._ended(task, TaskStatus.COMPLETED, stamp, processed_at=processed_at),
                )
                if not done:
                    raise _NotOurs
                ready = await push_ready_within(self.backends, repository, ready)
                if within is not None:
                    await within(repository)
        except _NotOurs:
            return False
        crash_point("complete_committed")
        await push_ready(self.backends, ready)
        crash_point("complete_pushed")
        tracing.record_task(task, TaskStatus.COMPLETED, stamp, processed_at)
        return True

    async def complete_many(
        self,
        successes: list[Success],
        within: Callable[[Repository, list[Success]], Awaitable[None]] | None = None,
    ) -> list[Success]:
        """Commit many successes in one transaction, with statements of many rows; returns
        those committed (the others were no longer ours: cancelled or taken over). `within`
        runs inside the transaction with the committed ones (the queue acks them there when
        it lives in the database). Same effects as `complete` on each."""
        stamp = now()
        ready: list[ReadyTask] = []
        async with self.backends.database.write() as repository:
            ours = set(
                await repository.update_each(
                    Task,
                    [
                        (s.task.task_id, self._durations(s.task, stamp, s.processed_at))
                        for s in successes
                    ],
                    where={"status": TaskStatus.PROCESSING, "owner_pod_id": self.owner_id},
                    values={"status": TaskStatus.COMPLETED, "ended_at": stamp},
                )
            )
            committed = [s for s in successes if s.task.task_id in ours]
            if not committed:
                return []
            outcomes = [s.outcome for s in committed]
            await repository.insert([r for o in outcomes for r in o.created])
            inline = [blob for o in outcomes for blob in o.inline]
            if inline:
                await repository.put_blobs(inline)
            stored = {st.result_id: (st, s.task) for s in committed for st in s.outcome.stored}
            completed = await _complete_results(
                repository, [(st, task.task_id) for st, task in stored.values()], stamp
            )
            sessions: dict[str, Session] = {}

            async def session_of(session_id: str) -> Session:
                if session_id not in sessions:
                    sessions[session_id] = await load_session(repository, session_id)
                return sessions[session_id]

            for success in committed:
                if success.outcome.subtasks:
                    session = await session_of(success.task.session_id)
                    ready += await create_tasks(
                        repository, session, success.outcome.subtasks, parent=success.task
                    )
            by_session: dict[str, list[str]] = {}  # a result's readers are of its session
            for result_id in completed:
                session_id = stored[result_id][1].session_id
                by_session.setdefault(session_id, []).append(result_id)
            for session_id, result_ids in by_session.items():
                if released := await released_by(repository, result_ids):
                    ready += await submit(repository, await session_of(session_id), released)
            for success in committed:
                await self._abort_forgotten(repository, success.task, success.outcome)
            crash_point("complete_in_transaction")
            ready = await push_ready_within(self.backends, repository, ready)
            if within is not None:
                await within(repository, committed)
        crash_point("complete_committed")
        await push_ready(self.backends, ready)
        crash_point("complete_pushed")
        for success in committed:
            tracing.record_task(success.task, TaskStatus.COMPLETED, stamp, success.processed_at)
        return committed

    async def _abort_forgotten(
        self, repository: Repository, task: Task, outcome: TaskOutcome
    ) -> None:
        """Outputs neither produced nor handed over would stay CREATED forever and their
        readers would wait forever: abort them instead (ArmoniK only logs)."""
        handled = {r.result_id for r in outcome.stored} | {
            out for sub in outcome.subtasks for out in sub.expected_output_ids
        }
        if handled.issuperset(task.expected_output_ids):
            return
        forgotten = [
            r.result_id
            for r in await repository.find(
                Result,
                {
                    "result_id": task.expected_output_ids,
                    "owner_task_id": task.task_id,
                    "status": ResultStatus.CREATED,
                },
            )
        ]
        if forgotten:
            await terminate(
                repository,
                [task.task_id],
                forgotten,
                f"Task {task.task_id} did not produce these outputs",
            )

    async def fail(
        self,
        task: Task,
        message: str,
        retry: bool,
        status: TaskStatus = TaskStatus.ERROR,
        expected_owner: str | None = None,
    ) -> TaskStatus:
        """End an attempt that did not succeed: a new attempt when `retry` and attempts
        remain (RETRIED), else `status` with its outputs aborted and dependents ended."""
        owner = self.owner_id if expected_owner is None else expected_owner
        stamp = now()
        ready: list[ReadyTask] = []
        async with self.backends.database.write() as repository:
            session = await load_session(repository, task.session_id)
            retrying = retry and len(task.retry_of_ids) < task.options.max_retries
            final = TaskStatus.RETRIED if retrying else status
            ended = await repository.update(
                Task,
                {
                    "task_id": task.task_id,
                    "status": [TaskStatus.DISPATCHED, TaskStatus.PROCESSING],
                    "owner_pod_id": owner,
                },
                {**self._ended(task, final, stamp), "error": message},
            )
            if not ended:
                current = await repository.get(Task, task.task_id)
                if current is not None and current.status == TaskStatus.CANCELLING:
                    await self._cancel(repository, current, "Task was cancelled")
                    return TaskStatus.CANCELLED
                return current.status if current else status
            if retrying:
                ready = await self._retry(repository, session, task)
                ready = await push_ready_within(self.backends, repository, ready)
            else:
                await terminate(
                    repository,
                    [task.task_id],
                    task.expected_output_ids,
                    f"Task {task.task_id} failed:\n{message}",
                )
        crash_point("fail_committed")
        await push_ready(self.backends, ready)
        tracing.record_task(task, final, stamp, error=message)
        return final

    async def _retry(self, repository: Repository, session: Session, task: Task) -> list[ReadyTask]:
        attempt = Task(
            task_id=retry_id(task.initial_task_id, len(task.retry_of_ids) + 1),
            session_id=task.session_id,
            payload_id=task.payload_id,
            options=task.options,
            initial_task_id=task.initial_task_id,
            parent_task_ids=task.parent_task_ids,
            data_dependencies=task.data_dependencies,
            expected_output_ids=task.expected_output_ids,
            retry_of_ids=[*task.retry_of_ids, task.task_id],
            created_by=task.task_id,
            created_at=now(),
            status=TaskStatus.PENDING,
        )
        if await repository.get(Task, attempt.task_id) is not None:
            return []  # this retry exists already (a recovery ran twice)
        await repository.insert([attempt])
        await repository.set_owners(
            [(out, attempt.task_id) for out in task.expected_output_ids],
            expected_owner=task.task_id,
        )
        # Its inputs were complete for the failed attempt; a data deletion since is caught
        # by the prefetch of the new attempt.
        return await submit(repository, session, [attempt.task_id])

    async def cancelled(self, task: Task) -> None:
        """The agent stopped a task because it was cancelled."""
        async with self.backends.database.write() as repository:
            await self._cancel(repository, task, "Task was cancelled")
        tracing.record_task(task, TaskStatus.CANCELLED, now(), error="Task was cancelled")

    async def _cancel(self, repository: Repository, task: Task, reason: str) -> None:
        await repository.update(
            Task,
            {
                "task_id": task.task_id,
                "status": [s for s in TaskStatus if s not in FINAL_TASK_STATUSES],
            },
            {"status": TaskStatus.CANCELLED, "ended_at": now(), "error": task.error or reason},
        )
        await repository.delete_dependencies_of([task.task_id])
        await terminate(repository, [task.task_id], task.expected_output_ids, reason)

    @staticmethod
    def _ended(
        task: Task, status: TaskStatus, stamp: float, processed_at: float | None = None
    ) -> dict[str, object]:
        values: dict[str, object] = {"status": status, "ended_at": stamp}
        if processed_at is not None:
            values["processed_at"] = processed_at
        if task.created_at is not None:
            values["creation_to_end_duration"] = stamp - task.created_at
        if task.started_at is not None:
            values["processing_to_end_duration"] = stamp - task.started_at
        if task.received_at is not None:
            values["received_to_end_duration"] = stamp - task.received_at
        return values

    @staticmethod
    def _durations(task: Task, stamp: float, processed_at: float) -> dict[str, object]:
        """`_ended`'s per-task columns, the same columns for every task (one statement)."""

        def since(moment: float | None) -> float | None:
            return None if moment is None else stamp - moment

        return {
            "processed_at": processed_at,
            "creation_to_end_duration": since(task.created_at),
            "processing_to_end_duration": since(task.started_at),
            "received_to_end_duration": since(task.received_at),
        }


async def _complete_results(
    repository: Repository, stored: list[tuple[StoredResult, str]], stamp: float
) -> list[str]:
    """Outputs stored by tasks (each with the id of its task), still CREATED, become
    COMPLETED with their data, in one statement; returns their ids."""
    return await repository.update_each(
        Result,
        [
            (
                result.result_id,
                {"opaque_id": result.opaque_id, "size": result.size, "completed_by": by},
            )
            for result, by in stored
        ],
        where={"status": ResultStatus.CREATED},
        values={"status": ResultStatus.COMPLETED, "completed_at": stamp},
    )


class _NotOurs(ArmoniKError):
    """Rolls back a completion whose task was cancelled or taken over meanwhile."""
