"""Tasks service: submission and dependency resolution, queries, cancellation and the failure
propagation through the task graph."""

from __future__ import annotations

import time
from datetime import timedelta

import grpc
from armonik.client import ArmoniKResults, ArmoniKSessions, ArmoniKTasks
from armonik.common import ResultStatus, Task, TaskDefinition, TaskOptions, TaskStatus
from armonik.protogen.client.tasks_service_pb2_grpc import TasksStub
from armonik.protogen.common import tasks_common_pb2

from tests.conformance.conftest import OPTIONS
from tests.conformance.support import code_of, drain, queued, set_task, submit_one
from tests.helpers import BackgroundControlPlane

FP = grpc.StatusCode.FAILED_PRECONDITION
NOT_FOUND = grpc.StatusCode.NOT_FOUND


def test_submit_and_get_task(results: ArmoniKResults, tasks: ArmoniKTasks, session_id: str) -> None:
    created = results.create_results_metadata(["payload", "dep", "out"], session_id)
    results.upload_result_data(created["payload"].result_id, session_id, b"p")
    results.upload_result_data(created["dep"].result_id, session_id, b"d")
    definition = TaskDefinition(
        payload_id=created["payload"].result_id,
        expected_output_ids=[created["out"].result_id],
        data_dependencies=[created["dep"].result_id],
    )
    (info,) = tasks.submit_tasks(session_id, [definition])
    assert info.payload_id == created["payload"].result_id
    assert info.expected_output_ids == [created["out"].result_id]
    assert info.data_dependencies == [created["dep"].result_id]

    task = tasks.get_task(info.id)
    assert task.id == info.id
    assert task.session_id == session_id
    assert task.status == TaskStatus.SUBMITTED
    assert task.payload_id == created["payload"].result_id
    assert task.expected_output_ids == [created["out"].result_id]
    assert task.data_dependencies == [created["dep"].result_id]
    assert task.initial_task_id == task.id
    assert task.parent_task_ids == [session_id]
    assert task.retry_of_ids == []
    assert task.created_by == ""
    assert task.owner_pod_id == ""
    assert task.created_at is not None and task.submitted_at is not None
    assert task.started_at is None and task.ended_at is None
    # Options fall back on the session's defaults.
    assert task.options.max_duration == timedelta(seconds=60)
    assert (task.options.priority, task.options.max_retries) == (1, 2)
    assert task.options.partition_id == "default"
    assert not task.output.success  # not completed yet


def test_a_task_without_expected_outputs_is_accepted(
    plane: BackgroundControlPlane,
    results: ArmoniKResults,
    tasks: ArmoniKTasks,
    tasks_stub: TasksStub,
    session_id: str,
) -> None:
    """As ArmoniK: `expected_output_keys: []` is a valid task (the C#, C++, Java and Rust
    SDKs send it; only the Python client refuses it, so the raw stub sends it here). It is
    queued once its inputs exist, like any other."""
    created = results.create_results_metadata(["payload", "dep"], session_id)
    payload, dep = created["payload"].result_id, created["dep"].result_id
    results.upload_result_data(payload, session_id, b"p")
    drain(plane, "default")
    reply = tasks_stub.SubmitTasks(
        tasks_common_pb2.SubmitTasksRequest(
            session_id=session_id,
            task_creations=[
                tasks_common_pb2.SubmitTasksRequest.TaskCreation(payload_id=payload),
                tasks_common_pb2.SubmitTasksRequest.TaskCreation(
                    payload_id=payload, data_dependencies=[dep]
                ),
            ],
        )
    )
    ready, waiting = reply.task_infos
    assert list(ready.expected_output_ids) == list(waiting.expected_output_ids) == []
    assert tasks.get_task(ready.task_id).expected_output_ids == []
    assert tasks.get_task(ready.task_id).status == TaskStatus.SUBMITTED
    assert tasks.get_task(waiting.task_id).status == TaskStatus.PENDING
    assert tasks.get_result_ids([ready.task_id]) == {ready.task_id: []}
    assert queued(plane, "default", 1) == [ready.task_id]
    results.upload_result_data(dep, session_id, b"d")
    assert queued(plane, "default", 1) == [waiting.task_id]
    # Cancelled like any other (no output to abort).
    tasks.cancel_tasks([waiting.task_id])
    assert tasks.get_task(waiting.task_id).status in (TaskStatus.CANCELLING, TaskStatus.CANCELLED)


