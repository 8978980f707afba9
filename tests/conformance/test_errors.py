"""Bad input is answered with the right status code, never INTERNAL or UNKNOWN."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from armonik.client import ArmoniKResults, ArmoniKSessions, ArmoniKTasks
from armonik.common import ResultStatus, Session, Task, TaskDefinition, TaskOptions
from armonik.protogen.client import (
    applications_service_pb2,
    auth_service_pb2,
    events_service_pb2,
    health_checks_service_pb2,
    partitions_service_pb2,
    results_service_pb2,
    sessions_service_pb2,
    submitter_service_pb2,
    tasks_service_pb2,
    versions_service_pb2,
)
from armonik.protogen.client.applications_service_pb2_grpc import ApplicationsStub
from armonik.protogen.client.partitions_service_pb2_grpc import PartitionsStub
from armonik.protogen.client.results_service_pb2_grpc import ResultsStub
from armonik.protogen.client.sessions_service_pb2_grpc import SessionsStub
from armonik.protogen.client.tasks_service_pb2_grpc import TasksStub
from armonik.protogen.common import (
    applications_common_pb2,
    filters_common_pb2,
    objects_pb2,
    partitions_common_pb2,
    results_common_pb2,
    sessions_common_pb2,
    tasks_common_pb2,
    tasks_fields_pb2,
    tasks_filters_pb2,
)
from google.protobuf import symbol_database
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from tests.conformance.conftest import OPTIONS
from tests.conformance.support import code_of

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
FP = grpc.StatusCode.FAILED_PRECONDITION


# -- every rpc, with an empty request ---------------------------------------------------------

SERVICE_MODULES = [
    sessions_service_pb2,
    tasks_service_pb2,
    results_service_pb2,
    events_service_pb2,
    partitions_service_pb2,
    applications_service_pb2,
    versions_service_pb2,
    health_checks_service_pb2,
    auth_service_pb2,
    submitter_service_pb2,
]
METHODS = [
    method
    for module in SERVICE_MODULES
    for service in module.DESCRIPTOR.services_by_name.values()
    for method in service.methods
]


@pytest.mark.parametrize(
    "method", METHODS, ids=lambda m: m.full_name.rsplit(".", 2)[-2] + "." + m.name
)
def test_empty_request_never_fails_internally(channel: grpc.Channel, method: Any) -> None:
    """Default-valued requests (empty ids, no options...) get a deliberate answer."""
    database = symbol_database.Default()
    request_type = database.GetSymbol(method.input_type.full_name)
    response_type = database.GetSymbol(method.output_type.full_name)
    path = f"/{method.containing_service.full_name}/{method.name}"
    serialize, deserialize = request_type.SerializeToString, response_type.FromString
    code = grpc.StatusCode.OK
    try:
        if method.client_streaming and method.server_streaming:
            call = channel.stream_stream(path, serialize, deserialize)
            list(call(iter([request_type()]), timeout=1.0))
        elif method.client_streaming:
            channel.stream_unary(path, serialize, deserialize)(iter([request_type()]), timeout=5)
        elif method.server_streaming:
            # A valid stream may stay open (events): a deadline is then the expected end.
            list(channel.unary_stream(path, serialize, deserialize)(request_type(), timeout=1.0))
        else:
            channel.unary_unary(path, serialize, deserialize)(request_type(), timeout=5)
    except grpc.RpcError as error:
        code = error.code()
    assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), code


# -- empty ids ----------------------------------------------------------------------------------


def test_empty_ids_are_invalid(
    sessions: ArmoniKSessions,
    tasks: ArmoniKTasks,
    results: ArmoniKResults,
    partitions_stub: PartitionsStub,
    session_id: str,
) -> None:
    calls: list[Callable[[], object]] = [
        lambda: sessions.get_session(""),
        lambda: sessions.cancel_session(""),
        lambda: sessions.pause_session(""),
        lambda: sessions.resume_session(""),
        lambda: sessions.close_session(""),
        lambda: sessions.purge_session(""),
        lambda: sessions.delete_session(""),
        lambda: sessions.stop_submission_session("", True, True),
        lambda: tasks.get_task(""),
        lambda: tasks.cancel_tasks([""]),
        lambda: tasks.get_result_ids([""]),
        lambda: results.get_result(""),
        lambda: results.create_results_metadata(["r"], ""),
        lambda: results.create_results({"r": b"x"}, ""),
        lambda: results.upload_result_data("", session_id, b"x"),
        lambda: results.download_result_data("", session_id),
        lambda: results.get_owner_task_id([""], session_id),
        lambda: results.delete_result_data([""], session_id),
        lambda: results.import_data(session_id, [("", b"x")]),
        lambda: partitions_stub.GetPartition(partitions_common_pb2.GetPartitionRequest(id="")),
    ]
    codes = {}
    for index, call in enumerate(calls):
        try:
            codes[index] = code_of(call)
        except AssertionError:
            codes[index] = grpc.StatusCode.OK
    assert {i: c for i, c in codes.items() if c != INVALID} == {}


@pytest.fixture
def partitions_stub(channel: grpc.Channel) -> PartitionsStub:
    return PartitionsStub(channel)


# -- task options -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        TaskOptions(timedelta(seconds=1), priority=0, max_retries=1),
        TaskOptions(timedelta(seconds=1), priority=100, max_retries=1),
        TaskOptions(timedelta(seconds=1), priority=-1, max_retries=1),
        TaskOptions(timedelta(seconds=1), priority=1, max_retries=0),
        TaskOptions(timedelta(0), priority=1, max_retries=1),
        TaskOptions(timedelta(seconds=-5), priority=1, max_retries=1),
    ],
    ids=["priority0", "priority100", "priority-1", "retries0", "no-duration", "negative-duration"],
)
def test_bad_session_options_are_invalid(sessions: ArmoniKSessions, options: TaskOptions) -> None:
    assert code_of(lambda: sessions.create_session(options)) == INVALID


def test_session_without_options_is_invalid(sessions_stub: SessionsStub) -> None:
    request = sessions_common_pb2.CreateSessionRequest(partition_ids=["default"])
    assert code_of(lambda: sessions_stub.CreateSession(request)) == INVALID


@pytest.mark.parametrize(
    "options",
    [
        TaskOptions(timedelta(seconds=1), priority=100, max_retries=1),
        TaskOptions(timedelta(seconds=1), priority=-3, max_retries=1),
        TaskOptions(timedelta(seconds=1), priority=1, max_retries=-1),
        TaskOptions(timedelta(seconds=-1), priority=1, max_retries=1),
    ],
    ids=["priority100", "priority-3", "retries-1", "negative-duration"],
)
def test_bad_task_options_are_invalid(
    results: ArmoniKResults, tasks: ArmoniKTasks, session_id: str, options: TaskOptions
) -> None:
    created = results.create_results_metadata(["payload", "out"], session_id)
    definition = TaskDefinition(
        payload_id=created["payload"].result_id,
        expected_output_ids=[created["out"].result_id],
        options=options,
    )
    assert code_of(lambda: tasks.submit_tasks(session_id, [definition])) == INVALID
    assert (
        code_of(
            lambda: tasks.submit_tasks(
                session_id,
                [TaskDefinition(created["payload"].result_id, [created["out"].result_id])],
                default_task_options=options,
            )
        )
        == INVALID
    )
    assert results.get_result(created["out"].result_id).owner_task_id == ""


def test_zero_task_options_inherit_the_session_defaults(
    results: ArmoniKResults, tasks: ArmoniKTasks, session_id: str
) -> None:
    """At submission, proto3 zeros mean "not set": the session's value applies."""
    created = results.create_results_metadata(["payload", "out"], session_id)
    zeros = TaskOptions(timedelta(0), priority=0, max_retries=0, options={"k": "v"})
    (task,) = tasks.submit_tasks(
        session_id,
        [TaskDefinition(created["payload"].result_id, [created["out"].result_id], options=zeros)],
    )
    options = tasks.get_task(task.id).options
    assert (options.priority, options.max_retries) == (OPTIONS.priority, OPTIONS.max_retries)
    assert options.max_duration == OPTIONS.max_duration
    assert options.options == {"k": "v"}


