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

from tests.helpers import local_cluster, submit_orders

AGENTS = 64
OPTIONS = TaskOptions(max_duration=timedelta(seconds=120), priority=1, max_retries=2)


def _wait_for_workers(data_dir: Path, count: int, timeout: float) -> None:
    """Until `count` agents have a healthy worker (its socket exists once it serves)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(list((data_dir / "agents").glob("*/worker.sock"))) >= count:
            return
        time.sleep(0.5)
    ready = len(list((data_dir / "agents").glob("*/worker.sock")))
    raise AssertionError(f"{ready} of {count} agents serve after {timeout:.0f} s")


def test_64_agents_start_and_every_one_serves(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with local_cluster(data_dir, agents=AGENTS) as cluster:
        _wait_for_workers(data_dir, AGENTS, timeout=240)
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