def test_task_options_merge(
    sessions: ArmoniKSessions, results: ArmoniKResults, tasks: ArmoniKTasks
) -> None:
    session_options = TaskOptions(
        max_duration=timedelta(seconds=60),
        priority=1,
        max_retries=2,
        application_name="app",
        options={"a": "session", "b": "session"},
    )
    session_id = sessions.create_session(session_options, partition_ids=["default", "other"])
    request_defaults = TaskOptions(
        max_duration=timedelta(seconds=30),
        priority=3,
        max_retries=4,
        options={"b": "request", "c": "request"},
    )
    task_level = TaskOptions(
        max_duration=timedelta(seconds=5),
        priority=9,
        max_retries=1,
        partition_id="other",
        options={"c": "task"},
    )
    created = results.create_results({"payload": b"p"}, session_id)
    outputs = results.create_results_metadata(["o1", "o2"], session_id)
    submitted = tasks.submit_tasks(
        session_id,
        [
            TaskDefinition(
                payload_id=created["payload"].result_id,
                expected_output_ids=[outputs["o1"].result_id],
            ),
            TaskDefinition(
                payload_id=created["payload"].result_id,
                expected_output_ids=[outputs["o2"].result_id],
                options=task_level,
            ),
        ],
        default_task_options=request_defaults,
    )
    request_level = tasks.get_task(submitted[0].id).options
    assert request_level.max_duration == timedelta(seconds=30)
    assert (request_level.priority, request_level.max_retries) == (3, 4)
    assert request_level.partition_id == "default"
    assert request_level.application_name == "app"
    assert request_level.options == {"a": "session", "b": "request", "c": "request"}
    merged = tasks.get_task(submitted[1].id).options
    assert merged.max_duration == timedelta(seconds=5)
    assert (merged.priority, merged.max_retries) == (9, 1)
    assert merged.partition_id == "other"
    assert merged.application_name == "app"
    assert merged.options == {"a": "session", "b": "request", "c": "task"}


def test_submit_many_tasks_in_chunks(
    results: ArmoniKResults, tasks: ArmoniKTasks, session_id: str
) -> None:
    payload = results.create_results({"payload": b"p"}, session_id)["payload"].result_id
    outputs = results.create_results_metadata([f"o{i}" for i in range(7)], session_id)
    definitions = [
        TaskDefinition(payload_id=payload, expected_output_ids=[outputs[f"o{i}"].result_id])
        for i in range(7)
    ]
    submitted = tasks.submit_tasks(session_id, definitions, chunk_size=3)
    assert len({t.id for t in submitted}) == 7
    assert [t.expected_output_ids for t in submitted] == [
        d.expected_output_ids for d in definitions
    ]
    counts = tasks.count_tasks_by_status(Task.session_id == session_id)
    assert counts == {TaskStatus.SUBMITTED: 7}


def test_task_waits_for_its_payload(
    results: ArmoniKResults, tasks: ArmoniKTasks, session_id: str
) -> None:
    waiting = submit_one(results, tasks, session_id, payload=None)
    task = tasks.get_task(waiting.task_id)
    assert task.status == TaskStatus.PENDING
    assert task.submitted_at is None
    results.upload_result_data(waiting.payload_id, session_id, b"late payload")
    task = tasks.get_task(waiting.task_id)
    assert task.status == TaskStatus.SUBMITTED
    assert task.submitted_at is not None


