"""Tasks service: thin gRPC edge over scheduling.tasks."""

from __future__ import annotations

import grpc
from armonik.protogen.client.tasks_service_pb2_grpc import TasksServicer
from armonik.protogen.common import objects_pb2
from armonik.protogen.common import tasks_common_pb2 as pb

from pyarmonik.control import filters
from pyarmonik.control.convert import optional_options, task_creations, task_detailed, task_summary
from pyarmonik.control.errors import rpc
from pyarmonik.control.isolation import SessionGuard
from pyarmonik.domain.filters import MATCH_ALL, ListQuery, and_filters
from pyarmonik.observability import tracing
from pyarmonik.scheduling.tasks import TaskService


def list_query(request: pb.ListTasksRequest) -> ListQuery:
    filters.validate_paging(request.page, request.page_size)
    return ListQuery(
        filter=filters.tasks_filter(request.filters) if request.HasField("filters") else MATCH_ALL,
        sort=filters.tasks_sort(request.sort) if request.HasField("sort") else None,
        page=request.page,
        page_size=request.page_size,
    )


class Tasks(TasksServicer):  # type: ignore[misc]
    def __init__(self, service: TaskService, guard: SessionGuard):
        self.service = service
        self.guard = guard

    @rpc
    async def SubmitTasks(
        self, request: pb.SubmitTasksRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubmitTasksResponse:
        creations = task_creations(request.task_creations)
        await self.guard.session(request.session_id)
        with tracing.submission_span(
            request.session_id, len(creations), context.invocation_metadata
        ):
            tasks = await self.service.submit(
                request.session_id, optional_options(request, "task_options"), creations
            )
        return pb.SubmitTasksResponse(
            task_infos=[
                pb.SubmitTasksResponse.TaskInfo(
                    task_id=t.task_id,
                    expected_output_ids=t.expected_output_ids,
                    data_dependencies=t.data_dependencies,
                    payload_id=t.payload_id,
                )
                for t in tasks
            ]
        )

    @rpc
    async def ListTasks(
        self, request: pb.ListTasksRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListTasksResponse:
        tasks, total = await self.service.list_page(self.guard.within(list_query(request)))
        return pb.ListTasksResponse(
            tasks=[task_summary(t, request.with_errors) for t in tasks],
            page=request.page,
            page_size=request.page_size,
            total=total,
        )

    @rpc
    async def ListTasksDetailed(
        self, request: pb.ListTasksRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListTasksDetailedResponse:
        tasks, total = await self.service.list_page(self.guard.within(list_query(request)))
        return pb.ListTasksDetailedResponse(
            tasks=[task_detailed(t) for t in tasks],
            page=request.page,
            page_size=request.page_size,
            total=total,
        )

    @rpc
    async def GetTask(
        self, request: pb.GetTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetTaskResponse:
        await self.guard.tasks([request.task_id])
        return pb.GetTaskResponse(task=task_detailed(await self.service.get(request.task_id)))

    @rpc
    async def CancelTasks(
        self, request: pb.CancelTasksRequest, context: grpc.aio.ServicerContext
    ) -> pb.CancelTasksResponse:
        await self.guard.tasks(list(request.task_ids))
        tasks = await self.service.cancel(list(request.task_ids))
        return pb.CancelTasksResponse(tasks=[task_summary(t) for t in tasks])

    @rpc
    async def GetResultIds(
        self, request: pb.GetResultIdsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetResultIdsResponse:
        await self.guard.tasks(list(request.task_id))
        tasks = await self.service.result_ids(list(request.task_id))
        return pb.GetResultIdsResponse(
            task_results=[
                pb.GetResultIdsResponse.MapTaskResult(
                    task_id=t.task_id, result_ids=t.expected_output_ids
                )
                for t in tasks
            ]
        )

    @rpc
    async def CountTasksByStatus(
        self, request: pb.CountTasksByStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.CountTasksByStatusResponse:
        task_filter = (
            filters.tasks_filter(request.filters) if request.HasField("filters") else MATCH_ALL
        )
        counts = await self.service.count_by_status(and_filters(task_filter, self.guard.scope()))
        return pb.CountTasksByStatusResponse(
            status=[objects_pb2.StatusCount(status=s, count=n) for s, n in sorted(counts.items())]
        )
