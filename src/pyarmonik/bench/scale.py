"""`pyarmonik bench scale`: how efficiency holds as agent/worker pairs are added on one machine.

For each agent count, a fresh `pyarmonik local` cluster (official Python worker) is started,
left idle for a while (what idle agents cost), then given sleep tasks, enough to keep every
agent busy for `work_seconds`. Efficiency = ideal time (tasks * task time / agents) ÷ wall
time (first task created → last task ended, from the tasks' own timestamps). CPU comes from
/proc around each phase, split between the agents, the workers and the control plane.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from armonik.client import ArmoniKSessions, ArmoniKTasks
from armonik.common import Task, TaskStatus

from pyarmonik.bench.run import OPTIONS, Cluster, _descendants, _timings, submit_independent
from pyarmonik.compute.grpc_idle import IDLE_CLOSE
from pyarmonik.local import agents_per_process

TICKS = os.sysconf("SC_CLK_TCK")
ROLES = ("agents", "workers", "control")


@dataclass
class ScaleRow:
    agents: int
    per_process: int  # agents per process
    tasks: int
    ideal_s: float
    wall_s: float
    efficiency: float
    cpu_ms_per_task: dict[str, float]  # by role
    rss_mb_per_agent: float
    idle_core_percent: dict[str, float]  # % of one core, all processes of a role together
    retried: int  # attempts retried (agents found silent under load)


def _role(pid: int, root: int) -> str | None:
    if pid == root:
        return "control"  # `pyarmonik local` runs the control plane in its own process
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if b"agent" in command and b"pyarmonik.cli.main" in command:
        return "agents"
    if any(b"worker" in part for part in command):
        return "workers"
    return None


def _cpu(root: int) -> dict[str, float]:
    """CPU seconds (user + system) so far of the cluster's processes, by role."""
    seconds = dict.fromkeys(ROLES, 0.0)
    for pid in _descendants(root):
        role = _role(pid, root)
        if role is None:
            continue
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        seconds[role] += (int(fields[11]) + int(fields[12])) / TICKS
    return seconds


def _rss_mb_per_agent(root: int, agents: int) -> float:
    """Memory of the agents' processes, shared out between the agents (several may run in
    one process: `agents_per_process`)."""
    sizes = []
    for pid in _descendants(root):
        if _role(pid, root) != "agents":
            continue
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    sizes.append(int(line.split()[1]) / 1024)
        except OSError:
            continue
    return sum(sizes) / agents


def _settle(root: int, limit: float = 30.0) -> None:
    """Wait until the cluster's start-up is over (under half a core for a second)."""
    deadline = time.monotonic() + limit
    before = sum(_cpu(root).values())
    while time.monotonic() < deadline:
        time.sleep(1.0)
        after = sum(_cpu(root).values())
        if after - before < 0.5:
            return
        before = after


FINAL = {TaskStatus.COMPLETED, TaskStatus.ERROR, TaskStatus.RETRIED, TaskStatus.TIMEOUT,
         TaskStatus.CANCELLED}  # fmt: skip


def _wait_finished(channel: grpc.Channel, session_id: str, expected: int) -> int:
    """Until every task of the session is final; how many attempts were retried (an agent
    found silent under load has its tasks retried: they count, once, in the wall time)."""
    tasks = ArmoniKTasks(channel)
    while True:
        counts = tasks.count_tasks_by_status(Task.session_id == session_id)
        if sum(counts.values()) >= expected and all(s in FINAL for s, n in counts.items() if n):
            if counts.get(TaskStatus.ERROR) or counts.get(TaskStatus.TIMEOUT):
                raise RuntimeError(f"tasks failed: {counts}")
            return int(counts.get(TaskStatus.RETRIED, 0))
        time.sleep(0.1)


def _difference(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {role: after[role] - before[role] for role in ROLES}


def measure(
    agents: int,
    task_ms: int,
    work_seconds: float,
    idle_seconds: float,
    extra: list[str],
    per_process: int | None = None,
) -> ScaleRow:
    """One agent count (grouped `per_process` to a process, None: `local`'s default): idle
    cost, then the tasks."""
    if per_process is not None:
        extra = [*extra, "--agents-per-process", str(per_process)]
    task_seconds = task_ms / 1000
    tasks = agents * max(1, math.ceil(work_seconds / max(task_seconds, 1e-3)))
    with (
        Cluster(agents, extra, ready_timeout=60 + 2 * agents) as cluster,
        grpc.insecure_channel(cluster.endpoint) as channel,
    ):
        assert cluster.process is not None
        root = cluster.process.pid
        _settle(root)
        # Idle agents are those past IDLE_CLOSE without a task: they have closed gRPC.
        time.sleep(IDLE_CLOSE + 1.0)
        before = _cpu(root)
        time.sleep(idle_seconds)
        idle = _difference(_cpu(root), before)
        session_id = ArmoniKSessions(channel).create_session(OPTIONS)
        before = _cpu(root)
        submit_independent(channel, session_id, tasks, f"sleep:{task_ms}".encode())
        retried = _wait_finished(channel, session_id, tasks)
        used = _difference(_cpu(root), before)
        rss = _rss_mb_per_agent(root, agents)
        ran, throughput, _ = _timings(channel, session_id)
    wall = len(ran) / throughput if throughput else float("inf")
    ideal = tasks * task_seconds / agents
    return ScaleRow(
        agents=agents,
        per_process=agents_per_process(agents, per_process),
        tasks=tasks,
        ideal_s=round(ideal, 2),
        wall_s=round(wall, 2),
        efficiency=round(ideal / wall, 3),
        cpu_ms_per_task={role: round(used[role] * 1000 / tasks, 2) for role in ROLES},
        rss_mb_per_agent=round(rss, 1),
        idle_core_percent={role: round(idle[role] * 100 / idle_seconds, 2) for role in ROLES},
        retried=retried,
    )


HEADER = (
    "| agents | per process | tasks | ideal (s) | wall (s) | efficiency | CPU ms/task: agents | workers "
    "| control plane | RSS MB/agent | idle: % of one core, agents | workers | control plane "
    "| retried |"
)


def row_line(row: ScaleRow) -> str:
    cpu, idle = row.cpu_ms_per_task, row.idle_core_percent
    cells = [
        row.agents, row.per_process, row.tasks, row.ideal_s, row.wall_s, f"{row.efficiency:.2f}",
        cpu["agents"], cpu["workers"], cpu["control"], row.rss_mb_per_agent,
        idle["agents"], idle["workers"], idle["control"], row.retried,
    ]  # fmt: skip
    return "| " + " | ".join(str(c) for c in cells) + " |"


def scale(
    counts: list[int],
    task_ms: int,
    work_seconds: float,
    idle_seconds: float,
    extra: list[str],
    backends: str,
    groupings: list[int | None],
) -> Iterator[str]:
    """The table, one row per agent count (each its own fresh cluster), line by line."""
    yield (
        f"scale: sleep tasks of {task_ms} ms, {work_seconds:g} s of work per agent, "
        f"{idle_seconds:g} s idle; backends {backends}; {os.cpu_count()} cores"
    )
    yield HEADER
    yield "|" + "---|" * (HEADER.count("|") - 1)
    for count in counts:
        for per_process in groupings:
            yield row_line(measure(count, task_ms, work_seconds, idle_seconds, extra, per_process))
