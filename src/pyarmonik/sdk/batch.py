"""The function worker's batched mode (protocol: compute/frames.py).

The agent sends batches of tasks with their payloads and small inputs inline; the worker
runs them one after the other and answers each with one `done` frame carrying its outputs,
the results it created and the subtasks it submitted. Result ids are made here (new_id, as
the agent would): a task that submits or delegates never waits for the agent.

One thread reads the socket, so that the agent can take back the tasks not started yet
(`giveback`) while a long one runs; the main thread runs the tasks.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from armonik.common import TaskDefinition, TaskOptions
from armonik.protogen.common import agent_common_pb2

from pyarmonik.compute.frames import VERSION, BlockingLink, Frame
from pyarmonik.domain.ids import new_id
from pyarmonik.sdk.worker import run_task

TaskCreation = agent_common_pb2.SubmitTasksRequest.TaskCreation


@dataclass(frozen=True)
class CreatedResult:
    result_id: str
    name: str


@dataclass(frozen=True)
class _Priority:
    priority: int


class BatchHandler:
    """What the SDK's TaskContext uses of ArmoniK's TaskHandler, for a task of a batch:
    what the task declares is collected for its `done` frame."""

    def __init__(self, task: Frame, worker: BatchWorker):
        self.task_id: str = task["id"]
        self.session_id: str = task["session"]
        self.payload: bytes = task["payload"]
        self.expected_results: list[str] = list(task["outputs"])
        self.task_options = _Priority(int(task.get("priority", 1)))
        self.data_folder = ""
        self._inputs: dict[str, bytes] = task.get("inputs", {})
        self._worker = worker
        self.outputs: dict[str, bytes] = {}
        self.results: list[list[Any]] = []  # [result_id, name, data or None]
        self.subtasks: list[bytes] = []  # serialized TaskCreation messages

    def create_results_metadata(
        self, result_names: Iterable[str], batch_size: int = 0
    ) -> dict[str, CreatedResult]:
        return self._create({name: None for name in result_names})

    def create_results(
        self, results_data: dict[str, bytes], batch_size: int = 0
    ) -> dict[str, CreatedResult]:
        return self._create({name: bytes(data) for name, data in results_data.items()})

    def _create(self, entries: dict[str, bytes | None]) -> dict[str, CreatedResult]:
        created = {}
        for name, data in entries.items():
            result = CreatedResult(new_id(), name)
            self.results.append([result.result_id, name, data])
            created[name] = result
        return created

    def submit_tasks(
        self,
        tasks: list[TaskDefinition],
        default_task_options: TaskOptions | None = None,
        batch_size: int = 0,
    ) -> list[Any]:
        for definition in tasks:
            creation = TaskCreation(
                payload_id=definition.payload_id,
                expected_output_keys=definition.expected_output_ids,
                data_dependencies=definition.data_dependencies,
            )
            options = definition.options or default_task_options
            if options is not None:
                creation.task_options.CopyFrom(options.to_message())
            self.subtasks.append(creation.SerializeToString())
        return []

    def send_results(self, results_data: dict[str, bytes | bytearray]) -> None:
        self.outputs.update({name: bytes(data) for name, data in results_data.items()})

    def read_input(self, result_id: str) -> bytes:
        data = self._inputs.get(result_id)
        return data if data is not None else self._worker.resource(self.task_id, result_id)

    def get_resource_data(self, result_id: str, batch_size: int = 0) -> bytes:
        return self.read_input(result_id)


class BatchWorker:
    """Runs the batches an agent sends over the socket at `path`, until the agent hangs up."""

    def __init__(self, path: str):
        self.link = BlockingLink.connect(path)
        self._pending: deque[Frame] = deque()
        self._ready = threading.Condition()
        self._closed = False
        self._replies: queue.SimpleQueue[Frame | None] = queue.SimpleQueue()

    def serve(self) -> None:
        self.link.send({"t": "hello", "version": VERSION, "pid": os.getpid()})
        threading.Thread(target=self._read, name="pyarmonik-batch-reader", daemon=True).start()
        while True:
            with self._ready:
                while not self._pending and not self._closed:
                    self._ready.wait()
                if not self._pending:
                    return
                task = self._pending.popleft()
            self.link.send(self._run(task))

    def _run(self, task: Frame) -> Frame:
        started = time.perf_counter()
        handler = BatchHandler(task, self)
        error = run_task(handler, handler.read_input)
        return {
            "t": "done",
            "id": handler.task_id,
            "seconds": time.perf_counter() - started,
            "error": error,
            "outputs": handler.outputs,
            "results": handler.results,
            "subtasks": handler.subtasks,
        }

    def _read(self) -> None:
        try:
            while (frame := self.link.receive()) is not None:
                kind = frame["t"]
                if kind == "tasks":
                    with self._ready:
                        self._pending.extend(frame["tasks"])
                        self._ready.notify()
                elif kind == "giveback":
                    with self._ready:
                        returned = [task["id"] for task in self._pending]
                        self._pending.clear()
                    self.link.send({"t": "returned", "ids": returned})
                elif kind == "resource":
                    self._replies.put(frame)
        finally:
            with self._ready:
                self._closed = True
                self._ready.notify()
            self._replies.put(None)

    def resource(self, task_id: str, result_id: str) -> bytes:
        """The data of a result the agent did not send inline (asked while the task runs)."""
        self.link.send({"t": "resource", "id": task_id, "result": result_id})
        reply = self._replies.get()
        if reply is None:
            raise ConnectionError("the agent hung up")
        if "data" not in reply:
            raise LookupError(reply.get("error") or f"result {result_id} has no data")
        data: bytes = reply["data"]
        return data
