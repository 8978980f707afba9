"""pyarmonik.v1.Values/Watch (control/values.py), the SDK's stream of ended results with
their small data inline, on every backend combination."""

from __future__ import annotations

import os

import grpc
import pytest
from armonik.client import ArmoniKResults, ArmoniKTasks
from armonik.common import ResultStatus

from pyarmonik.control import values
from tests.conformance.support import Stream, submit_one

COMPLETED, ABORTED = int(ResultStatus.COMPLETED), int(ResultStatus.ABORTED)


def watch(channel: grpc.Channel, request: bytes) -> Stream:
    return Stream(channel.unary_stream(values.WATCH)(request))


def entries(stream: Stream) -> dict[str, tuple[int, bytes | None]]:
    return {i: (status, data) for i, status, data in values.decode(stream.next())["results"]}


def test_ended_results_with_small_data_inline(
    channel: grpc.Channel, session_id: str, results: ArmoniKResults, tasks: ArmoniKTasks
) -> None:
    small = results.create_results({"p:small": b"tiny"}, session_id)["p:small"].result_id
    big_data = os.urandom(values.VALUE_INLINE + 1)
    big = results.create_results_metadata(["p:big"], session_id)["p:big"].result_id
    results.upload_result_data(big, session_id, big_data)
    results.create_results({"q:other": b"not watched"}, session_id)
    later = results.create_results_metadata(["p:later"], session_id)["p:later"].result_id

    stream = watch(channel, values.encode({"session_id": session_id, "name_prefix": "p:"}))
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
    stream = watch(channel, values.encode({"session_id": session_id, "name_prefix": ""}))
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
        (values.encode({"name_prefix": "x"}), grpc.StatusCode.INVALID_ARGUMENT),
        (values.encode({"session_id": 3}), grpc.StatusCode.INVALID_ARGUMENT),
        (values.encode({"session_id": "s", "name_prefix": 1}), grpc.StatusCode.INVALID_ARGUMENT),
        (values.encode({"session_id": "no-such-session"}), grpc.StatusCode.NOT_FOUND),
        (b"\x93\x01\x02\x03", grpc.StatusCode.INVALID_ARGUMENT),  # a list, not a map
    ],
)
def test_bad_requests_get_clear_errors(
    channel: grpc.Channel, request_bytes: bytes, code: grpc.StatusCode
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        list(channel.unary_stream(values.WATCH)(request_bytes, timeout=10))
    assert raised.value.code() == code  # type: ignore[attr-defined]
