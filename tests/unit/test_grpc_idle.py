"""gRPC closed while idle (compute/grpc_idle.py): the agent's channel to its worker and its
Agent API server are closed together once unused for a while, never during a call, and opened
again for the next call."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import pytest
from armonik.protogen.common import objects_pb2, worker_common_pb2
from armonik.protogen.worker.worker_service_pb2_grpc import (
    WorkerServicer,
    add_WorkerServicer_to_server,
)

from pyarmonik.compute.grpc_idle import IdleCloser
from pyarmonik.compute.worker_process import Endpoint, WorkerProcess
from tests.processes import alive, state

pytestmark = pytest.mark.timeout(60)

IDLE = 0.2


class SlowWorker(WorkerServicer):
    """A worker whose Process lasts `seconds` (several idle periods)."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    async def Process(
        self, request: worker_common_pb2.ProcessRequest, context: object
    ) -> worker_common_pb2.ProcessReply:
        await asyncio.sleep(self.seconds)
        return worker_common_pb2.ProcessReply()

    async def HealthCheck(
        self, request: objects_pb2.Empty, context: object
    ) -> worker_common_pb2.HealthCheckReply:
        return worker_common_pb2.HealthCheckReply(status=worker_common_pb2.HealthCheckReply.SERVING)


class AgentApi:
    """Stands for the agent's Agent API server: counts how often it is started."""

    def __init__(self, path: Path):
        self.path = path
        self.started = 0

    async def __call__(self) -> grpc.aio.Server:
        self.started += 1
        server = grpc.aio.server()
        self.path.unlink(missing_ok=True)
        server.add_insecure_port(f"unix://{self.path}")
        await server.start()
        return server


async def worker_and_process(
    tmp_path: Path, seconds: float, agent: Endpoint | None = None
) -> tuple[grpc.aio.Server, WorkerProcess, AgentApi]:
    worker = grpc.aio.server()
    add_WorkerServicer_to_server(SlowWorker(seconds), worker)
    worker.add_insecure_port(f"unix://{tmp_path / 'worker.sock'}")
    await worker.start()
    process = WorkerProcess(
        None, tmp_path / "worker.sock", agent or tmp_path / "agent.sock", idle_close=IDLE
    )
    api = AgentApi(tmp_path / "agent.sock")
    process.agent_api = api
    await process.start()
    return worker, process, api


async def test_an_idle_agent_closes_its_channel_and_agent_api_server(tmp_path: Path) -> None:
    worker, process, api = await worker_and_process(tmp_path, 0.0)
    try:
        assert process.stub is not None and api.started == 1
        await asyncio.sleep(IDLE * 3)
        assert process.stub is None and process._api_server is None
        reply = await (await process.process(worker_common_pb2.ProcessRequest(), timeout=5))
        assert reply == worker_common_pb2.ProcessReply()
        assert api.started == 2 and process.stub is not None
    finally:
        await process.close()
        await worker.stop(0)
    assert process._api_server is None


async def test_grpc_stays_open_while_a_call_is_under_way(tmp_path: Path) -> None:
    worker, process, api = await worker_and_process(tmp_path, IDLE * 4)
    try:
        call = await process.process(worker_common_pb2.ProcessRequest(), timeout=10)
        await asyncio.sleep(IDLE * 2)
        assert process.stub is not None  # not closed under the running call
        assert await call == worker_common_pb2.ProcessReply()
        await asyncio.sleep(IDLE * 3)
        assert process.stub is None and api.started == 1
    finally:
        await process.close()
        await worker.stop(0)


async def test_an_agent_api_on_tcp_is_never_closed(tmp_path: Path) -> None:
    """Its port could be taken meanwhile, and the worker knows no other."""
    worker, process, api = await worker_and_process(
        tmp_path, 0.0, agent=Endpoint.parse("tcp://127.0.0.1:0")
    )
    try:
        await asyncio.sleep(IDLE * 3)
        assert process.stub is not None and api.started == 1
    finally:
        await process.close()
        await worker.stop(0)


async def test_without_the_agent_api_server_nothing_is_closed(tmp_path: Path) -> None:
    """An agent serving the Agent API itself: closing the channel alone would save nothing."""
    worker, process, _ = await worker_and_process(tmp_path, 0.0)
    await process.close()
    process = WorkerProcess(None, tmp_path / "worker.sock", tmp_path / "a.sock", idle_close=IDLE)
    try:
        await process.start()
        await (await process.process(worker_common_pb2.ProcessRequest(), timeout=5))
        await asyncio.sleep(IDLE * 3)
        assert process.stub is not None
    finally:
        await process.close()
        await worker.stop(0)


async def test_one_timer_at_most_and_none_while_busy() -> None:
    closed: list[float] = []
    loop = asyncio.get_running_loop()

    async def close() -> None:
        closed.append(loop.time())

    closer = IdleCloser(IDLE, close)
    closer.begin()
    await asyncio.sleep(IDLE * 2)
    assert closer._timer is None and not closed  # busy: no countdown
    began = loop.time()
    closer.end()
    for _ in range(5):  # uses in a row share the one timer
        closer.touch()
        await asyncio.sleep(IDLE / 4)
    await asyncio.sleep(IDLE * 2)
    assert len(closed) == 1 and closed[0] - began >= IDLE


