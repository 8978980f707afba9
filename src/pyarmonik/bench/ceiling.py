"""The ceiling the Indep figure is measured against: agents that do nothing but call the
official worker's `Process` and answer its `NotifyResultData`, one process per agent/worker
pair, all at once. No database, no queue, no storage: what is left is the worker's cost and
the gRPC calls between the two, so `indep / ceiling` says how much orchestration costs on the
machine in hand (the same machine gives figures ±30% apart from one minute to the next).

`link`: the do-nothing agent's gRPC. `grpcio` (the default, as the ceiling was defined when
the target of issue 13 was set) uses grpcio's asyncio client and server; `lean` uses the
agent's own link (compute/lean_grpc.py), which costs the agent about a third as much CPU per
task: the ceiling of an agent with nothing to orchestrate.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TextIO

import grpc
from armonik.protogen.common import agent_common_pb2, objects_pb2, worker_common_pb2
from armonik.protogen.worker import agent_service_pb2
from armonik.protogen.worker.agent_service_pb2_grpc import (
    AgentServicer,
    add_AgentServicer_to_server,
)
from armonik.protogen.worker.worker_service_pb2_grpc import WorkerStub

from pyarmonik.bench.run import WORKER
from pyarmonik.compute.lean_grpc import Channel, Server, methods_of
from pyarmonik.compute.worker_process import WorkerProcess
from pyarmonik.compute.worker_process import WorkerStub as LeanWorkerStub

LINKS = ("grpcio", "lean")


class _NotifyOnly(AgentServicer):  # type: ignore[misc]
    """The one Agent call the Indep worker makes."""

    async def NotifyResultData(
        self, request: agent_common_pb2.NotifyResultDataRequest, context: object
    ) -> agent_common_pb2.NotifyResultDataResponse:
        return agent_common_pb2.NotifyResultDataResponse(
            result_ids=[r.result_id for r in request.ids]
        )


async def _pair(tasks: int, folder: Path, link: str, report: TextIO) -> float:
    """Run `tasks` Indep tasks through one worker once stdin says go; seconds taken."""
    agent_socket = folder / "agent.sock"
    target = f"unix://{folder / 'worker.sock'}"
    server: grpc.aio.Server | Server
    channel: grpc.aio.Channel | Channel
    stub: WorkerStub | LeanWorkerStub
    if link == "lean":
        server = Server(
            methods_of(_NotifyOnly(), agent_service_pb2.DESCRIPTOR.services_by_name["Agent"])
        )
        await server.start(f"unix://{agent_socket}")
        channel = Channel(target)
        stub = LeanWorkerStub(channel)
    else:
        server = grpc.aio.server()
        add_AgentServicer_to_server(_NotifyOnly(), server)
        server.add_insecure_port(f"unix://{agent_socket}")
        await server.start()
        channel = grpc.aio.insecure_channel(target)
        stub = WorkerStub(channel)
    worker = WorkerProcess(WORKER, folder / "worker.sock", agent_socket)
    await worker.start()
    (folder / "payload").write_bytes(b"indep")
    request = worker_common_pb2.ProcessRequest(
        communication_token="ceiling",
        session_id="ceiling",
        payload_id="payload",
        data_folder=str(folder),
        configuration=objects_pb2.Configuration(data_chunk_max_size=84_000),
    )
    print("ready", file=report, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    start = time.perf_counter()
    for index in range(tasks):
        request.task_id = f"task{index}"
        del request.expected_output_keys[:]
        request.expected_output_keys.append(f"out{index}")
        reply = await stub.Process(request, timeout=None)
        if reply.output.WhichOneof("type") != "ok":
            raise RuntimeError(f"the worker failed a task: {reply.output}")
    seconds = time.perf_counter() - start
    await channel.close()
    await worker.stop()
    await server.stop(0)
    return seconds


def ceiling(tasks: int, agents: int, link: str = "grpcio") -> dict[str, float | str]:
    """`tasks` split over `agents` do-nothing agents run at once; tasks/s over the slowest."""
    share = tasks // agents
    with tempfile.TemporaryDirectory(prefix="pyarmonik-ceiling-") as root:
        pairs = []
        for index in range(agents):
            folder = Path(root, str(index))
            folder.mkdir()
            command = [
                sys.executable,
                "-m",
                "pyarmonik.bench.ceiling",
                str(share),
                str(folder),
                link,
            ]
            pairs.append(
                subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            )
        for pair in pairs:
            assert pair.stdout is not None
            if pair.stdout.readline().strip() != "ready":
                raise RuntimeError("a do-nothing agent did not start")
        for pair in pairs:
            assert pair.stdin is not None
            pair.stdin.write("go\n")
            pair.stdin.flush()
        seconds = []
        for pair in pairs:
            out, _ = pair.communicate(timeout=600)
            if pair.returncode != 0:
                raise RuntimeError(f"a do-nothing agent failed (exit code {pair.returncode})")
            seconds.append(float(out.split()[-1]))
    slowest = max(seconds)
    return {
        "tasks": share * agents,
        "agents": agents,
        "link": link,
        "seconds": round(slowest, 2),
        "tasks_per_second": round(share * agents / slowest, 1),
    }


if __name__ == "__main__":
    # Our stdout talks to the parent; the worker we start logs to stderr instead.
    report = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    seconds = asyncio.run(_pair(int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], report))
    print(seconds, file=report, flush=True)