def test_task_waits_for_every_dependency(
    results: ArmoniKResults, tasks: ArmoniKTasks, session_id: str
) -> None:
    deps = results.create_results_metadata(["d1", "d2"], session_id)
    dep_ids = [deps["d1"].result_id, deps["d2"].result_id]
    waiting = submit_one(results, tasks, session_id, payload=None, dependencies=dep_ids)
    results.upload_result_data(waiting.payload_id, session_id, b"p")
    results.upload_result_data(dep_ids[0], session_id, b"1")
    assert tasks.get_task(waiting.task_id).status == TaskStatus.PENDING
    results.upload_result_data(dep_ids[1], session_id, b"2")
    assert tasks.get_task(waiting.task_id).status == TaskStatus.SUBMITTED


def test_chained_tasks_wait_for_outputs(
    results: ArmoniKResults, tasks: ArmoniKTasks, session_id: str
) -> None:
    first = submit_one(results, tasks, session_id)
    second = submit_one(results, tasks, session_id, dependencies=first.output_ids)
    assert tasks.get_task(second.task_id).status == TaskStatus.PENDING
    # Simulate the first task's completion: its output's data arrives.
    results.upload_result_data(first.output_ids[0], session_id, b"out")
    assert tasks.get_task(second.task_id).status == TaskStatus.SUBMITTED


def test_first_claimant_owns_a_shared_output(
    results: ArmoniKResults, tasks: ArmoniKTasks, session_id: str
) -> None:
    payload = results.create_results({"payload": b"p"}, session_id)["payload"].result_id
    out = results.create_results_metadata(["shared"], session_id)["shared"].result_id
    first, second = tasks.submit_tasks(
        session_id,
        [
            TaskDefinition(payload_id=payload, expected_output_ids=[out]),
            TaskDefinition(payload_id=payload, expected_output_ids=[out]),
        ],
    )
    assert results.get_owner_task_id([out], session_id) == {out: first.id}
    # A later client submission does not take an owned output over.
    (third,) = tasks.submit_tasks(
        session_id, [TaskDefinition(payload_id=payload, expected_output_ids=[out])]
    )
    assert results.get_owner_task_id([out], session_id) == {out: first.id}
    assert third.id not in (first.id, second.id)


def test_dependency_on_an_aborted_result_is_refused(
    sessions: ArmoniKSessions, results: ArmoniKResults, tasks: ArmoniKTasks, session_id: str
) -> None:
    owner = submit_one(results, tasks, session_id)
    tasks.cancel_tasks([owner.task_id])
    aborted = owner.output_ids[0]
    assert results.get_result(aborted).status == ResultStatus.ABORTED
    before = tasks.count_tasks_by_status(Task.session_id == session_id)
    assert code_of(lambda: submit_one(results, tasks, session_id, dependencies=[aborted])) == FP
    # Nothing of the refused submission is left behind.
    assert tasks.count_tasks_by_status(Task.session_id == session_id) == before


def test_dependency_on_a_deleted_result_is_refused(
    results: ArmoniKResults, tasks: ArmoniKTasks, session_id: str
) -> None:
    data = results.create_results({"gone": b"x"}, session_id)["gone"].result_id
    results.delete_result_data([data], session_id)
    assert code_of(lambda: submit_one(results, tasks, session_id, dependencies=[data])) == FP


def test_unknown_dependencies_and_outputs_are_not_found(
    results: ArmoniKResults, tasks: ArmoniKTasks, session_id: str
) -> None:
    created = results.create_results_metadata(["payload", "out"], session_id)
    payload, out = created["payload"].result_id, created["out"].result_id

    def submit(definition: TaskDefinition) -> object:
        return tasks.submit_tasks(session_id, [definition])

    assert code_of(
        lambda: submit(TaskDefinition(payload_id="nope", expected_output_ids=[out]))
    ) == (NOT_FOUND)
    assert code_of(
        lambda: submit(TaskDefinition(payload_id=payload, expected_output_ids=["nope"]))
    ) == (NOT_FOUND)
    assert (
        code_of(
            lambda: submit(
                TaskDefinition(
                    payload_id=payload, expected_output_ids=[out], data_dependencies=["x"]
                )
            )
        )
        == NOT_FOUND
    )
    assert (
        code_of(
            lambda: tasks.submit_tasks(
                "no-session", [TaskDefinition(payload_id=payload, expected_output_ids=[out])]
            )
        )
        == NOT_FOUND
    )
    # The failed submissions claimed nothing.
    assert results.get_result(out).owner_task_id == ""


