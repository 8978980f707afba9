"""Helpers shared by the conformance tests (plain functions over the official client)."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from armonik.client import ArmoniKResults, ArmoniKTasks
from armonik.common import TaskDefinition, TaskOptions


def code_of(call: Callable[[], Any]) -> grpc.StatusCode:
    """The status code `call` fails with (AssertionError if it succeeds)."""
    try:
        call()
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return]
    raise AssertionError("the call succeeded but an rpc error was expected")


@dataclass
class Submitted:
    """A task submitted through the client, with its payload and outputs."""

    task_id: str
    payload_id: str
    output_ids: list[str]


def submit_one(
    results: ArmoniKResults,
    tasks: ArmoniKTasks,
    session_id: str,
    *,
    payload: bytes | None = b"payload",
    dependencies: list[str] | None = None,
    outputs: int = 1,
    options: TaskOptions | None = None,
) -> Submitted:
    """Create a payload (uploaded unless `payload` is None) and outputs, then submit a task."""
    names = ["payload", *(f"out{i}" for i in range(outputs))]
    created = results.create_results_metadata(names, session_id)
    payload_id = created["payload"].result_id
    if payload is not None:
        results.upload_result_data(payload_id, session_id, payload)
    output_ids = [created[f"out{i}"].result_id for i in range(outputs)]
    (task,) = tasks.submit_tasks(
        session_id,
        [
            TaskDefinition(
                payload_id=payload_id,
                expected_output_ids=output_ids,
                data_dependencies=dependencies or [],
                options=options,
            )
        ],
    )
    assert task.id
    return Submitted(task.id, payload_id, output_ids)


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until `check()` holds (for effects of asynchronous server work)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


class Stream:
    """A server stream read by a background thread, so tests can wait with timeouts."""

    END = object()

    def __init__(self, call: Any):
        self.call = call
        self.messages: queue.Queue[Any] = queue.Queue()
        self.error: grpc.RpcError | None = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for message in self.call:
                self.messages.put(message)
        except grpc.RpcError as error:
            self.error = error
        self.messages.put(self.END)

    def next(self, timeout: float = 10.0) -> Any:
        """The next message; AssertionError if none comes in time or the stream ended."""
        try:
            message = self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no message within {timeout}s") from None
        if message is self.END:
            self.messages.put(self.END)
            raise AssertionError(f"the stream ended ({self.error!r})")
        return message

    def take(self, count: int, timeout: float = 10.0) -> list[Any]:
        return [self.next(timeout) for _ in range(count)]

    def silent(self, duration: float) -> bool:
        """Whether no message (and no end) comes within `duration` seconds."""
        try:
            message = self.messages.get(timeout=duration)
        except queue.Empty:
            return True
        self.messages.put(message)
        return False

    def ended(self, timeout: float = 5.0) -> bool:
        """Whether the stream ends within `timeout` (remaining messages are discarded)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                if self.messages.get(timeout=left) is self.END:
                    self.messages.put(self.END)
                    return True
            except queue.Empty:
                return False
        return False

    def cancel(self) -> None:
        self.call.cancel()
        self.thread.join(timeout=5)


def queued(plane: Any, partition: str, expected: int, timeout: float = 5.0) -> list[str]:
    """Task ids pulled (and acked) from a partition's queue: `expected` of them, or what came
    in `timeout`. Goes through the plane's own queue backend, as an agent would."""
    queue_backend = plane.plane.backends.queue
    found: list[str] = []
    deadline = time.monotonic() + timeout
    while len(found) < expected or expected == 0:
        messages = plane.call(queue_backend.pull(partition, max(expected - len(found), 1), 30.0))
        if messages:
            plane.call(queue_backend.ack(messages))
            found += [m.task_id for m in messages]
        elif time.monotonic() > deadline:
            break
        else:
            time.sleep(0.02)
    return found


def drain(plane: Any, partition: str) -> None:
    """Empty a partition's queue (messages other tests left there)."""
    queued(plane, partition, 0, timeout=0.3)


def set_task(plane: Any, task_id: str, **values: Any) -> None:
    """Change a task's row as an agent would (there is no compute plane in these tests)."""
    from pyarmonik.domain.records import Task

    async def update() -> None:
        async with plane.plane.backends.database.write() as repository:
            changed = await repository.update(Task, {"task_id": task_id}, values)
            assert changed == [task_id]

    plane.call(update())
