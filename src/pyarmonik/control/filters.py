"""Wire filters and sorts (reference §6) to the domain model of pyarmonik.domain.filters.

Each entity is described by tables: which member of its `<Entity>Field` oneof selects which
row column, and of which kind. A condition must match the kind of its column (a date
condition on an id is INVALID_ARGUMENT); anything unset, unknown or not filterable is too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import Any

from armonik.protogen.common import applications_common_pb2 as app_c
from armonik.protogen.common import applications_fields_pb2 as app_f
from armonik.protogen.common import applications_filters_pb2 as app_flt
from armonik.protogen.common import filters_common_pb2 as fc
from armonik.protogen.common import partitions_common_pb2 as part_c
from armonik.protogen.common import partitions_fields_pb2 as part_f
from armonik.protogen.common import partitions_filters_pb2 as part_flt
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

from pyarmonik.domain.errors import InvalidArgument
from pyarmonik.domain.filters import (
    OPTIONS_COLUMN,
    Condition,
    Filter,
    Kind,
    Op,
    Sort,
    check_condition_count,
    check_limits,
)
from pyarmonik.domain.statuses import ResultStatus, SessionStatus, TaskStatus

Column = tuple[str, Kind]
Columns = Mapping[int, Column]

# Short names keep the tables below one line per field.
_STR, _NUM, _DATE, _STATUS = Kind.STRING, Kind.NUMBER, Kind.DATE, Kind.STATUS
_BOOL, _DUR, _ARRAY = Kind.BOOLEAN, Kind.DURATION, Kind.ARRAY

_TASK_SUMMARY: Columns = {
    task_f.TASK_SUMMARY_ENUM_FIELD_TASK_ID: ("task_id", _STR),
    task_f.TASK_SUMMARY_ENUM_FIELD_SESSION_ID: ("session_id", _STR),
    task_f.TASK_SUMMARY_ENUM_FIELD_OWNER_POD_ID: ("owner_pod_id", _STR),
    task_f.TASK_SUMMARY_ENUM_FIELD_INITIAL_TASK_ID: ("initial_task_id", _STR),
    task_f.TASK_SUMMARY_ENUM_FIELD_STATUS: ("status", _STATUS),
    task_f.TASK_SUMMARY_ENUM_FIELD_CREATED_AT: ("created_at", _DATE),
    task_f.TASK_SUMMARY_ENUM_FIELD_SUBMITTED_AT: ("submitted_at", _DATE),
    task_f.TASK_SUMMARY_ENUM_FIELD_STARTED_AT: ("started_at", _DATE),
    task_f.TASK_SUMMARY_ENUM_FIELD_ENDED_AT: ("ended_at", _DATE),
    task_f.TASK_SUMMARY_ENUM_FIELD_CREATION_TO_END_DURATION: ("creation_to_end_duration", _DUR),
    task_f.TASK_SUMMARY_ENUM_FIELD_PROCESSING_TO_END_DURATION: ("processing_to_end_duration", _DUR),
    task_f.TASK_SUMMARY_ENUM_FIELD_RECEIVED_TO_END_DURATION: ("received_to_end_duration", _DUR),
    task_f.TASK_SUMMARY_ENUM_FIELD_POD_TTL: ("pod_ttl", _DATE),
    task_f.TASK_SUMMARY_ENUM_FIELD_POD_HOSTNAME: ("pod_hostname", _STR),
    task_f.TASK_SUMMARY_ENUM_FIELD_RECEIVED_AT: ("received_at", _DATE),
    task_f.TASK_SUMMARY_ENUM_FIELD_ACQUIRED_AT: ("acquired_at", _DATE),
    task_f.TASK_SUMMARY_ENUM_FIELD_PROCESSED_AT: ("processed_at", _DATE),
    task_f.TASK_SUMMARY_ENUM_FIELD_ERROR: ("error", _STR),
    task_f.TASK_SUMMARY_ENUM_FIELD_FETCHED_AT: ("fetched_at", _DATE),
    task_f.TASK_SUMMARY_ENUM_FIELD_PAYLOAD_ID: ("payload_id", _STR),
    task_f.TASK_SUMMARY_ENUM_FIELD_CREATED_BY: ("created_by", _STR),
}
# sessions.TaskOptionEnumField is a copy of tasks.TaskOptionEnumField, same numbers.
_TASK_OPTIONS: Columns = {
    task_f.TASK_OPTION_ENUM_FIELD_MAX_DURATION: ("opt_max_duration", _DUR),
    task_f.TASK_OPTION_ENUM_FIELD_MAX_RETRIES: ("opt_max_retries", _NUM),
    task_f.TASK_OPTION_ENUM_FIELD_PRIORITY: ("opt_priority", _NUM),
    task_f.TASK_OPTION_ENUM_FIELD_PARTITION_ID: ("opt_partition_id", _STR),
    task_f.TASK_OPTION_ENUM_FIELD_APPLICATION_NAME: ("opt_application_name", _STR),
    task_f.TASK_OPTION_ENUM_FIELD_APPLICATION_VERSION: ("opt_application_version", _STR),
    task_f.TASK_OPTION_ENUM_FIELD_APPLICATION_NAMESPACE: ("opt_application_namespace", _STR),
    task_f.TASK_OPTION_ENUM_FIELD_APPLICATION_SERVICE: ("opt_application_service", _STR),
    task_f.TASK_OPTION_ENUM_FIELD_ENGINE_TYPE: ("opt_engine_type", _STR),
}
# OPTIONS (the whole options message) is not filterable.
_SESSION_RAW: Columns = {
    ses_f.SESSION_RAW_ENUM_FIELD_SESSION_ID: ("session_id", _STR),
    ses_f.SESSION_RAW_ENUM_FIELD_STATUS: ("status", _STATUS),
    ses_f.SESSION_RAW_ENUM_FIELD_PARTITION_IDS: ("partition_ids", _ARRAY),
    ses_f.SESSION_RAW_ENUM_FIELD_CREATED_AT: ("created_at", _DATE),
    ses_f.SESSION_RAW_ENUM_FIELD_CANCELLED_AT: ("cancelled_at", _DATE),
    ses_f.SESSION_RAW_ENUM_FIELD_CLOSED_AT: ("closed_at", _DATE),
    ses_f.SESSION_RAW_ENUM_FIELD_PURGED_AT: ("purged_at", _DATE),
    ses_f.SESSION_RAW_ENUM_FIELD_DELETED_AT: ("deleted_at", _DATE),
    ses_f.SESSION_RAW_ENUM_FIELD_DURATION: ("duration", _DUR),
    ses_f.SESSION_RAW_ENUM_FIELD_WORKER_SUBMISSION: ("worker_submission", _BOOL),
    ses_f.SESSION_RAW_ENUM_FIELD_CLIENT_SUBMISSION: ("client_submission", _BOOL),
}
# OPAQUE_ID (bytes) is not filterable.
_RESULT_RAW: Columns = {
    res_f.RESULT_RAW_ENUM_FIELD_SESSION_ID: ("session_id", _STR),
    res_f.RESULT_RAW_ENUM_FIELD_NAME: ("name", _STR),
    res_f.RESULT_RAW_ENUM_FIELD_OWNER_TASK_ID: ("owner_task_id", _STR),
    res_f.RESULT_RAW_ENUM_FIELD_STATUS: ("status", _STATUS),
    res_f.RESULT_RAW_ENUM_FIELD_CREATED_AT: ("created_at", _DATE),
    res_f.RESULT_RAW_ENUM_FIELD_COMPLETED_AT: ("completed_at", _DATE),
    res_f.RESULT_RAW_ENUM_FIELD_RESULT_ID: ("result_id", _STR),
    res_f.RESULT_RAW_ENUM_FIELD_SIZE: ("size", _NUM),
    res_f.RESULT_RAW_ENUM_FIELD_CREATED_BY: ("created_by", _STR),
    res_f.RESULT_RAW_ENUM_FIELD_MANUAL_DELETION: ("manual_deletion", _BOOL),
}
_PARTITION_RAW: Columns = {
    part_f.PARTITION_RAW_ENUM_FIELD_ID: ("partition_id", _STR),
    part_f.PARTITION_RAW_ENUM_FIELD_PARENT_PARTITION_IDS: ("parent_partition_ids", _ARRAY),
    part_f.PARTITION_RAW_ENUM_FIELD_POD_RESERVED: ("pod_reserved", _NUM),
    part_f.PARTITION_RAW_ENUM_FIELD_POD_MAX: ("pod_max", _NUM),
    part_f.PARTITION_RAW_ENUM_FIELD_PREEMPTION_PERCENTAGE: ("preemption_percentage", _NUM),
    part_f.PARTITION_RAW_ENUM_FIELD_PRIORITY: ("priority", _NUM),
}
# Applications are listed from the tasks table, hence the task option columns.
_APPLICATION_RAW: Columns = {
    app_f.APPLICATION_RAW_ENUM_FIELD_NAME: ("opt_application_name", _STR),
    app_f.APPLICATION_RAW_ENUM_FIELD_VERSION: ("opt_application_version", _STR),
    app_f.APPLICATION_RAW_ENUM_FIELD_NAMESPACE: ("opt_application_namespace", _STR),
    app_f.APPLICATION_RAW_ENUM_FIELD_SERVICE: ("opt_application_service", _STR),
}


def _only(columns: Columns, *names: str) -> Columns:
    return {number: column for number, column in columns.items() if column[0] in names}


# Events API (reference §5): only these fields may be filtered on.
_EVENT_TASK_SUMMARY = _only(
    _TASK_SUMMARY,
    "task_id",
    "session_id",
    "payload_id",
    "owner_pod_id",
    "initial_task_id",
    "pod_hostname",
)
_EVENT_RESULT_RAW = _only(_RESULT_RAW, "result_id", "session_id", "name", "owner_task_id")


@dataclass(frozen=True)
class _Entity:
    """How to read one entity's `<Entity>Field` oneof (field name -> enum table)."""

    name: str
    fields: Mapping[str, Columns]
    statuses: type[IntEnum] | None = None
    # Name of the oneof member carrying an options-map key (TaskOptionGenericField), if any.
    generic: str = ""


