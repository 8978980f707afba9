"""Shared test helpers: run a control plane in a background thread, free ports."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pyarmonik.config import PartitionSettings, Settings
from pyarmonik.control.server import ControlPlane


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BackgroundControlPlane:
    """A ControlPlane served from its own event loop in a daemon thread."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.plane: ControlPlane | None = None

    def start(self) -> None:
        self.thread.start()
        self.plane = self.call(self._start())

    async def _start(self) -> ControlPlane:
        plane = ControlPlane(self.settings)
        await plane.start()
        return plane

    def call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=60)

    def stop(self) -> None:
        if self.plane is not None:
            self.call(self.plane.stop(grace=0.5))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.settings.port}"


@contextmanager
def control_plane(
    data_dir: Path, partitions: tuple[str, ...] = ("default", "other"), **settings: Any
) -> Iterator[BackgroundControlPlane]:
    plane = BackgroundControlPlane(
        Settings(
            port=free_port(),
            data_dir=data_dir,
            partitions=[PartitionSettings(id=p) for p in partitions],
            **settings,
        )
    )
    plane.start()
    try:
        yield plane
    finally:
        plane.stop()


REPO = Path(__file__).resolve().parent.parent
OFFICIAL_WORKER = f"{sys.executable} {REPO / 'tests' / 'e2e' / 'workers' / 'official.py'}"


class LocalProcess:
    """`pyarmonik local` as a subprocess; `endpoint` once it printed it."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None):
        self.args = args
        self.env = env
        self.process: subprocess.Popen[str] | None = None
        self.endpoint = ""

    def start(self, timeout: float = 60) -> str:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pyarmonik.cli.main", "local", *self.args],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, **(self.env or {})},
            start_new_session=True,
        )
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if line:
                self.endpoint = line.strip()
                return self.endpoint
            if self.process.poll() is not None:
                raise RuntimeError(f"pyarmonik local exited with {self.process.returncode}")
        raise TimeoutError("pyarmonik local did not print its endpoint")

    def stop(self) -> int:
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode


@contextmanager
def local_cluster(
    data_dir: Path, *args: str, agents: int = 2, worker: str = OFFICIAL_WORKER
) -> Iterator[LocalProcess]:
    cluster = LocalProcess(
        [
            "--port",
            str(free_port()),
            "--agents",
            str(agents),
            "--worker",
            worker,
            "--data-dir",
            str(data_dir),
            *args,
        ]
    )
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
