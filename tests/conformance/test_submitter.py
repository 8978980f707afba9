"""The legacy Submitter service (`armonik.api.grpc.v1.submitter`), driven through the generated
stubs of the `armonik` package against `pyarmonik local` running the official worker
(tests/e2e/workers/official.py: the payload, a JSON order, says what a task does); checked
against ArmoniK.Core's behaviour (Common/src/gRPC/Services/GrpcSubmitterService.cs,
Submitter.cs)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from armonik.client import ArmoniKResults, ArmoniKSessions
from armonik.common import ResultStatus, TaskOptions, TaskStatus
from armonik.protogen.client.submitter_service_pb2_grpc import SubmitterStub
from armonik.protogen.common import objects_pb2
from armonik.protogen.common import submitter_common_pb2 as pb

from tests.conformance.support import code_of
from tests.helpers import BACKEND_PARAMS, LocalProcess, cluster_backends, local_cluster

OPTIONS = TaskOptions(max_duration=timedelta(seconds=60), priority=1, max_retries=2)
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
FP = grpc.StatusCode.FAILED_PRECONDITION
WAIT = 60  # deadline of the waits (a stuck wait fails the test instead of hanging it)


@pytest.fixture(scope="module", params=BACKEND_PARAMS)
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalProcess]:
    with (
        cluster_backends(request.param, partitions=["default"]) as backends,
        local_cluster(Path(tmp_path_factory.mktemp("local")), backends=backends) as running,
    ):
        yield running


@pytest.fixture(scope="module")
def channel(cluster: LocalProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(cluster.endpoint) as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.Channel) -> SubmitterStub:
    return SubmitterStub(channel)


@pytest.fixture
def session_id(stub: SubmitterStub) -> str:
    reply = stub.CreateSession(
        pb.CreateSessionRequest(default_task_option=OPTIONS.to_message(), partition_ids=[])
    )
    return str(reply.session_id)


def outputs(channel: grpc.Channel, session_id: str, count: int) -> list[str]:
    """Results for tasks to produce: as in Core, expected outputs are created beforehand."""
    names = [f"out-{i}" for i in range(count)]
    created = ArmoniKResults(channel).create_results_metadata(names, session_id)
    return [created[name].result_id for name in names]


def order(kind: str, **values: Any) -> bytes:
    return json.dumps({"kind": kind, **values}).encode()


def small(
    stub: SubmitterStub,
    session_id: str,
    tasks: list[tuple[bytes, list[str], list[str]]],
    options: TaskOptions = OPTIONS,
) -> list[pb.CreateTaskReply.TaskInfo]:
    """CreateSmallTasks of (payload, expected outputs, data dependencies)."""
    reply = stub.CreateSmallTasks(
        pb.CreateSmallTaskRequest(
            session_id=session_id,
            task_options=options.to_message(),
            task_requests=[
                objects_pb2.TaskRequest(
                    payload=payload,
                    expected_output_keys=outs,
                    data_dependencies=deps,
                    payload_name=f"payload-{i}",
                )
                for i, (payload, outs, deps) in enumerate(tasks)
            ],
        )
    )
    assert reply.WhichOneof("Response") == "creation_status_list"
    statuses = reply.creation_status_list.creation_statuses
    assert all(s.WhichOneof("Status") == "task_info" for s in statuses)
    return [s.task_info for s in statuses]


def large_requests(
    session_id: str, tasks: list[tuple[bytes, list[str], list[str]]], chunk: int
) -> Iterator[pb.CreateLargeTaskRequest]:
    """A CreateLargeTasks stream: init request, then per task its header, its payload in
    chunks and data_complete, then last_task."""
    yield pb.CreateLargeTaskRequest(
        init_request=pb.CreateLargeTaskRequest.InitRequest(session_id=session_id)
    )
    for payload, outs, deps in tasks:
        yield pb.CreateLargeTaskRequest(
            init_task=objects_pb2.InitTaskRequest(
                header=objects_pb2.TaskRequestHeader(
                    expected_output_keys=outs, data_dependencies=deps
                )
            )
        )
        for start in range(0, len(payload), chunk):
            yield pb.CreateLargeTaskRequest(
                task_payload=objects_pb2.DataChunk(data=payload[start : start + chunk])
            )
        yield pb.CreateLargeTaskRequest(task_payload=objects_pb2.DataChunk(data_complete=True))
    yield pb.CreateLargeTaskRequest(init_task=objects_pb2.InitTaskRequest(last_task=True))


def session_filter(session_id: str, **statuses: list[int]) -> pb.TaskFilter:
    return pb.TaskFilter(session=pb.TaskFilter.IdsRequest(ids=[session_id]), **_statuses(statuses))


def task_filter(task_ids: list[str], **statuses: list[int]) -> pb.TaskFilter:
    return pb.TaskFilter(task=pb.TaskFilter.IdsRequest(ids=task_ids), **_statuses(statuses))


def _statuses(statuses: dict[str, list[int]]) -> dict[str, pb.TaskFilter.StatusesRequest]:
    return {k: pb.TaskFilter.StatusesRequest(statuses=v) for k, v in statuses.items()}


def wait(stub: SubmitterStub, task_filter: pb.TaskFilter, **flags: bool) -> dict[int, int]:
    count = stub.WaitForCompletion(pb.WaitRequest(filter=task_filter, **flags), timeout=WAIT)
    return {v.status: v.count for v in count.values}


def result_replies(stub: SubmitterStub, session_id: str, result_id: str) -> list[pb.ResultReply]:
    request = objects_pb2.ResultRequest(session=session_id, result_id=result_id)
    return list(stub.TryGetResultStream(request, timeout=WAIT))


def data_of(replies: list[pb.ResultReply]) -> bytes:
    """The data of a TryGetResultStream answer, which must end with data_complete."""
    assert all(r.WhichOneof("type") == "result" for r in replies), replies
    assert replies[-1].result.WhichOneof("type") == "data_complete"
    return b"".join(r.result.data for r in replies[:-1])


# -- sessions -----------------------------------------------------------------------------------


def test_service_configuration(stub: SubmitterStub) -> None:
    configuration = stub.GetServiceConfiguration(objects_pb2.Empty())
    assert configuration.data_chunk_max_size == 2 * 1024 * 1024  # Submitter__PreferredMessageSize


def test_session_lifecycle(channel: grpc.Channel, stub: SubmitterStub, session_id: str) -> None:
    assert ArmoniKSessions(channel).get_session(session_id).options.max_retries == 2
    running = pb.SessionFilter.StatusesRequest(statuses=[1])
    listed = stub.ListSessions(pb.SessionFilter(sessions=[session_id])).session_ids
    assert list(listed) == [session_id]
    assert session_id in stub.ListSessions(pb.SessionFilter(included=running)).session_ids
    assert session_id not in stub.ListSessions(pb.SessionFilter(excluded=running)).session_ids
    stub.CancelSession(objects_pb2.Session(id=session_id))
    cancelled = pb.SessionFilter.StatusesRequest(statuses=[2])
    assert session_id in stub.ListSessions(pb.SessionFilter(included=cancelled)).session_ids
    # Core's codes: cancelling twice, an unknown session, a request without options.
    assert code_of(lambda: stub.CancelSession(objects_pb2.Session(id=session_id))) == FP
    assert code_of(lambda: stub.CancelSession(objects_pb2.Session(id="no-such"))) == NOT_FOUND
    assert code_of(lambda: stub.CreateSession(pb.CreateSessionRequest())) == INVALID
    unknown = pb.CreateSessionRequest(default_task_option=OPTIONS.to_message(), partition_ids=["x"])
    assert code_of(lambda: stub.CreateSession(unknown)) == NOT_FOUND


# -- small and large tasks, statuses ------------------------------------------------------------


def test_small_and_large_tasks_run(
    channel: grpc.Channel, stub: SubmitterStub, session_id: str
) -> None:
    outs = outputs(channel, session_id, 5)
    smalls = small(
        stub, session_id, [(order("value", value=i * 3), [outs[i]], []) for i in range(3)]
    )
    # One large payload beyond the size kept in the database (object storage), one small.
    text = "x" * 200_000
    reply = stub.CreateLargeTasks(
        large_requests(
            session_id,
            [
                (order("upper", text=text), [outs[3]], []),
                (order("upper", text="hi"), [outs[4]], []),
            ],
            chunk=64 * 1024,
        )
    )
    larges = [s.task_info for s in reply.creation_status_list.creation_statuses]
    infos = smalls + larges
    assert [list(i.expected_output_keys) for i in infos] == [[o] for o in outs]
    assert len({i.task_id for i in infos}) == 5 and all(i.payload_id for i in infos)
    # Each payload is a COMPLETED result of the session, owned by the session (Core).
    payload = ArmoniKResults(channel).get_result(infos[3].payload_id)
    assert payload.status == ResultStatus.COMPLETED and payload.owner_task_id == session_id
    assert payload.size == len(order("upper", text=text))

    assert wait(stub, session_filter(session_id)) == {TaskStatus.COMPLETED: 5}
    for i in range(3):
        assert data_of(result_replies(stub, session_id, outs[i])) == str(i * 3).encode()
    big = data_of(result_replies(stub, session_id, outs[3]))
    assert big == text.upper().encode()
    assert data_of(result_replies(stub, "", outs[4])) == b"HI"  # the session may be left out

    ids = [i.task_id for i in infos]
    statuses = stub.GetTaskStatus(pb.GetTaskStatusRequest(task_ids=[*ids, "no-such"]))
    assert [(s.task_id, s.status) for s in statuses.id_statuses] == [
        (i, TaskStatus.COMPLETED) for i in ids
    ]  # unknown ids are left out, as in Core
    results = stub.GetResultStatus(
        pb.GetResultStatusRequest(session_id=session_id, result_ids=[*outs, "no-such"])
    )
    assert [(s.result_id, s.status) for s in results.id_statuses] == [
        (o, ResultStatus.COMPLETED) for o in outs
    ]
    count = stub.CountTasks(session_filter(session_id))
    assert [(v.status, v.count) for v in count.values] == [(TaskStatus.COMPLETED, 5)]
    assert sorted(stub.ListTasks(session_filter(session_id)).task_ids) == sorted(ids)
    completed = [TaskStatus.COMPLETED]
    assert len(stub.ListTasks(session_filter(session_id, included=completed)).task_ids) == 5
    assert list(stub.ListTasks(session_filter(session_id, excluded=completed)).task_ids) == []
    assert sorted(stub.ListTasks(task_filter(ids[:2])).task_ids) == sorted(ids[:2])
    output = stub.TryGetTaskOutput(
        objects_pb2.TaskOutputRequest(session=session_id, task_id=ids[0])
    )
    assert output.WhichOneof("type") == "ok"


def test_a_small_task_without_outputs_runs(
    stub: SubmitterStub, session_id: str, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    (task,) = small(stub, session_id, [(order("silent", marker=str(marker)), [], [])])
    assert list(task.expected_output_keys) == []
    assert wait(stub, task_filter([task.task_id])) == {TaskStatus.COMPLETED: 1}
    assert marker.read_text() == task.task_id


def test_a_dependent_task_waits_for_another_tasks_output(
    channel: grpc.Channel, stub: SubmitterStub, session_id: str
) -> None:
    first, second = outputs(channel, session_id, 2)
    # The dependent task first: it waits (PENDING) until its input is produced.
    (dependent,) = small(stub, session_id, [(order("sum_deps", add=1), [second], [first])])
    statuses = stub.GetTaskStatus(pb.GetTaskStatusRequest(task_ids=[dependent.task_id]))
    assert statuses.id_statuses[0].status == TaskStatus.PENDING
    replies = result_replies(stub, session_id, second)
    assert [r.not_completed_task for r in replies] == [dependent.task_id]
    small(stub, session_id, [(order("value", value=20), [first], [])])
    request = objects_pb2.ResultRequest(session=session_id, result_id=second)
    assert stub.WaitForAvailability(request, timeout=WAIT).WhichOneof("type") == "ok"
    assert data_of(result_replies(stub, session_id, second)) == b"21"


def test_error_cancellation_and_the_stop_flags(
    channel: grpc.Channel, stub: SubmitterStub, session_id: str
) -> None:
    failing_out, sleeping_out = outputs(channel, session_id, 2)
    failing, sleeping = small(
        stub,
        session_id,
        [
            (order("error", message="bad input"), [failing_out], []),
            (order("sleep", seconds=60), [sleeping_out], []),
        ],
    )
    # Stops at the first error while the other task still runs.
    counts = wait(stub, session_filter(session_id), stop_on_first_task_error=True)
    assert counts[TaskStatus.ERROR] == 1 and TaskStatus.COMPLETED not in counts
    output = stub.TryGetTaskOutput(objects_pb2.TaskOutputRequest(task_id=failing.task_id))
    assert output.WhichOneof("type") == "error" and "bad input" in output.error.details
    (error,) = result_replies(stub, session_id, failing_out)
    assert error.WhichOneof("type") == "error" and error.error.task_id == failing.task_id
    assert error.error.errors[0].task_status == TaskStatus.ERROR
    assert "bad input" in error.error.errors[0].detail
    request = objects_pb2.ResultRequest(session=session_id, result_id=failing_out)
    availability = stub.WaitForAvailability(request, timeout=WAIT)
    assert availability.WhichOneof("type") == "error"
    assert availability.error.task_id == failing.task_id

    (pending,) = result_replies(stub, session_id, sleeping_out)
    assert pending.not_completed_task == sleeping.task_id
    stub.CancelTasks(task_filter([sleeping.task_id]))
    counts = wait(stub, task_filter([sleeping.task_id]), stop_on_first_task_cancellation=True)
    assert set(counts) <= {TaskStatus.CANCELLING, TaskStatus.CANCELLED}
    (cancelled,) = result_replies(stub, session_id, sleeping_out)
    assert cancelled.WhichOneof("type") == "error"
    assert cancelled.error.errors[0].task_status in (TaskStatus.CANCELLING, TaskStatus.CANCELLED)
    # Without the flags, the wait ends once nothing is left to run (Core would wait for ever).
    counts = wait(stub, session_filter(session_id))
    assert counts == {TaskStatus.ERROR: 1, TaskStatus.CANCELLED: 1}


def test_a_wait_on_a_task_follows_its_retries(
    channel: grpc.Channel, stub: SubmitterStub, session_id: str, tmp_path: Path
) -> None:
    (out,) = outputs(channel, session_id, 1)
    marker = str(tmp_path / "crashed")
    (task,) = small(stub, session_id, [(order("crash_once", marker=marker), [out], [])])
    counts = wait(stub, task_filter([task.task_id]))
    assert counts == {TaskStatus.RETRIED: 1, TaskStatus.COMPLETED: 1}
    assert data_of(result_replies(stub, session_id, out)) == b"survived"


def test_watch_results(channel: grpc.Channel, stub: SubmitterStub, session_id: str) -> None:
    """WatchResults, which Core never built: the Results service's semantics."""
    (out,) = outputs(channel, session_id, 1)
    completed = [ResultStatus.COMPLETED]
    requests = iter(
        [
            pb.WatchResultRequest(
                fetch_statuses=completed, watch_statuses=completed, result_ids=[out, "no-such"]
            )
        ]
    )
    stream = stub.WatchResults(requests, timeout=WAIT)
    first = next(stream)
    assert (first.status, list(first.result_ids)) == (ResultStatus.NOTFOUND, ["no-such"])
    small(stub, session_id, [(order("value", value=7), [out], [])])
    second = next(stream)
    assert (second.status, list(second.result_ids)) == (ResultStatus.COMPLETED, [out])
    assert list(stream) == []  # half-closed and settled: the stream ends


