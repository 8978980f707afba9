"""Sessions service: thin gRPC edge over scheduling.sessions."""

from __future__ import annotations

import grpc
from armonik.protogen.client.sessions_service_pb2_grpc import SessionsServicer
from armonik.protogen.common import sessions_common_pb2 as pb

from pyarmonik.control import filters
from pyarmonik.control.convert import optional_options, session_raw
from pyarmonik.control.errors import rpc
from pyarmonik.control.isolation import SessionGuard
from pyarmonik.domain.errors import InvalidArgument
from pyarmonik.domain.filters import MATCH_ALL, ListQuery
from pyarmonik.observability import tracing
from pyarmonik.scheduling.sessions import SessionService


class Sessions(SessionsServicer):  # type: ignore[misc]
    def __init__(self, service: SessionService, guard: SessionGuard):
        self.service = service
        self.guard = guard

    @rpc
    async def CreateSession(
        self, request: pb.CreateSessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateSessionReply:
        options = optional_options(request, "default_task_option")
        if options is None:
            raise InvalidArgument("default_task_option is required")
        session = await self.service.create(
            options, list(request.partition_ids), self.guard.creator()
        )
        tracing.session_started(session)
        return pb.CreateSessionReply(session_id=session.session_id)

    @rpc
    async def GetSession(
        self, request: pb.GetSessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetSessionResponse:
        await self.guard.session(request.session_id)
        return pb.GetSessionResponse(
            session=session_raw(await self.service.get(request.session_id))
        )

    @rpc
    async def ListSessions(
        self, request: pb.ListSessionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListSessionsResponse:
        filters.validate_paging(request.page, request.page_size)
        query = ListQuery(
            filter=filters.sessions_filter(request.filters)
            if request.HasField("filters")
            else MATCH_ALL,
            sort=filters.sessions_sort(request.sort) if request.HasField("sort") else None,
            page=request.page,
            page_size=request.page_size,
        )
        sessions, total = await self.service.list_page(self.guard.sessions(query))
        return pb.ListSessionsResponse(
            sessions=[session_raw(s) for s in sessions],
            page=request.page,
            page_size=request.page_size,
            total=total,
        )

    @rpc
    async def CancelSession(
        self, request: pb.CancelSessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CancelSessionResponse:
        await self.guard.session(request.session_id)
        return pb.CancelSessionResponse(
            session=session_raw(await self.service.cancel(request.session_id))
        )

    @rpc
    async def PauseSession(
        self, request: pb.PauseSessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.PauseSessionResponse:
        await self.guard.session(request.session_id)
        return pb.PauseSessionResponse(
            session=session_raw(await self.service.pause(request.session_id))
        )

    @rpc
    async def ResumeSession(
        self, request: pb.ResumeSessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.ResumeSessionResponse:
        await self.guard.session(request.session_id)
        return pb.ResumeSessionResponse(
            session=session_raw(await self.service.resume(request.session_id))
        )

    @rpc
    async def CloseSession(
        self, request: pb.CloseSessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CloseSessionResponse:
        await self.guard.session(request.session_id)
        return pb.CloseSessionResponse(
            session=session_raw(await self.service.close(request.session_id))
        )

    @rpc
    async def PurgeSession(
        self, request: pb.PurgeSessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.PurgeSessionResponse:
        await self.guard.session(request.session_id)
        return pb.PurgeSessionResponse(
            session=session_raw(await self.service.purge(request.session_id))
        )

    @rpc
    async def DeleteSession(
        self, request: pb.DeleteSessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteSessionResponse:
        await self.guard.session(request.session_id)
        return pb.DeleteSessionResponse(
            session=session_raw(await self.service.delete(request.session_id))
        )

    @rpc
    async def StopSubmission(
        self, request: pb.StopSubmissionRequest, context: grpc.aio.ServicerContext
    ) -> pb.StopSubmissionResponse:
        await self.guard.session(request.session_id)
        session = await self.service.stop_submission(
            request.session_id, request.client, request.worker
        )
        return pb.StopSubmissionResponse(session=session_raw(session))