def test_completed_output_cannot_be_expected_again(
    results: ArmoniKResults, tasks: ArmoniKTasks, session_id: str
) -> None:
    payload = results.create_results({"payload": b"p"}, session_id)["payload"].result_id
    done = results.create_results({"done": b"d"}, session_id)["done"].result_id
    assert (
        code_of(
            lambda: tasks.submit_tasks(
                session_id, [TaskDefinition(payload_id=payload, expected_output_ids=[done])]
            )
        )
        == FP
    )


def test_cancel_tasks_aborts_outputs_and_fails_dependents(
    results: ArmoniKResults, tasks: ArmoniKTasks, session_id: str
) -> None:
    first = submit_one(results, tasks, session_id)
    dependent = submit_one(results, tasks, session_id, dependencies=first.output_ids)
    grandchild = submit_one(results, tasks, session_id, dependencies=dependent.output_ids)
    assert tasks.get_task(dependent.task_id).status == TaskStatus.PENDING

    tasks.cancel_tasks([first.task_id])
    cancelled = tasks.get_task(first.task_id)
    assert cancelled.status == TaskStatus.CANCELLED
    assert cancelled.ended_at is not None
    assert results.get_result(first.output_ids[0]).status == ResultStatus.ABORTED
    # PENDING tasks waiting on an aborted result end in ERROR, recursively.
    for waiting in (dependent, grandchild):
        task = tasks.get_task(waiting.task_id)
        assert task.status == TaskStatus.ERROR
        assert task.output.error
        assert task.ended_at is not None
        assert results.get_result(waiting.output_ids[0]).status == ResultStatus.ABORTED
    # Their payloads were client data: untouched.
    assert results.get_result(dependent.payload_id).status == ResultStatus.COMPLETED


def test_cancel_pending_task(results: ArmoniKResults, tasks: ArmoniKTasks, session_id: str) -> None:
    waiting = submit_one(results, tasks, session_id, payload=None)
    tasks.cancel_tasks([waiting.task_id])
    assert tasks.get_task(waiting.task_id).status == TaskStatus.CANCELLED
    # Uploading the payload afterwards does not revive it.
    results.upload_result_data(waiting.payload_id, session_id, b"p")
    assert tasks.get_task(waiting.task_id).status == TaskStatus.CANCELLED


def test_cancel_replies_with_the_updated_tasks(
    tasks: ArmoniKTasks, results: ArmoniKResults, tasks_stub: TasksStub, session_id: str
) -> None:
    one = submit_one(results, tasks, session_id)
    two = submit_one(results, tasks, session_id)
    reply = tasks_stub.CancelTasks(
        tasks_common_pb2.CancelTasksRequest(task_ids=[one.task_id, two.task_id])
    )
    assert sorted(t.id for t in reply.tasks) == sorted([one.task_id, two.task_id])
    assert {t.status for t in reply.tasks} == {TaskStatus.CANCELLED}
    # Cancelling again is harmless: the tasks stay CANCELLED.
    again = tasks_stub.CancelTasks(tasks_common_pb2.CancelTasksRequest(task_ids=[one.task_id]))
    assert [t.status for t in again.tasks] == [TaskStatus.CANCELLED]


