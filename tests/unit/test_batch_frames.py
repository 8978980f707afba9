"""The batched protocol's frames (compute/frames.py) and the worker's side of it
(sdk/batch.py), over a real socket pair, without an agent."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from armonik.common import TaskDefinition, TaskOptions
from armonik.protogen.common import agent_common_pb2

from pyarmonik.compute import frames
from pyarmonik.sdk import payload
from pyarmonik.sdk.batch import BatchHandler, BatchWorker


def test_frames_round_trip_and_refuse_what_is_not_a_frame() -> None:
    frame = {"t": "tasks", "tasks": [{"id": "a", "payload": b"\x00\xff", "inputs": {}}]}
    encoded = frames.encode(frame)
    assert frames.HEADER.unpack(encoded[:4])[0] == len(encoded) - 4
    assert frames.decode(encoded[4:]) == frame
    for body in (b"\xc1", frames.encode({"no": "kind"})[4:], frames.encode({"t": 3})[4:]):
        with pytest.raises(frames.FrameError):
            frames.decode(body)


async def test_read_frame_tells_a_clean_end_from_a_cut_one() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(frames.encode({"t": "hello"}))
    reader.feed_eof()
    assert await frames.read_frame(reader) == {"t": "hello"}
    assert await frames.read_frame(reader) is None
    cut = asyncio.StreamReader()
    cut.feed_data(frames.encode({"t": "done", "id": "x"})[:-2])
    cut.feed_eof()
    with pytest.raises(frames.FrameError):
        await frames.read_frame(cut)


def test_the_handler_collects_what_a_task_declares() -> None:
    task = {"id": "t1", "session": "s", "payload": b"p", "outputs": ["out"], "priority": 3,
            "inputs": {"dep": b"inline"}}  # fmt: skip
    handler = BatchHandler(task, worker=None)  # type: ignore[arg-type]
    created = handler.create_results_metadata(["later"])
    with_data = handler.create_results({"now": b"data"})
    assert uuid.UUID(created["later"].result_id) and uuid.UUID(with_data["now"].result_id)
    options = TaskOptions(
        max_duration=timedelta(seconds=5), priority=2, max_retries=1, partition_id="p"
    )
    handler.submit_tasks(
        [TaskDefinition(payload_id=with_data["now"].result_id, expected_output_ids=["out"])],
        default_task_options=options,
    )
    handler.send_results({"out": bytearray(b"value")})
    assert handler.read_input("dep") == b"inline"
    assert handler.task_options.priority == 3
    assert handler.outputs == {"out": b"value"}
    assert handler.results == [
        [created["later"].result_id, "later", None],
        [with_data["now"].result_id, "now", b"data"],
    ]
    (raw,) = handler.subtasks
    creation = agent_common_pb2.SubmitTasksRequest.TaskCreation.FromString(raw)
    assert creation.payload_id == with_data["now"].result_id
    assert list(creation.expected_output_keys) == ["out"]
    assert creation.task_options.priority == 2


# The worker runs in this process: its tasks see these objects.
_STARTED, _GATE = threading.Event(), threading.Event()


def _wait_for_gate() -> bool:
    _STARTED.set()
    return _GATE.wait(30)


def _task_frame(task_id: str, function: object, *args: object) -> dict[str, object]:
    data, _ = payload.encode_task(function, args, {}, lambda _: None)  # type: ignore[arg-type]
    return {"id": task_id, "session": "s", "payload": data, "outputs": [f"{task_id}-out"]}


def test_the_worker_runs_a_batch_in_order_and_hands_back_what_has_not_started(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "batch.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    worker = threading.Thread(target=lambda: BatchWorker(path).serve(), daemon=True)
    worker.start()
    connection, _ = server.accept()
    agent = frames.BlockingLink(connection)
    assert agent.receive() == {"t": "hello", "version": frames.VERSION, "pid": os.getpid()}

    agent.send({"t": "tasks", "tasks": [
        _task_frame("first", _wait_for_gate),
        _task_frame("second", pow, 2, 5),
        _task_frame("third", int, "x"),
    ]})  # fmt: skip
    assert _STARTED.wait(10)
    agent.send({"t": "giveback"})
    returned = agent.receive()
    assert returned == {"t": "returned", "ids": ["second", "third"]}
    _GATE.set()
    done = agent.receive()
    assert done is not None and done["t"] == "done" and done["id"] == "first"
    assert done["error"] is None and payload.loads_value(done["outputs"]["first-out"]) is True

    agent.send({"t": "tasks", "tasks": [_task_frame("fourth", int, "x")]})
    failed = agent.receive()
    assert failed is not None and failed["id"] == "fourth"
    assert "ValueError" in failed["error"] and failed["outputs"] == {}
    agent.close()  # the agent hangs up: the worker returns
    worker.join(10)
    assert not worker.is_alive()
    server.close()