# In a fresh interpreter (the test process may hold other gRPC objects): the threads a
# server and a channel start, then what is left once both are closed.
THREADS = textwrap.dedent(
    """
    import asyncio, os
    import grpc

    def threads():
        return len(os.listdir(f"/proc/{os.getpid()}/task"))

    async def main():
        server = grpc.aio.server()
        server.add_insecure_port("unix://" + os.environ["SOCKET"])
        await server.start()
        channel = grpc.aio.insecure_channel("unix://" + os.environ["SOCKET"])
        await channel.channel_ready()
        opened = threads()
        await channel.close()
        await server.stop(1.0)
        del channel, server
        for _ in range(100):
            if threads() == 1:
                break
            await asyncio.sleep(0.05)
        print(opened, threads())

    asyncio.run(main())
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="threads counted in /proc")
def test_grpc_stops_its_threads_once_nothing_is_open(tmp_path: Path) -> None:
    """What closing when idle relies on: gRPC's threads, which wake several times a second,
    exist only while a channel or a server does."""
    result = subprocess.run(
        [sys.executable, "-c", THREADS],
        env={"SOCKET": str(tmp_path / "s.sock"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    opened, left = (int(n) for n in result.stdout.split())
    assert opened > 1 and left == 1


# A worker process of its own (the agent starts it): answers Process at once.
WORKER = textwrap.dedent(
    """
    import asyncio, os
    import grpc
    from armonik.protogen.common import worker_common_pb2
    from armonik.protogen.worker.worker_service_pb2_grpc import (
        WorkerServicer, add_WorkerServicer_to_server)

    class Worker(WorkerServicer):
        async def Process(self, request, context):
            return worker_common_pb2.ProcessReply()

    async def main():
        server = grpc.aio.server()
        add_WorkerServicer_to_server(Worker(), server)
        server.add_insecure_port("unix://" + os.environ["ComputePlane__WorkerChannel__Address"])
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())
    """
)


async def started_worker(
    tmp_path: Path, pause_idle: bool = True, nice: int = 0
) -> tuple[WorkerProcess, int]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    process = WorkerProcess(
        f"{sys.executable} {script}",
        tmp_path / "worker.sock",
        tmp_path / "agent.sock",
        idle_close=IDLE,
        pause_idle=pause_idle,
        nice=nice,
    )
    process.agent_api = AgentApi(tmp_path / "agent.sock")
    await process.start()
    assert process._process is not None
    return process, process._process.pid


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="states read in /proc")
async def test_an_idle_worker_is_stopped_and_continued_for_the_next_task(tmp_path: Path) -> None:
    process, pid = await started_worker(tmp_path)
    try:
        for _ in range(2):  # paused, continued, paused again
            await asyncio.sleep(IDLE * 3)
            assert process.paused and state(pid) == "T"
            call = await process.process(worker_common_pb2.ProcessRequest(), timeout=10)
            assert await call == worker_common_pb2.ProcessReply()
            assert not process.paused and state(pid) != "T"
    finally:
        await process.close()
    assert not alive(pid)  # a stopped worker dies too


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="states read in /proc")
async def test_an_idle_worker_keeps_running_when_pausing_is_off(tmp_path: Path) -> None:
    process, pid = await started_worker(tmp_path, pause_idle=False)
    try:
        await asyncio.sleep(IDLE * 3)
        assert process.stub is None  # gRPC closed all the same
        assert not process.paused and state(pid) != "T"
    finally:
        await process.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="states read in /proc")
async def test_a_paused_worker_is_restarted_like_any_other(tmp_path: Path) -> None:
    """A task's cancellation kills the worker and starts another: a stopped one too."""
    process, pid = await started_worker(tmp_path)
    try:
        await asyncio.sleep(IDLE * 3)
        assert process.paused
        process.kill()
        await process.restart("test")
        assert process._process is not None and process._process.pid != pid
        call = await process.process(worker_common_pb2.ProcessRequest(), timeout=10)
        assert await call == worker_common_pb2.ProcessReply()
    finally:
        await process.close()


def niceness(pid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, pid)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the launcher is Linux's")
async def test_the_worker_runs_nicer_than_its_agent_restarted_too(tmp_path: Path) -> None:
    """`worker_nice`: the worker the agent starts (the official one execs in place of the
    launcher and the shell) has the agent's niceness plus `nice`, after a restart too."""
    ours = os.nice(0)
    if ours + 3 > 19:
        pytest.skip("this process is already as nice as a process can be")
    process, pid = await started_worker(tmp_path, pause_idle=False, nice=3)
    try:
        assert niceness(pid) == ours + 3
        process.kill()
        await process.restart("test")
        assert process._process is not None and process._process.pid != pid
        assert niceness(process._process.pid) == ours + 3
    finally:
        await process.close()
    plain, pid = await started_worker(tmp_path, pause_idle=False)
    try:
        assert niceness(pid) == ours
    finally:
        await plain.close()