def test_cancel_unknown_task_is_not_found(tasks: ArmoniKTasks) -> None:
    assert code_of(lambda: tasks.cancel_tasks(["nope"])) == NOT_FOUND
    assert code_of(lambda: tasks.get_task("nope")) == NOT_FOUND
    assert code_of(lambda: tasks.get_result_ids(["nope"])) == NOT_FOUND


def test_get_result_ids_of_several_tasks(
    results: ArmoniKResults, tasks: ArmoniKTasks, session_id: str
) -> None:
    one = submit_one(results, tasks, session_id, outputs=2)
    two = submit_one(results, tasks, session_id)
    assert tasks.get_result_ids([one.task_id, two.task_id]) == {
        one.task_id: one.output_ids,
        two.task_id: two.output_ids,
    }


def test_list_tasks_summary_and_detailed(
    results: ArmoniKResults, tasks: ArmoniKTasks, session_id: str
) -> None:
    good = submit_one(results, tasks, session_id, outputs=2)
    owner = submit_one(results, tasks, session_id)
    failed = submit_one(results, tasks, session_id, dependencies=owner.output_ids)
    tasks.cancel_tasks([owner.task_id])
    in_session = Task.session_id == session_id

    total, detailed = tasks.list_tasks(in_session)
    assert total == 3
    assert sorted(t.id for t in detailed) == sorted([good.task_id, owner.task_id, failed.task_id])
    by_id = {t.id: t for t in detailed}
    assert by_id[good.task_id].expected_output_ids == good.output_ids
    assert by_id[failed.task_id].data_dependencies == owner.output_ids
    assert by_id[failed.task_id].output.error

    total, summaries = tasks.list_tasks(in_session, detailed=False)
    assert total == 3
    summary = {t.id: t for t in summaries}
    assert summary[good.task_id].count_expected_output_ids == 2
    assert summary[failed.task_id].count_data_dependencies == 1
    assert summary[good.task_id].count_parent_task_ids == 1
    # The error text is only sent when asked for.
    assert summary[failed.task_id].output.error is None
    _, with_errors = tasks.list_tasks(in_session, detailed=False, with_errors=True)
    assert {t.id: t for t in with_errors}[failed.task_id].output.error


def test_count_tasks_by_status(
    results: ArmoniKResults, tasks: ArmoniKTasks, session_id: str
) -> None:
    submit_one(results, tasks, session_id)
    submit_one(results, tasks, session_id)
    submit_one(results, tasks, session_id, payload=None)
    cancelled = submit_one(results, tasks, session_id)
    tasks.cancel_tasks([cancelled.task_id])
    assert tasks.count_tasks_by_status(Task.session_id == session_id) == {
        TaskStatus.SUBMITTED: 2,
        TaskStatus.PENDING: 1,
        TaskStatus.CANCELLED: 1,
    }
    assert tasks.count_tasks_by_status(
        (Task.session_id == session_id) & (Task.status == TaskStatus.PENDING)
    ) == {TaskStatus.PENDING: 1}
    assert tasks.count_tasks_by_status(Task.session_id == "no-such-session") == {}


def test_submit_to_a_partition_outside_the_session_is_refused(
    sessions: ArmoniKSessions, results: ArmoniKResults, tasks: ArmoniKTasks
) -> None:
    session_id = sessions.create_session(OPTIONS, partition_ids=["default"])
    options = TaskOptions(timedelta(seconds=1), priority=1, max_retries=1, partition_id="other")
    assert code_of(lambda: submit_one(results, tasks, session_id, options=options)) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )


def test_ready_tasks_are_queued_on_their_partition(
    plane: BackgroundControlPlane,
    sessions: ArmoniKSessions,
    results: ArmoniKResults,
    tasks: ArmoniKTasks,
    session_id: str,
) -> None:
    on_other = TaskOptions(timedelta(seconds=5), priority=3, max_retries=1, partition_id="other")
    drain(plane, "other")
    ready = submit_one(results, tasks, session_id, options=on_other)
    waiting = submit_one(results, tasks, session_id, payload=None, options=on_other)
    assert queued(plane, "other", 1) == [ready.task_id]
    assert queued(plane, "other", 1, timeout=0.3) == []  # the waiting task is not queued
    results.upload_result_data(waiting.payload_id, session_id, b"payload")
    assert queued(plane, "other", 1) == [waiting.task_id]
    # Paused tasks are queued again when the session resumes.
    sessions.pause_session(session_id)
    paused = submit_one(results, tasks, session_id, options=on_other)
    assert queued(plane, "other", 1, timeout=0.3) == []
    sessions.resume_session(session_id)
    assert sorted(queued(plane, "other", 3)) == sorted(
        [ready.task_id, waiting.task_id, paused.task_id]
    )


def test_completed_task_reports_success(
    plane: BackgroundControlPlane, results: ArmoniKResults, tasks: ArmoniKTasks, session_id: str
) -> None:
    task = submit_one(results, tasks, session_id)
    # What an agent does on success: the output's data, then the task COMPLETED.
    results.upload_result_data(task.output_ids[0], session_id, b"computed")
    set_task(plane, task.task_id, status=TaskStatus.COMPLETED, ended_at=time.time())
    done = tasks.get_task(task.task_id)
    assert done.status == TaskStatus.COMPLETED
    assert done.output.success and done.output.error is None
    summary = tasks.list_tasks(Task.id == task.task_id, detailed=False, with_errors=True)[1][0]
    assert summary.output.error is None
    # Cancelling a finished task changes nothing.
    tasks.cancel_tasks([task.task_id])
    assert tasks.get_task(task.task_id).status == TaskStatus.COMPLETED
    assert results.get_result(task.output_ids[0]).status == ResultStatus.COMPLETED


def test_cancel_running_task_is_cancelling(
    plane: BackgroundControlPlane, results: ArmoniKResults, tasks: ArmoniKTasks, session_id: str
) -> None:
    running = submit_one(results, tasks, session_id)
    dependent = submit_one(results, tasks, session_id, dependencies=running.output_ids)
    set_task(plane, running.task_id, status=TaskStatus.PROCESSING, owner_pod_id="10.0.0.1")
    tasks.cancel_tasks([running.task_id])
    # An agent holds it: it stops the worker and ends it CANCELLED; its outputs are lost.
    assert tasks.get_task(running.task_id).status == TaskStatus.CANCELLING
    assert results.get_result(running.output_ids[0]).status == ResultStatus.ABORTED
    assert tasks.get_task(dependent.task_id).status == TaskStatus.ERROR


def test_pause_releases_dispatched_tasks(
    plane: BackgroundControlPlane,
    sessions: ArmoniKSessions,
    results: ArmoniKResults,
    tasks: ArmoniKTasks,
    session_id: str,
) -> None:
    dispatched = submit_one(results, tasks, session_id)
    processing = submit_one(results, tasks, session_id)
    set_task(plane, dispatched.task_id, status=TaskStatus.DISPATCHED, owner_pod_id="10.0.0.1")
    set_task(plane, processing.task_id, status=TaskStatus.PROCESSING, owner_pod_id="10.0.0.2")
    sessions.pause_session(session_id)
    paused = tasks.get_task(dispatched.task_id)
    assert (paused.status, paused.owner_pod_id) == (TaskStatus.PAUSED, "")
    # A running task finishes its run.
    assert tasks.get_task(processing.task_id).status == TaskStatus.PROCESSING
    sessions.resume_session(session_id)
    assert tasks.get_task(dispatched.task_id).status == TaskStatus.SUBMITTED
    assert tasks.get_task(processing.task_id).status == TaskStatus.PROCESSING
    # Cancelling the session: the running task is asked to stop.
    sessions.cancel_session(session_id)
    assert tasks.get_task(processing.task_id).status == TaskStatus.CANCELLING
    assert tasks.get_task(dispatched.task_id).status == TaskStatus.CANCELLED