def test_malformed_submissions_are_invalid(
    tasks_stub: TasksStub, results: ArmoniKResults, session_id: str
) -> None:
    created = results.create_results_metadata(["payload", "out"], session_id)
    payload, out = created["payload"].result_id, created["out"].result_id
    creation = tasks_common_pb2.SubmitTasksRequest.TaskCreation

    def submit(*creations: Any) -> object:
        return tasks_stub.SubmitTasks(
            tasks_common_pb2.SubmitTasksRequest(session_id=session_id, task_creations=creations)
        )

    assert code_of(lambda: submit()) == INVALID  # no task at all
    # (No expected output is valid, as in ArmoniK: test_tasks.py.)
    assert code_of(lambda: submit(creation(expected_output_keys=[out]))) == INVALID  # no payload
    assert (
        code_of(lambda: submit(creation(payload_id=payload, expected_output_keys=[out, out])))
        == INVALID
    )
    assert code_of(
        lambda: submit(
            creation(payload_id=payload, expected_output_keys=[out], data_dependencies=[""])
        )
    ) in (INVALID, NOT_FOUND)


def test_unknown_partition(
    sessions: ArmoniKSessions, results: ArmoniKResults, tasks: ArmoniKTasks, session_id: str
) -> None:
    assert code_of(lambda: sessions.create_session(OPTIONS, partition_ids=["ghost"])) == NOT_FOUND
    options = TaskOptions(timedelta(seconds=1), priority=1, max_retries=1, partition_id="ghost")
    created = results.create_results_metadata(["payload", "out"], session_id)
    definition = TaskDefinition(
        created["payload"].result_id, [created["out"].result_id], options=options
    )
    assert code_of(lambda: tasks.submit_tasks(session_id, [definition])) == INVALID


