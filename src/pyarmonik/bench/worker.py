"""The benchmarks' worker, written with the official `armonik.worker` SDK.

Payload b"indep": write an empty output; b"sleep:<ms>": sleep that long, then the same (the
scale bench). Payload b"graph:<d>": at depth 0 write b"1"; else
submit two subtasks of depth d-1 and an aggregation task that inherits our output (b"sum").
"""

from __future__ import annotations

import time

from armonik.common import Output, TaskDefinition
from armonik.worker import TaskHandler, armonik_worker


def process(handler: TaskHandler) -> Output:
    payload = handler.payload
    output = handler.expected_results[0]
    if payload == b"indep":
        handler.send_results({output: b""})
    elif payload.startswith(b"sleep:"):
        time.sleep(int(payload[6:]) / 1000)
        handler.send_results({output: b""})
    elif payload == b"sum":
        total = sum(int(v) for v in handler.data_dependencies.values())
        handler.send_results({output: str(total).encode()})
    elif payload.startswith(b"graph:"):
        depth = int(payload[6:])
        if depth == 0:
            handler.send_results({output: b"1"})
            return Output()
        children = handler.create_results_metadata(["left", "right"])
        payloads = handler.create_results({"child": f"graph:{depth - 1}".encode(), "sum": b"sum"})
        child = payloads["child"].result_id
        handler.submit_tasks(
            [
                TaskDefinition(payload_id=child, expected_output_ids=[children["left"].result_id]),
                TaskDefinition(payload_id=child, expected_output_ids=[children["right"].result_id]),
                TaskDefinition(
                    payload_id=payloads["sum"].result_id,
                    expected_output_ids=[output],
                    data_dependencies=[children["left"].result_id, children["right"].result_id],
                ),
            ]
        )
    else:
        return Output(f"unknown payload {payload[:20]!r}")
    return Output()


if __name__ == "__main__":
    armonik_worker()(process).run()