_TASKS = _Entity(
    "tasks",
    {"task_summary_field": _TASK_SUMMARY, "task_option_field": _TASK_OPTIONS},
    TaskStatus,
    "task_option_generic_field",
)
_SESSIONS = _Entity(
    "sessions",
    {"session_raw_field": _SESSION_RAW, "task_option_field": _TASK_OPTIONS},
    SessionStatus,
    "task_option_generic_field",
)
_RESULTS = _Entity("results", {"result_raw_field": _RESULT_RAW}, ResultStatus)
_PARTITIONS = _Entity("partitions", {"partition_raw_field": _PARTITION_RAW})
_APPLICATIONS = _Entity("applications", {"application_field": _APPLICATION_RAW})
_EVENT_TASKS = replace(
    _TASKS, name="task events", fields={**_TASKS.fields, "task_summary_field": _EVENT_TASK_SUMMARY}
)
_EVENT_RESULTS = replace(
    _RESULTS, name="result events", fields={"result_raw_field": _EVENT_RESULT_RAW}
)

# Number, date and duration operators share their numbers (LESS_THAN = BEFORE = SHORTER_THAN).
# EQUAL is 0 in every operator enum, so an operator absent on the wire means EQUAL.
_ORDERED_OPS = {
    fc.FILTER_NUMBER_OPERATOR_EQUAL: Op.EQ,
    fc.FILTER_NUMBER_OPERATOR_NOT_EQUAL: Op.NE,
    fc.FILTER_NUMBER_OPERATOR_LESS_THAN: Op.LT,
    fc.FILTER_NUMBER_OPERATOR_LESS_THAN_OR_EQUAL: Op.LE,
    fc.FILTER_NUMBER_OPERATOR_GREATER_THAN_OR_EQUAL: Op.GE,
    fc.FILTER_NUMBER_OPERATOR_GREATER_THAN: Op.GT,
}


