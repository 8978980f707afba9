"""The worker next to an agent: started with ArmoniK's environment variables, health-checked,
restarted when it exits or must be stopped (a cancelled or timed-out task keeps the official
Python worker busy: killing it is the only way to stop user code)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
from armonik.protogen.common import objects_pb2, worker_common_pb2

from pyarmonik.compute.frames import SOCKET_VARIABLE, VERSION, Frame, FrameError, encode, read_frame
from pyarmonik.compute.grpc_idle import IDLE_CLOSE, IdleCloser
from pyarmonik.compute.lean_grpc import Channel, RpcError, Server
from pyarmonik.compute.orphans import dying_with_parent
from pyarmonik.domain.errors import Unavailable

log = logging.getLogger(__name__)

SERVING = worker_common_pb2.HealthCheckReply.SERVING
WORKER_SERVICE = "/armonik.api.grpc.v1.worker.Worker"


class WorkerStub:
    """The two calls the agent makes to its worker (compute/lean_grpc.py, not grpcio)."""

    def __init__(self, channel: Channel):
        self.channel = channel

    async def Process(
        self, request: worker_common_pb2.ProcessRequest, timeout: float | None, metadata: Any = None
    ) -> worker_common_pb2.ProcessReply:
        return await self.channel.unary(
            f"{WORKER_SERVICE}/Process", request, worker_common_pb2.ProcessReply, timeout, metadata
        )

    async def HealthCheck(
        self, request: objects_pb2.Empty, timeout: float | None
    ) -> worker_common_pb2.HealthCheckReply:
        return await self.channel.unary(
            f"{WORKER_SERVICE}/HealthCheck", request, worker_common_pb2.HealthCheckReply, timeout
        )


@dataclass(frozen=True)
class Endpoint:
    """Where one of the two gRPC channels between agent and worker is: a unix socket `path`,
    or TCP `host:port` (ArmoniK's `ComputePlane__*Channel__SocketType=tcp`).

    `variable` is the `..._Address` value the worker is given: the socket's path, or for TCP
    the address as written minus a `tcp://` prefix, so `tcp://h:p` gives `h:p` (what the
    official Python SDK reads: it puts `http://` in front itself) and `http://h:p` gives
    `http://h:p` (ArmoniK.Api's C# worker and ArmoniK's charts)."""

    path: Path | None = None
    host: str = ""
    port: int = 0
    url: bool = False  # the worker's variable keeps the `http://` prefix

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """`unix:///abs/path` or a path; `tcp://host:port` or `http://host:port`."""
        if "://" not in text:
            return cls(path=Path(text))
        parts = urlsplit(text)
        if parts.scheme == "unix":
            return cls(path=Path(parts.netloc + parts.path))
        try:
            port = parts.port
        except ValueError:  # not a number
            port = None
        if parts.scheme not in ("tcp", "http") or port is None:
            raise ValueError(f"{text!r}: give unix:///path, tcp://host:port or http://host:port")
        # No host: loopback (ArmoniK's agent listens on every address; that is never implied).
        host = parts.hostname or "127.0.0.1"
        return cls(host=host, port=port, url=parts.scheme == "http")

    @property
    def tcp(self) -> bool:
        return self.path is None

    @property
    def target(self) -> str:
        """The gRPC address, to bind or to connect to."""
        if self.path is not None:
            return f"unix://{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def socket_type(self) -> str:
        return "tcp" if self.tcp else "unixdomainsocket"

    @property
    def variable(self) -> str:
        if self.path is not None:
            return str(self.path)
        return f"http://{self.target}" if self.url else self.target

    @property
    def private(self) -> bool:
        """Reachable from this machine only (a unix socket, or TCP on loopback)."""
        if self.path is not None or self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:  # a host name: it may resolve to anything
            return False

    def with_port(self, port: int) -> Endpoint:
        """The same TCP endpoint on the port actually bound (when asked for port 0)."""
        return Endpoint(self.path, self.host, port, self.url) if self.tcp else self

    def __str__(self) -> str:
        return self.target


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
    """A worker reached at `worker` (a unix socket, or TCP); started and supervised when
    `command` is given; it calls the Agent API at `agent`.

    A worker it starts is offered the batched protocol at `batch_socket`: the SDK's function
    worker connects there (then `batch` is its channel and Worker.Process is not used);
    any other worker ignores the offer and is reached over gRPC. A worker on TCP is not
    offered it (the batched protocol is on unix sockets only).

    `agent_api`, when set, starts the Agent API server (bound at `agent_endpoint`): it is
    opened with the channel to the worker and closed with it after `idle_close` seconds
    without a call, so that an idle agent holds no gRPC object (compute/grpc_idle.py).
    `process` is how a task is run: it opens them again if needed."""

    def __init__(
        self,
        command: str | None,
        worker: Path | Endpoint,
        agent: Path | Endpoint,
        start_timeout: float = 60.0,
        batch_socket: Path | None = None,
        idle_close: float | None = IDLE_CLOSE,
        pause_idle: bool = True,
        nice: int = 0,
    ):
        self.command = command
        self.worker_endpoint = worker if isinstance(worker, Endpoint) else Endpoint(path=worker)
        # Set again by the agent once its Agent API is bound (a TCP port 0 becomes a port).
        self.agent_endpoint = agent if isinstance(agent, Endpoint) else Endpoint(path=agent)
        self.batch_socket = None if self.worker_endpoint.tcp else batch_socket
        self.start_timeout = start_timeout
        self.restarts = 0
        self._process: asyncio.subprocess.Process | None = None
        self._channel: Channel | None = None
        self.stub: WorkerStub | None = None
        self.batch: BatchChannel | None = None
        self._batch_server: asyncio.Server | None = None
        self._connected: asyncio.Future[BatchChannel] | None = None
        self.agent_api: Callable[[], Awaitable[Server]] | None = None
        self._api_server: Server | None = None
        self._grpc_lock = asyncio.Lock()  # opening and closing gRPC, one at a time
        self._idle = IdleCloser(idle_close or 0.0, self._close_idle)
        self.pause_idle = pause_idle
        self.paused = False  # the worker we started is stopped (SIGSTOP) while idle
        self.nice = nice  # added to the niceness of the worker we start

    def environment(self) -> dict[str, str]:
        variables = {
            **os.environ,
            "ComputePlane__WorkerChannel__SocketType": self.worker_endpoint.socket_type,
            "ComputePlane__WorkerChannel__Address": self.worker_endpoint.variable,
            "ComputePlane__AgentChannel__SocketType": self.agent_endpoint.socket_type,
            "ComputePlane__AgentChannel__Address": self.agent_endpoint.variable,
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
            async with asyncio.timeout(10):
                hello = await read_frame(reader)
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

    async def open(self) -> WorkerStub:
        """The worker's stub; the channel (and the Agent API server) opened again if they were
        closed while idle."""
        stub = self.stub
        if stub is not None:
            return stub
        async with self._grpc_lock:
            self._resume()
            if self.agent_api is not None and self._api_server is None:
                self._api_server = await self.agent_api()
            stub = self.stub
            if stub is None:
                # A failed Process call is the agent's to retry (as a new attempt), never the
                # channel's; a worker on TCP is reached directly, never through a proxy.
                self._channel = Channel(self.worker_endpoint.target)
                stub = self.stub = WorkerStub(self._channel)
            return stub

    async def process(
        self, request: worker_common_pb2.ProcessRequest, timeout: float, metadata: Any = None
    ) -> asyncio.Task[worker_common_pb2.ProcessReply]:
        """Start the worker's Process call (gRPC is not closed while it runs): the call's
        task, which raises RpcError when the call fails (cancelling it cancels the call)."""
        stub = await self.open()
        call = asyncio.create_task(stub.Process(request, timeout=timeout, metadata=metadata))
        if self._idles:
            self._idle.begin()
            call.add_done_callback(self._idle.end)
        return call

    @property
    def _idles(self) -> bool:
        """Whether gRPC is closed when idle: only with the Agent API server in our hands (the
        channel alone would keep nothing from waking: the server would keep gRPC going), and
        not on TCP, whose port, once given up, another process could take before we bind it
        again (the worker knows no other)."""
        return (
            self._idle.seconds > 0
            and self.agent_api is not None
            and self.agent_endpoint.path is not None
        )

    async def _close_idle(self) -> None:
        async with self._grpc_lock:
            if not self._idle.expired():  # used meanwhile
                return
            channel, server = self._channel, self._api_server
            self._channel = self.stub = self._api_server = None
            try:
                if channel is not None:
                    await channel.close()
                if server is not None:
                    # Gracefully: the worker's connection is told to go away without an
                    # error (no call is under way, so this does not wait).
                    await server.stop(1.0)
            except Exception:  # the next call opens new ones anyway
                log.exception("closing the idle gRPC channel and server failed")
            self._pause()

    def _pause(self) -> None:
        """Stop an idle worker we started (and what it started), until `_resume`: the
        official Python worker's gRPC server polls ten times a second while it waits, ~9% of
        a core for 64 idle workers. Only a gRPC worker (batched frames are not awaited
        here), and never one we did not start. SIGKILL still ends it: our stop, a kill, or
        the kernel on our death (orphans.py)."""
        process = self._process
        if not self.pause_idle or self.batch is not None or process is None:
            return
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGSTOP)
                self.paused = True

    def _resume(self) -> None:
        process = self._process
        if self.paused and process is not None:
            self.paused = False
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGCONT)

    async def start(self) -> None:
        if not self._idles:
            return await self._start()
        # Busy until healthy: the idle countdown must not close what we are checking.
        self._idle.begin()
        try:
            await self._start()
        finally:
            self._idle.end()

    async def _start(self) -> None:
        # First: the worker is given the Agent API's address, its port once bound.
        await self.open()
        if self.command:
            await self._serve_batches()
            self._connected = asyncio.get_running_loop().create_future()
            if self.worker_endpoint.path is not None:
                self.worker_endpoint.path.unlink(missing_ok=True)
            # `exec`: the worker replaces the shell, so it is the one that dies with us.
            self._process = await asyncio.create_subprocess_exec(
                *dying_with_parent(["/bin/sh", "-c", f"exec {self.command}"], self.nice),
                env=self.environment(),
                start_new_session=True,
            )
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
            except RpcError as error:
                if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                    return
            if asyncio.get_running_loop().time() > deadline:
                raise Unavailable(f"worker did not become healthy within {self.start_timeout:.0f}s")
            if self._connected is not None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.1):
                        await asyncio.shield(self._connected)
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
        self._idle.cancel()
        await self.stop()
        async with self._grpc_lock:
            server, self._api_server = self._api_server, None
            if server is not None:
                await server.stop(0)
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
        async with self._grpc_lock:
            channel, self._channel, self.stub = self._channel, None, None
            if channel is not None:
                await channel.close()
        process = self._process
        self._process = None
        self.paused = False  # a stopped process dies of SIGKILL all the same
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(10):
                    await process.wait()
