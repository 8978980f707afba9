"""The worker next to an agent: started with ArmoniK's environment variables, health-checked,
restarted when it exits or must be stopped (a cancelled or timed-out task keeps the official
Python worker busy: killing it is the only way to stop user code)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path

import grpc
from armonik.protogen.common import objects_pb2, worker_common_pb2
from armonik.protogen.worker.worker_service_pb2_grpc import WorkerStub

from pyarmonik.compute.frames import SOCKET_VARIABLE, VERSION, Frame, FrameError, encode, read_frame
from pyarmonik.compute.orphans import dying_with_parent
from pyarmonik.domain.errors import Unavailable

log = logging.getLogger(__name__)

SERVING = worker_common_pb2.HealthCheckReply.SERVING


class BatchChannel:
    """The agent's end of the batched protocol (compute/frames.py) with one worker life."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pid: int):
        self.reader = reader
        self.writer = writer
        self.pid = pid

    async def send(self, frame: Frame) -> None:
        self.writer.write(encode(frame))
        await self.writer.drain()

    async def receive(self) -> Frame | None:
        return await read_frame(self.reader)

    def close(self) -> None:
        self.writer.close()


class WorkerProcess:
    """A worker reached at `worker_socket`; started and supervised when `command` is given.

    A worker it starts is offered the batched protocol at `batch_socket`: the SDK's function
    worker connects there (then `batch` is its channel and Worker.Process is not used);
    any other worker ignores the offer and is reached over gRPC."""

    def __init__(
        self,
        command: str | None,
        worker_socket: Path,
        agent_socket: Path,
        start_timeout: float = 60.0,
        batch_socket: Path | None = None,
    ):
        self.command = command
        self.worker_socket = worker_socket
        self.agent_socket = agent_socket
        self.batch_socket = batch_socket
        self.start_timeout = start_timeout
        self.restarts = 0
        self._process: asyncio.subprocess.Process | None = None
        self._channel: grpc.aio.Channel | None = None
        self.stub: WorkerStub | None = None
        self.batch: BatchChannel | None = None
        self._batch_server: asyncio.Server | None = None
        self._connected: asyncio.Future[BatchChannel] | None = None

    def environment(self) -> dict[str, str]:
        variables = {
            **os.environ,
            "ComputePlane__WorkerChannel__SocketType": "unixdomainsocket",
            "ComputePlane__WorkerChannel__Address": str(self.worker_socket),
            "ComputePlane__AgentChannel__SocketType": "unixdomainsocket",
            "ComputePlane__AgentChannel__Address": str(self.agent_socket),
        }
        variables.pop(SOCKET_VARIABLE, None)
        if self.batch_socket is not None:
            variables[SOCKET_VARIABLE] = str(self.batch_socket)
        return variables

    async def _serve_batches(self) -> None:
        if self._batch_server is not None or self.batch_socket is None:
            return
        self.batch_socket.unlink(missing_ok=True)
        self._batch_server = await asyncio.start_unix_server(
            self._accept, path=str(self.batch_socket)
        )

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A worker connected: it is ours if it greets first and we are waiting for one."""
        try:
            hello = await asyncio.wait_for(read_frame(reader), 10)
        except (FrameError, TimeoutError, OSError):
            hello = None
        waiting = self._connected
        if (
            hello is None
            or hello.get("t") != "hello"
            or hello.get("version") != VERSION
            or waiting is None
            or waiting.done()
        ):
            log.warning("refused a batch connection (%r)", hello)
            writer.close()
            return
        waiting.set_result(BatchChannel(reader, writer, int(hello.get("pid", 0))))

    async def start(self) -> None:
        if self.command:
            await self._serve_batches()
            self._connected = asyncio.get_running_loop().create_future()
            self.worker_socket.unlink(missing_ok=True)
            # `exec`: the worker replaces the shell, so it is the one that dies with us.
            self._process = await asyncio.create_subprocess_exec(
                *dying_with_parent(["/bin/sh", "-c", f"exec {self.command}"]),
                env=self.environment(),
                start_new_session=True,
            )
        self._channel = grpc.aio.insecure_channel(
            f"unix://{self.worker_socket}",
            # A failed Process call is the agent's to retry (as a new attempt), never gRPC's;
            # without the retry machinery each call costs less.
            options=[("grpc.enable_retries", 0), ("grpc.max_receive_message_length", -1)],
        )
        self.stub = WorkerStub(self._channel)
        await self.wait_healthy()

    async def wait_healthy(self) -> None:
        """Wait until the worker connects to the batch socket, or answers HealthCheck
        (UNIMPLEMENTED counts as healthy)."""
        deadline = asyncio.get_running_loop().time() + self.start_timeout
        while True:
            if self._process is not None and self._process.returncode is not None:
                raise Unavailable(
                    f"worker exited with code {self._process.returncode} while starting: {self.command}"
                )
            if self._connected is not None and self._connected.done():
                self.batch = self._connected.result()
                return
            try:
                assert self.stub is not None
                reply = await self.stub.HealthCheck(objects_pb2.Empty(), timeout=2.0)
                if reply.status == SERVING:
                    return
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                    return
            if asyncio.get_running_loop().time() > deadline:
                raise Unavailable(f"worker did not become healthy within {self.start_timeout:.0f}s")
            if self._connected is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._connected), 0.1)
            else:
                await asyncio.sleep(0.1)

    @property
    def exited(self) -> bool:
        return self._process is not None and self._process.returncode is not None

    async def restart(self, reason: str) -> None:
        if not self.command:
            return  # an external worker is someone else's to restart
        log.warning("restarting worker (%s)", reason)
        self.restarts += 1
        await self.stop()
        await self.start()

    def kill(self) -> None:
        """Kill the worker at once (a task of it must stop); `restart` starts a new one."""
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)

    async def close(self) -> None:
        """Stop for good."""
        await self.stop()
        if self._batch_server is not None:
            self._batch_server.close()
            self._batch_server = None

    async def stop(self) -> None:
        if self.batch is not None:
            self.batch.close()
            self.batch = None
        if self._connected is not None and not self._connected.done():
            self._connected.cancel()
        self._connected = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
        process = self._process
        self._process = None
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(process.wait(), 10)
