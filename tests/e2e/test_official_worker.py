"""The official `armonik.worker` SDK run by `pyarmonik local`, driven by the official client."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from armonik.client import ArmoniKEvents, ArmoniKResults, ArmoniKSessions, ArmoniKTasks
from armonik.common import ResultStatus, Task, TaskDefinition, TaskOptions, TaskStatus
from armonik.protogen.client import tasks_service_pb2_grpc
from armonik.protogen.common import tasks_common_pb2

from tests.helpers import (
    BACKEND_PARAMS,
    LocalProcess,
    cluster_backends,
    local_cluster,
    submit_orders,
)

OPTIONS = TaskOptions(max_duration=timedelta(seconds=30), priority=1, max_retries=2)


@pytest.fixture(scope="module", params=BACKEND_PARAMS)
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalProcess]:
    """`pyarmonik local` on each backend combination in turn (every test runs on each)."""
    with (
        cluster_backends(request.param, partitions=["default"]) as backends,
        local_cluster(Path(tmp_path_factory.mktemp("local")), backends=backends) as running,
    ):
        yield running


@pytest.fixture(scope="module")
def channel(cluster: LocalProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(cluster.endpoint) as ch:
        yield ch


def submit(channel: grpc.Channel, session_id: str, orders: list[dict[str, object]]) -> list[str]:
    """One task per order; returns the output ids."""
    return submit_orders(channel, session_id, orders, batch=100)[1]


def test_payload_to_output(channel: grpc.Channel) -> None:
    session_id = ArmoniKSessions(channel).create_session(OPTIONS)
    (out,) = submit(channel, session_id, [{"kind": "upper", "text": "hello"}])
    ArmoniKEvents(channel).wait_for_result_availability([out], session_id)
    assert ArmoniKResults(channel).download_result_data(out, session_id) == b"HELLO"


def wait(channel: grpc.Channel, session_id: str, ids: list[str]) -> None:
    ArmoniKEvents(channel).wait_for_result_availability(ids, session_id)


def download(channel: grpc.Channel, session_id: str, result_id: str) -> bytes:
    return ArmoniKResults(channel).download_result_data(result_id, session_id)


def test_many_data_dependencies(channel: grpc.Channel) -> None:
    session_id = ArmoniKSessions(channel).create_session(OPTIONS)
    results = ArmoniKResults(channel)
    inputs = results.create_results(
        {f"v{i}": str(i).encode() for i in range(60)}, session_id, batch_size=60
    )
    payload = results.create_results(
        {"p": json.dumps({"kind": "sum_deps", "add": 1000}).encode()}, session_id
    )
    out = results.create_results_metadata(["out"], session_id)["out"].result_id
    ArmoniKTasks(channel).submit_tasks(
        session_id,
        [
            TaskDefinition(
                payload_id=payload["p"].result_id,
                expected_output_ids=[out],
                data_dependencies=[r.result_id for r in inputs.values()],
            )
        ],
    )
    wait(channel, session_id, [out])
    assert download(channel, session_id, out) == str(1000 + sum(range(60))).encode()


def test_fan_out_through_the_agent_api(channel: grpc.Channel) -> None:
    session_id = ArmoniKSessions(channel).create_session(OPTIONS)
    (out,) = submit(channel, session_id, [{"kind": "fanout", "n": 8}])
    wait(channel, session_id, [out])
    assert download(channel, session_id, out) == str(sum(range(1, 9))).encode()
    tasks = ArmoniKTasks(channel)
    total, listed = tasks.list_tasks(Task.session_id == session_id, page_size=100)
    assert total == 1 + 8 + 1
    assert all(t.status == TaskStatus.COMPLETED for t in listed)
    children = [t for t in listed if t.created_by]
    assert len(children) == 9 and all(len(t.parent_task_ids) == 2 for t in children)


def _submit_without_outputs(
    channel: grpc.Channel, session_id: str, order: dict[str, object]
) -> str:
    """A task with no expected output (the raw stub: the Python client refuses to send one)."""
    payload = ArmoniKResults(channel).create_results({"p": json.dumps(order).encode()}, session_id)[
        "p"
    ]
    reply = tasks_service_pb2_grpc.TasksStub(channel).SubmitTasks(
        tasks_common_pb2.SubmitTasksRequest(
            session_id=session_id,
            task_creations=[
                tasks_common_pb2.SubmitTasksRequest.TaskCreation(payload_id=payload.result_id)
            ],
        )
    )
    (info,) = reply.task_infos
    assert list(info.expected_output_ids) == []
    return str(info.task_id)


def test_tasks_without_outputs_run_from_the_client_and_from_a_worker(
    channel: grpc.Channel, tmp_path: Path
) -> None:
    session_id = ArmoniKSessions(channel).create_session(OPTIONS)
    top = tmp_path / "top"
    top_id = _submit_without_outputs(channel, session_id, {"kind": "silent", "marker": str(top)})
    child = tmp_path / "child"
    (out,) = submit(channel, session_id, [{"kind": "spawn_silent", "marker": str(child)}])
    wait(channel, session_id, [out])
    assert download(channel, session_id, out) == b"spawned"
    tasks = ArmoniKTasks(channel)
    deadline = time.monotonic() + 30
    while tasks.count_tasks_by_status(Task.session_id == session_id) != {TaskStatus.COMPLETED: 3}:
        assert time.monotonic() < deadline, "the tasks without outputs did not complete"
        time.sleep(0.1)
    assert top.read_text() == top_id
    (subtask,) = [t for t in tasks.list_tasks(Task.session_id == session_id)[1] if t.created_by]
    assert child.read_text() == subtask.id
    assert tasks.get_task(subtask.id).expected_output_ids == []


def test_aggregation_tree_by_delegation(channel: grpc.Channel) -> None:
    depth = 6
    session_id = ArmoniKSessions(channel).create_session(OPTIONS)
    (out,) = submit(channel, session_id, [{"kind": "tree", "depth": depth}])
    wait(channel, session_id, [out])
    assert download(channel, session_id, out) == str(2**depth).encode()
    owner = ArmoniKResults(channel).get_owner_task_id([out], session_id)[out]
    root_task = ArmoniKTasks(channel).get_task(owner)
    assert root_task.created_by, "the root output was delegated to a subtask"


def test_thousand_tasks_every_output_verified(channel: grpc.Channel) -> None:
    session_id = ArmoniKSessions(channel).create_session(OPTIONS)
    orders = [{"kind": "value", "value": i * 7} for i in range(1000)]
    outputs = submit(channel, session_id, orders)
    wait(channel, session_id, outputs)
    for i, out in enumerate(outputs):
        assert download(channel, session_id, out) == str(i * 7).encode()
    counts = ArmoniKTasks(channel).count_tasks_by_status(Task.session_id == session_id)
    assert counts == {TaskStatus.COMPLETED: 1000}


def test_an_output_notified_before_it_is_written_is_not_found(channel: grpc.Channel) -> None:
    """The agent gives each output an empty file before the task (folders.py): notified
    unwritten it is still absent; an empty output, written, is data."""
    session_id = ArmoniKSessions(channel).create_session(OPTIONS)
    orders = [{"kind": "notify_unwritten"}] * 20 + [{"kind": "value", "value": ""}] * 20
    outputs = submit(channel, session_id, orders)
    wait(channel, session_id, outputs)
    assert [download(channel, session_id, out) for out in outputs] == [b"NOT_FOUND"] * 20 + [
        b""
    ] * 20


def test_output_error_ends_in_error_and_aborts(channel: grpc.Channel) -> None:
    session_id = ArmoniKSessions(channel).create_session(OPTIONS)
    results = ArmoniKResults(channel)
    out, dependent_out = (
        results.create_results_metadata(["out", "d"], session_id)[name].result_id
        for name in ("out", "d")
    )
    payloads = results.create_results(
        {
            "error": json.dumps({"kind": "error", "message": "bad input"}).encode(),
            "sum": json.dumps({"kind": "sum_deps"}).encode(),
        },
        session_id,
    )
    # The dependent first: once the failing task ran, its output is ABORTED and a new task
    # depending on it would be refused (FAILED_PRECONDITION).
    tasks = ArmoniKTasks(channel)
    (dependent,) = tasks.submit_tasks(
        session_id,
        [
            TaskDefinition(
                payload_id=payloads["sum"].result_id,
                expected_output_ids=[dependent_out],
                data_dependencies=[out],
            )
        ],
    )
    tasks.submit_tasks(
        session_id,
        [TaskDefinition(payload_id=payloads["error"].result_id, expected_output_ids=[out])],
    )
    with pytest.raises(RuntimeError):
        wait(channel, session_id, [out])
    assert results.get_result(out).status == ResultStatus.ABORTED
    failed = ArmoniKTasks(channel).list_tasks(Task.session_id == session_id)[1]
    by_output = {t.expected_output_ids[0]: t for t in failed}
    assert by_output[out].status == TaskStatus.ERROR
    assert "bad input" in by_output[out].output.error
    deadline = time.monotonic() + 10
    while ArmoniKTasks(channel).get_task(dependent.id).status != TaskStatus.ERROR:
        assert time.monotonic() < deadline, "the dependent task did not end in ERROR"
        time.sleep(0.1)
    assert results.get_result(dependent_out).status == ResultStatus.ABORTED


def test_worker_crash_is_retried(channel: grpc.Channel, tmp_path: Path) -> None:
    session_id = ArmoniKSessions(channel).create_session(OPTIONS)
    (out,) = submit(
        channel, session_id, [{"kind": "crash_once", "marker": str(tmp_path / "crashed")}]
    )
    wait(channel, session_id, [out])
    assert download(channel, session_id, out) == b"survived"
    attempts = sorted(
        ArmoniKTasks(channel).list_tasks(Task.session_id == session_id)[1], key=lambda t: t.id
    )
    assert [t.status for t in attempts] == [TaskStatus.RETRIED, TaskStatus.COMPLETED]
    assert attempts[1].id == f"{attempts[0].id}###1"
    assert attempts[1].retry_of_ids == [attempts[0].id]


def test_always_crashing_worker_ends_in_error(channel: grpc.Channel) -> None:
    session_id = ArmoniKSessions(channel).create_session(OPTIONS)  # max_retries=2
    (out,) = submit(channel, session_id, [{"kind": "crash"}])
    with pytest.raises(RuntimeError):
        wait(channel, session_id, [out])
    attempts = sorted(
        ArmoniKTasks(channel).list_tasks(Task.session_id == session_id)[1], key=lambda t: t.id
    )
    assert [t.status for t in attempts] == [
        TaskStatus.RETRIED,
        TaskStatus.RETRIED,
        TaskStatus.ERROR,
    ]
    assert attempts[2].id.endswith("###2")


def test_task_over_max_duration_times_out(channel: grpc.Channel) -> None:
    short = TaskOptions(max_duration=timedelta(seconds=1), priority=1, max_retries=2)
    session_id = ArmoniKSessions(channel).create_session(short)
    (out,) = submit(channel, session_id, [{"kind": "sleep", "seconds": 30}])
    with pytest.raises(RuntimeError):
        wait(channel, session_id, [out])
    (task,) = ArmoniKTasks(channel).list_tasks(Task.session_id == session_id)[1]
    assert task.status == TaskStatus.TIMEOUT


def _wait_status(channel: grpc.Channel, task_id: str, status: TaskStatus, within: float) -> float:
    tasks, start = ArmoniKTasks(channel), time.monotonic()
    while tasks.get_task(task_id).status != status:
        assert time.monotonic() - start < within, f"task {task_id} did not reach {status.name}"
        time.sleep(0.05)
    return time.monotonic() - start


def test_cancelling_a_running_task_stops_it(channel: grpc.Channel) -> None:
    session_id = ArmoniKSessions(channel).create_session(OPTIONS)
    (out,) = submit(channel, session_id, [{"kind": "sleep", "seconds": 60}])
    tasks = ArmoniKTasks(channel)
    (task,) = tasks.list_tasks(Task.session_id == session_id)[1]
    _wait_status(channel, task.id, TaskStatus.PROCESSING, 60)
    tasks.cancel_tasks([task.id])
    _wait_status(channel, task.id, TaskStatus.CANCELLED, 15)
    assert ArmoniKResults(channel).get_result(out).status == ResultStatus.ABORTED
    # the agent is free again: a new task runs at once
    session2 = ArmoniKSessions(channel).create_session(OPTIONS)
    (out2,) = submit(channel, session2, [{"kind": "value", "value": 5}])
    wait(channel, session2, [out2])


def test_cancelling_a_session_stops_its_running_task(channel: grpc.Channel) -> None:
    sessions = ArmoniKSessions(channel)
    session_id = sessions.create_session(OPTIONS)
    submit(channel, session_id, [{"kind": "sleep", "seconds": 60}])
    (task,) = ArmoniKTasks(channel).list_tasks(Task.session_id == session_id)[1]
    _wait_status(channel, task.id, TaskStatus.PROCESSING, 60)
    sessions.cancel_session(session_id)
    _wait_status(channel, task.id, TaskStatus.CANCELLED, 15)
