"""Agents grouped in processes (`agents_per_process`): each agent of a group serves with its
own worker and owner id, and when a group's process dies `local` starts it again and the
tasks its agents held are run by someone."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from armonik.client import ArmoniKSessions, ArmoniKTasks
from armonik.common import Task, TaskOptions, TaskStatus

from tests.helpers import LocalProcess, local_cluster, submit_orders
from tests.processes import agent_pids, alive, descendants

OPTIONS = TaskOptions(max_duration=timedelta(seconds=120), priority=1, max_retries=3)


def _completed(channel: grpc.Channel, session_id: str, count: int, timeout: float) -> list[Task]:
    tasks = ArmoniKTasks(channel)
    deadline = time.monotonic() + timeout
    counts: dict[TaskStatus, int] = {}
    while time.monotonic() < deadline:
        counts = tasks.count_tasks_by_status(Task.session_id == session_id)
        if counts.get(TaskStatus.COMPLETED, 0) == count:
            _, listed = tasks.list_tasks(Task.session_id == session_id, page_size=1000)
            return listed
        time.sleep(0.5)
    raise AssertionError(f"tasks not all completed: {counts}")


def _wait_for_workers(data_dir: Path, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(list((data_dir / "agents").rglob("worker.sock"))) < count:
        assert time.monotonic() < deadline, "the workers did not all start"
        time.sleep(0.2)


def _wait_until_processing(channel: grpc.Channel, session_id: str, count: int) -> None:
    tasks, deadline = ArmoniKTasks(channel), time.monotonic() + 60
    while (
        tasks.count_tasks_by_status(Task.session_id == session_id).get(TaskStatus.PROCESSING, 0)
        < count
    ):
        assert time.monotonic() < deadline, f"fewer than {count} tasks ever ran at once"
        time.sleep(0.1)


@pytest.fixture
def grouped(tmp_path: Path) -> Iterator[LocalProcess]:
    data_dir = tmp_path / "data"
    with local_cluster(data_dir, "--agents-per-process", "3", agents=6) as cluster:
        _wait_for_workers(data_dir, 6)
        yield cluster


def test_six_agents_in_two_processes_each_serve(grouped: LocalProcess) -> None:
    cluster = grouped
    assert cluster.process is not None
    assert len(agent_pids(cluster.process.pid)) == 2
    with grpc.insecure_channel(cluster.endpoint) as channel:
        session_id = ArmoniKSessions(channel).create_session(OPTIONS, ["default"])
        # Three 1 s tasks per agent: an agent holds at most two, so every agent runs one.
        submit_orders(channel, session_id, [{"kind": "sleep", "seconds": 1}] * 18)
        listed = _completed(channel, session_id, 18, timeout=120)
    assert len({task.owner_pod_id for task in listed}) == 6


def test_a_killed_group_is_restarted_and_its_tasks_run(grouped: LocalProcess) -> None:
    cluster = grouped
    assert cluster.process is not None
    with grpc.insecure_channel(cluster.endpoint) as channel:
        session_id = ArmoniKSessions(channel).create_session(OPTIONS, ["default"])
        submit_orders(channel, session_id, [{"kind": "sleep", "seconds": 2}] * 24)
        _wait_until_processing(channel, session_id, 6)  # every agent runs one
        victim = agent_pids(cluster.process.pid)[0]
        workers = descendants(victim)
        os.kill(victim, signal.SIGKILL)
        listed = _completed(channel, session_id, 24, timeout=120)
    survivors = agent_pids(cluster.process.pid)
    assert victim not in survivors and len(survivors) == 2, "the group was started again"
    assert workers and not [pid for pid in workers if alive(pid)], "its workers died with it"
    completed = [task for task in listed if task.status == TaskStatus.COMPLETED]
    assert len(completed) == 24
    # The three tasks its agents ran were retried (those fetched ahead, handed back).
    assert len([task for task in listed if task.status == TaskStatus.RETRIED]) >= 3