# -- error cases (Core's status codes) ----------------------------------------------------------


def test_bad_submissions_are_refused_and_leave_nothing(
    channel: grpc.Channel, stub: SubmitterStub, session_id: str
) -> None:
    (out,) = outputs(channel, session_id, 1)
    good = [(order("value", value=1), [out], [])]
    assert code_of(lambda: small(stub, "no-such", good)) == NOT_FOUND
    assert code_of(lambda: small(stub, "", good)) == INVALID
    assert code_of(lambda: small(stub, session_id, [])) == INVALID
    assert code_of(lambda: small(stub, session_id, [(b"", [out], [])])) == INVALID
    assert code_of(lambda: small(stub, session_id, [(b"p", ["no-such"], [])])) == NOT_FOUND
    assert code_of(lambda: small(stub, session_id, [(b"p", [out], ["no-such"])])) == NOT_FOUND
    no_options = pb.CreateSmallTaskRequest(
        session_id=session_id,
        task_requests=[objects_pb2.TaskRequest(payload=b"p", expected_output_keys=[out])],
    )
    assert code_of(lambda: stub.CreateSmallTasks(no_options)) == INVALID
    # Large tasks: an empty stream, no init request first, chunks before a header, a stream
    # cut within a payload, a header without outputs (Core's validator).
    init = next(large_requests(session_id, [], 1))
    header = objects_pb2.InitTaskRequest(
        header=objects_pb2.TaskRequestHeader(expected_output_keys=[out])
    )
    chunk = pb.CreateLargeTaskRequest(task_payload=objects_pb2.DataChunk(data=b"p"))
    bad_streams = [
        [],
        [chunk],
        [init, chunk],
        [init, pb.CreateLargeTaskRequest(init_task=header), chunk],
        [
            init,
            pb.CreateLargeTaskRequest(
                init_task=objects_pb2.InitTaskRequest(header=objects_pb2.TaskRequestHeader())
            ),
        ],
    ]
    for stream in bad_streams:
        assert code_of(lambda s=stream: stub.CreateLargeTasks(iter(s))) == INVALID, stream
    unknown = large_requests("no-such", good, 10)
    assert code_of(lambda: stub.CreateLargeTasks(unknown)) == NOT_FOUND
    # None of these left a task or a payload behind.
    assert list(stub.ListTasks(session_filter(session_id)).task_ids) == []
    total, _ = ArmoniKResults(channel).list_results(page_size=0)
    _, listed = ArmoniKResults(channel).list_results(page_size=total or 1)
    assert [r.result_id for r in listed if r.session_id == session_id] == [out]
    # A closed session takes no task.
    ArmoniKSessions(channel).close_session(session_id)
    assert code_of(lambda: small(stub, session_id, good)) == FP