# -- paging, filters and sorts ------------------------------------------------------------------


@pytest.mark.parametrize(("page", "size"), [(-1, 10), (0, -1)], ids=["page", "page_size"])
def test_negative_page_or_page_size_is_invalid(
    sessions: ArmoniKSessions,
    tasks: ArmoniKTasks,
    results: ArmoniKResults,
    partitions_stub: PartitionsStub,
    applications_stub: ApplicationsStub,
    page: int,
    size: int,
) -> None:
    calls: list[Callable[[], object]] = [
        lambda: sessions.list_sessions(page=page, page_size=size),
        lambda: tasks.list_tasks(page=page, page_size=size),
        lambda: tasks.list_tasks(page=page, page_size=size, detailed=False),
        lambda: results.list_results(page=page, page_size=size),
        lambda: partitions_stub.ListPartitions(
            partitions_common_pb2.ListPartitionsRequest(page=page, page_size=size)
        ),
        lambda: applications_stub.ListApplications(
            applications_common_pb2.ListApplicationsRequest(page=page, page_size=size)
        ),
    ]
    assert [code_of(call) for call in calls] == [INVALID] * len(calls)


def task_field_filter(**condition: Any) -> tasks_filters_pb2.Filters:
    """A one-condition tasks filter on the STATUS field (or the given `field`)."""
    field = condition.pop(
        "field",
        tasks_fields_pb2.TaskField(
            task_summary_field=tasks_fields_pb2.TaskSummaryField(
                field=tasks_fields_pb2.TASK_SUMMARY_ENUM_FIELD_STATUS
            )
        ),
    )
    return tasks_filters_pb2.Filters(
        **{
            "or": [
                tasks_filters_pb2.FiltersAnd(
                    **{"and": [tasks_filters_pb2.FilterField(field=field, **condition)]}
                )
            ]
        }
    )


def summary_field(number: int) -> tasks_fields_pb2.TaskField:
    return tasks_fields_pb2.TaskField(
        task_summary_field=tasks_fields_pb2.TaskSummaryField(field=number)
    )


TASK_ID = tasks_fields_pb2.TASK_SUMMARY_ENUM_FIELD_TASK_ID