def _seconds(value: Any) -> float:
    """Seconds of a Timestamp (since the epoch) or of a Duration."""
    return float(value.seconds + value.nanos / 1e9)


@dataclass(frozen=True)
class _ConditionType:
    kinds: frozenset[Kind]
    ops: Mapping[int, Op]
    value: Callable[[Any], Any]


# value_condition oneof member -> column kinds it applies to, operators, value conversion.
_CONDITIONS: Mapping[str, _ConditionType] = {
    "filter_string": _ConditionType(
        frozenset({Kind.STRING, Kind.OPTION}),
        {
            fc.FILTER_STRING_OPERATOR_EQUAL: Op.EQ,
            fc.FILTER_STRING_OPERATOR_NOT_EQUAL: Op.NE,
            fc.FILTER_STRING_OPERATOR_CONTAINS: Op.CONTAINS,
            fc.FILTER_STRING_OPERATOR_NOT_CONTAINS: Op.NOT_CONTAINS,
            fc.FILTER_STRING_OPERATOR_STARTS_WITH: Op.STARTS_WITH,
            fc.FILTER_STRING_OPERATOR_ENDS_WITH: Op.ENDS_WITH,
        },
        lambda m: str(m.value),
    ),
    "filter_number": _ConditionType(frozenset({Kind.NUMBER}), _ORDERED_OPS, lambda m: int(m.value)),
    "filter_date": _ConditionType(
        frozenset({Kind.DATE}), _ORDERED_OPS, lambda m: _seconds(m.value)
    ),
    "filter_duration": _ConditionType(
        frozenset({Kind.DURATION}), _ORDERED_OPS, lambda m: _seconds(m.value)
    ),
    "filter_status": _ConditionType(
        frozenset({Kind.STATUS}),
        {fc.FILTER_STATUS_OPERATOR_EQUAL: Op.EQ, fc.FILTER_STATUS_OPERATOR_NOT_EQUAL: Op.NE},
        lambda m: int(m.value),
    ),
    "filter_boolean": _ConditionType(
        frozenset({Kind.BOOLEAN}), {fc.FILTER_BOOLEAN_OPERATOR_IS: Op.EQ}, lambda m: bool(m.value)
    ),
    "filter_array": _ConditionType(
        frozenset({Kind.ARRAY}),
        {
            fc.FILTER_ARRAY_OPERATOR_CONTAINS: Op.CONTAINS,
            fc.FILTER_ARRAY_OPERATOR_NOT_CONTAINS: Op.NOT_CONTAINS,
        },
        lambda m: str(m.value),
    ),
}


