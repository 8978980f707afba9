"""The legacy Submitter service (`armonik.api.grpc.v1.submitter`, deprecated in ArmoniK's protos
but served by ArmoniK.Core, and called by applications of its older SDKs): a thin edge over the
same services as API v3, with Core's semantics (docs/legacy-submitter.md).

Payloads travel inline: each becomes a COMPLETED result owned by the session, and expected
outputs are the ids of results created beforehand. Waits (WaitForCompletion,
WaitForAvailability) are woken by the change feed instead of polling. WatchResults, which
Core never built, is our result watcher (control/watch.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import grpc
from armonik.protogen.client.submitter_service_pb2_grpc import SubmitterServicer
from armonik.protogen.common import objects_pb2, results_common_pb2
from armonik.protogen.common import submitter_common_pb2 as pb

from pyarmonik.aio import cancel_and_wait
from pyarmonik.control.convert import optional_options
from pyarmonik.control.errors import rpc
from pyarmonik.control.isolation import SessionGuard
from pyarmonik.control.results import _ended_by_half_close, rechunk
from pyarmonik.control.watch import ResultWatcher
from pyarmonik.domain.errors import FailedPrecondition, InvalidArgument, NotFound
from pyarmonik.domain.filters import Condition, Filter, Kind, ListQuery, Op, and_filters
from pyarmonik.domain.records import Result, Task
from pyarmonik.domain.statuses import FINAL_TASK_STATUSES, ResultStatus, TaskStatus
from pyarmonik.observability import tracing
from pyarmonik.scheduling.changes import Change, ChangeFeed
from pyarmonik.scheduling.results import ResultService
from pyarmonik.scheduling.sessions import SessionService
from pyarmonik.scheduling.tasks import PayloadTask, TaskService

# Ids per database query (filters are bounded, domain/filters.py); more are queried in turns.
IDS_PER_QUERY = 1000
# Lists are not paged in this API: one query returns them all.
EVERYTHING = 2**31 - 1
# Waits re-read what they wait for when the change feed reports a change that matters to
# them, at most every COALESCE seconds, and at least every POLL seconds.
COALESCE = 0.1
POLL = 5.0

ERRORS = frozenset({TaskStatus.ERROR, TaskStatus.TIMEOUT})
CANCELLATIONS = frozenset({TaskStatus.CANCELLING, TaskStatus.CANCELLED})
# A task in these statuses will not produce its outputs (TryGetResultStream's error reply).
FAILED = ERRORS | CANCELLATIONS
# Statuses for which TryGetTaskOutput answers an error (ArmoniK: a failed task's output).
OUTPUT_ERRORS = FAILED | {TaskStatus.RETRIED}


def _id_filters(column: str, ids: list[str]) -> list[Filter]:
    """`column` equal to one of `ids`, as filters of at most IDS_PER_QUERY ids each."""
    unique = list(dict.fromkeys(ids))
    return [
        tuple((Condition(column, Kind.STRING, Op.EQ, i),) for i in unique[k : k + IDS_PER_QUERY])
        for k in range(0, len(unique), IDS_PER_QUERY)
    ]


def _statuses(values: Iterable[int]) -> set[int]:
    found = {int(v) for v in values}
    if not found:
        raise InvalidArgument("a status filter needs at least one status")
    return found


@dataclass(frozen=True)
class Selection:
    """A TaskFilter: tasks of some sessions or with some ids, by status (included or
    excluded)."""

    by_session: bool
    ids: list[str]
    statuses: frozenset[int] | None = None
    excluded: bool = False
    known: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "known", frozenset(self.ids))

    @staticmethod
    def of(message: pb.TaskFilter) -> Selection:
        which = message.WhichOneof("ids")
        if which is None:
            raise InvalidArgument("a task filter needs session ids or task ids")
        ids = list(getattr(message, which).ids)
        if not ids:
            raise InvalidArgument(f"a task filter needs at least one {which} id")
        kind = message.WhichOneof("statuses")
        statuses = frozenset(_statuses(getattr(message, kind).statuses)) if kind else None
        return Selection(which == "session", ids, statuses, kind == "excluded")

    def keeps(self, status: int) -> bool:
        if self.statuses is None:
            return True
        return (status in self.statuses) != self.excluded

    def filters(self, follow_retries: bool = False) -> list[Filter]:
        """Filters of the selected tasks (statuses apart); with `follow_retries`, a task id
        selects its retries too."""
        column = "session_id" if self.by_session else "task_id"
        if follow_retries and not self.by_session:
            column = "initial_task_id"
        return _id_filters(column, self.ids)

    def concerns(self, change: Change) -> bool:
        """Whether a change may change what the selection counts."""
        if self.by_session:
            return change.session_id in self.known
        return change.entity_id.partition("###")[0] in self.known


def _task_error(task: Task) -> objects_pb2.TaskError:
    detail = task.error or f"Task {task.task_id} is {task.status.name}"
    return objects_pb2.TaskError(
        task_id=task.task_id,
        errors=[objects_pb2.Error(task_status=int(task.status), detail=detail)],
    )


def _task_info(task: Task) -> pb.CreateTaskReply.CreationStatus:
    return pb.CreateTaskReply.CreationStatus(
        task_info=pb.CreateTaskReply.TaskInfo(
            task_id=task.task_id,
            expected_output_keys=task.expected_output_ids,
            data_dependencies=task.data_dependencies,
            payload_id=task.payload_id,
        )
    )


def _created(tasks: list[Task]) -> pb.CreateTaskReply:
    return pb.CreateTaskReply(
        creation_status_list=pb.CreateTaskReply.CreationStatusList(
            creation_statuses=[_task_info(t) for t in tasks]
        )
    )


async def _large_tasks(
    messages: AsyncIterator[pb.CreateLargeTaskRequest], context: grpc.aio.ServicerContext
) -> AsyncIterator[PayloadTask]:
    """The tasks of a CreateLargeTasks stream after its init request: per task, a header,
    payload chunks and data_complete; the stream ends with last_task (or the client's
    half-close)."""
    header: objects_pb2.TaskRequestHeader | None = None
    chunks: list[bytes] = []
    async for message in messages:
        kind = message.WhichOneof("type")
        if kind == "init_task":
            init = message.init_task
            if header is not None:
                raise InvalidArgument("a task's payload must end (data_complete) before the next")
            if init.WhichOneof("type") == "last_task" and init.last_task:
                return
            if init.WhichOneof("type") != "header":
                raise InvalidArgument("init_task must hold a header or last_task = true")
            if not init.header.expected_output_keys:
                raise InvalidArgument("a task header needs expected output keys")
            header, chunks = init.header, []
        elif kind == "task_payload":
            if header is None:
                raise InvalidArgument("payload chunks must follow a task header")
            chunk = message.task_payload
            if chunk.WhichOneof("type") == "data":
                chunks.append(chunk.data)
            elif chunk.WhichOneof("type") == "data_complete" and chunk.data_complete:
                yield PayloadTask(
                    b"".join(chunks),
                    list(header.expected_output_keys),
                    list(header.data_dependencies),
                )
                header, chunks = None, []
            else:
                raise InvalidArgument("a payload chunk must hold data or data_complete = true")
        else:
            raise InvalidArgument("only tasks may follow the init request")
    if header is not None:
        raise InvalidArgument("the stream ended within a task's payload")
    await _ended_by_half_close(context)  # a cancelled call submits nothing


class Submitter(SubmitterServicer):  # type: ignore[misc]
    def __init__(
        self,
        sessions: SessionService,
        tasks: TaskService,
        results: ResultService,
        watcher: ResultWatcher,
        feed: ChangeFeed,
        guard: SessionGuard,
    ):
        self.sessions = sessions
        self.tasks = tasks
        self.results = results
        self.watcher = watcher
        self.feed = feed
        self.guard = guard

    # -- sessions ------------------------------------------------------------------------------

    @rpc
    async def GetServiceConfiguration(
        self, request: objects_pb2.Empty, context: grpc.aio.ServicerContext
    ) -> objects_pb2.Configuration:
        return objects_pb2.Configuration(data_chunk_max_size=self.results.data_chunk_max_size)

    @rpc
    async def CreateSession(
        self, request: pb.CreateSessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateSessionReply:
        options = optional_options(request, "default_task_option")
        if options is None:
            raise InvalidArgument("default_task_option is required")
        session = await self.sessions.create(
            options, list(request.partition_ids), self.guard.creator()
        )
        tracing.session_started(session)
        return pb.CreateSessionReply(session_id=session.session_id)

    @rpc
    async def CancelSession(
        self, request: objects_pb2.Session, context: grpc.aio.ServicerContext
    ) -> objects_pb2.Empty:
        await self.guard.session(request.id)
        await self.sessions.cancel(request.id)
        return objects_pb2.Empty()

    @rpc
    async def ListSessions(
        self, request: pb.SessionFilter, context: grpc.aio.ServicerContext
    ) -> pb.SessionIdList:
        kind = request.WhichOneof("statuses")
        statuses = _statuses(getattr(request, kind).statuses) if kind else None
        filters = _id_filters("session_id", list(request.sessions)) if request.sessions else [()]
        found: list[str] = []
        for where in filters:
            query = self.guard.sessions(ListQuery(filter=where, page_size=EVERYTHING))
            sessions, _ = await self.sessions.list_page(query)
            found += [
                s.session_id
                for s in sessions
                if statuses is None or ((int(s.status) in statuses) != (kind == "excluded"))
            ]
        return pb.SessionIdList(session_ids=found)

    # -- submission ----------------------------------------------------------------------------

    @rpc
    async def CreateSmallTasks(
        self, request: pb.CreateSmallTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateTaskReply:
        options = optional_options(request, "task_options")
        if options is None:
            raise InvalidArgument("task_options is required")
        if not request.task_requests:
            raise InvalidArgument("task_requests must not be empty")
        if any(not r.payload for r in request.task_requests):
            raise InvalidArgument("every task needs a payload")
        await self.guard.session(request.session_id)

        async def each() -> AsyncIterator[PayloadTask]:
            for r in request.task_requests:
                yield PayloadTask(
                    r.payload,
                    list(r.expected_output_keys),
                    list(r.data_dependencies),
                    r.payload_name,
                )

        with tracing.submission_span(
            request.session_id, len(request.task_requests), context.invocation_metadata
        ):
            tasks = await self.tasks.submit_with_payloads(request.session_id, options, each())
        return _created(tasks)

    @rpc
    async def CreateLargeTasks(
        self,
        request_iterator: AsyncIterator[pb.CreateLargeTaskRequest],
        context: grpc.aio.ServicerContext,
    ) -> pb.CreateTaskReply:
        first = await anext(aiter(request_iterator), None)
        if first is None:
            raise InvalidArgument("the stream holds no message")
        if first.WhichOneof("type") != "init_request":
            raise InvalidArgument("the first message of the stream must be an init_request")
        init = first.init_request
        if not init.session_id:
            raise InvalidArgument("session_id is required")
        await self.guard.session(init.session_id)
        with tracing.submission_span(init.session_id, 0, context.invocation_metadata):
            tasks = await self.tasks.submit_with_payloads(
                init.session_id,
                optional_options(init, "task_options"),
                _large_tasks(request_iterator, context),
            )
        return _created(tasks)

    # -- tasks ---------------------------------------------------------------------------------

    async def _matching(self, selection: Selection) -> list[Task]:
        """The tasks a filter selects, as the caller may see them."""
        found: list[Task] = []
        for where in selection.filters():
            query = self.guard.within(ListQuery(filter=where, page_size=EVERYTHING))
            tasks, _ = await self.tasks.list_page(query)
            found += [t for t in tasks if selection.keeps(t.status)]
        return found

    async def _count(self, selection: Selection, follow_retries: bool = False) -> dict[int, int]:
        counts: dict[int, int] = {}
        for where in selection.filters(follow_retries):
            scoped = and_filters(where, self.guard.scope())
            for status, count in (await self.tasks.count_by_status(scoped)).items():
                if selection.keeps(status):
                    counts[status] = counts.get(status, 0) + count
        return counts

    @rpc
    async def ListTasks(
        self, request: pb.TaskFilter, context: grpc.aio.ServicerContext
    ) -> objects_pb2.TaskIdList:
        tasks = await self._matching(Selection.of(request))
        return objects_pb2.TaskIdList(task_ids=[t.task_id for t in tasks])

    @rpc
    async def CountTasks(
        self, request: pb.TaskFilter, context: grpc.aio.ServicerContext
    ) -> objects_pb2.Count:
        return _count_reply(await self._count(Selection.of(request)))

    @rpc
    async def CancelTasks(
        self, request: pb.TaskFilter, context: grpc.aio.ServicerContext
    ) -> objects_pb2.Empty:
        # Tasks already in a final status are left as they are.
        tasks = await self._matching(Selection.of(request))
        ids = [t.task_id for t in tasks if t.status not in FINAL_TASK_STATUSES]
        for start in range(0, len(ids), IDS_PER_QUERY):
            await self.tasks.cancel(ids[start : start + IDS_PER_QUERY])
        return objects_pb2.Empty()

    @rpc
    async def GetTaskStatus(
        self, request: pb.GetTaskStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetTaskStatusReply:
        # Unknown ids (and those of sessions the caller may not see) are left out, as in Core.
        tasks = await self._matching(Selection(False, list(request.task_ids)))
        by_id = {t.task_id: t for t in tasks}
        return pb.GetTaskStatusReply(
            id_statuses=[
                pb.GetTaskStatusReply.IdStatus(task_id=i, status=int(by_id[i].status))
                for i in dict.fromkeys(request.task_ids)
                if i in by_id
            ]
        )

    @rpc
    async def TryGetTaskOutput(
        self, request: objects_pb2.TaskOutputRequest, context: grpc.aio.ServicerContext
    ) -> objects_pb2.Output:
        await self.guard.tasks([request.task_id])
        task = await self.tasks.get(request.task_id)
        if request.session and task.session_id != request.session:
            raise NotFound(f"Task {request.task_id} not found in session {request.session}")
        if task.status in OUTPUT_ERRORS:
            detail = task.error or f"Task {task.task_id} is {task.status.name}"
            return objects_pb2.Output(error=objects_pb2.Output.Error(details=detail))
        # As in Core: a task that has not failed (yet) answers ok.
        return objects_pb2.Output(ok=objects_pb2.Empty())

    @rpc
    async def WaitForCompletion(
        self, request: pb.WaitRequest, context: grpc.aio.ServicerContext
    ) -> objects_pb2.Count:
        """Until no selected task is left to run (a task id stands for its retries too), or
        sooner at the first error (ERROR, TIMEOUT) or cancellation as the request asks; the
        counts by status. Unlike Core, tasks that ended in error or were cancelled count as
        done: Core would wait for ever on them without the stop flags."""
        selection = Selection.of(request.filter)
        session = selection.ids[0] if selection.by_session and len(selection.ids) == 1 else ""
        async with self._wakeups(session, selection.concerns) as changed:
            while True:
                counts = await self._count(selection, follow_retries=True)
                present = {TaskStatus(s) for s, n in counts.items() if n}
                if (
                    present <= FINAL_TASK_STATUSES
                    or (request.stop_on_first_task_error and present & ERRORS)
                    or (request.stop_on_first_task_cancellation and present & CANCELLATIONS)
                ):
                    return _count_reply(counts)
                await changed()

    # -- results -------------------------------------------------------------------------------

    async def _result(self, session_id: str, result_id: str) -> Result:
        await self.guard.results([result_id])
        result = await self.results.get(result_id)
        if session_id and result.session_id != session_id:
            raise NotFound(f"Result {result_id} not found in session {session_id}")
        return result

    async def _owner(self, result: Result) -> Task:
        """The task that produces (or failed to produce) a result."""
        if not result.owner_task_id or result.owner_task_id == result.session_id:
            raise NotFound(f"No task produces result {result.result_id}")
        return await self.tasks.get(result.owner_task_id)

    @rpc
    async def TryGetResultStream(
        self, request: objects_pb2.ResultRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ResultReply]:
        """The data, then data_complete; or one reply: the owner task's error, or the id of
        the task still to produce it."""
        result = await self._result(request.session, request.result_id)
        if result.status == ResultStatus.COMPLETED:
            data = await self.results.download(result.session_id, result.result_id)
            async for chunk in rechunk(data, self.results.data_chunk_max_size):
                yield pb.ResultReply(result=objects_pb2.DataChunk(data=chunk))
            yield pb.ResultReply(result=objects_pb2.DataChunk(data_complete=True))
            return
        if result.status == ResultStatus.DELETED:
            raise NotFound(f"Result {result.result_id} has no data (DELETED)")
        task = await self._owner(result)
        if result.status == ResultStatus.ABORTED or task.status in FAILED:
            yield pb.ResultReply(error=_task_error(task))
        else:
            yield pb.ResultReply(not_completed_task=task.task_id)

    @rpc
    async def WaitForAvailability(
        self, request: objects_pb2.ResultRequest, context: grpc.aio.ServicerContext
    ) -> pb.AvailabilityReply:
        """Until the result is COMPLETED (ok) or ABORTED (the owner task's error)."""
        result_id: str = request.result_id
        await self._result(request.session, result_id)

        def concerns(change: Change) -> bool:
            return change.entity_id == result_id

        async with self._wakeups("", concerns) as changed:
            while True:
                result = await self._result(request.session, result_id)
                if result.status == ResultStatus.COMPLETED:
                    return pb.AvailabilityReply(ok=objects_pb2.Empty())
                if result.status == ResultStatus.DELETED:
                    raise FailedPrecondition(f"The data of result {result_id} was deleted")
                if result.status == ResultStatus.ABORTED:
                    try:
                        task = await self._owner(result)
                    except NotFound:
                        return pb.AvailabilityReply(
                            error=objects_pb2.TaskError(
                                task_id=result.owner_task_id,
                                errors=[
                                    objects_pb2.Error(detail=f"Result {result_id} was aborted")
                                ],
                            )
                        )
                    return pb.AvailabilityReply(error=_task_error(task))
                await changed()

    @rpc
    async def GetResultStatus(
        self, request: pb.GetResultStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetResultStatusReply:
        found: dict[str, Result] = {}
        for where in _id_filters("result_id", list(request.result_ids)):
            query = self.guard.within(ListQuery(filter=where, page_size=EVERYTHING))
            results, _ = await self.results.list_page(query)
            found.update(
                (r.result_id, r)
                for r in results
                if not request.session_id or r.session_id == request.session_id
            )
        return pb.GetResultStatusReply(
            id_statuses=[
                pb.GetResultStatusReply.IdStatus(result_id=i, status=int(found[i].status))
                for i in dict.fromkeys(request.result_ids)
                if i in found
            ]
        )

    @rpc
    async def WatchResults(
        self,
        request_iterator: AsyncIterator[pb.WatchResultRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.WatchResultStream]:
        """Never built by Core: the Results service's WatchResults (control/watch.py)."""

        async def visible() -> AsyncIterator[results_common_pb2.WatchResultRequest]:
            async for request in request_iterator:
                await self.guard.results(list(request.result_ids))
                yield results_common_pb2.WatchResultRequest(
                    fetch_statuses=request.fetch_statuses,
                    watch_statuses=request.watch_statuses,
                    result_ids=request.result_ids,
                )

        async for status, result_ids in self.watcher.watch(visible()):
            yield pb.WatchResultStream(status=status, result_ids=result_ids)

    # -- waits ---------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _wakeups(
        self, session_id: str, concerns: Callable[[Change], bool]
    ) -> AsyncIterator[Callable[[], Awaitable[None]]]:
        """A function that returns once a change that `concerns` the caller was committed
        (or after POLL seconds). Subscribed before the caller's first read: no change after
        it is missed."""
        subscription = await self.feed.subscribe(session_id)
        event = asyncio.Event()

        async def pump() -> None:
            async for batch in subscription.batches():
                if any(concerns(change) for change in batch):
                    event.set()

        async def changed() -> None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL):
                    await event.wait()
            event.clear()
            await asyncio.sleep(COALESCE)

        pumping = asyncio.create_task(pump())
        try:
            yield changed
        finally:
            subscription.close()
            await cancel_and_wait(pumping)


def _count_reply(counts: dict[int, int]) -> objects_pb2.Count:
    return objects_pb2.Count(
        values=[objects_pb2.StatusCount(status=s, count=n) for s, n in sorted(counts.items())]
    )
