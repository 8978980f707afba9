"""The chaos suite's worker, built only with the official `armonik.worker` SDK: it runs the
fork-join trees of workload.py and records, in its own file under $CHAOS_RECORD_DIR, every
execution it starts ("run <task id>") and every output it is about to send
("write <task id> <result id> <sha256>"), so that the test can count executions per task and
compare what was stored with what every attempt wrote."""

from __future__ import annotations

import hashlib
import json
import os
import time

from armonik.common import Output, TaskDefinition
from armonik.worker import TaskHandler, armonik_worker
from workload import join_value, leaf_sleep, leaf_value  # this folder is sys.path[0]

# One file per worker process, opened for appending: a line is one write(2), whole even when
# the process is killed right after it.
RECORD = os.open(
    os.path.join(os.environ["CHAOS_RECORD_DIR"], f"{os.getpid()}.log"),
    os.O_WRONLY | os.O_CREAT | os.O_APPEND,
    0o644,
)


def record(*fields: str) -> None:
    os.write(RECORD, (" ".join(fields) + "\n").encode())


def send(handler: TaskHandler, result_id: str, value: int) -> None:
    data = str(value).encode()
    # Recorded before it is sent: whatever may have reached the agent is in the record.
    record("write", handler.task_id, result_id, hashlib.sha256(data).hexdigest())
    handler.send_results({result_id: data})


def fork(handler: TaskHandler, order: dict[str, int]) -> None:
    """Submit both children and a join that takes over our output (delegation)."""
    depth, index = order["depth"], order["index"]
    children = handler.create_results_metadata(["left", "right"])
    left, right = children["left"].result_id, children["right"].result_id
    payloads = handler.create_results(
        {
            "left": json.dumps({**order, "depth": depth - 1, "index": 2 * index}).encode(),
            "right": json.dumps({**order, "depth": depth - 1, "index": 2 * index + 1}).encode(),
            "join": json.dumps({"kind": "join", "left": left, "right": right}).encode(),
        }
    )
    time.sleep(0.02)  # the payloads are stored, not committed yet
    handler.submit_tasks(
        [
            TaskDefinition(payload_id=payloads["left"].result_id, expected_output_ids=[left]),
            TaskDefinition(payload_id=payloads["right"].result_id, expected_output_ids=[right]),
            TaskDefinition(
                payload_id=payloads["join"].result_id,
                expected_output_ids=[handler.expected_results[0]],
                data_dependencies=[left, right],
            ),
        ]
    )


def run(handler: TaskHandler) -> Output:
    record("run", handler.task_id)
    order = json.loads(handler.payload.decode())
    if order["kind"] == "node" and order["depth"] > 0:
        fork(handler, order)
    elif order["kind"] == "node":
        salt, index = order["salt"], order["index"]
        # Work on both sides of the send: a kill often lands while a sent output waits for
        # the task's end (stored, not committed yet).
        time.sleep(leaf_sleep(salt, index) / 2)
        send(handler, handler.expected_results[0], leaf_value(salt, index))
        time.sleep(leaf_sleep(salt, index) / 2)
    elif order["kind"] == "join":
        inputs = handler.data_dependencies
        value = join_value(int(inputs[order["left"]]), int(inputs[order["right"]]))
        send(handler, handler.expected_results[0], value)
    else:
        return Output(f"unknown order {order}")
    return Output()


if __name__ == "__main__":
    armonik_worker()(run).run()
