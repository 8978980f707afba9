"""Bad input hurts nobody else (issue 12): the six defects a fuzzer found, each replayed through
the official client or its stubs, and the limits on requests (docs/reliability.md)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from armonik.client import ArmoniKResults, ArmoniKSessions, ArmoniKTasks
from armonik.common import ResultStatus, Task, TaskDefinition, TaskOptions
from armonik.protogen.client.applications_service_pb2_grpc import ApplicationsStub
from armonik.protogen.client.events_service_pb2_grpc import EventsStub
from armonik.protogen.client.partitions_service_pb2_grpc import PartitionsStub
from armonik.protogen.client.results_service_pb2_grpc import ResultsStub
from armonik.protogen.client.sessions_service_pb2_grpc import SessionsStub
from armonik.protogen.client.tasks_service_pb2_grpc import TasksStub
from armonik.protogen.common import (
    applications_common_pb2,
    applications_fields_pb2,
    applications_filters_pb2,
    events_common_pb2,
    filters_common_pb2,
    objects_pb2,
    partitions_common_pb2,
    partitions_fields_pb2,
    partitions_filters_pb2,
    results_common_pb2,
    results_fields_pb2,
    results_filters_pb2,
    sessions_common_pb2,
    sessions_fields_pb2,
    sessions_filters_pb2,
    sort_direction_pb2,
    tasks_common_pb2,
    tasks_fields_pb2,
    tasks_filters_pb2,
)
from google.protobuf.duration_pb2 import Duration

from pyarmonik.domain.filters import MAX_FILTER_CONDITIONS, MAX_FILTER_TEXT_BYTES
from pyarmonik.domain.options import MAX_DURATION_SECONDS
from tests.conformance.conftest import OPTIONS
from tests.conformance.support import code_of
from tests.helpers import BackgroundControlPlane

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND


def raw_options(seconds: int, nanos: int = 0) -> objects_pb2.TaskOptions:
    return objects_pb2.TaskOptions(
        max_duration=Duration(seconds=seconds, nanos=nanos), max_retries=1, priority=1
    )


# -- 1. durations -----------------------------------------------------------------------------

BAD_DURATIONS = {
    "int64 max": (2**63 - 1, 0),
    "past protobuf's range": (315_576_000_001, 0),
    "past the documented maximum": (int(MAX_DURATION_SECONDS) + 1, 0),
    "1e10 s": (10**10, 0),
    "nanos out of range": (1, 1_000_000_000),
    "signs differ": (5, -3),
}


@pytest.mark.parametrize("name", sorted(BAD_DURATIONS))
def test_out_of_range_durations_are_refused_and_harm_no_listing(
    sessions_stub: SessionsStub,
    tasks_stub: TasksStub,
    sessions: ArmoniKSessions,
    results: ArmoniKResults,
    session_id: str,
    name: str,
) -> None:
    seconds, nanos = BAD_DURATIONS[name]
    create = sessions_common_pb2.CreateSessionRequest(
        default_task_option=raw_options(seconds, nanos), partition_ids=["default"]
    )
    assert code_of(lambda: sessions_stub.CreateSession(create)) == INVALID
    created = results.create_results_metadata(["payload", "out"], session_id)
    submit = tasks_common_pb2.SubmitTasksRequest(
        session_id=session_id,
        task_creations=[
            tasks_common_pb2.SubmitTasksRequest.TaskCreation(
                payload_id=created["payload"].result_id,
                expected_output_keys=[created["out"].result_id],
                task_options=raw_options(seconds, nanos),
            )
        ],
    )
    assert code_of(lambda: tasks_stub.SubmitTasks(submit)) == INVALID
    # Nothing was stored that a listing could choke on.
    total, listed = sessions.list_sessions(page_size=1000)
    assert total == len(listed) >= 1
    assert sessions.get_session(session_id).session_id == session_id


def test_the_longest_duration_is_stored_and_read_back(
    sessions: ArmoniKSessions, tasks: ArmoniKTasks, results: ArmoniKResults
) -> None:
    longest = timedelta(seconds=MAX_DURATION_SECONDS)
    options = TaskOptions(max_duration=longest, priority=1, max_retries=1)
    session_id = sessions.create_session(options)
    assert sessions.get_session(session_id).options.max_duration == longest
    created = results.create_results_metadata(["payload", "out"], session_id)
    (task,) = tasks.submit_tasks(
        session_id,
        [TaskDefinition(created["payload"].result_id, [created["out"].result_id])],
    )
    assert tasks.get_task(task.id).options.max_duration == longest
    total, listed = tasks.list_tasks(Task.session_id == session_id)
    assert total == 1 and listed[0].options.max_duration == longest


# -- 3. an upload cancelled halfway -------------------------------------------------------------


def identifier(session_id: str, result_id: str) -> results_common_pb2.UploadResultDataRequest:
    return results_common_pb2.UploadResultDataRequest(
        id=results_common_pb2.UploadResultDataRequest.ResultIdentifier(
            session_id=session_id, result_id=result_id
        )
    )


def blobs_of(plane: BackgroundControlPlane) -> set[str] | None:
    """The blobs of a file object storage (None for the other storages)."""
    url = plane.settings.objects_url
    if not url.startswith("file://"):
        return None
    return {p.name for p in Path(url.removeprefix("file://")).iterdir() if p.is_file()}


def test_an_upload_cancelled_halfway_stores_nothing(
    plane: BackgroundControlPlane,
    results_stub: ResultsStub,
    results: ArmoniKResults,
    session_id: str,
) -> None:
    result_id = results.create_results_metadata(["r"], session_id)["r"].result_id
    before = blobs_of(plane)
    sent = threading.Event()

    def messages() -> Any:
        yield identifier(session_id, result_id)
        yield results_common_pb2.UploadResultDataRequest(data_chunk=b"partial")
        sent.set()
        time.sleep(30)  # the client cancels meanwhile: the stream never ends normally

    call = results_stub.UploadResultData.future(messages(), timeout=60)
    assert sent.wait(10)
    time.sleep(0.3)  # the server has read both messages
    call.cancel()
    time.sleep(0.5)
    assert results.get_result(result_id).status == ResultStatus.CREATED
    assert results.get_result(result_id).size == 0
    if before is not None:
        assert blobs_of(plane) == before
    # The result can still be uploaded, whole.
    results.upload_result_data(result_id, session_id, b"whole data")
    assert results.download_result_data(result_id, session_id) == b"whole data"


def test_an_upload_whose_deadline_expires_stores_nothing(
    results_stub: ResultsStub, results: ArmoniKResults, session_id: str
) -> None:
    result_id = results.create_results_metadata(["r"], session_id)["r"].result_id

    def messages() -> Any:
        yield identifier(session_id, result_id)
        yield results_common_pb2.UploadResultDataRequest(data_chunk=b"partial")
        time.sleep(3)

    error = code_of(lambda: results_stub.UploadResultData(messages(), timeout=1))
    assert error == grpc.StatusCode.DEADLINE_EXCEEDED
    time.sleep(0.3)
    assert results.get_result(result_id).status == ResultStatus.CREATED


# -- 4, 5, 6. filters, texts and sorts beyond SQL's limits --------------------------------------


def string_filter(module: Any, field: Any, values: list[str], operator: int = 0) -> Any:
    """`module.Filters` with one condition per value, `values` split over OR groups of up to 50
    ANDs (both directions of the tree grow)."""
    conditions = [
        module.FilterField(
            field=field, filter_string=filters_common_pb2.FilterString(value=v, operator=operator)
        )
        for v in values
    ]
    groups = [
        module.FiltersAnd(**{"and": conditions[i : i + 50]}) for i in range(0, len(conditions), 50)
    ]
    return module.Filters(**{"or": groups})


TASK_ID_FIELD = tasks_fields_pb2.TaskField(
    task_summary_field=tasks_fields_pb2.TaskSummaryField(
        field=tasks_fields_pb2.TASK_SUMMARY_ENUM_FIELD_TASK_ID
    )
)
SESSION_ID_FIELD = sessions_fields_pb2.SessionField(
    session_raw_field=sessions_fields_pb2.SessionRawField(
        field=sessions_fields_pb2.SESSION_RAW_ENUM_FIELD_SESSION_ID
    )
)
RESULT_ID_FIELD = results_fields_pb2.ResultField(
    result_raw_field=results_fields_pb2.ResultRawField(
        field=results_fields_pb2.RESULT_RAW_ENUM_FIELD_RESULT_ID
    )
)
PARTITION_ID_FIELD = partitions_fields_pb2.PartitionField(
    partition_raw_field=partitions_fields_pb2.PartitionRawField(
        field=partitions_fields_pb2.PARTITION_RAW_ENUM_FIELD_ID
    )
)
APPLICATION_NAME_FIELD = applications_fields_pb2.ApplicationField(
    application_field=applications_fields_pb2.ApplicationRawField(
        field=applications_fields_pb2.APPLICATION_RAW_ENUM_FIELD_NAME
    )
)


def filtered_calls(
    channel: grpc.Channel, session_id: str, values: list[str], operator: int = 0
) -> dict[str, Callable[[], Any]]:
    """Every rpc taking a filter, with a string filter of `values` on an id."""
    tasks, sessions = TasksStub(channel), SessionsStub(channel)
    results, partitions = ResultsStub(channel), PartitionsStub(channel)
    applications, events = ApplicationsStub(channel), EventsStub(channel)
    task_filter = string_filter(tasks_filters_pb2, TASK_ID_FIELD, values, operator)
    list_tasks = tasks_common_pb2.ListTasksRequest(page_size=10, filters=task_filter)

    def first_event() -> None:
        request = events_common_pb2.EventSubscriptionRequest(
            session_id=session_id, tasks_filters=task_filter
        )
        try:
            next(iter(events.GetEvents(request, timeout=2)))
        except grpc.RpcError as error:  # an endless stream: its deadline is a normal end
            if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise

    return {
        "ListTasks": lambda: tasks.ListTasks(list_tasks),
        "ListTasksDetailed": lambda: tasks.ListTasksDetailed(list_tasks),
        "CountTasksByStatus": lambda: tasks.CountTasksByStatus(
            tasks_common_pb2.CountTasksByStatusRequest(filters=task_filter)
        ),
        "ListSessions": lambda: sessions.ListSessions(
            sessions_common_pb2.ListSessionsRequest(
                page_size=10,
                filters=string_filter(sessions_filters_pb2, SESSION_ID_FIELD, values, operator),
            )
        ),
        "ListResults": lambda: results.ListResults(
            results_common_pb2.ListResultsRequest(
                page_size=10,
                filters=string_filter(results_filters_pb2, RESULT_ID_FIELD, values, operator),
            )
        ),
        "ListPartitions": lambda: partitions.ListPartitions(
            partitions_common_pb2.ListPartitionsRequest(
                page_size=10,
                filters=string_filter(partitions_filters_pb2, PARTITION_ID_FIELD, values, operator),
            )
        ),
        "ListApplications": lambda: applications.ListApplications(
            applications_common_pb2.ListApplicationsRequest(
                page_size=10,
                filters=string_filter(
                    applications_filters_pb2, APPLICATION_NAME_FIELD, values, operator
                ),
            )
        ),
        "GetEvents": first_event,
    }


RPCS_WITH_FILTERS = [
    "CountTasksByStatus",
    "GetEvents",
    "ListApplications",
    "ListPartitions",
    "ListResults",
    "ListSessions",
    "ListTasks",
    "ListTasksDetailed",
]


@pytest.mark.parametrize("rpc", RPCS_WITH_FILTERS)
def test_filters_of_thousands_of_conditions_work(
    channel: grpc.Channel, session_id: str, rpc: str
) -> None:
    values = [f"id-{i}" for i in range(1500)]
    filtered_calls(channel, session_id, values)[rpc]()  # no error


@pytest.mark.parametrize("rpc", RPCS_WITH_FILTERS)
def test_filters_past_the_condition_limit_are_invalid(
    channel: grpc.Channel, session_id: str, rpc: str
) -> None:
    values = ["x"] * (MAX_FILTER_CONDITIONS + 1)
    call = filtered_calls(channel, session_id, values)[rpc]
    with pytest.raises(grpc.RpcError) as raised:
        call()
    assert raised.value.code() == INVALID
    assert str(MAX_FILTER_CONDITIONS) in raised.value.details()


CONTAINS = filters_common_pb2.FILTER_STRING_OPERATOR_CONTAINS
PATTERN_OPERATORS = {
    "contains": CONTAINS,
    "not contains": filters_common_pb2.FILTER_STRING_OPERATOR_NOT_CONTAINS,
    "starts with": filters_common_pb2.FILTER_STRING_OPERATOR_STARTS_WITH,
    "ends with": filters_common_pb2.FILTER_STRING_OPERATOR_ENDS_WITH,
}


@pytest.mark.parametrize("operator", sorted(PATTERN_OPERATORS))
def test_long_pattern_values(channel: grpc.Channel, session_id: str, operator: str) -> None:
    number = PATTERN_OPERATORS[operator]
    # Wildcard characters are what escaping makes longest (three bytes each in a GLOB).
    longest = "*?[" * (MAX_FILTER_TEXT_BYTES // 3)
    for call in filtered_calls(channel, session_id, [longest], number).values():
        call()  # no error
    too_long = "x" * 50_000
    for rpc, call in filtered_calls(channel, session_id, [too_long], number).items():
        with pytest.raises(grpc.RpcError) as raised:
            call()
        assert raised.value.code() == INVALID, rpc
        assert str(MAX_FILTER_TEXT_BYTES) in raised.value.details()


def test_a_long_pattern_through_the_client(tasks: ArmoniKTasks, session_id: str) -> None:
    assert code_of(lambda: tasks.list_tasks(Task.id.contains("x" * 49_999))) == INVALID
    assert tasks.list_tasks(Task.id.contains("x" * 8000))[0] == 0


def test_applications_sorted_on_a_thousand_fields(applications_stub: ApplicationsStub) -> None:
    names = applications_fields_pb2
    fields = [
        applications_fields_pb2.ApplicationField(
            application_field=applications_fields_pb2.ApplicationRawField(field=number)
        )
        for number in [
            names.APPLICATION_RAW_ENUM_FIELD_NAME,
            names.APPLICATION_RAW_ENUM_FIELD_VERSION,
        ]
        * 550
    ]
    request = applications_common_pb2.ListApplicationsRequest(
        page_size=10,
        sort=applications_common_pb2.ListApplicationsRequest.Sort(
            fields=fields, direction=sort_direction_pb2.SORT_DIRECTION_DESC
        ),
    )
    reply = applications_stub.ListApplications(request)
    assert reply.total >= 0


# -- ids in error messages, request sizes --------------------------------------------------------


def test_a_huge_unknown_id_is_not_found_with_a_short_message(
    sessions: ArmoniKSessions, results: ArmoniKResults, tasks: ArmoniKTasks
) -> None:
    huge = "y" * 100_000
    for call in (
        lambda: sessions.get_session(huge),
        lambda: tasks.get_task(huge),
        lambda: results.get_result(huge),
    ):
        with pytest.raises(grpc.RpcError) as raised:
            call()
        assert raised.value.code() == NOT_FOUND
        assert len(raised.value.details()) < 200
        assert "100000 chars" in raised.value.details()


def test_a_request_over_the_size_limit_is_resource_exhausted(
    plane: BackgroundControlPlane, session_id: str
) -> None:
    limit = plane.settings.max_request_size
    options = [("grpc.max_send_message_length", -1)]
    with grpc.insecure_channel(plane.endpoint, options=options) as channel:
        results = ArmoniKResults(channel)
        with pytest.raises(grpc.RpcError) as raised:
            results.create_results({"big": b"z" * (limit + 1)}, session_id)
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # The connection is still good for the next request.
        assert results.create_results({"small": b"z"}, session_id)["small"].size == 1


def test_session_default_options_still_list(sessions: ArmoniKSessions) -> None:
    """The listing the first defect broke for everyone, after all of the above."""
    session_id = sessions.create_session(OPTIONS)
    total, listed = sessions.list_sessions(page_size=1000)
    assert session_id in {s.session_id for s in listed} and total == len(listed)
