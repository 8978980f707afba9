"""The agent's lean gRPC (compute/lean_grpc.py) against grpcio at the other end: our client
calls a grpcio server, a grpcio client calls our server — what the official worker is."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from armonik.protogen.common import agent_common_pb2 as pb
from armonik.protogen.common import objects_pb2, worker_common_pb2
from armonik.protogen.worker import agent_service_pb2
from armonik.protogen.worker.agent_service_pb2_grpc import AgentServicer, AgentStub
from armonik.protogen.worker.worker_service_pb2_grpc import (
    WorkerServicer,
    add_WorkerServicer_to_server,
)

from pyarmonik.compute.lean_grpc import Channel, RpcError, Server, frame, methods_of
from pyarmonik.compute.worker_process import WorkerStub
from pyarmonik.control.errors import rpc
from pyarmonik.domain.errors import NotFound

pytestmark = pytest.mark.timeout(60)

BIG = 3 * 1024 * 1024 + 17  # beyond every default window and frame size


class Worker(WorkerServicer):
    """Echoes the task id, with the payload id repeated `size` times when it is a number."""

    def __init__(self) -> None:
        self.metadata: list[tuple[str, str]] = []
        self.cancelled = asyncio.Event()

    async def Process(
        self, request: worker_common_pb2.ProcessRequest, context: grpc.aio.ServicerContext
    ) -> worker_common_pb2.ProcessReply:
        self.metadata = list(context.invocation_metadata() or [])
        if request.task_id == "fail":
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "déjà vu: 100% wrong")
        if request.task_id == "slow":
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        details = request.task_id * (int(request.payload_id) if request.payload_id else 1)
        return worker_common_pb2.ProcessReply(
            output=objects_pb2.Output(error=objects_pb2.Output.Error(details=details))
        )

    async def HealthCheck(
        self, request: objects_pb2.Empty, context: grpc.aio.ServicerContext
    ) -> worker_common_pb2.HealthCheckReply:
        return worker_common_pb2.HealthCheckReply(status=worker_common_pb2.HealthCheckReply.SERVING)


async def grpcio_worker(path: Path) -> tuple[grpc.aio.Server, Worker]:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", -1)])
    servicer = Worker()
    add_WorkerServicer_to_server(servicer, server)
    server.add_insecure_port(f"unix://{path}")
    await server.start()
    return server, servicer


async def test_the_client_calls_a_grpcio_server(tmp_path: Path) -> None:
    server, servicer = await grpcio_worker(tmp_path / "w.sock")
    channel = Channel(f"unix://{tmp_path / 'w.sock'}")
    stub = WorkerStub(channel)
    try:
        health = await stub.HealthCheck(objects_pb2.Empty(), timeout=5)
        assert health.status == worker_common_pb2.HealthCheckReply.SERVING
        for index in range(50):  # one connection, many streams
            reply = await stub.Process(
                worker_common_pb2.ProcessRequest(task_id=f"t{index}"), timeout=5
            )
            assert reply.output.error.details == f"t{index}"
        reply = await stub.Process(
            worker_common_pb2.ProcessRequest(task_id="x", data_dependencies=["d" * BIG]),
            timeout=10,
            metadata=[("traceparent", "00-abc-def-01")],
        )
        assert reply.output.error.details == "x"
        assert ("traceparent", "00-abc-def-01") in servicer.metadata
        reply = await stub.Process(
            worker_common_pb2.ProcessRequest(task_id="y", payload_id=str(BIG)), timeout=10
        )
        assert reply.output.error.details == "y" * BIG
    finally:
        await channel.close()
        await server.stop(None)


async def test_the_client_reports_status_deadline_and_cancellation(tmp_path: Path) -> None:
    server, servicer = await grpcio_worker(tmp_path / "w.sock")
    channel = Channel(f"unix://{tmp_path / 'w.sock'}")
    stub = WorkerStub(channel)
    try:
        with pytest.raises(RpcError) as failed:
            await stub.Process(worker_common_pb2.ProcessRequest(task_id="fail"), timeout=5)
        assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert failed.value.details() == "déjà vu: 100% wrong"
        with pytest.raises(RpcError) as late:
            await stub.Process(worker_common_pb2.ProcessRequest(task_id="slow"), timeout=0.3)
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        servicer.cancelled.clear()
        call = asyncio.create_task(
            stub.Process(worker_common_pb2.ProcessRequest(task_id="slow"), timeout=30)
        )
        await asyncio.sleep(0.3)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        async with asyncio.timeout(5):
            await servicer.cancelled.wait()  # the server was told (RST_STREAM)
        reply = await stub.Process(worker_common_pb2.ProcessRequest(task_id="after"), timeout=5)
        assert reply.output.error.details == "after"  # the connection is still good
    finally:
        await channel.close()
        await server.stop(None)


async def test_the_client_reconnects_to_a_restarted_server(tmp_path: Path) -> None:
    path = tmp_path / "w.sock"
    channel = Channel(f"unix://{path}")
    stub = WorkerStub(channel)
    with pytest.raises(RpcError) as absent:
        await stub.HealthCheck(objects_pb2.Empty(), timeout=2)
    assert absent.value.code() == grpc.StatusCode.UNAVAILABLE
    server, _ = await grpcio_worker(path)
    call = asyncio.create_task(
        stub.Process(worker_common_pb2.ProcessRequest(task_id="slow"), timeout=30)
    )
    await asyncio.sleep(0.3)
    await server.stop(None)  # the server goes while the call is under way
    with pytest.raises(RpcError) as lost:
        await call
    assert lost.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    path.unlink(missing_ok=True)
    server, _ = await grpcio_worker(path)
    try:
        reply = await stub.Process(worker_common_pb2.ProcessRequest(task_id="again"), timeout=5)
        assert reply.output.error.details == "again"
    finally:
        await channel.close()
        await server.stop(None)


class Agent(AgentServicer):  # type: ignore[misc]
    """Answers as the agent's API does; `rpc` turns domain errors into status codes."""

    def __init__(self) -> None:
        self.started = asyncio.Event()

    @rpc
    async def NotifyResultData(
        self, request: pb.NotifyResultDataRequest, context: object
    ) -> pb.NotifyResultDataResponse:
        ids = [i.result_id for i in request.ids]
        if "missing" in ids:
            raise NotFound("No data file for result missing — ünïcode")
        if "slow" in ids:
            self.started.set()
            await asyncio.sleep(2)
        return pb.NotifyResultDataResponse(result_ids=ids)

    @rpc
    async def CreateResults(
        self, request: pb.CreateResultsRequest, context: object
    ) -> pb.CreateResultsResponse:
        return pb.CreateResultsResponse(
            results=[pb.ResultMetaData(name=r.name, result_id=r.data.decode()[:3]) for r in request.results],
            communication_token=request.communication_token * (len(request.results[0].data) if request.results else 1),
        )  # fmt: skip

    async def CreateTask(
        self, requests: AsyncIterator[pb.CreateTaskRequest], context: object
    ) -> pb.CreateTaskReply:
        count = 0
        async for _ in requests:
            count += 1
        return pb.CreateTaskReply(communication_token=str(count))


