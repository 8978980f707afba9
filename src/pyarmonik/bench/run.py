"""Run the Indep and Graph workloads on a fresh `pyarmonik local` cluster and measure them.

The cluster runs in a subprocess (control plane + agents + official Python workers); this
process is only the client, with the official `armonik` client, as a user's would be.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

import grpc
from armonik.client import ArmoniKResults, ArmoniKSessions, ArmoniKTasks
from armonik.common import Task, TaskDefinition, TaskOptions, TaskStatus

from pyarmonik.bench import sdk as workloads
from pyarmonik.sdk import Cluster as SdkCluster
from pyarmonik.sdk import Future

WORKER = f"{sys.executable} -m pyarmonik.bench.worker"
SDK_WORKER = f"{sys.executable} -m pyarmonik.sdk.worker"  # the function worker
OPTIONS = TaskOptions(max_duration=timedelta(minutes=10), priority=1, max_retries=3)


@dataclass
class Report:
    workload: str
    tasks: int
    agents: int
    backends: str
    seconds: float
    tasks_per_second: float
    submission_per_second: float
    latency_p50_ms: float
    latency_p99_ms: float
    db_throughput: float  # tasks / (last ended_at - first created_at), as ArmoniK's clients
    peak_rss_mb: float
    # Where a task's time goes in an agent (mean ms, from the task timestamps).
    stages_ms: dict[str, float]

    def lines(self) -> list[str]:
        return [f"{key:>22}: {value}" for key, value in asdict(self).items()]


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def _peak_rss_mb(root: int) -> float:
    """Sum over the cluster's processes of their peak resident memory (VmHWM)."""
    total = 0
    for pid in _descendants(root):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


class Cluster:
    def __init__(
        self, agents: int, extra: list[str], worker: str = WORKER, ready_timeout: float = 60.0
    ):
        self.ready_timeout = ready_timeout
        self.data_dir = tempfile.mkdtemp(prefix="pyarmonik-bench-")
        self.agents = agents
        self.extra = extra
        self.worker = worker
        self.process: subprocess.Popen[str] | None = None
        self.endpoint = ""

    def __enter__(self) -> Cluster:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pyarmonik.cli.main", "local", "--port", "0", "--agents", str(self.agents),
             "--worker", self.worker, "--data-dir", self.data_dir, *self.extra],
            stdout=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
        assert self.process.stdout is not None
        self.endpoint = self.process.stdout.readline().strip()
        if not self.endpoint:
            raise RuntimeError("the local cluster did not start")
        self._wait_agents()
        return self

    def _wait_agents(self) -> None:
        """Agents start in a second or two; measure once they all serve."""
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            # agents/<partition>-<n>/ (or agents/<partition>-<n>/<k>/ in a group)
            sockets = list(Path(self.data_dir, "agents").rglob("worker.sock"))
            if len(sockets) >= self.agents:
                time.sleep(1.0)
                return
            time.sleep(0.2)

    def peak_rss_mb(self) -> float:
        return _peak_rss_mb(self.process.pid) if self.process else 0.0

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
        shutil.rmtree(self.data_dir, ignore_errors=True)


# (stage, from, to) over the timestamps an agent records on each task.
STAGES = (
    ("acquire", "received_at", "acquired_at"),
    ("prefetch", "acquired_at", "fetched_at"),
    ("wait_to_start", "fetched_at", "started_at"),
    ("processing", "started_at", "processed_at"),
    ("post_processing", "processed_at", "ended_at"),
)


def _timings(channel: grpc.Channel, session_id: str) -> tuple[list[float], float, dict[str, float]]:
    """Latencies (created → ended), throughput over the task timestamps, mean stage times."""
    tasks, page, rows = ArmoniKTasks(channel), 0, []
    while True:
        total, listed = tasks.list_tasks(Task.session_id == session_id, page=page, page_size=1000)
        rows += listed
        if len(rows) >= total or not listed:
            break
        page += 1
    latencies = [
        (t.ended_at - t.created_at).total_seconds() for t in rows if t.ended_at and t.created_at
    ]
    span = (max(t.ended_at for t in rows) - min(t.created_at for t in rows)).total_seconds()
    stages = {}
    for stage, begin, end in STAGES:
        spans = [
            (getattr(t, end) - getattr(t, begin)).total_seconds()
            for t in rows
            if getattr(t, begin) and getattr(t, end)
        ]
        stages[stage] = round(statistics.fmean(spans) * 1000, 2) if spans else 0.0
    return latencies, len(rows) / span if span > 0 else 0.0, stages


def _wait_done(channel: grpc.Channel, session_id: str, expected: int | None) -> None:
    """Until every task of the session is final (and at least `expected` exist)."""
    tasks = ArmoniKTasks(channel)
    busy = {TaskStatus.CREATING, TaskStatus.PENDING, TaskStatus.SUBMITTED, TaskStatus.DISPATCHED,
            TaskStatus.PROCESSING, TaskStatus.CANCELLING, TaskStatus.PAUSED}  # fmt: skip
    while True:
        counts = tasks.count_tasks_by_status(Task.session_id == session_id)
        if not busy & {s for s, n in counts.items() if n} and sum(counts.values()) >= (
            expected or 1
        ):
            failed = {s.name: n for s, n in counts.items() if s != TaskStatus.COMPLETED}
            if failed:
                raise RuntimeError(f"tasks did not all complete: {failed}")
            return
        time.sleep(0.1)  # often enough for the end time, rarely enough not to load the plane


