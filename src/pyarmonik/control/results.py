"""Results service: thin gRPC edge over scheduling.results, plus WatchResults."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
from armonik.protogen.client.results_service_pb2_grpc import ResultsServicer
from armonik.protogen.common import objects_pb2
from armonik.protogen.common import results_common_pb2 as pb

from pyarmonik.control import filters
from pyarmonik.control.convert import result_raw
from pyarmonik.control.errors import rpc
from pyarmonik.control.isolation import SessionGuard
from pyarmonik.control.watch import ResultWatcher
from pyarmonik.domain.errors import FailedPrecondition, InvalidArgument
from pyarmonik.domain.filters import MATCH_ALL, ListQuery
from pyarmonik.scheduling.results import ResultService


async def rechunk(chunks: AsyncIterator[bytes], size: int) -> AsyncIterator[bytes]:
    """Re-cut a byte stream into pieces of exactly `size` bytes (the last may be shorter)."""
    pending = bytearray()
    async for chunk in chunks:
        pending += chunk
        while len(pending) >= size:
            yield bytes(pending[:size])
            del pending[:size]
    if pending:
        yield bytes(pending)


async def _ended_by_half_close(context: grpc.aio.ServicerContext) -> None:
    """Raise CancelledError unless the client ended its request stream normally.

    gRPC's aio server ends the request iterator the same way for a half-close and for a
    cancellation (a broken connection included); only the cancellation of the handler, which
    the same event triggers, tells them apart. A short pause lets that cancellation arrive
    before anything is committed (measured: it is there at the first pause).
    """
    await asyncio.sleep(0.001)
    if context.cancelled():
        raise asyncio.CancelledError


class Results(ResultsServicer):  # type: ignore[misc]
    def __init__(self, service: ResultService, watcher: ResultWatcher, guard: SessionGuard):
        self.service = service
        self.watcher = watcher
        self.guard = guard

    @rpc
    async def CreateResultsMetaData(
        self, request: pb.CreateResultsMetaDataRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateResultsMetaDataResponse:
        await self.guard.session(request.session_id)
        results = await self.service.create_metadata(
            request.session_id, [(r.name, r.manual_deletion) for r in request.results]
        )
        return pb.CreateResultsMetaDataResponse(results=[result_raw(r) for r in results])

    @rpc
    async def CreateResults(
        self, request: pb.CreateResultsRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateResultsResponse:
        await self.guard.session(request.session_id)
        results = await self.service.create_with_data(
            request.session_id, [(r.name, r.data, r.manual_deletion) for r in request.results]
        )
        return pb.CreateResultsResponse(results=[result_raw(r) for r in results])

    @rpc
    async def UploadResultData(
        self,
        request_iterator: AsyncIterator[pb.UploadResultDataRequest],
        context: grpc.aio.ServicerContext,
    ) -> pb.UploadResultDataResponse:
        first = await anext(aiter(request_iterator), None)
        if first is None:
            raise FailedPrecondition("empty upload stream: the first message must be the result id")
        if first.WhichOneof("type") != "id":
            raise InvalidArgument("the first message of an upload must be the result id")
        await self.guard.session(first.id.session_id)

        async def chunks() -> AsyncIterator[bytes]:
            async for message in request_iterator:
                if message.WhichOneof("type") != "data_chunk":
                    raise InvalidArgument("only data chunks may follow the result id")
                yield message.data_chunk
            await _ended_by_half_close(context)

        result = await self.service.upload(first.id.session_id, first.id.result_id, chunks())
        return pb.UploadResultDataResponse(result=result_raw(result))

    @rpc
    async def DownloadResultData(
        self, request: pb.DownloadResultDataRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.DownloadResultDataResponse]:
        session_id = request.session_id
        if not session_id:  # Core finds the result by its id alone; the Admin GUI sends no session
            await self.guard.results([request.result_id])
            session_id = (await self.service.get(request.result_id)).session_id
        await self.guard.session(session_id)
        data = await self.service.download(session_id, request.result_id)
        async for chunk in rechunk(data, self.service.data_chunk_max_size):
            yield pb.DownloadResultDataResponse(data_chunk=chunk)

    @rpc
    async def GetServiceConfiguration(
        self, request: objects_pb2.Empty, context: grpc.aio.ServicerContext
    ) -> pb.ResultsServiceConfigurationResponse:
        return pb.ResultsServiceConfigurationResponse(
            data_chunk_max_size=self.service.data_chunk_max_size
        )

    @rpc
    async def GetResult(
        self, request: pb.GetResultRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetResultResponse:
        await self.guard.results([request.result_id])
        return pb.GetResultResponse(result=result_raw(await self.service.get(request.result_id)))

    @rpc
    async def ListResults(
        self, request: pb.ListResultsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListResultsResponse:
        filters.validate_paging(request.page, request.page_size)
        query = ListQuery(
            filter=filters.results_filter(request.filters)
            if request.HasField("filters")
            else MATCH_ALL,
            sort=filters.results_sort(request.sort) if request.HasField("sort") else None,
            page=request.page,
            page_size=request.page_size,
        )
        results, total = await self.service.list_page(self.guard.within(query))
        return pb.ListResultsResponse(
            results=[result_raw(r) for r in results],
            page=request.page,
            page_size=request.page_size,
            total=total,
        )

    @rpc
    async def GetOwnerTaskId(
        self, request: pb.GetOwnerTaskIdRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetOwnerTaskIdResponse:
        await self.guard.session(request.session_id)
        results = await self.service.owners(request.session_id, list(request.result_id))
        return pb.GetOwnerTaskIdResponse(
            session_id=request.session_id,
            result_task=[
                pb.GetOwnerTaskIdResponse.MapResultTask(
                    result_id=r.result_id, task_id=r.owner_task_id
                )
                for r in results
            ],
        )

    @rpc
    async def DeleteResultsData(
        self, request: pb.DeleteResultsDataRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteResultsDataResponse:
        await self.guard.session(request.session_id)
        deleted = await self.service.delete_data(request.session_id, list(request.result_id))
        return pb.DeleteResultsDataResponse(session_id=request.session_id, result_id=deleted)

    @rpc
    async def ImportResultsData(
        self, request: pb.ImportResultsDataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ImportResultsDataResponse:
        await self.guard.session(request.session_id)
        results = await self.service.import_data(
            request.session_id, [(r.result_id, r.opaque_id) for r in request.results]
        )
        return pb.ImportResultsDataResponse(results=[result_raw(r) for r in results])

    @rpc
    async def WatchResults(
        self,
        request_iterator: AsyncIterator[pb.WatchResultRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.WatchResultResponse]:
        async def visible() -> AsyncIterator[pb.WatchResultRequest]:
            async for request in request_iterator:
                await self.guard.results(list(request.result_ids))
                yield request

        async for status, result_ids in self.watcher.watch(visible()):
            yield pb.WatchResultResponse(status=status, result_ids=result_ids)
