"""Events.GetEvents: a snapshot of the current state, then live changes, filtered, on a stream
that only the client ends; and the client's wait_for_result_availability built on it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from armonik.client import ArmoniKEvents, ArmoniKResults, ArmoniKSessions, ArmoniKTasks
from armonik.common import (
    EventTypes,
    NewResultEvent,
    Result,
    ResultStatus,
    ResultStatusUpdateEvent,
    Task,
    TaskStatus,
)
from armonik.common.filter import Filter
from armonik.protogen.client.events_service_pb2_grpc import EventsStub
from armonik.protogen.common import events_common_pb2 as pb

from tests.conformance.conftest import OPTIONS
from tests.conformance.support import Stream, code_of, submit_one


@pytest.fixture
def events_stub(channel: grpc.Channel) -> EventsStub:
    return EventsStub(channel)


@pytest.fixture
def open_streams() -> Iterator[list[Stream]]:
    streams: list[Stream] = []
    yield streams
    for stream in streams:
        stream.cancel()


def subscribe(
    stub: EventsStub,
    streams: list[Stream],
    session_id: str,
    kinds: list[int] | None = None,
    task_filter: Filter | None = None,
    result_filter: Filter | None = None,
) -> Stream:
    request = pb.EventSubscriptionRequest(
        session_id=session_id,
        returned_events=kinds or [],
        tasks_filters=task_filter.to_message() if task_filter is not None else None,
        results_filters=result_filter.to_message() if result_filter is not None else None,
    )
    stream = Stream(stub.GetEvents(request))
    streams.append(stream)
    return stream


def describe(message: Any) -> tuple[str, str, int]:
    """(event kind, entity id, status) of an event; the owner update has no status."""
    kind = message.WhichOneof("update")
    update = getattr(message, kind)
    entity = update.task_id if "task" in kind else update.result_id
    return kind, entity, getattr(update, "status", -1)


def test_snapshot_then_live_events(
    events_stub: EventsStub,
    open_streams: list[Stream],
    results: ArmoniKResults,
    tasks: ArmoniKTasks,
    session_id: str,
) -> None:
    task = submit_one(results, tasks, session_id)
    stream = subscribe(events_stub, open_streams, session_id)
    snapshot = stream.take(3)
    assert all(m.session_id == session_id for m in snapshot)
    assert {describe(m) for m in snapshot} == {
        ("new_task", task.task_id, TaskStatus.SUBMITTED),
        ("new_result", task.payload_id, ResultStatus.COMPLETED),
        ("new_result", task.output_ids[0], ResultStatus.CREATED),
    }
    (new_task,) = [m.new_task for m in snapshot if m.WhichOneof("update") == "new_task"]
    assert new_task.payload_id == task.payload_id
    assert list(new_task.expected_output_keys) == task.output_ids
    assert new_task.origin_task_id == task.task_id
    assert list(new_task.parent_task_ids) == [session_id]
    owners = {
        m.new_result.result_id: m.new_result.owner_id
        for m in snapshot
        if m.WhichOneof("update") == "new_result"
    }
    assert owners[task.output_ids[0]] == task.task_id

    # Live: a new result, its completion, a cancelled task.
    fresh = results.create_results_metadata(["fresh"], session_id)["fresh"].result_id
    assert describe(stream.next()) == ("new_result", fresh, ResultStatus.CREATED)
    results.upload_result_data(fresh, session_id, b"x")
    assert describe(stream.next()) == ("result_status_update", fresh, ResultStatus.COMPLETED)
    tasks.cancel_tasks([task.task_id])
    live = stream.take(2)
    assert {describe(m) for m in live} == {
        ("task_status_update", task.task_id, TaskStatus.CANCELLED),
        ("result_status_update", task.output_ids[0], ResultStatus.ABORTED),
    }


def test_live_new_task_and_owner_events(
    events_stub: EventsStub,
    open_streams: list[Stream],
    results: ArmoniKResults,
    tasks: ArmoniKTasks,
    session_id: str,
) -> None:
    stream = subscribe(
        events_stub,
        open_streams,
        session_id,
        kinds=[pb.EVENTS_ENUM_NEW_TASK, pb.EVENTS_ENUM_RESULT_OWNER_UPDATE],
    )
    assert stream.silent(0.3)  # empty session: empty snapshot
    task = submit_one(results, tasks, session_id)
    received = stream.take(2)
    kinds = {m.WhichOneof("update"): m for m in received}
    assert set(kinds) == {"new_task", "result_owner_update"}
    assert kinds["new_task"].new_task.task_id == task.task_id
    owner = kinds["result_owner_update"].result_owner_update
    assert (owner.result_id, owner.previous_owner_id, owner.current_owner_id) == (
        task.output_ids[0],
        "",
        task.task_id,
    )
    # Result creations and status changes were not asked for.
    assert stream.silent(0.3)


def test_events_are_filtered(
    events_stub: EventsStub,
    open_streams: list[Stream],
    results: ArmoniKResults,
    tasks: ArmoniKTasks,
    session_id: str,
) -> None:
    watched = submit_one(results, tasks, session_id)
    other = submit_one(results, tasks, session_id)
    stream = subscribe(
        events_stub,
        open_streams,
        session_id,
        task_filter=Task.id == watched.task_id,
        result_filter=Result.result_id == watched.output_ids[0],
    )
    assert {describe(m) for m in stream.take(2)} == {
        ("new_task", watched.task_id, TaskStatus.SUBMITTED),
        ("new_result", watched.output_ids[0], ResultStatus.CREATED),
    }
    tasks.cancel_tasks([other.task_id])
    tasks.cancel_tasks([watched.task_id])
    assert {describe(m) for m in stream.take(2)} == {
        ("task_status_update", watched.task_id, TaskStatus.CANCELLED),
        ("result_status_update", watched.output_ids[0], ResultStatus.ABORTED),
    }
    assert stream.silent(0.3)


def test_only_status_updates_wanted(
    events_stub: EventsStub,
    open_streams: list[Stream],
    results: ArmoniKResults,
    session_id: str,
) -> None:
    done = results.create_results({"done": b"d"}, session_id)["done"].result_id
    stream = subscribe(
        events_stub, open_streams, session_id, kinds=[pb.EVENTS_ENUM_RESULT_STATUS_UPDATE]
    )
    # The snapshot is then given as status updates.
    assert describe(stream.next()) == ("result_status_update", done, ResultStatus.COMPLETED)
    results.create_results_metadata(["ignored"], session_id)
    assert stream.silent(0.3)


def test_events_of_other_sessions_are_not_sent(
    events_stub: EventsStub,
    open_streams: list[Stream],
    sessions: ArmoniKSessions,
    results: ArmoniKResults,
    session_id: str,
) -> None:
    other = sessions.create_session(OPTIONS)
    results.create_results({"elsewhere": b"x"}, other)
    stream = subscribe(events_stub, open_streams, session_id)
    assert stream.silent(0.3)
    results.create_results_metadata(["elsewhere-too"], other)
    mine = results.create_results_metadata(["mine"], session_id)["mine"].result_id
    assert describe(stream.next()) == ("new_result", mine, ResultStatus.CREATED)


def test_stream_stays_open(
    events_stub: EventsStub, open_streams: list[Stream], results: ArmoniKResults, session_id: str
) -> None:
    stream = subscribe(events_stub, open_streams, session_id)
    assert not stream.ended(timeout=1.5)
    assert stream.call.is_active()
    late = results.create_results_metadata(["late"], session_id)["late"].result_id
    assert describe(stream.next()) == ("new_result", late, ResultStatus.CREATED)
    stream.cancel()
    assert stream.call.code() == grpc.StatusCode.CANCELLED


def test_client_get_events_with_handlers(
    events: ArmoniKEvents, results: ArmoniKResults, session_id: str
) -> None:
    created = results.create_results_metadata(["a", "b"], session_id)
    ids = {created["a"].result_id, created["b"].result_id}
    seen: list[Any] = []

    def handler(session: str, kind: EventTypes, event: Any) -> bool:
        assert session == session_id
        seen.append((kind, event))
        return len(seen) == 3

    def complete_later() -> None:
        time.sleep(0.3)
        results.upload_result_data(created["a"].result_id, session_id, b"a")

    threading.Thread(target=complete_later, daemon=True).start()
    with ThreadPoolExecutor(1) as pool:
        pool.submit(
            events.get_events,
            session_id,
            [EventTypes.NEW_RESULT, EventTypes.RESULT_STATUS_UPDATE],
            [handler],
            None,
            (Result.name == "a") | (Result.name == "b"),
        ).result(timeout=10)
    assert {e.result_id for k, e in seen[:2] if k == EventTypes.NEW_RESULT} == ids
    assert all(isinstance(e, NewResultEvent) for _, e in seen[:2])
    kind, event = seen[2]
    assert kind == EventTypes.RESULT_STATUS_UPDATE
    assert isinstance(event, ResultStatusUpdateEvent)
    assert (event.result_id, event.status) == (created["a"].result_id, ResultStatus.COMPLETED)


def test_unknown_event_type_or_filter_field_is_invalid(
    events_stub: EventsStub, session_id: str
) -> None:
    def first(request: pb.EventSubscriptionRequest) -> Any:
        return next(iter(events_stub.GetEvents(request, timeout=5)))

    invalid = grpc.StatusCode.INVALID_ARGUMENT
    assert (
        code_of(
            lambda: first(pb.EventSubscriptionRequest(session_id=session_id, returned_events=[42]))
        )
        == invalid
    )
    # Events only filter on identifiers (reference §5): a status filter is refused.
    by_status = (Task.status == TaskStatus.SUBMITTED).to_message()
    assert (
        code_of(
            lambda: first(
                pb.EventSubscriptionRequest(session_id=session_id, tasks_filters=by_status)
            )
        )
        == invalid
    )
    assert code_of(lambda: first(pb.EventSubscriptionRequest())) == invalid


# -- wait_for_result_availability -------------------------------------------------------------


def wait(events: ArmoniKEvents, ids: list[str], session_id: str, timeout: float = 30.0) -> None:
    with ThreadPoolExecutor(1) as pool:
        pool.submit(events.wait_for_result_availability, ids, session_id).result(timeout=timeout)


def test_wait_for_results_already_completed(
    events: ArmoniKEvents, results: ArmoniKResults, session_id: str
) -> None:
    created = results.create_results({"a": b"a", "b": b"b"}, session_id)
    started = time.monotonic()
    wait(events, [r.result_id for r in created.values()], session_id)
    assert time.monotonic() - started < 5


def test_wait_for_results_completed_later(
    events: ArmoniKEvents, results: ArmoniKResults, session_id: str
) -> None:
    created = results.create_results_metadata(["x", "y"], session_id)
    ids = [created["x"].result_id, created["y"].result_id]
    started: list[str] = []

    def complete_later() -> None:
        for result_id in ids:
            time.sleep(0.3)
            started.append(result_id)  # before the call: its event may arrive before it returns
            results.upload_result_data(result_id, session_id, b"data")

    worker = threading.Thread(target=complete_later, daemon=True)
    worker.start()
    wait(events, ids, session_id)
    # It returned only once both were complete: both uploads were under way, and both results
    # are COMPLETED on the server.
    assert started == ids
    assert all(results.get_result(i).status == ResultStatus.COMPLETED for i in ids)
    worker.join(timeout=5)


def test_wait_raises_on_aborted_result(
    events: ArmoniKEvents, results: ArmoniKResults, tasks: ArmoniKTasks, session_id: str
) -> None:
    task = submit_one(results, tasks, session_id)

    def cancel_later() -> None:
        time.sleep(0.3)
        tasks.cancel_tasks([task.task_id])

    threading.Thread(target=cancel_later, daemon=True).start()
    with pytest.raises(RuntimeError, match="aborted"):
        wait(events, task.output_ids, session_id)
    # Already aborted: raises at once, from the snapshot.
    with pytest.raises(RuntimeError, match="aborted"):
        wait(events, task.output_ids, session_id)


def test_open_streams_do_not_starve_other_calls(
    events_stub: EventsStub,
    open_streams: list[Stream],
    sessions: ArmoniKSessions,
    results: ArmoniKResults,
    session_id: str,
) -> None:
    streams = [subscribe(events_stub, open_streams, session_id) for _ in range(40)]
    assert streams[-1].silent(0.2)  # an empty session: nothing to replay
    started = time.monotonic()
    created = results.create_results_metadata(["busy"], session_id)["busy"].result_id
    assert sessions.get_session(session_id).session_id == session_id
    assert time.monotonic() - started < 5
    # Every stream sees the new result.
    for stream in streams:
        assert describe(stream.next()) == ("new_result", created, ResultStatus.CREATED)
