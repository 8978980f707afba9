"""Conversions between domain records and the ArmoniK API v3 messages."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from armonik.protogen.common import (
    objects_pb2,
    partitions_common_pb2,
    results_common_pb2,
    sessions_common_pb2,
    tasks_common_pb2,
)
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from pyarmonik.domain.errors import InvalidArgument
from pyarmonik.domain.options import TaskOptions
from pyarmonik.domain.records import TASK_DURATIONS, TASK_TIMES, Partition, Result, Session, Task
from pyarmonik.domain.statuses import TaskStatus
from pyarmonik.scheduling.tasks import TaskCreation


def _microseconds(seconds: float) -> tuple[int, int]:
    """(whole seconds, nanos) of `seconds` rounded to the microsecond, the precision times are
    stored at (storage/database/sql.py); rounding the float itself carries into the seconds."""
    whole, micros = divmod(round(seconds * 1_000_000), 1_000_000)
    return whole, micros * 1000


def timestamp(seconds: float | None) -> Timestamp | None:
    if seconds is None:
        return None
    whole, nanos = _microseconds(seconds)
    return Timestamp(seconds=whole, nanos=nanos)


def duration(seconds: float | None) -> Duration | None:
    if seconds is None:
        return None
    # A Duration's seconds and nanos carry the same sign.
    whole, nanos = _microseconds(abs(seconds))
    sign = -1 if seconds < 0 else 1
    return Duration(seconds=sign * whole, nanos=sign * nanos)


def seconds_of(value: Timestamp | Duration) -> float:
    return float(value.seconds) + float(value.nanos) / 1e9


# Protobuf's own range of a Duration (about ±10,000 years).
_DURATION_SECONDS_RANGE = 315_576_000_000
_NANOS_RANGE = 999_999_999


def duration_seconds(value: Duration, field: str) -> float:
    """Seconds of a Duration from a client; InvalidArgument outside protobuf's valid range
    (seconds within ±315,576,000,000, nanos within ±999,999,999 and of the same sign)."""
    seconds, nanos = value.seconds, value.nanos
    if (
        abs(seconds) > _DURATION_SECONDS_RANGE
        or abs(nanos) > _NANOS_RANGE
        or (seconds > 0 > nanos)
        or (seconds < 0 < nanos)
    ):
        raise InvalidArgument(f"{field} is not a valid Duration ({seconds} s, {nanos} ns)")
    return seconds_of(value)


def options_from_message(message: objects_pb2.TaskOptions) -> TaskOptions:
    return TaskOptions(
        max_duration=duration_seconds(message.max_duration, "task options: max_duration"),
        max_retries=message.max_retries,
        priority=message.priority,
        partition_id=message.partition_id,
        application_name=message.application_name,
        application_version=message.application_version,
        application_namespace=message.application_namespace,
        application_service=message.application_service,
        engine_type=message.engine_type,
        options=dict(message.options),
    )


def optional_options(parent: Any, field: str) -> TaskOptions | None:
    """Options of a message field, or None when the field is absent (not merged then)."""
    return options_from_message(getattr(parent, field)) if parent.HasField(field) else None


def task_creations(messages: Iterable[Any]) -> list[TaskCreation]:
    """The task creations of a SubmitTasks request (client's or worker's: same fields)."""
    return [
        TaskCreation(
            payload_id=c.payload_id,
            expected_output_ids=list(c.expected_output_keys),
            data_dependencies=list(c.data_dependencies),
            options=optional_options(c, "task_options"),
        )
        for c in messages
    ]


def options_to_message(options: TaskOptions) -> objects_pb2.TaskOptions:
    return objects_pb2.TaskOptions(
        options=options.options,
        max_duration=duration(options.max_duration),
        max_retries=options.max_retries,
        priority=options.priority,
        partition_id=options.partition_id,
        application_name=options.application_name,
        application_version=options.application_version,
        application_namespace=options.application_namespace,
        application_service=options.application_service,
        engine_type=options.engine_type,
    )


def session_raw(session: Session) -> sessions_common_pb2.SessionRaw:
    return sessions_common_pb2.SessionRaw(
        session_id=session.session_id,
        status=int(session.status),
        client_submission=session.client_submission,
        worker_submission=session.worker_submission,
        partition_ids=session.partition_ids,
        options=options_to_message(session.options),
        created_at=timestamp(session.created_at),
        cancelled_at=timestamp(session.cancelled_at),
        closed_at=timestamp(session.closed_at),
        purged_at=timestamp(session.purged_at),
        deleted_at=timestamp(session.deleted_at),
        duration=duration(session.duration),
    )


def _task_common(task: Task) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "id": task.task_id,
        "session_id": task.session_id,
        "owner_pod_id": task.owner_pod_id,
        "initial_task_id": task.initial_task_id,
        "status": int(task.status),
        "status_message": task.status_message,
        "options": options_to_message(task.options),
        "payload_id": task.payload_id,
        "created_by": task.created_by,
        "pod_hostname": task.pod_hostname,
    }
    for name in TASK_TIMES:
        fields[name] = timestamp(getattr(task, name))
    for name in TASK_DURATIONS:
        fields[name] = duration(getattr(task, name))
    return fields


def task_detailed(task: Task) -> tasks_common_pb2.TaskDetailed:
    return tasks_common_pb2.TaskDetailed(
        parent_task_ids=task.parent_task_ids,
        data_dependencies=task.data_dependencies,
        expected_output_ids=task.expected_output_ids,
        retry_of_ids=task.retry_of_ids,
        output=tasks_common_pb2.TaskDetailed.Output(
            success=task.status == TaskStatus.COMPLETED, error=task.error
        ),
        **_task_common(task),
    )


def task_summary(task: Task, with_errors: bool = True) -> tasks_common_pb2.TaskSummary:
    return tasks_common_pb2.TaskSummary(
        count_parent_task_ids=len(task.parent_task_ids),
        count_data_dependencies=len(task.data_dependencies),
        count_expected_output_ids=len(task.expected_output_ids),
        count_retry_of_ids=len(task.retry_of_ids),
        error=task.error if with_errors else "",
        **_task_common(task),
    )


def result_raw(result: Result) -> results_common_pb2.ResultRaw:
    return results_common_pb2.ResultRaw(
        session_id=result.session_id,
        name=result.name,
        owner_task_id=result.owner_task_id,
        status=int(result.status),
        created_at=timestamp(result.created_at),
        completed_at=timestamp(result.completed_at),
        result_id=result.result_id,
        size=result.size,
        created_by=result.created_by,
        opaque_id=result.opaque_id,
        manual_deletion=result.manual_deletion,
    )


def partition_raw(partition: Partition) -> partitions_common_pb2.PartitionRaw:
    return partitions_common_pb2.PartitionRaw(
        id=partition.partition_id,
        parent_partition_ids=partition.parent_partition_ids,
        pod_reserved=partition.pod_reserved,
        pod_max=partition.pod_max,
        pod_configuration=partition.pod_configuration,
        preemption_percentage=partition.preemption_percentage,
        priority=partition.priority,
    )
