"""A worker built only with the official `armonik.worker` SDK; its behaviour is chosen by the
payload (a small JSON document), so one worker serves every end-to-end scenario."""

from __future__ import annotations

import json
import os
import time

import grpc
from armonik.common import Output, TaskDefinition
from armonik.protogen.common.agent_common_pb2 import NotifyResultDataRequest
from armonik.worker import TaskHandler, armonik_worker


def run(handler: TaskHandler) -> Output:
    order = json.loads(handler.payload.decode())
    kind = order["kind"]
    if kind == "upper":
        handler.send_results(
            {rid: order["text"].upper().encode() for rid in handler.expected_results}
        )
    elif kind == "sum_deps":
        total = sum(int(v.decode()) for v in handler.data_dependencies.values())
        handler.send_results(
            {handler.expected_results[0]: str(total + order.get("add", 0)).encode()}
        )
    elif kind == "value":
        time.sleep(order.get("sleep", 0))
        handler.send_results({handler.expected_results[0]: str(order["value"]).encode()})
    elif kind == "error":
        time.sleep(order.get("sleep", 0))
        return Output(order.get("message", "failed on purpose"))
    elif kind == "crash_once":
        marker = order["marker"]
        if not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(3)
        handler.send_results({handler.expected_results[0]: b"survived"})
    elif kind == "crash":
        os._exit(3)
    elif kind == "notify_unwritten":
        # Notify the output before writing its file (the agent placed an empty one there:
        # it must still answer NOT_FOUND), then write and notify it for real.
        output = handler.expected_results[0]
        request = NotifyResultDataRequest(
            ids=[NotifyResultDataRequest.ResultIdentifier(session_id=handler.session_id, result_id=output)],
            communication_token=handler.token,
        )  # fmt: skip
        try:
            handler._client.NotifyResultData(request)
            answer = b"accepted"
        except grpc.RpcError as error:
            answer = error.code().name.encode()
        handler.send_results({output: answer})
    elif kind == "sleep":
        time.sleep(order["seconds"])
        handler.send_results({handler.expected_results[0]: b"slept"})
    elif kind == "silent":
        # A task without outputs: its only trace is a file (the workers share this host).
        with open(order["marker"], "w") as marker:
            marker.write(handler.task_id)
    elif kind == "spawn_silent":
        # A subtask without outputs, as the C#, C++, Java and Rust SDKs may submit one (the
        # Python SDK's TaskDefinition refuses it, so its check is bypassed).
        payload = handler.create_results(
            {"p": json.dumps({"kind": "silent", "marker": order["marker"]}).encode()}
        )
        child = TaskDefinition(payload_id=payload["p"].result_id, expected_output_ids=["-"])
        child.expected_output_ids = []
        handler.submit_tasks([child])
        handler.send_results({handler.expected_results[0]: b"spawned"})
    elif kind == "fanout":
        # n children each producing a value, and an aggregation task that inherits our output
        n = order["n"]
        names = [f"child-{i}" for i in range(n)]
        outputs = handler.create_results_metadata(names)
        payloads = handler.create_results(
            {f"p-{i}": json.dumps({"kind": "value", "value": i + 1}).encode() for i in range(n)}
        )
        aggregate = handler.create_results({"agg": json.dumps({"kind": "sum_deps"}).encode()})
        handler.submit_tasks(
            [
                TaskDefinition(
                    payload_id=payloads[f"p-{i}"].result_id,
                    expected_output_ids=[outputs[names[i]].result_id],
                )
                for i in range(n)
            ]
            + [
                TaskDefinition(
                    payload_id=aggregate["agg"].result_id,
                    expected_output_ids=[handler.expected_results[0]],
                    data_dependencies=[outputs[name].result_id for name in names],
                )
            ]
        )
    elif kind == "tree":
        # depth d: leaves give 1, inner nodes delegate their output to an aggregation task
        depth = order["depth"]
        if depth == 0:
            handler.send_results({handler.expected_results[0]: b"1"})
            return Output()
        children = handler.create_results_metadata(["left", "right"])
        child_payload = handler.create_results(
            {"p": json.dumps({"kind": "tree", "depth": depth - 1}).encode()}
        )
        aggregate = handler.create_results({"agg": json.dumps({"kind": "sum_deps"}).encode()})
        handler.submit_tasks(
            [
                TaskDefinition(
                    payload_id=child_payload["p"].result_id,
                    expected_output_ids=[children["left"].result_id],
                ),
                TaskDefinition(
                    payload_id=child_payload["p"].result_id,
                    expected_output_ids=[children["right"].result_id],
                ),
                TaskDefinition(
                    payload_id=aggregate["agg"].result_id,
                    expected_output_ids=[handler.expected_results[0]],
                    data_dependencies=[children["left"].result_id, children["right"].result_id],
                ),
            ]
        )
    else:
        return Output(f"unknown kind {kind}")
    return Output()


if __name__ == "__main__":
    armonik_worker()(run).run()
