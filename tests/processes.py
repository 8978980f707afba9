"""Processes of the tests: finding those a `pyarmonik local` cluster started (from /proc),
starting and stopping `pyarmonik control|agent` processes, and restarting the backend
servers of the machine (PostgreSQL, RabbitMQ, Redis) under a running cluster."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pyarmonik.compute.orphans import dying_with_parent


def _table() -> dict[int, tuple[int, list[bytes]]]:
    """pid -> (parent pid, command line)."""
    found: dict[int, tuple[int, list[bytes]]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        found[int(entry.name)] = (parent, command)
    return found


def descendants(root: int) -> list[int]:
    """Every process below `root` (not `root` itself)."""
    table = _table()
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def agent_pids(root: int) -> list[int]:
    """The `pyarmonik agent` processes started by the local cluster `root`."""
    return [
        pid for pid, (parent, command) in _table().items() if parent == root and b"agent" in command
    ]


def state(pid: int) -> str:
    """The process's state letter in /proc (R, S, T: stopped, Z: zombie...); "" once gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


def alive(pid: int) -> bool:
    return state(pid) not in ("", "Z")


# -- `pyarmonik ...` processes of a deployment ------------------------------------------------


def start_pyarmonik(
    name: str, args: list[str], logs: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """A `pyarmonik ...` process, its stderr appended to logs/<name>.log (a restarted one
    goes on in the same log). It dies with us, and is a process group of its own."""
    with open(logs / f"{name}.log", "ab") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            dying_with_parent([sys.executable, "-m", "pyarmonik.cli.main", *args]),
            stdout=subprocess.DEVNULL,
            stderr=log,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )


def stop_process(process: subprocess.Popen[bytes], grace: float = 30) -> None:
    """SIGTERM, then SIGKILL to its whole group after `grace` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextmanager
def pyarmonik(
    name: str, args: list[str], logs: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """`start_pyarmonik`, stopped on the way out."""
    process = start_pyarmonik(name, args, logs, env)
    try:
        yield process
    finally:
        stop_process(process)


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Until something listens on 127.0.0.1:`port`; fails if `process` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the process exited with {process.returncode}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port}")


# -- the backend servers of the machine, restarted under a running cluster ---------------------

DOWN = 2.0  # seconds each service stays down


def run(command: str, timeout: float = 120) -> None:
    subprocess.run(command, shell=True, check=True, timeout=timeout, capture_output=True)


def succeeds(command: str) -> bool:
    return subprocess.run(command, shell=True, capture_output=True, timeout=60).returncode == 0


def wait_until(check: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.2)


def restart_rabbitmq(down: float = DOWN) -> None:
    try:
        run("rabbitmqctl stop_app")
        time.sleep(down)
    finally:
        run("rabbitmqctl start_app")
        wait_until(lambda: succeeds("rabbitmqctl await_startup"), "RabbitMQ up again")


def restart_redis(down: float = DOWN) -> None:
    """Redis runs without persistence here: it is restarted with SHUTDOWN SAVE into a file of
    ours, which the new server loads, as a Redis that keeps its data would be (a Redis that
    loses its data on restart loses completed results, which no orchestrator can give back)."""

    def config(name: str) -> str:
        lines = subprocess.run(
            ["redis-cli", "config", "get", name], capture_output=True, text=True, check=True
        ).stdout.splitlines()
        return lines[1] if len(lines) > 1 else ""

    # `dir` and `dbfilename` are protected (not settable at run time): the server saves
    # where it is configured to, and the new one is started to load that file.
    directory, dbfilename = config("dir"), config("dbfilename") or "dump.rdb"
    assert directory, "Redis reports no working directory"
    dump = Path(directory) / dbfilename
    ours = not dump.exists()
    try:
        done = subprocess.run(
            ["redis-cli", "shutdown", "save"], capture_output=True, text=True, timeout=60
        )
        assert "ERR" not in done.stdout, f"Redis could not save before stopping: {done.stdout}"
        wait_until(lambda: not succeeds("redis-cli ping"), "Redis stopped", 30)
        time.sleep(down)
    finally:
        run(
            'redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" '
            f"--appendonly no --dir {directory} --dbfilename {dbfilename}"
        )
        wait_until(
            lambda: (
                subprocess.run(["redis-cli", "ping"], capture_output=True, text=True).stdout.strip()
                == "PONG"
            ),
            "Redis up again",
        )
        if ours:  # loaded: not to be loaded again by a later start
            dump.unlink(missing_ok=True)


def restart_postgresql(down: float = DOWN) -> None:
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    control = f"pg_ctlcluster --skip-systemctl-redirect {version} main"
    try:
        run(f"{control} stop")
        time.sleep(down)
    finally:
        run(f"{control} start")
        wait_until(lambda: succeeds("pg_isready -q -h 127.0.0.1 -p 5432"), "PostgreSQL up again")


# service -> (the tool its restart needs, the restart)
RESTARTS: dict[str, tuple[str, Callable[..., None]]] = {
    "rabbitmq": ("rabbitmqctl", restart_rabbitmq),
    "redis": ("redis-server", restart_redis),
    "postgresql": ("pg_ctlcluster", restart_postgresql),
}
SERVICE_CHECKS = {
    "rabbitmq": "rabbitmqctl await_startup",
    "redis": "redis-cli ping | grep -q PONG",
    "postgresql": "pg_isready -q -h 127.0.0.1 -p 5432",
}


def require_restartable(service: str) -> None:
    """Skip unless this machine can restart `service`; fail instead when CI=true."""
    tool = RESTARTS[service][0]
    if shutil.which(tool) is None:
        reason = f"cannot restart {service} here ({tool} not found)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI=true requires it")
        pytest.skip(reason)


@contextmanager
def service_left_running(*services: str) -> Iterator[None]:
    """Whatever happens, the services run again afterwards (other tests need them)."""
    try:
        yield
    finally:
        for service in services:
            if not succeeds(SERVICE_CHECKS[service]):
                RESTARTS[service][1]()