BAD_TASK_FILTERS = {
    "unknown status": task_field_filter(filter_status=tasks_filters_pb2.FilterStatus(value=99)),
    "unknown status operator": task_field_filter(
        filter_status=tasks_filters_pb2.FilterStatus(value=2, operator=7)
    ),
    "unknown field": task_field_filter(
        field=summary_field(99), filter_string=filters_common_pb2.FilterString(value="x")
    ),
    "unset field": task_field_filter(
        field=tasks_fields_pb2.TaskField(), filter_string=filters_common_pb2.FilterString()
    ),
    "no condition": task_field_filter(field=summary_field(TASK_ID)),
    "date on a string": task_field_filter(
        field=summary_field(TASK_ID),
        filter_date=filters_common_pb2.FilterDate(value=Timestamp(seconds=1)),
    ),
    "string on a status": task_field_filter(
        filter_string=filters_common_pb2.FilterString(value="SUBMITTED")
    ),
    "number on a date": task_field_filter(
        field=summary_field(tasks_fields_pb2.TASK_SUMMARY_ENUM_FIELD_CREATED_AT),
        filter_number=filters_common_pb2.FilterNumber(value=3),
    ),
    "duration on a string": task_field_filter(
        field=summary_field(TASK_ID),
        filter_duration=filters_common_pb2.FilterDuration(value=Duration(seconds=1)),
    ),
    "unknown string operator": task_field_filter(
        field=summary_field(TASK_ID),
        filter_string=filters_common_pb2.FilterString(value="x", operator=42),
    ),
    "empty generic key": task_field_filter(
        field=tasks_fields_pb2.TaskField(
            task_option_generic_field=tasks_fields_pb2.TaskOptionGenericField(field="")
        ),
        filter_string=filters_common_pb2.FilterString(value="x"),
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_TASK_FILTERS))
def test_bad_task_filters_are_invalid(tasks_stub: TasksStub, name: str) -> None:
    filters = BAD_TASK_FILTERS[name]
    sort = tasks_common_pb2.ListTasksRequest.Sort(field=summary_field(TASK_ID), direction=1)
    request = tasks_common_pb2.ListTasksRequest(page_size=10, filters=filters, sort=sort)
    assert code_of(lambda: tasks_stub.ListTasks(request)) == INVALID
    assert code_of(lambda: tasks_stub.ListTasksDetailed(request)) == INVALID
    count = tasks_common_pb2.CountTasksByStatusRequest(filters=filters)
    assert code_of(lambda: tasks_stub.CountTasksByStatus(count)) == INVALID


def test_bad_sorts_are_invalid(tasks_stub: TasksStub) -> None:
    for sort in (
        tasks_common_pb2.ListTasksRequest.Sort(field=summary_field(TASK_ID), direction=0),
        tasks_common_pb2.ListTasksRequest.Sort(field=summary_field(TASK_ID), direction=9),
        tasks_common_pb2.ListTasksRequest.Sort(field=summary_field(99), direction=1),
        tasks_common_pb2.ListTasksRequest.Sort(field=tasks_fields_pb2.TaskField(), direction=1),
    ):
        request = tasks_common_pb2.ListTasksRequest(page_size=10, sort=sort)
        assert code_of(lambda r=request: tasks_stub.ListTasks(r)) == INVALID


def test_client_dsl_misuse_is_invalid(
    sessions: ArmoniKSessions, results: ArmoniKResults, tasks: ArmoniKTasks
) -> None:
    assert code_of(lambda: sessions.list_sessions(Session.status == 42)) == INVALID
    assert code_of(lambda: tasks.list_tasks(Task.status == 77)) == INVALID
    earlier = datetime(2020, 1, 1, tzinfo=UTC)
    assert tasks.list_tasks(Task.created_at < earlier)[0] == 0  # a valid date filter


# -- streams --------------------------------------------------------------------------------------


def upload(stub: ResultsStub, messages: list[results_common_pb2.UploadResultDataRequest]) -> Any:
    return stub.UploadResultData(iter(messages), timeout=5)


