"""Wire filters and sorts, built with the armonik SDK's own filter DSL, to domain filters."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from armonik.common import Partition, Result, ResultStatus, Session, SessionStatus, Task, TaskStatus
from armonik.common.objects import Application
from armonik.protogen.common import applications_common_pb2 as app_c
from armonik.protogen.common import filters_common_pb2 as fc
from armonik.protogen.common import partitions_common_pb2 as part_c
from armonik.protogen.common import results_common_pb2 as res_c
from armonik.protogen.common import results_fields_pb2 as res_f
from armonik.protogen.common import results_filters_pb2 as res_flt
from armonik.protogen.common import sessions_common_pb2 as ses_c
from armonik.protogen.common import sessions_fields_pb2 as ses_f
from armonik.protogen.common import sessions_filters_pb2 as ses_flt
from armonik.protogen.common import sort_direction_pb2 as sd
from armonik.protogen.common import tasks_common_pb2 as task_c
from armonik.protogen.common import tasks_fields_pb2 as task_f
from armonik.protogen.common import tasks_filters_pb2 as task_flt
from google.protobuf.timestamp_pb2 import Timestamp

from pyarmonik.control.filters import (
    applications_filter,
    applications_sort,
    events_results_filter,
    events_tasks_filter,
    partitions_filter,
    partitions_sort,
    results_filter,
    results_sort,
    sessions_filter,
    sessions_sort,
    tasks_filter,
    tasks_sort,
    validate_paging,
)
from pyarmonik.domain.errors import InvalidArgument
from pyarmonik.domain.filters import MATCH_ALL, Condition, Kind, Op, Sort

T0 = datetime(2024, 1, 1, tzinfo=UTC)
T0_S = 1704067200.0
ASC, DESC = sd.SORT_DIRECTION_ASC, sd.SORT_DIRECTION_DESC
Converter = Callable[[Any], Any]


def s(column: str, op: Op, value: str) -> Condition:
    return Condition(column, Kind.STRING, op, value)


def d(column: str, op: Op, value: float = T0_S) -> Condition:
    return Condition(column, Kind.DATE, op, value)


def u(column: str, op: Op, value: float) -> Condition:
    return Condition(column, Kind.DURATION, op, value)


def n(column: str, op: Op, value: int) -> Condition:
    return Condition(column, Kind.NUMBER, op, value)


def b(column: str, value: bool) -> Condition:
    return Condition(column, Kind.BOOLEAN, Op.EQ, value)


def status(op: Op, value: int) -> Condition:
    return Condition("status", Kind.STATUS, op, value)


def option(op: Op, value: str, key: str) -> Condition:
    return Condition("opt_options", Kind.OPTION, op, value, key)


def array(column: str, op: Op, value: str) -> Condition:
    return Condition(column, Kind.ARRAY, op, value)


# Options are the same columns for tasks and sessions: (DSL entity, expected conditions).
def option_cases(entity: Any) -> list[tuple[Any, Condition]]:
    return [
        (entity.options.max_duration >= timedelta(minutes=1), u("opt_max_duration", Op.GE, 60.0)),
        (entity.options.max_retries == 3, n("opt_max_retries", Op.EQ, 3)),
        (entity.options.priority < 2, n("opt_priority", Op.LT, 2)),
        (entity.options.partition_id == "p", s("opt_partition_id", Op.EQ, "p")),
        (entity.options.application_name == "a", s("opt_application_name", Op.EQ, "a")),
        (entity.options.application_version != "v", s("opt_application_version", Op.NE, "v")),
        (
            entity.options.application_namespace.startswith("n"),
            s("opt_application_namespace", Op.STARTS_WITH, "n"),
        ),
        (
            entity.options.application_service.endswith("s"),
            s("opt_application_service", Op.ENDS_WITH, "s"),
        ),
        (entity.options.engine_type.contains("e"), s("opt_engine_type", Op.CONTAINS, "e")),
        (entity.options["k'\"?"] == "v", option(Op.EQ, "v", "k'\"?")),
        (~entity.options["k"].contains("x"), option(Op.NOT_CONTAINS, "x", "k")),
    ]


TASK_CASES = [
    (Task.id == "t", s("task_id", Op.EQ, "t")),
    (Task.session_id != "s", s("session_id", Op.NE, "s")),
    (Task.owner_pod_id.contains("p"), s("owner_pod_id", Op.CONTAINS, "p")),
    (~Task.initial_task_id.contains("i"), s("initial_task_id", Op.NOT_CONTAINS, "i")),
    (Task.created_by.startswith("c"), s("created_by", Op.STARTS_WITH, "c")),
    (Task.pod_hostname.endswith("h"), s("pod_hostname", Op.ENDS_WITH, "h")),
    (Task.payload_id == "p", s("payload_id", Op.EQ, "p")),
    (Task.output.error.contains("boom"), s("error", Op.CONTAINS, "boom")),
    (Task.status == TaskStatus.COMPLETED, status(Op.EQ, 4)),
    (Task.status != TaskStatus.ERROR, status(Op.NE, 5)),
    (Task.created_at < T0, d("created_at", Op.LT)),
    (Task.submitted_at <= T0, d("submitted_at", Op.LE)),
    (Task.started_at >= T0, d("started_at", Op.GE)),
    (Task.ended_at > T0, d("ended_at", Op.GT)),
    (Task.pod_ttl == T0, d("pod_ttl", Op.EQ)),
    (Task.received_at != T0, d("received_at", Op.NE)),
    (Task.acquired_at == T0, d("acquired_at", Op.EQ)),
    (Task.processed_at == T0, d("processed_at", Op.EQ)),
    (Task.fetched_at == T0, d("fetched_at", Op.EQ)),
    (Task.created_at == T0 + timedelta(microseconds=250_000), d("created_at", Op.EQ, T0_S + 0.25)),
    (
        Task.creation_to_end_duration > timedelta(seconds=1.5),
        u("creation_to_end_duration", Op.GT, 1.5),
    ),
    (
        Task.processing_to_end_duration < timedelta(seconds=2),
        u("processing_to_end_duration", Op.LT, 2.0),
    ),
    (
        Task.received_to_end_duration != timedelta(0),
        u("received_to_end_duration", Op.NE, 0.0),
    ),
    *option_cases(Task),
]
SESSION_CASES = [
    (Session.session_id == "s", s("session_id", Op.EQ, "s")),
    (Session.status == SessionStatus.CLOSED, status(Op.EQ, 4)),
    (Session.client_submission == True, b("client_submission", True)),  # noqa: E712
    (Session.worker_submission == False, b("worker_submission", False)),  # noqa: E712
    (Session.partition_ids.contains("p"), array("partition_ids", Op.CONTAINS, "p")),
    (~Session.partition_ids.contains("p"), array("partition_ids", Op.NOT_CONTAINS, "p")),
    (Session.created_at < T0, d("created_at", Op.LT)),
    (Session.cancelled_at == T0, d("cancelled_at", Op.EQ)),
    (Session.closed_at == T0, d("closed_at", Op.EQ)),
    (Session.purged_at == T0, d("purged_at", Op.EQ)),
    (Session.deleted_at == T0, d("deleted_at", Op.EQ)),
    (Session.duration >= timedelta(hours=1), u("duration", Op.GE, 3600.0)),
    *option_cases(Session),
]
RESULT_CASES = [
    (Result.session_id == "s", s("session_id", Op.EQ, "s")),
    (Result.name.startswith("out"), s("name", Op.STARTS_WITH, "out")),
    (Result.owner_task_id == "t", s("owner_task_id", Op.EQ, "t")),
    (Result.status == ResultStatus.COMPLETED, status(Op.EQ, 2)),
    (Result.status != ResultStatus.NOTFOUND, status(Op.NE, 127)),
    (Result.created_at > T0, d("created_at", Op.GT)),
    (Result.completed_at <= T0, d("completed_at", Op.LE)),
    (Result.result_id == "r", s("result_id", Op.EQ, "r")),
    (Result.size >= 1024, n("size", Op.GE, 1024)),
    (Result.created_by == "t", s("created_by", Op.EQ, "t")),
]
PARTITION_CASES = [
    (Partition.id == "p", s("partition_id", Op.EQ, "p")),
    (Partition.parent_partition_ids.contains("q"), array("parent_partition_ids", Op.CONTAINS, "q")),
    (Partition.pod_reserved == 1, n("pod_reserved", Op.EQ, 1)),
    (Partition.pod_max > 2, n("pod_max", Op.GT, 2)),
    (Partition.preemption_percentage <= 50, n("preemption_percentage", Op.LE, 50)),
    (Partition.priority != 3, n("priority", Op.NE, 3)),
]
APPLICATION_CASES = [
    (Application.name == "a", s("opt_application_name", Op.EQ, "a")),
    (Application.version.startswith("1."), s("opt_application_version", Op.STARTS_WITH, "1.")),
    (Application.namespace != "ns", s("opt_application_namespace", Op.NE, "ns")),
    (Application.service.endswith("svc"), s("opt_application_service", Op.ENDS_WITH, "svc")),
]
ALL_CASES = [
    *((tasks_filter, *case) for case in TASK_CASES),
    *((sessions_filter, *case) for case in SESSION_CASES),
    *((results_filter, *case) for case in RESULT_CASES),
    *((partitions_filter, *case) for case in PARTITION_CASES),
    *((applications_filter, *case) for case in APPLICATION_CASES),
]


@pytest.mark.parametrize(("convert", "dsl", "expected"), ALL_CASES)
def test_each_field_and_operator_converts(
    convert: Converter, dsl: Any, expected: Condition
) -> None:
    assert convert(dsl.to_message()) == ((expected,),)


def test_compound_filter_keeps_its_normal_form() -> None:
    dsl = ((Task.status == TaskStatus.COMPLETED) & (Task.options["k"] == "v")) | Task.id.startswith(
        "ab"
    )
    assert tasks_filter(dsl.to_message()) == (
        (status(Op.EQ, 4), option(Op.EQ, "v", "k")),
        (s("task_id", Op.STARTS_WITH, "ab"),),
    )
    # The client distributes AND over OR; the server receives the expanded form.
    dsl = ((Result.name == "a") | (Result.name == "b")) & (Result.session_id == "s")
    assert results_filter(dsl.to_message()) == (
        (s("name", Op.EQ, "a"), s("session_id", Op.EQ, "s")),
        (s("name", Op.EQ, "b"), s("session_id", Op.EQ, "s")),
    )


def test_empty_filters_match_everything() -> None:
    assert tasks_filter(task_flt.Filters()) == MATCH_ALL
    assert results_filter(res_flt.Filters()) == MATCH_ALL


def test_manual_deletion_sorts_but_takes_no_string_condition() -> None:
    field = res_f.ResultField(
        result_raw_field=res_f.ResultRawField(field=res_f.RESULT_RAW_ENUM_FIELD_MANUAL_DELETION)
    )
    sort = res_c.ListResultsRequest.Sort(field=field, direction=ASC)
    assert results_sort(sort) == Sort("manual_deletion")
    message = result_filters(res_flt.FilterField(field=field, filter_string=fc.FilterString()))
    with pytest.raises(InvalidArgument):
        results_filter(message)  # a boolean column; results.FilterField has no filter_boolean


def test_session_option_enum_numbers_equal_task_option_enum_numbers() -> None:
    # control/filters.py uses one table for both enums.
    assert dict(ses_f.TaskOptionEnumField.items()) == dict(task_f.TaskOptionEnumField.items())


# ---------------------------------------------------------------- invalid filters


def task_filters(*fields: Any) -> Any:
    return task_flt.Filters(**{"or": [task_flt.FiltersAnd(**{"and": list(fields)})]})


def result_filters(*fields: Any) -> Any:
    return res_flt.Filters(**{"or": [res_flt.FiltersAnd(**{"and": list(fields)})]})


def session_filters(*fields: Any) -> Any:
    return ses_flt.Filters(**{"or": [ses_flt.FiltersAnd(**{"and": list(fields)})]})


def task_summary(number: int) -> Any:
    return task_f.TaskField(task_summary_field=task_f.TaskSummaryField(field=number))


TASK_ID = task_summary(task_f.TASK_SUMMARY_ENUM_FIELD_TASK_ID)
STATUS = task_summary(task_f.TASK_SUMMARY_ENUM_FIELD_STATUS)
STRING_X = fc.FilterString(value="x")

INVALID: list[tuple[Converter, Any]] = [
    # a condition foreign to the column's type
    (tasks_filter, task_filters(task_flt.FilterField(field=TASK_ID, filter_date=fc.FilterDate()))),
    (tasks_filter, task_filters(task_flt.FilterField(field=STATUS, filter_string=STRING_X))),
    (
        tasks_filter,
        task_filters(
            task_flt.FilterField(
                field=TASK_ID, filter_date=fc.FilterDate(value=Timestamp(seconds=1), operator=2)
            )
        ),
    ),
    # nothing set
    (tasks_filter, task_filters(task_flt.FilterField(filter_string=STRING_X))),
    (tasks_filter, task_filters(task_flt.FilterField(field=TASK_ID))),
    (
        tasks_filter,
        task_filters(task_flt.FilterField(field=task_summary(0), filter_string=STRING_X)),
    ),
    # unknown enum values
    (
        tasks_filter,
        task_filters(task_flt.FilterField(field=task_summary(99), filter_string=STRING_X)),
    ),
    (
        tasks_filter,
        task_filters(
            task_flt.FilterField(
                field=TASK_ID, filter_string=fc.FilterString(value="x", operator=9)
            )
        ),
    ),
    (
        tasks_filter,
        task_filters(
            task_flt.FilterField(field=STATUS, filter_status=task_flt.FilterStatus(value=42))
        ),
    ),
    (
        results_filter,
        result_filters(
            res_flt.FilterField(
                field=res_f.ResultField(
                    result_raw_field=res_f.ResultRawField(field=res_f.RESULT_RAW_ENUM_FIELD_STATUS)
                ),
                filter_status=res_flt.FilterStatus(value=5),
            )
        ),
    ),
    # fields that are not filterable
    (
        sessions_filter,
        session_filters(
            ses_flt.FilterField(
                field=ses_f.SessionField(
                    session_raw_field=ses_f.SessionRawField(
                        field=ses_f.SESSION_RAW_ENUM_FIELD_OPTIONS
                    )
                ),
                filter_string=STRING_X,
            )
        ),
    ),
    (
        results_filter,
        result_filters(
            res_flt.FilterField(
                field=res_f.ResultField(
                    result_raw_field=res_f.ResultRawField(
                        field=res_f.RESULT_RAW_ENUM_FIELD_OPAQUE_ID
                    )
                ),
                filter_string=STRING_X,
            )
        ),
    ),
    (tasks_filter, (Task.options[""] == "v").to_message()),
    # the Events API allows fewer fields
    (events_tasks_filter, (Task.status == TaskStatus.COMPLETED).to_message()),
    (events_tasks_filter, (Task.created_at > T0).to_message()),
    (events_tasks_filter, (Task.created_by == "t").to_message()),
    (events_results_filter, (Result.status == ResultStatus.COMPLETED).to_message()),
    (events_results_filter, (Result.created_by == "t").to_message()),
    (events_results_filter, (Result.size > 1).to_message()),
]


@pytest.mark.parametrize(("convert", "message"), INVALID)
def test_invalid_filters_are_invalid_arguments(convert: Converter, message: Any) -> None:
    with pytest.raises(InvalidArgument):
        convert(message)


def test_events_filters_accept_their_fields() -> None:
    dsl = (
        (Task.id == "t")
        & (Task.session_id == "s")
        & (Task.payload_id == "p")
        & (Task.owner_pod_id == "o")
        & (Task.initial_task_id == "i")
        & (Task.pod_hostname == "h")
        & (Task.options.priority == 1)
        & (Task.options["k"] == "v")
    )
    assert len(events_tasks_filter(dsl.to_message())[0]) == 8
    dsl = (
        (Result.result_id == "r")
        | (Result.session_id == "s")
        | (Result.name == "n")
        | (Result.owner_task_id == "t")
    )
    assert len(events_results_filter(dsl.to_message())) == 4


# ---------------------------------------------------------------- sorts and paging


def test_sorts_convert() -> None:
    assert tasks_sort(task_c.ListTasksRequest.Sort(field=Task.id.field, direction=ASC)) == Sort(
        "task_id"
    )
    assert tasks_sort(
        task_c.ListTasksRequest.Sort(field=Task.options["k"].field, direction=DESC)
    ) == Sort("opt_options", True, "k")
    assert tasks_sort(
        task_c.ListTasksRequest.Sort(field=Task.options.priority.field, direction=DESC)
    ) == Sort("opt_priority", True)
    assert sessions_sort(
        ses_c.ListSessionsRequest.Sort(field=Session.status.field, direction=DESC)
    ) == Sort("status", True)
    assert results_sort(
        res_c.ListResultsRequest.Sort(field=Result.name.field, direction=ASC)
    ) == Sort("name")
    assert partitions_sort(
        part_c.ListPartitionsRequest.Sort(field=Partition.priority.field, direction=DESC)
    ) == Sort("priority", True)
    fields = [Application.name.field, Application.version.field]
    assert applications_sort(app_c.ListApplicationsRequest.Sort(fields=fields, direction=DESC)) == [
        Sort("opt_application_name", True),
        Sort("opt_application_version", True),
    ]


@pytest.mark.parametrize(
    ("convert", "sort"),
    [
        (tasks_sort, task_c.ListTasksRequest.Sort(direction=ASC)),  # no field
        (tasks_sort, task_c.ListTasksRequest.Sort(field=Task.id.field)),  # UNSPECIFIED direction
        (tasks_sort, task_c.ListTasksRequest.Sort(field=Task.id.field, direction=7)),
        (tasks_sort, task_c.ListTasksRequest.Sort(field=task_summary(0), direction=ASC)),
        (
            sessions_sort,
            ses_c.ListSessionsRequest.Sort(
                field=ses_f.SessionField(
                    session_raw_field=ses_f.SessionRawField(
                        field=ses_f.SESSION_RAW_ENUM_FIELD_OPTIONS
                    )
                ),
                direction=ASC,
            ),
        ),
        (applications_sort, app_c.ListApplicationsRequest.Sort(direction=ASC)),  # no field
        (
            applications_sort,
            app_c.ListApplicationsRequest.Sort(fields=[Application.name.field]),
        ),
    ],
)
def test_invalid_sorts_are_invalid_arguments(convert: Converter, sort: Any) -> None:
    with pytest.raises(InvalidArgument):
        convert(sort)


def test_paging() -> None:
    validate_paging(0, 0)
    validate_paging(3, 100)
    for page, page_size in ((-1, 10), (0, -1)):
        with pytest.raises(InvalidArgument):
            validate_paging(page, page_size)
