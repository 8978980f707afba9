"""The Agent API, served to the worker over a unix socket while it runs a task.

Everything a worker declares (new results, data, subtasks) is buffered in the task's
context and committed by the agent only if the task succeeds; data is written to object
storage at once (NotifyResultData "blocks until stored"), so post-processing is just the
database transaction. Blobs are stored with the task attempt as their owner: if the agent
dies before the commit, whoever recovers the attempt deletes them (no orphan is left).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from armonik.protogen.common import agent_common_pb2 as pb
from armonik.protogen.worker.agent_service_pb2_grpc import AgentServicer

from pyarmonik.compute.folders import TaskFolders, unwritten
from pyarmonik.control.convert import optional_options, task_creations, timestamp
from pyarmonik.control.errors import rpc
from pyarmonik.domain.errors import InvalidArgument, NotFound, Unavailable
from pyarmonik.domain.ids import new_id
from pyarmonik.domain.records import Result, Session, Task
from pyarmonik.domain.statuses import ResultStatus
from pyarmonik.scheduling.backends import Backends, now
from pyarmonik.scheduling.processing import StoredResult, TaskOutcome
from pyarmonik.scheduling.tasks import plan_tasks
from pyarmonik.storage.objects import ObjectStorage, single_chunk
from pyarmonik.storage.objects.inline import InlineObjects


@dataclass
class TaskContext:
    """The task the worker is running, and what it declared so far."""

    token: str
    task: Task
    session: Session
    folder: Path
    outcome: TaskOutcome = field(default_factory=TaskOutcome)

    def created_ids(self) -> set[str]:
        return {r.result_id for r in self.outcome.created}


class AgentApi(AgentServicer):  # type: ignore[misc]
    def __init__(self, backends: Backends, folders: TaskFolders):
        self.backends = backends
        self.folders = folders
        self.context: TaskContext | None = None

    def _context(self, token: str) -> TaskContext:
        context = self.context
        if context is None:
            raise Unavailable("No task is accepting request")
        if token != context.token:
            raise InvalidArgument("wrong or missing communication token")
        return context

    def _metadata(self, result: Result, status: ResultStatus) -> pb.ResultMetaData:
        return pb.ResultMetaData(
            session_id=result.session_id,
            result_id=result.result_id,
            name=result.name,
            status=int(status),
            created_at=timestamp(result.created_at),
        )

    def _new_result(self, context: TaskContext, name: str) -> Result:
        return Result(
            result_id=new_id(),
            session_id=context.task.session_id,
            name=name,
            created_by=context.task.task_id,
            created_at=now(),
        )

    @rpc
    async def CreateResultsMetaData(
        self, request: pb.CreateResultsMetaDataRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateResultsMetaDataResponse:
        task = self._context(request.communication_token)
        created = [self._new_result(task, r.name) for r in request.results]
        task.outcome.created += created
        return pb.CreateResultsMetaDataResponse(
            results=[self._metadata(r, ResultStatus.CREATED) for r in created],
            communication_token=request.communication_token,
        )

    @rpc
    async def CreateResults(
        self, request: pb.CreateResultsRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateResultsResponse:
        task = self._context(request.communication_token)
        created = []
        for entry in request.results:
            result = self._new_result(task, entry.name)
            opaque_id, size = await self._store(task, entry.data)
            task.outcome.created.append(result)
            task.outcome.stored.append(StoredResult(result.result_id, opaque_id, size))
            created.append(result)
        return pb.CreateResultsResponse(
            results=[self._metadata(r, ResultStatus.COMPLETED) for r in created],
            communication_token=request.communication_token,
        )

    @rpc
    async def NotifyResultData(
        self, request: pb.NotifyResultDataRequest, context: grpc.aio.ServicerContext
    ) -> pb.NotifyResultDataResponse:
        task = self._context(request.communication_token)
        allowed = set(task.task.expected_output_ids) | task.created_ids()
        ids = [i.result_id for i in request.ids]
        unknown = [i for i in ids if i not in allowed]
        if unknown:
            raise NotFound(
                f"Results {', '.join(unknown)} are neither outputs of the task nor created by it"
            )
        for result_id in ids:
            path = task.folder / result_id
            earlier = next((s for s in task.outcome.stored if s.result_id == result_id), None)
            if earlier is not None and not path.exists():
                continue  # notified again: its file was stored (and moved) the first time
            try:
                opaque_id, size = await self._store_file(task, path)
            except FileNotFoundError:
                raise NotFound(
                    f"No data file for result {result_id} in the task's data folder"
                ) from None
            if earlier is not None:  # written anew since: the last data wins
                task.outcome.stored.remove(earlier)
                inline = task.outcome.inline
                kept = [blob for blob in inline if blob[0] != earlier.opaque_id]
                if len(kept) == len(inline):
                    task.outcome.replaced.append(earlier.opaque_id)
                task.outcome.inline = kept
            task.outcome.stored.append(StoredResult(result_id, opaque_id, size))
        return pb.NotifyResultDataResponse(result_ids=ids)

    @rpc
    async def SubmitTasks(
        self, request: pb.SubmitTasksRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubmitTasksResponse:
        task = self._context(request.communication_token)
        creations = task_creations(request.task_creations)
        subtasks = plan_tasks(
            task.session, optional_options(request, "task_options"), creations, parent=task.task
        )
        await check_known(self.backends, task.task, task.created_ids(), subtasks)
        task.outcome.subtasks += subtasks
        return pb.SubmitTasksResponse(
            task_infos=[
                pb.SubmitTasksResponse.TaskInfo(
                    task_id=t.task_id,
                    expected_output_ids=t.expected_output_ids,
                    data_dependencies=t.data_dependencies,
                    payload_id=t.payload_id,
                )
                for t in subtasks
            ],
            communication_token=request.communication_token,
        )

    async def _store(self, task: TaskContext, data: bytes) -> tuple[bytes, int]:
        return await store_output(self.backends.objects, task.outcome, task.task.task_id, data)

    async def _store_file(self, task: TaskContext, path: Path) -> tuple[bytes, int]:
        """`_store` for a file of the task's folder (handed over: read and made a spare, or
        moved); FileNotFoundError when the worker did not write it."""
        status = os.stat(path)
        if unwritten(status):
            raise FileNotFoundError(path)
        objects = self.backends.objects
        if isinstance(objects, InlineObjects):
            data = await objects.read_small_file(path, status.st_size)
            if data is not None:
                self.folders.retire(path)  # its own lstat: a link is never truncated
                return await self._store(task, data)
        return await objects.put_file(path, owner=task.task.task_id)

    @rpc
    async def GetResourceData(
        self, request: pb.DataRequest, context: grpc.aio.ServicerContext
    ) -> pb.DataResponse:
        task = self._context(request.communication_token)
        async with self.backends.database.read() as repository:
            result = await repository.get(Result, request.result_id)
        if result is None or result.session_id != task.task.session_id:
            raise NotFound(f"Result {request.result_id} not found")
        if not result.opaque_id:
            raise NotFound(f"Result {request.result_id} has no data ({result.status.name})")
        await write_blob(self.backends, result.opaque_id, task.folder / result.result_id)
        return pb.DataResponse(result_id=result.result_id)


async def check_known(
    backends: Backends, task: Task, created: set[str], subtasks: list[Task]
) -> None:
    """Results the subtasks refer to must exist in the task's session, or be `created` by it."""
    ids = {i for t in subtasks for i in [*t.dependencies, *t.expected_output_ids]}
    pending = sorted(ids - created)
    if not pending:
        return
    async with backends.database.read() as repository:
        found = {
            r.result_id
            for r in await repository.find(
                Result, {"result_id": pending, "session_id": task.session_id}
            )
        }
    missing = [i for i in pending if i not in found]
    if missing:
        raise NotFound(f"Results not found: {', '.join(missing[:10])}")


async def store_output(
    objects: ObjectStorage, outcome: TaskOutcome, owner: str, data: bytes
) -> tuple[bytes, int]:
    """Store data a task produced; its opaque id and size. Small data waits in `outcome`
    for the completion's transaction (nothing to undo if the task fails); larger data goes
    to object storage now, owned by the task attempt (a recovery deletes it if the attempt
    never commits)."""
    if isinstance(objects, InlineObjects) and objects.fits(len(data)):
        opaque_id = objects.inline_id(owner)
        outcome.inline.append((opaque_id, owner, bytes(data)))
        return opaque_id, len(data)
    return await objects.put(single_chunk(data), owner=owner)


async def write_blob(backends: Backends, opaque_id: bytes, path: Path) -> None:
    """Put a blob in a file of the task's folder, for the worker to read."""
    await backends.objects.get_file(opaque_id, path)