def _enum_name(message: Any, number: int) -> str:
    value = message.DESCRIPTOR.fields_by_name["field"].enum_type.values_by_number.get(number)
    return value.name if value is not None else str(number)


def _column(entity: _Entity, field: Any) -> tuple[str, Kind, str]:
    """(column, kind, generic option key) selected by an `<Entity>Field` message."""
    member = field.WhichOneof("field")
    if member is None:
        raise InvalidArgument(f"{entity.name}: filter or sort field is not set")
    selector = getattr(field, member)
    if member == entity.generic:
        key = str(selector.field)
        if not key:
            raise InvalidArgument(f"{entity.name}: generic task option key is empty")
        return OPTIONS_COLUMN, Kind.OPTION, key
    column = entity.fields.get(member, {}).get(selector.field)
    if column is None:
        name = _enum_name(selector, selector.field)
        raise InvalidArgument(f"{entity.name}: cannot filter or sort on field {name}")
    return column[0], column[1], ""


def _condition(entity: _Entity, message: Any) -> Condition:
    column, kind, key = _column(entity, message.field)
    member = message.WhichOneof("value_condition")
    if member is None:
        raise InvalidArgument(f"{entity.name}: filter on {column} has no condition")
    ctype = _CONDITIONS[member]
    if kind not in ctype.kinds:
        raise InvalidArgument(f"{entity.name}: {member} does not apply to {kind.value} {column}")
    condition = getattr(message, member)
    op = ctype.ops.get(condition.operator)
    if op is None:
        raise InvalidArgument(f"{entity.name}: unknown operator {condition.operator} in {member}")
    value = ctype.value(condition)
    if kind is Kind.STATUS and entity.statuses is not None:
        try:
            entity.statuses(value)
        except ValueError:
            raise InvalidArgument(f"{entity.name}: unknown status {value}") from None
    return Condition(column, kind, op, value, key)