async def lean_agent(path: Path) -> tuple[Server, Agent]:
    servicer = Agent()
    server = Server(methods_of(servicer, agent_service_pb2.DESCRIPTOR.services_by_name["Agent"]))
    await server.start(f"unix://{path}")
    return server, servicer


def notify(*ids: str) -> pb.NotifyResultDataRequest:
    return pb.NotifyResultDataRequest(
        ids=[pb.NotifyResultDataRequest.ResultIdentifier(result_id=i) for i in ids]
    )


async def test_the_server_answers_a_grpcio_client(tmp_path: Path) -> None:
    server, _ = await lean_agent(tmp_path / "a.sock")
    try:
        async with grpc.aio.insecure_channel(
            f"unix://{tmp_path / 'a.sock'}", options=[("grpc.max_receive_message_length", -1)]
        ) as channel:
            stub = AgentStub(channel)
            for index in range(50):
                reply = await stub.NotifyResultData(notify(f"r{index}", "s"))
                assert list(reply.result_ids) == [f"r{index}", "s"]
            calls = [stub.NotifyResultData(notify(f"c{i}")) for i in range(20)]  # concurrent
            assert [list(r.result_ids) for r in await asyncio.gather(*calls)] == [
                [f"c{i}"] for i in range(20)
            ]
            big = pb.CreateResultsRequest(
                results=[pb.CreateResultsRequest.ResultCreate(name="n", data=b"abc" + b"x" * BIG)],
                communication_token="t",
            )
            reply = await stub.CreateResults(big)  # a large request in, a large reply out
            assert reply.results[0].result_id == "abc"
            assert reply.communication_token == "t" * (BIG + 3)
            streamed = await stub.CreateTask(iter([pb.CreateTaskRequest()] * 3))
            assert streamed.communication_token == "3"
    finally:
        await server.stop(0)


