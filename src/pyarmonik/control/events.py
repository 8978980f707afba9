"""Events service: a snapshot of the session's tasks and results, then their live changes.

The stream never ends by itself (the official client treats an ended stream as "every
result is ready"); it stops when the client cancels it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

import grpc
from armonik.protogen.client.events_service_pb2_grpc import EventsServicer
from armonik.protogen.common import events_common_pb2 as pb

from pyarmonik.control import filters
from pyarmonik.control.errors import rpc
from pyarmonik.control.isolation import SessionGuard
from pyarmonik.domain.errors import InvalidArgument
from pyarmonik.domain.filters import (
    MATCH_ALL,
    Condition,
    Filter,
    Kind,
    ListQuery,
    Op,
    and_filters,
    matches,
)
from pyarmonik.domain.records import Result, Row, Task
from pyarmonik.scheduling.changes import Change, ChangeFeed, ChangeKind
from pyarmonik.storage.database import Database
from pyarmonik.storage.database.sql import R

Response = pb.EventSubscriptionResponse
SNAPSHOT_PAGE = 1000
ALL_EVENTS = frozenset(ChangeKind)


def _only_session(session_id: str) -> Filter:
    return ((Condition("session_id", Kind.STRING, Op.EQ, session_id),),)


def new_task_event(task: Task) -> pb.EventSubscriptionResponse:
    return Response(
        session_id=task.session_id,
        new_task=Response.NewTask(
            task_id=task.task_id,
            payload_id=task.payload_id,
            origin_task_id=task.initial_task_id,
            status=int(task.status),
            expected_output_keys=task.expected_output_ids,
            data_dependencies=task.data_dependencies,
            retry_of_ids=task.retry_of_ids,
            parent_task_ids=task.parent_task_ids,
        ),
    )


def task_status_event(session_id: str, task_id: str, status: int) -> pb.EventSubscriptionResponse:
    return Response(
        session_id=session_id,
        task_status_update=Response.TaskStatusUpdate(task_id=task_id, status=status),
    )


def new_result_event(
    session_id: str, result_id: str, owner: str, status: int
) -> pb.EventSubscriptionResponse:
    return Response(
        session_id=session_id,
        new_result=Response.NewResult(result_id=result_id, owner_id=owner, status=status),
    )


def result_status_event(
    session_id: str, result_id: str, status: int
) -> pb.EventSubscriptionResponse:
    return Response(
        session_id=session_id,
        result_status_update=Response.ResultStatusUpdate(result_id=result_id, status=status),
    )


class Events(EventsServicer):  # type: ignore[misc]
    def __init__(self, database: Database, feed: ChangeFeed, guard: SessionGuard):
        self.database = database
        self.feed = feed
        self.guard = guard

    @rpc
    async def GetEvents(
        self, request: pb.EventSubscriptionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.EventSubscriptionResponse]:
        if not request.session_id:
            raise InvalidArgument("session_id is required")
        await self.guard.session(request.session_id)
        wanted = {
            ChangeKind(k) for k in request.returned_events if k in ChangeKind._value2member_map_
        }
        if len(wanted) != len(set(request.returned_events)):
            raise InvalidArgument("returned_events holds an unknown event type")
        wanted = wanted or set(ALL_EVENTS)
        session = _only_session(request.session_id)
        task_filter = and_filters(
            filters.events_tasks_filter(request.tasks_filters)
            if request.HasField("tasks_filters")
            else MATCH_ALL,
            session,
        )
        result_filter = and_filters(
            filters.events_results_filter(request.results_filters)
            if request.HasField("results_filters")
            else MATCH_ALL,
            session,
        )
        subscription = await self.feed.subscribe(request.session_id)
        try:
            async for event in self._snapshot(wanted, task_filter, result_filter):
                yield event
            async for batch in subscription.batches():
                for event in await self._live(batch, wanted, task_filter, result_filter):
                    yield event
        finally:
            subscription.close()

    async def _snapshot(
        self, wanted: set[ChangeKind], task_filter: Filter, result_filter: Filter
    ) -> AsyncIterator[pb.EventSubscriptionResponse]:
        """Current state, as NEW_* events (or as status updates when only those are wanted)."""
        if wanted & {ChangeKind.NEW_TASK, ChangeKind.TASK_STATUS}:
            async for task in self._pages(Task, task_filter):
                if ChangeKind.NEW_TASK in wanted:
                    yield new_task_event(task)
                else:
                    yield task_status_event(task.session_id, task.task_id, int(task.status))
        if wanted & {ChangeKind.NEW_RESULT, ChangeKind.RESULT_STATUS}:
            async for result in self._pages(Result, result_filter):
                if ChangeKind.NEW_RESULT in wanted:
                    yield new_result_event(
                        result.session_id,
                        result.result_id,
                        result.owner_task_id,
                        int(result.status),
                    )
                else:
                    yield result_status_event(
                        result.session_id, result.result_id, int(result.status)
                    )

    async def _pages(self, kind: type[R], where: Filter) -> AsyncIterator[R]:
        page = 0
        while True:
            async with self.database.read() as repository:
                records, _ = await repository.list_page(
                    kind, ListQuery(filter=where, page=page, page_size=SNAPSHOT_PAGE)
                )
            for record in records:
                yield record
            if len(records) < SNAPSHOT_PAGE:
                return
            page += 1

    async def _live(
        self,
        batch: list[Change],
        wanted: set[ChangeKind],
        task_filter: Filter,
        result_filter: Filter,
    ) -> list[pb.EventSubscriptionResponse]:
        changes = [c for c in batch if c.kind in wanted]
        if not changes:
            return []
        task_ids = [
            c.entity_id for c in changes if c.kind in (ChangeKind.NEW_TASK, ChangeKind.TASK_STATUS)
        ]
        result_ids = [
            c.entity_id
            for c in changes
            if c.kind not in (ChangeKind.NEW_TASK, ChangeKind.TASK_STATUS)
        ]
        tasks, results = await self._load(task_ids, result_ids)
        events: list[pb.EventSubscriptionResponse] = []
        for change in changes:
            if change.kind in (ChangeKind.NEW_TASK, ChangeKind.TASK_STATUS):
                task = tasks.get(change.entity_id)
                if task is None or not matches(task_filter, task[0]):
                    continue
                if change.kind is ChangeKind.NEW_TASK:
                    events.append(new_task_event(task[1]))
                else:
                    events.append(
                        task_status_event(change.session_id, change.entity_id, change.status)
                    )
            else:
                result = results.get(change.entity_id)
                if result is None or not matches(result_filter, result):
                    continue
                if change.kind is ChangeKind.NEW_RESULT:
                    events.append(
                        new_result_event(
                            change.session_id, change.entity_id, change.current_owner, change.status
                        )
                    )
                elif change.kind is ChangeKind.RESULT_STATUS:
                    events.append(
                        result_status_event(change.session_id, change.entity_id, change.status)
                    )
                else:
                    events.append(
                        Response(
                            session_id=change.session_id,
                            result_owner_update=Response.ResultOwnerUpdate(
                                result_id=change.entity_id,
                                previous_owner_id=change.previous_owner,
                                current_owner_id=change.current_owner,
                            ),
                        )
                    )
        return events

    async def _load(
        self, task_ids: Iterable[str], result_ids: Iterable[str]
    ) -> tuple[dict[str, tuple[Row, Task]], dict[str, Row]]:
        """The current rows of the changed entities (filters are evaluated on them)."""
        task_list, result_list = sorted(set(task_ids)), sorted(set(result_ids))
        async with self.database.read() as repository:
            tasks = await repository.find(Task, {"task_id": task_list}) if task_list else []
            results = (
                await repository.find(Result, {"result_id": result_list}) if result_list else []
            )
        return (
            {t.task_id: (t.to_row(), t) for t in tasks},
            {r.result_id: r.to_row() for r in results},
        )