def _report(workload: str, cluster: Cluster, channel: grpc.Channel, session_id: str, start: float,
            submitted: float, backends: str) -> Report:  # fmt: skip
    seconds = time.monotonic() - start
    latencies, db_throughput, stages = _timings(channel, session_id)
    count = len(latencies)
    quantiles = statistics.quantiles(latencies, n=100) if count > 1 else [latencies[0]] * 99
    return Report(
        workload=workload,
        tasks=count,
        agents=cluster.agents,
        backends=backends,
        seconds=round(seconds, 2),
        tasks_per_second=round(count / seconds, 1),
        submission_per_second=round(submitted, 1),
        latency_p50_ms=round(quantiles[49] * 1000, 1),
        latency_p99_ms=round(quantiles[98] * 1000, 1),
        db_throughput=round(db_throughput, 1),
        peak_rss_mb=round(cluster.peak_rss_mb(), 1),
        stages_ms=stages,
    )


def submit_independent(channel: grpc.Channel, session_id: str, tasks: int, payload: bytes) -> None:
    """`tasks` independent tasks sharing one payload, each with its own output, submitted
    in batches of 1,000 (the official client's calls)."""
    results = ArmoniKResults(channel)
    payload_id = results.create_results({"payload": payload}, session_id)["payload"].result_id
    names = [f"out{i}" for i in range(tasks)]
    outputs = results.create_results_metadata(names, session_id, batch_size=1000)
    definitions = [
        TaskDefinition(payload_id=payload_id, expected_output_ids=[outputs[n].result_id])
        for n in names
    ]
    ArmoniKTasks(channel).submit_tasks(session_id, definitions, chunk_size=1000)


def indep(tasks: int, agents: int, extra: list[str], backends: str) -> Report:
    """N independent no-op tasks submitted in one batch."""
    with Cluster(agents, extra) as cluster, grpc.insecure_channel(cluster.endpoint) as channel:
        session_id = ArmoniKSessions(channel).create_session(OPTIONS)
        start = time.monotonic()
        submit_independent(channel, session_id, tasks, b"indep")
        submitted = tasks / (time.monotonic() - start)
        _wait_done(channel, session_id, tasks)
        return _report("indep", cluster, channel, session_id, start, submitted, backends)


def graph(depth: int, agents: int, extra: list[str], backends: str) -> Report:
    """Nested fork-join: each task spawns two subtasks and an aggregation that inherits its output."""
    with Cluster(agents, extra) as cluster, grpc.insecure_channel(cluster.endpoint) as channel:
        session_id = ArmoniKSessions(channel).create_session(OPTIONS)
        results = ArmoniKResults(channel)
        start = time.monotonic()
        payload = results.create_results({"root": f"graph:{depth}".encode()}, session_id)[
            "root"
        ].result_id
        output = results.create_results_metadata(["out"], session_id)["out"].result_id
        ArmoniKTasks(channel).submit_tasks(
            session_id, [TaskDefinition(payload_id=payload, expected_output_ids=[output])]
        )
        submitted = 1 / (time.monotonic() - start)
        expected = 3 * 2**depth - 2
        _wait_done(channel, session_id, expected)
        value = results.download_result_data(output, session_id)
        if value != str(2**depth).encode():
            raise RuntimeError(f"graph root output is {value!r}, expected {2**depth}")
        return _report("graph", cluster, channel, session_id, start, submitted, backends)


def _sdk_run(workload: str, agents: int, extra: list[str], backends: str, submit: Callable[[], Future[int]], expected_value: int, expected_tasks: int) -> Report:  # fmt: skip
    """A workload written with the SDK (pyarmonik.bench.sdk), on the function worker."""
    with (
        Cluster(agents, extra, worker=SDK_WORKER) as cluster,
        grpc.insecure_channel(cluster.endpoint) as channel,
        SdkCluster.connect(cluster.endpoint, max_duration=600) as sdk,
    ):
        start = time.monotonic()
        future = submit()
        submitted = 1 / (time.monotonic() - start)
        value = future.result()
        if value != expected_value:
            raise RuntimeError(f"{workload} returned {value}, expected {expected_value}")
        _wait_done(channel, sdk.session.id, expected_tasks)
        return _report(workload, cluster, channel, sdk.session.id, start, submitted, backends)


def sdk_graph(depth: int, agents: int, extra: list[str], backends: str) -> Report:
    """Graph written with the SDK: `add.delegate(node.submit(d - 1), node.submit(d - 1))`."""
    return _sdk_run("graph-sdk", agents, extra, backends, lambda: workloads.node.submit(depth),
                    2**depth, 3 * 2**depth - 2)  # fmt: skip


def sdk_fib(n: int, agents: int, extra: list[str], backends: str) -> Report:
    """Recursive Fibonacci with the SDK, by delegation: `add.delegate(fib(n-1), fib(n-2))`."""
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return _sdk_run(f"fib-sdk({n})", agents, extra, backends, lambda: workloads.fib.submit(n),
                    a, workloads.fib_tasks(n))  # fmt: skip
