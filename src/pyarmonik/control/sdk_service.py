"""`pyarmonik.v1.Sdk`: pyarmonik's own service for its Python SDK, beside ArmoniK's API.

ArmoniK's API needs three calls to submit a task with its payload (CreateResultsMetaData,
CreateResults, SubmitTasks), and two messages and one call per result to learn that it
completed and read it (Events, DownloadResultData). The SDK asks this service instead:

  Submit  {session_id, tasks: [{payload_name, payload, output_name, dependencies,
          options?}]} → {tasks: [{task_id, payload_id, output_id}]}: payloads (up to
          `inline_threshold`), outputs and tasks created in one transaction; `options` is
          a serialized armonik TaskOptions message
  Watch   {session_id, name_prefix} → a stream of {results: [[result_id, status, data or
          None, name], ...]}: the results of the session whose name starts with the prefix, as
          they complete or abort, with their data when it is small (larger data is
          downloaded as usual); it starts with those already ended, so a reconnection
          loses nothing, then follows the change feed as Events does

Official clients never see it: it is one more gRPC service, in msgpack rather than protobuf
(no schema to ship), and a server without it answers UNIMPLEMENTED, which the SDK takes as
"use ArmoniK's API". Both need the permissions of the calls they replace, and honour
session isolation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import msgpack  # type: ignore[import-untyped]
from armonik.protogen.common import objects_pb2

from pyarmonik.control.convert import options_from_message
from pyarmonik.control.errors import rpc
from pyarmonik.control.isolation import SessionGuard
from pyarmonik.domain.errors import InvalidArgument
from pyarmonik.domain.records import Result
from pyarmonik.domain.statuses import ResultStatus
from pyarmonik.scheduling.backends import Backends
from pyarmonik.scheduling.changes import ChangeFeed, ChangeKind
from pyarmonik.scheduling.sessions import load_session
from pyarmonik.scheduling.tasks import NewTask, TaskService
from pyarmonik.storage.objects.inline import InlineObjects

SERVICE = "pyarmonik.v1.Sdk"
WATCH = f"/{SERVICE}/Watch"
SUBMIT = f"/{SERVICE}/Submit"
ENDED = (ResultStatus.COMPLETED, ResultStatus.ABORTED)
# Data up to this size travels in the stream; larger data is downloaded on demand.
VALUE_INLINE = 64 * 1024
SNAPSHOT_PAGE = 1000

Entry = list[Any]  # [result_id, status, data or None, name]


def encode(message: dict[str, Any]) -> bytes:
    data: bytes = msgpack.packb(message, use_bin_type=True)
    return data


def decode(data: bytes) -> dict[str, Any]:
    try:
        message = msgpack.unpackb(data, raw=False)
    except Exception as error:
        raise InvalidArgument(f"malformed request: {error}") from error
    if not isinstance(message, dict):
        raise InvalidArgument("a request is a map")
    return message


def _text(message: dict[str, Any], key: str, required: bool = True) -> str:
    value = message.get(key, "")
    if not isinstance(value, str) or (required and not value):
        raise InvalidArgument(f"{key} must be a {'non-empty ' if required else ''}string")
    return value


def _new_task(entry: Any) -> NewTask:
    if not isinstance(entry, dict):
        raise InvalidArgument("each task is a map")
    payload, dependencies = entry.get("payload"), entry.get("dependencies", [])
    if not isinstance(payload, bytes):
        raise InvalidArgument("payload must be bytes")
    if not isinstance(dependencies, list) or not all(isinstance(d, str) for d in dependencies):
        raise InvalidArgument("dependencies must be a list of result ids")
    options = None
    if entry.get("options") is not None:
        message = objects_pb2.TaskOptions()
        try:
            message.ParseFromString(entry["options"])
        except Exception as error:
            raise InvalidArgument(f"options are not a TaskOptions message: {error}") from error
        options = options_from_message(message)
    return NewTask(
        payload_name=_text(entry, "payload_name", required=False),
        payload=payload,
        output_name=_text(entry, "output_name", required=False),
        data_dependencies=dependencies,
        options=options,
    )


class SdkService:
    def __init__(self, backends: Backends, feed: ChangeFeed, guard: SessionGuard):
        self.backends = backends
        self.feed = feed
        self.guard = guard
        self.tasks = TaskService(backends)
        objects = backends.objects
        self.inline = objects if isinstance(objects, InlineObjects) else None

    @rpc
    async def Submit(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        request = decode(raw)
        session_id = _text(request, "session_id")
        entries = request.get("tasks")
        if not isinstance(entries, list) or not entries:
            raise InvalidArgument("tasks must be a non-empty list")
        new = [_new_task(entry) for entry in entries]
        await self.guard.session(session_id)
        tasks = await self.tasks.submit_new(session_id, new)
        return encode(
            {
                "tasks": [
                    {
                        "task_id": t.task_id,
                        "payload_id": t.payload_id,
                        "output_id": t.expected_output_ids[0],
                    }
                    for t in tasks
                ]
            }
        )

    @rpc
    async def Watch(self, raw: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        request = decode(raw)
        session_id = _text(request, "session_id")
        prefix = _text(request, "name_prefix", required=False)
        await self.guard.session(session_id)
        async with self.backends.database.read() as repository:
            await load_session(repository, session_id)  # NotFound for an unknown session
        subscription = await self.feed.subscribe(session_id)
        try:
            async for entries in self._snapshot(session_id, prefix):
                yield encode({"results": entries})
            async for batch in subscription.batches():
                ids = [
                    c.entity_id
                    for c in batch
                    if c.kind == ChangeKind.RESULT_STATUS and c.status in ENDED
                ]
                if ids:
                    async with self.backends.database.read() as repository:
                        results = await repository.find(Result, {"result_id": ids})
                    entries = await self._entries([r for r in results if r.name.startswith(prefix)])
                    if entries:
                        yield encode({"results": entries})
        finally:
            subscription.close()

    async def _snapshot(self, session_id: str, prefix: str) -> AsyncIterator[list[Entry]]:
        after = ""
        while True:
            async with self.backends.database.read() as repository:
                page = await repository.ended_results(session_id, prefix, after, SNAPSHOT_PAGE)
            if page:
                yield await self._entries(page)
            if len(page) < SNAPSHOT_PAGE:
                return
            after = page[-1].result_id

    async def _entries(self, results: list[Result]) -> list[Entry]:
        """The stream's entries: small data of those in the database read in one query."""
        inline: dict[bytes, bytes] = {}
        if self.inline is not None:
            wanted = [
                r.opaque_id
                for r in results
                if r.status == ResultStatus.COMPLETED
                and r.size <= VALUE_INLINE
                and self.inline.is_inline(r.opaque_id)
            ]
            if wanted:
                async with self.backends.database.read() as repository:
                    inline = await repository.blobs(wanted)
        return [[r.result_id, int(r.status), inline.get(r.opaque_id), r.name] for r in results]


def add_sdk_service_to_server(service: SdkService, server: grpc.aio.Server) -> None:
    handlers = {
        "Submit": grpc.unary_unary_rpc_method_handler(service.Submit),
        "Watch": grpc.unary_stream_rpc_method_handler(service.Watch),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