def test_unknown_and_invalid_ids(stub: SubmitterStub, session_id: str) -> None:
    unknown = objects_pb2.ResultRequest(session=session_id, result_id="no-such")
    assert code_of(lambda: list(stub.TryGetResultStream(unknown))) == NOT_FOUND
    assert code_of(lambda: stub.WaitForAvailability(unknown, timeout=WAIT)) == NOT_FOUND
    empty = objects_pb2.ResultRequest(session=session_id)
    assert code_of(lambda: list(stub.TryGetResultStream(empty))) == INVALID
    request = objects_pb2.TaskOutputRequest(session=session_id, task_id="no-such")
    assert code_of(lambda: stub.TryGetTaskOutput(request)) == NOT_FOUND
    assert code_of(lambda: stub.ListTasks(pb.TaskFilter())) == INVALID
    assert code_of(lambda: stub.CountTasks(task_filter([]))) == INVALID
    assert code_of(lambda: stub.WaitForCompletion(pb.WaitRequest(), timeout=WAIT)) == INVALID
    assert code_of(lambda: stub.CancelTasks(session_filter(session_id, included=[]))) == INVALID
    # Filters on unknown ids select nothing.
    assert list(stub.ListTasks(task_filter(["no-such"])).task_ids) == []
    assert wait(stub, session_filter("no-such")) == {}
