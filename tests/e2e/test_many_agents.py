"""64 agent/worker pairs on one machine (issue 14): `pyarmonik local --agents 64` starts them
all on the embedded backends (none lost to SQLite's lock at start), and every one of them
serves: each runs at least one task of a session."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import grpc
from armonik.client import ArmoniKSessions, ArmoniKTasks
from armonik.common import Task, TaskOptions, TaskStatus

from pyarmonik.storage.database.wakeups import wake_folder
from tests.helpers import local_cluster, submit_orders
from tests.processes import agent_pids

AGENTS = 64
OPTIONS = TaskOptions(max_duration=timedelta(seconds=120), priority=1, max_retries=2)


def _wait_until_all_serve(data_dir: Path, cluster_pid: int, count: int, timeout: float) -> None:
    """Until `count` agents serve: each has looked at the queue, found it empty and waits for
    a wake-up (its wake-up socket, named after its pid, exists). A worker's socket alone is
    not enough: under the load of 128 processes starting, an agent was seen to begin serving
    5 s after its worker listened, when the others had taken every task."""
    folder = wake_folder(data_dir / "pyarmonik.db")
    deadline = time.monotonic() + timeout
    waiting: set[int] = set()
    while time.monotonic() < deadline:
        agents = set(agent_pids(cluster_pid))
        names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
        waiting = {int(n.split("-")[0]) for n in names if n.split("-")[0].isdigit()} & agents
        if len(agents) >= count and len(waiting) >= count:
            return
        time.sleep(0.5)
    raise AssertionError(f"{len(waiting)} of {count} agents serve after {timeout:.0f} s")


def test_64_agents_start_and_every_one_serves(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    # A process each (not grouped as by default): the start-up that raced for SQLite's lock.
    with local_cluster(data_dir, "--agents-per-process", "1", agents=AGENTS) as cluster:
        assert cluster.process is not None
        _wait_until_all_serve(data_dir, cluster.process.pid, AGENTS, timeout=240)
        with grpc.insecure_channel(cluster.endpoint) as channel:
            session_id = ArmoniKSessions(channel).create_session(OPTIONS, ["default"])
            # Three 2 s tasks per agent: an agent holds at most two (running, prepared), so
            # the first wave alone needs every agent.
            orders: list[dict[str, object]] = [{"kind": "sleep", "seconds": 2}] * (3 * AGENTS)
            submit_orders(channel, session_id, orders)
            tasks = ArmoniKTasks(channel)
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                counts = tasks.count_tasks_by_status(Task.session_id == session_id)
                if counts.get(TaskStatus.COMPLETED, 0) == len(orders):
                    break
                time.sleep(1)
            else:
                raise AssertionError(f"tasks not all completed: {counts}")
            _, listed = tasks.list_tasks(Task.session_id == session_id, page_size=1000)
    owners = {task.owner_pod_id for task in listed}
    assert len(listed) == 3 * AGENTS
    assert len(owners) == AGENTS, f"{len(owners)} of {AGENTS} agents ran a task"
