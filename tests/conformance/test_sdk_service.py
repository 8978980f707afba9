"""pyarmonik.v1.Values/Watch (control/sdk_service.py), the SDK's stream of ended results with
their small data inline, on every backend combination."""

from __future__ import annotations

import os
from datetime import timedelta

import grpc
import pytest
from armonik.client import ArmoniKResults, ArmoniKTasks
from armonik.common import ResultStatus, TaskOptions, TaskStatus

from pyarmonik.control import sdk_service
from tests.conformance.support import Stream, submit_one

COMPLETED, ABORTED = int(ResultStatus.COMPLETED), int(ResultStatus.ABORTED)


def watch(channel: grpc.Channel, request: bytes) -> Stream:
    return Stream(channel.unary_stream(sdk_service.WATCH)(request))


def entries(stream: Stream) -> dict[str, tuple[int, bytes | None]]:
    return {
        i: (status, data) for i, status, data, _ in sdk_service.decode(stream.next())["results"]
    }


def test_ended_results_with_small_data_inline(
    channel: grpc.Channel, session_id: str, results: ArmoniKResults, tasks: ArmoniKTasks
) -> None:
    small = results.create_results({"p:small": b"tiny"}, session_id)["p:small"].result_id
    big_data = os.urandom(sdk_service.VALUE_INLINE + 1)
    big = results.create_results_metadata(["p:big"], session_id)["p:big"].result_id
    results.upload_result_data(big, session_id, big_data)
    results.create_results({"q:other": b"not watched"}, session_id)
    later = results.create_results_metadata(["p:later"], session_id)["p:later"].result_id

    stream = watch(channel, sdk_service.encode({"session_id": session_id, "name_prefix": "p:"}))
    try:
        snapshot = entries(stream)
        assert snapshot == {small: (COMPLETED, b"tiny"), big: (COMPLETED, None)}

        results.create_results({"q:ignored": b"not watched"}, session_id)
        results.upload_result_data(later, session_id, b"live")
        assert entries(stream) == {later: (COMPLETED, b"live")}
    finally:
        stream.call.cancel()


def test_aborted_results_come_without_data(
    channel: grpc.Channel, session_id: str, results: ArmoniKResults, tasks: ArmoniKTasks
) -> None:
    stream = watch(channel, sdk_service.encode({"session_id": session_id, "name_prefix": ""}))
    try:
        submitted = submit_one(results, tasks, session_id)
        tasks.cancel_tasks([submitted.task_id])
        seen: dict[str, tuple[int, bytes | None]] = {}
        while submitted.output_ids[0] not in seen:
            seen.update(entries(stream))
        assert seen[submitted.output_ids[0]] == (ABORTED, None)
    finally:
        stream.call.cancel()


@pytest.mark.parametrize(
    ("request_bytes", "code"),
    [
        (b"\xc1 not msgpack", grpc.StatusCode.INVALID_ARGUMENT),
        (sdk_service.encode({"name_prefix": "x"}), grpc.StatusCode.INVALID_ARGUMENT),
        (sdk_service.encode({"session_id": 3}), grpc.StatusCode.INVALID_ARGUMENT),
        (
            sdk_service.encode({"session_id": "s", "name_prefix": 1}),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (sdk_service.encode({"session_id": "no-such-session"}), grpc.StatusCode.NOT_FOUND),
        (b"\x93\x01\x02\x03", grpc.StatusCode.INVALID_ARGUMENT),  # a list, not a map
    ],
)
def test_bad_requests_get_clear_errors(
    channel: grpc.Channel, request_bytes: bytes, code: grpc.StatusCode
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        list(channel.unary_stream(sdk_service.WATCH)(request_bytes, timeout=10))
    assert raised.value.code() == code  # type: ignore[attr-defined]


def submit(channel: grpc.Channel, request: dict[str, object]) -> dict[str, object]:
    reply = channel.unary_unary(sdk_service.SUBMIT)(sdk_service.encode(request), timeout=10)
    return sdk_service.decode(reply)


def test_submit_creates_payloads_outputs_and_tasks_in_one_call(
    channel: grpc.Channel, session_id: str, results: ArmoniKResults, tasks: ArmoniKTasks
) -> None:
    shared = results.create_results({"shared": b"input"}, session_id)["shared"].result_id
    options = TaskOptions(
        max_duration=timedelta(seconds=30), priority=4, max_retries=1, partition_id="other"
    )
    reply = submit(
        channel,
        {
            "session_id": session_id,
            "tasks": [
                {"payload_name": "p0", "payload": b"zero", "output_name": "o0"},
                {
                    "payload_name": "p1",
                    "payload": b"one",
                    "output_name": "o1",
                    "dependencies": [shared],
                    "options": options.to_message().SerializeToString(),
                },
            ],
        },
    )
    created = reply["tasks"]
    assert isinstance(created, list) and len(created) == 2
    for entry, payload, name in zip(created, [b"zero", b"one"], ["o0", "o1"], strict=True):
        assert results.download_result_data(entry["payload_id"], session_id) == payload
        output = results.get_result(entry["output_id"])
        assert output.name == name and output.status == ResultStatus.CREATED
        assert output.owner_task_id == entry["task_id"]
        task = tasks.get_task(entry["task_id"])
        assert task.status == TaskStatus.SUBMITTED
        assert task.expected_output_ids == [entry["output_id"]]
    second = tasks.get_task(created[1]["task_id"])
    assert second.data_dependencies == [shared]
    assert second.options.priority == 4 and second.options.partition_id == "other"


def test_submit_refuses_bad_tasks_and_stores_nothing(
    channel: grpc.Channel, session_id: str, results: ArmoniKResults
) -> None:
    def code(request: dict[str, object]) -> grpc.StatusCode:
        with pytest.raises(grpc.RpcError) as raised:
            submit(channel, request)
        return raised.value.code()  # type: ignore[no-any-return, attr-defined]

    def one(**fields: object) -> dict[str, object]:
        task = {"payload_name": "p", "payload": b"x", "output_name": "o", **fields}
        return {"session_id": session_id, "tasks": [task]}

    invalid = grpc.StatusCode.INVALID_ARGUMENT
    _, before = results.list_results(page_size=1000)
    assert code({"session_id": session_id, "tasks": []}) == invalid
    assert code({"session_id": session_id, "tasks": "no"}) == invalid
    assert code(one(payload="text, not bytes")) == invalid
    assert code(one(payload=b"x" * (64 * 1024 + 1))) == invalid  # over inline_threshold
    assert code(one(dependencies="not a list")) == invalid
    assert code(one(options=b"\xff\xff not a message")) == invalid
    assert code(one(dependencies=["no-such-result"])) == grpc.StatusCode.NOT_FOUND
    assert code({**one(), "session_id": "no-such-session"}) == grpc.StatusCode.NOT_FOUND
    bad_partition = TaskOptions(
        max_duration=timedelta(seconds=1), priority=1, max_retries=1, partition_id="nowhere"
    )
    assert code(one(options=bad_partition.to_message().SerializeToString())) == invalid
    _, after = results.list_results(page_size=1000)
    assert len(after) == len(before), "a refused submission stores nothing"
