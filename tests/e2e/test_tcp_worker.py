"""The official `armonik.worker` SDK on TCP: `pyarmonik agent --worker-channel tcp://…
--agent-channel tcp://…` (ArmoniK's `ComputePlane__*Channel__SocketType=tcp`) runs the
end-to-end scenarios of test_official_worker.py, on the embedded backends."""

from __future__ import annotations

import ipaddress
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from armonik.protogen.common import objects_pb2, worker_common_pb2
from armonik.protogen.worker.worker_service_pb2_grpc import WorkerStub

from pyarmonik.compute.worker_process import Endpoint
from tests.e2e.test_official_worker import (  # the same scenarios, on this module's channel
    test_aggregation_tree_by_delegation,
    test_cancelling_a_running_task_stops_it,
    test_fan_out_through_the_agent_api,
    test_many_data_dependencies,
    test_output_error_ends_in_error_and_aborts,
    test_payload_to_output,
    test_tasks_without_outputs_run_from_the_client_and_from_a_worker,
    test_worker_crash_is_retried,
)
from tests.helpers import REPO, control_plane, free_port
from tests.processes import pyarmonik, start_pyarmonik, stop_process, wait_for_port

__all__ = [
    "test_aggregation_tree_by_delegation",
    "test_cancelling_a_running_task_stops_it",
    "test_fan_out_through_the_agent_api",
    "test_many_data_dependencies",
    "test_output_error_ends_in_error_and_aborts",
    "test_payload_to_output",
    "test_tasks_without_outputs_run_from_the_client_and_from_a_worker",
    "test_worker_crash_is_retried",
]

# tests/e2e/workers/official.py, started with the SDK's `worker_endpoint`: armonik 3.29.4
# binds `"http://" + ComputePlane__WorkerChannel__Address` when the socket type is not
# unixdomainsocket, an address gRPC refuses to bind, so on TCP its worker must be given the
# endpoint (its agent channel, `http://HOST:PORT`, is read from the variables as they are).
WORKER = (
    f'{sys.executable} -c "import os, sys; sys.path.insert(0, {str(REPO / "tests/e2e/workers")!r});'
    " from official import run; from armonik.worker import armonik_worker;"
    " armonik_worker(worker_endpoint=os.environ['ComputePlane__WorkerChannel__Address'])(run)"
    '.run()"'
)


class Cluster:
    def __init__(self, endpoint: str, worker_port: int, work_dir: Path, agent_pid: int):
        self.endpoint = endpoint
        self.worker_port = worker_port
        self.work_dir = work_dir
        self.agent_pid = agent_pid


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A control plane, and one `pyarmonik agent` whose worker and Agent API are on TCP."""
    data = tmp_path_factory.mktemp("tcp")
    worker_port = free_port()
    work_dir = data / "agent"
    with control_plane(data, partitions=("default",)) as plane:
        settings = plane.settings
        args = [
            "agent",
            "--worker", WORKER,
            "--worker-channel", f"tcp://127.0.0.1:{worker_port}",
            "--agent-channel", "tcp://127.0.0.1:0",
            "--work-dir", str(work_dir),
            "--database", settings.database_url,
            "--queue", settings.queue_url,
            "--objects", settings.objects_url,
        ]  # fmt: skip
        with pyarmonik("agent", args, data) as agent:
            wait_for_port(worker_port, agent)
            yield Cluster(plane.endpoint, worker_port, work_dir, agent.pid)


@pytest.fixture(scope="module")
def channel(cluster: Cluster) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(cluster.endpoint) as ch:
        yield ch


def test_the_worker_serves_on_tcp_and_no_socket_file_is_used(cluster: Cluster) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{cluster.worker_port}") as worker:
        reply = WorkerStub(worker).HealthCheck(objects_pb2.Empty(), timeout=10)
    assert reply.status == worker_common_pb2.HealthCheckReply.SERVING
    assert not list(cluster.work_dir.glob("*.sock")), "a unix socket was made after all"


def test_the_agent_api_listens_on_loopback_only(cluster: Cluster) -> None:
    """`tcp://127.0.0.1:0`: a port on loopback (the worker found it: tasks complete); the
    same port on another address of this machine answers nothing."""
    listening = _agent_ports(cluster)
    assert listening, "no TCP port of the agent besides the worker's"
    outside = _non_loopback_address()
    if outside is None:
        pytest.skip("this machine has no non-loopback address")
    for port in listening:
        with pytest.raises(OSError):
            socket.create_connection((outside, port), timeout=1).close()


def _agent_ports(cluster: Cluster) -> list[int]:
    """The TCP ports the agent process listens on (its Agent API and its liveness endpoint,
    both on loopback), from `ss`; any other address fails the test."""
    if shutil.which("ss") is None:
        pytest.skip("no ss on this machine")
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, timeout=10).stdout
    ports = []
    for line in out.splitlines():
        if f"pid={cluster.agent_pid}," not in line:
            continue
        host, _, port = line.split()[3].rpartition(":")
        address = ipaddress.ip_address(host.strip("[]"))
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped  # gRPC binds 127.0.0.1 as ::ffff:127.0.0.1
        assert address.is_loopback, f"the agent listens on {host}:{port}"
        ports.append(int(port))
    return ports


def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: only picks the route's source
            address = str(probe.getsockname()[0])
        except OSError:
            return None
    return None if address.startswith("127.") else address


@pytest.mark.parametrize(
    ("text", "target", "socket_type", "variable"),
    [
        ("tcp://127.0.0.1:10667", "127.0.0.1:10667", "tcp", "127.0.0.1:10667"),
        ("http://localhost:6666", "localhost:6666", "tcp", "http://localhost:6666"),
        ("tcp://[::1]:7", "[::1]:7", "tcp", "[::1]:7"),
        ("tcp://:0", "127.0.0.1:0", "tcp", "127.0.0.1:0"),
        ("unix:///cache/armonik_worker.sock", "unix:///cache/armonik_worker.sock",
         "unixdomainsocket", "/cache/armonik_worker.sock"),
        ("/cache/a.sock", "unix:///cache/a.sock", "unixdomainsocket", "/cache/a.sock"),
    ],
)  # fmt: skip
def test_channel_forms(text: str, target: str, socket_type: str, variable: str) -> None:
    endpoint = Endpoint.parse(text)
    assert (endpoint.target, endpoint.socket_type, endpoint.variable) == (
        target,
        socket_type,
        variable,
    )


@pytest.mark.parametrize("text", ["tcp://127.0.0.1", "ftp://h:1", "tcp://h:port"])
def test_bad_channels_are_refused_by_the_agent_command(text: str, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pyarmonik.cli import main as cli

    args = ["agent", "--worker", "true", "--data-dir", str(tmp_path), "--agent-channel", text]
    outcome = CliRunner().invoke(cli.app, args)
    assert outcome.exit_code == 2 and "host:port" in outcome.output


def test_an_agent_api_port_in_use_stops_the_agent(tmp_path: Path) -> None:
    """Two agents given the same Agent API port would split the worker's calls between
    them: the second one stops with an error instead."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["agent", "--worker", "true", "--data-dir", str(tmp_path)]
        args += [
            "--work-dir",
            str(tmp_path / "agent"),
            "--agent-channel",
            f"tcp://127.0.0.1:{port}",
        ]
        agent = start_pyarmonik("agent", args, tmp_path)
        try:
            assert agent.wait(60) == 2
        finally:
            stop_process(agent)
    assert f"cannot serve the Agent API on 127.0.0.1:{port}" in (tmp_path / "agent.log").read_text()