def _filter(entity: _Entity, message: Any) -> Filter:
    # `or` and `and` are Python keywords: read them with getattr.
    groups = getattr(message, "or")
    check_condition_count(sum(len(getattr(group, "and")) for group in groups))  # before any
    converted = tuple(
        tuple(_condition(entity, field) for field in getattr(group, "and")) for group in groups
    )
    check_limits(converted)
    return converted


_DIRECTIONS = {sd.SORT_DIRECTION_ASC: False, sd.SORT_DIRECTION_DESC: True}


def _descending(entity: _Entity, direction: int) -> bool:
    if direction not in _DIRECTIONS:
        raise InvalidArgument(f"{entity.name}: sort direction must be ASC or DESC")
    return _DIRECTIONS[direction]


def _sort(entity: _Entity, sort: Any) -> Sort:
    column, _, key = _column(entity, sort.field)
    return Sort(column, _descending(entity, sort.direction), key)


def tasks_filter(message: task_flt.Filters) -> Filter:
    """Domain filter of a `tasks.Filters` message."""
    return _filter(_TASKS, message)


def sessions_filter(message: ses_flt.Filters) -> Filter:
    """Domain filter of a `sessions.Filters` message."""
    return _filter(_SESSIONS, message)


def results_filter(message: res_flt.Filters) -> Filter:
    """Domain filter of a `results.Filters` message."""
    return _filter(_RESULTS, message)


def partitions_filter(message: part_flt.Filters) -> Filter:
    """Domain filter of a `partitions.Filters` message."""
    return _filter(_PARTITIONS, message)


def applications_filter(message: app_flt.Filters) -> Filter:
    """Domain filter of an `applications.Filters` message (columns of the tasks table)."""
    return _filter(_APPLICATIONS, message)


def events_tasks_filter(message: task_flt.Filters) -> Filter:
    """Domain filter of the `tasks_filters` of an EventSubscriptionRequest (fewer fields)."""
    return _filter(_EVENT_TASKS, message)


def events_results_filter(message: res_flt.Filters) -> Filter:
    """Domain filter of the `results_filters` of an EventSubscriptionRequest (fewer fields)."""
    return _filter(_EVENT_RESULTS, message)


def tasks_sort(sort: task_c.ListTasksRequest.Sort) -> Sort:
    """Domain sort of a `ListTasksRequest.Sort`."""
    return _sort(_TASKS, sort)


def sessions_sort(sort: ses_c.ListSessionsRequest.Sort) -> Sort:
    """Domain sort of a `ListSessionsRequest.Sort`."""
    return _sort(_SESSIONS, sort)


def results_sort(sort: res_c.ListResultsRequest.Sort) -> Sort:
    """Domain sort of a `ListResultsRequest.Sort`."""
    return _sort(_RESULTS, sort)


def partitions_sort(sort: part_c.ListPartitionsRequest.Sort) -> Sort:
    """Domain sort of a `ListPartitionsRequest.Sort`."""
    return _sort(_PARTITIONS, sort)


def applications_sort(sort: app_c.ListApplicationsRequest.Sort) -> list[Sort]:
    """Domain sorts (most significant first) of a `ListApplicationsRequest.Sort`."""
    if not sort.fields:
        raise InvalidArgument("applications: sort has no field")
    descending = _descending(_APPLICATIONS, sort.direction)
    # A column sorted on twice sorts nothing more: only its first mention counts (and a
    # thousand repeats would be more ORDER BY terms than SQLite takes).
    columns = dict.fromkeys(_column(_APPLICATIONS, f)[0] for f in sort.fields)
    return [Sort(column, descending) for column in columns]


def validate_paging(page: int, page_size: int) -> None:
    """Raise InvalidArgument unless page ≥ 0 and page_size ≥ 0."""
    if page < 0 or page_size < 0:
        raise InvalidArgument(f"page ({page}) and page_size ({page_size}) must not be negative")