def test_upload_stream_must_start_with_the_id(
    results_stub: ResultsStub, results: ArmoniKResults, session_id: str
) -> None:
    result_id = results.create_results_metadata(["r"], session_id)["r"].result_id
    identifier = results_common_pb2.UploadResultDataRequest(
        id=results_common_pb2.UploadResultDataRequest.ResultIdentifier(
            session_id=session_id, result_id=result_id
        )
    )
    chunk = results_common_pb2.UploadResultDataRequest(data_chunk=b"abc")
    assert code_of(lambda: upload(results_stub, [chunk, identifier])) == INVALID
    assert code_of(lambda: upload(results_stub, [identifier, chunk, identifier])) == INVALID
    assert code_of(lambda: upload(results_stub, [])) == FP
    # None of this stored anything.
    assert results.get_result(result_id).status == ResultStatus.CREATED
    assert upload(results_stub, [identifier, chunk]).result.size == 3


def test_upload_to_a_result_of_another_session_is_not_found(
    results: ArmoniKResults, sessions: ArmoniKSessions, session_id: str
) -> None:
    other = sessions.create_session(OPTIONS)
    foreign = results.create_results_metadata(["f"], other)["f"].result_id
    assert code_of(lambda: results.upload_result_data(foreign, session_id, b"x")) == NOT_FOUND


@pytest.mark.parametrize(
    "opaque_id",
    [b"", b"\xff\xfe", b"with\x00nul", b"x" * 2000],
    ids=["empty", "not-ascii", "nul", "too-long"],
)
def test_import_malformed_opaque_id_is_invalid(
    results: ArmoniKResults, session_id: str, opaque_id: bytes
) -> None:
    target = results.create_results_metadata(["t"], session_id)["t"].result_id
    assert code_of(lambda: results.import_data(session_id, [(target, opaque_id)])) == INVALID
    # Well formed but absent: not found, whatever the object storage.
    assert code_of(lambda: results.import_data(session_id, [(target, b"../etc/passwd")])) == (
        NOT_FOUND
    )
    assert results.get_result(target).status == ResultStatus.CREATED


def test_requests_with_unset_objects_are_not_internal(
    sessions_stub: SessionsStub, results_stub: ResultsStub, session_id: str
) -> None:
    empty = objects_pb2.Empty()
    assert results_stub.GetServiceConfiguration(empty).data_chunk_max_size > 0
    # A list request without filters nor sort is served with defaults.
    reply = sessions_stub.ListSessions(sessions_common_pb2.ListSessionsRequest(page_size=1))
    assert reply.total >= 1 and len(reply.sessions) == 1


def test_text_with_nul_characters(
    sessions: ArmoniKSessions,
    results: ArmoniKResults,
    tasks: ArmoniKTasks,
    tasks_stub: TasksStub,
    session_id: str,
) -> None:
    """NUL cannot be stored by every database (PostgreSQL): refused the same way by all."""
    assert code_of(lambda: sessions.get_session("a\0b")) == NOT_FOUND
    assert code_of(lambda: tasks.get_task("a\0b")) == NOT_FOUND
    assert code_of(lambda: results.download_result_data("a\0b", session_id)) == NOT_FOUND
    assert code_of(lambda: results.create_results_metadata(["x\0y"], session_id)) == INVALID
    with_nul = TaskOptions(timedelta(seconds=1), priority=1, max_retries=1, options={"k": "\0"})
    assert code_of(lambda: sessions.create_session(with_nul)) == INVALID
    assert code_of(lambda: tasks.list_tasks(Task.session_id == "a\0")) == INVALID
    assert code_of(lambda: tasks.count_tasks_by_status(Task.options["k"] == "\0")) == INVALID
    sort = tasks_common_pb2.ListTasksRequest.Sort(
        field=tasks_fields_pb2.TaskField(
            task_option_generic_field=tasks_fields_pb2.TaskOptionGenericField(field="k\0")
        ),
        direction=1,
    )
    request = tasks_common_pb2.ListTasksRequest(page_size=5, sort=sort)
    assert code_of(lambda: tasks_stub.ListTasks(request)) == INVALID
    # A key with NUL in a filter matches nothing (no stored key holds NUL).
    assert tasks.list_tasks(Task.options["k\0"] == "x")[0] == 0