@contextlib.asynccontextmanager
async def served_agent(path: Path) -> AsyncIterator[tuple[AgentStub, Agent]]:
    """Our server at `path`, and a grpcio client's stub to it."""
    server, servicer = await lean_agent(path)
    try:
        async with grpc.aio.insecure_channel(f"unix://{path}") as channel:
            yield AgentStub(channel), servicer
    finally:
        await server.stop(0)


async def answers(stub: AgentStub, result_id: str) -> bool:
    reply = await stub.NotifyResultData(notify(result_id))
    return list(reply.result_ids) == [result_id]


async def test_the_server_reports_errors_and_unknown_methods(tmp_path: Path) -> None:
    async with served_agent(tmp_path / "a.sock") as (stub, _):
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.NotifyResultData(notify("missing"))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        assert missing.value.details() == "No data file for result missing — ünïcode"
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await stub.GetCommonData(pb.DataRequest(result_id="x"))
        assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert await answers(stub, "fine")


async def test_a_client_that_gives_up_leaves_the_server_serving(tmp_path: Path) -> None:
    async with served_agent(tmp_path / "a.sock") as (stub, servicer):
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await stub.NotifyResultData(notify("slow"), timeout=0.5)
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert servicer.started.is_set()
        assert await answers(stub, "next")


async def test_bytes_that_are_not_http2_close_that_connection_only(tmp_path: Path) -> None:
    path = tmp_path / "a.sock"
    server, _ = await lean_agent(path)
    try:
        for garbage in (
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\xff" * 64,
        ):
            reader, writer = await asyncio.open_unix_connection(str(path))
            writer.write(garbage)
            await writer.drain()
            async with asyncio.timeout(5):
                while await reader.read(65536):  # the server closes it
                    pass
            writer.close()
        async with grpc.aio.insecure_channel(f"unix://{path}") as channel:
            assert await answers(AgentStub(channel), "still")
    finally:
        await server.stop(0)


async def test_the_server_on_tcp_takes_a_free_port_and_refuses_a_taken_one() -> None:
    server, _ = await lean_agent_tcp("127.0.0.1:0")
    try:
        port = server.port
        assert port > 0
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert await answers(AgentStub(channel), "tcp")
        with pytest.raises(OSError):
            await lean_agent_tcp(f"127.0.0.1:{port}")
    finally:
        await server.stop(0)


async def lean_agent_tcp(target: str) -> tuple[Server, Agent]:
    servicer = Agent()
    server = Server(methods_of(servicer, agent_service_pb2.DESCRIPTOR.services_by_name["Agent"]))
    await server.start(target)
    return server, servicer


async def test_random_frames_never_break_the_server(tmp_path: Path) -> None:
    """Frames of random types, flags, streams and payloads after a valid preface (a bounded
    fuzz): each connection is served or closed, the loop reports no error, the server goes
    on serving."""
    path = tmp_path / "a.sock"
    server, _ = await lean_agent(path)
    errors: list[dict[str, object]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: errors.append(context))
    generator = random.Random(1414)
    try:
        for _ in range(150):
            reader, writer = await asyncio.open_unix_connection(str(path))
            data = bytearray(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            for _ in range(generator.randint(1, 6)):
                payload = generator.randbytes(generator.choice([0, 1, 4, 5, 6, 8, 9, 30, 300]))
                data += frame(
                    generator.randint(0, 10),
                    generator.choice([0, 1, 4, 5, 8, 0x20, 0x2D, 0xFF]),
                    generator.choice([0, 1, 2, 3, 5, 2**31 - 1]),
                    payload,
                )
            writer.write(bytes(data))
            await writer.drain()
            with contextlib.suppress(TimeoutError, ConnectionError):
                async with asyncio.timeout(0.05):
                    await reader.read(65536)
            writer.close()
        await asyncio.sleep(0.2)  # calls begun by random HEADERS frames end
        async with grpc.aio.insecure_channel(f"unix://{path}") as channel:
            assert await answers(AgentStub(channel), "alive")
        assert errors == []
    finally:
        loop.set_exception_handler(None)
        await server.stop(0)
