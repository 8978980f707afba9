"""`pyarmonik local`: several partitions from a config file, graceful agent shutdown, and a
Ctrl-C that leaves nothing running."""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
import yaml
from armonik.client import (
    ArmoniKEvents,
    ArmoniKPartitions,
    ArmoniKResults,
    ArmoniKSessions,
    ArmoniKTasks,
)
from armonik.common import TaskDefinition, TaskOptions, TaskStatus

from tests.helpers import OFFICIAL_WORKER, LocalProcess, free_port
from tests.processes import agent_pids, alive, descendants

OPTIONS = TaskOptions(max_duration=timedelta(seconds=60), priority=1, max_retries=2)


def submit_one(
    channel: grpc.Channel, session_id: str, order: dict[str, object], partition: str | None = None
) -> tuple[str, str]:
    results = ArmoniKResults(channel)
    out = results.create_results_metadata(["out"], session_id)["out"].result_id
    payload = results.create_results({"in": json.dumps(order).encode()}, session_id)["in"].result_id
    options = None
    if partition:
        options = TaskOptions(
            max_duration=timedelta(seconds=60), priority=1, max_retries=2, partition_id=partition
        )
    (task,) = ArmoniKTasks(channel).submit_tasks(
        session_id, [TaskDefinition(payload_id=payload, expected_output_ids=[out], options=options)]
    )
    return task.id, out


def test_config_with_two_partitions_then_ctrl_c_leaves_nothing(tmp_path: Path) -> None:
    config = tmp_path / "cluster.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "partitions": [
                    {"id": "fast", "priority": 2, "agents": 1, "worker": OFFICIAL_WORKER},
                    {"id": "slow", "priority": 1, "agents": 2, "worker": OFFICIAL_WORKER},
                ]
            }
        )
    )
    cluster = LocalProcess(
        ["--port", str(free_port()), "--data-dir", str(tmp_path / "data"), "--config", str(config)]
    )
    cluster.start()
    try:
        assert cluster.process is not None
        deadline = time.monotonic() + 30
        while len(agent_pids(cluster.process.pid)) < 3:
            assert time.monotonic() < deadline, "three agents (1 + 2) did not start"
            time.sleep(0.1)
        with grpc.insecure_channel(cluster.endpoint) as channel:
            _, partitions = ArmoniKPartitions(channel).list_partitions()
            assert {(p.id, p.priority) for p in partitions} == {("fast", 2), ("slow", 1)}
            session_id = ArmoniKSessions(channel).create_session(
                OPTIONS, partition_ids=["fast", "slow"]
            )
            fast_task, fast_out = submit_one(
                channel, session_id, {"kind": "value", "value": 1}, "fast"
            )
            slow_task, slow_out = submit_one(
                channel, session_id, {"kind": "value", "value": 2}, "slow"
            )
            ArmoniKEvents(channel).wait_for_result_availability([fast_out, slow_out], session_id)
            tasks = ArmoniKTasks(channel)
            assert tasks.get_task(fast_task).options.partition_id == "fast"
            assert tasks.get_task(slow_task).options.partition_id == "slow"
            assert ArmoniKResults(channel).download_result_data(slow_out, session_id) == b"2"
        agent_dirs = list((tmp_path / "data" / "agents").iterdir())
        assert sorted(p.name.rsplit("-", 1)[0] for p in agent_dirs) == ["fast", "slow", "slow"]
        # The Agent API's sockets are in folders only the agent's user can open.
        assert {p.stat().st_mode & 0o777 for p in agent_dirs} == {0o700}
        everything = descendants(cluster.process.pid)
        assert len(everything) >= 6, "three agents and their three workers"
    finally:
        assert cluster.stop() == 0
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in everything):
        assert time.monotonic() < deadline, "processes left running after Ctrl-C"
        time.sleep(0.1)


@pytest.mark.parametrize("agents", [1, 2], ids=["one agent", "a process of two agents"])
def test_sigterm_lets_the_running_task_finish(tmp_path: Path, agents: int) -> None:
    cluster = LocalProcess(
        [
            "--port",
            str(free_port()),
            "--agents",
            str(agents),
            "--agents-per-process",
            str(agents),
            "--worker",
            OFFICIAL_WORKER,
            "--data-dir",
            str(tmp_path),
        ]
    )
    cluster.start()
    try:
        assert cluster.process is not None
        with grpc.insecure_channel(cluster.endpoint) as channel:
            session_id = ArmoniKSessions(channel).create_session(OPTIONS)
            task_id, out = submit_one(
                channel, session_id, {"kind": "value", "value": 42, "sleep": 3}
            )
            tasks = ArmoniKTasks(channel)
            deadline = time.monotonic() + 30
            while tasks.get_task(task_id).status != TaskStatus.PROCESSING:
                assert time.monotonic() < deadline, "the task did not start"
                time.sleep(0.05)
            (agent,) = agent_pids(cluster.process.pid)
            os.kill(agent, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while alive(agent):
                assert time.monotonic() < deadline, "the agent did not stop"
                time.sleep(0.1)
            task = tasks.get_task(task_id)
            assert task.status == TaskStatus.COMPLETED, (
                "the task in hand was finished before exiting"
            )
            assert ArmoniKResults(channel).download_result_data(out, session_id) == b"42"
    finally:
        cluster.stop()


def test_kill_9_of_the_cluster_takes_its_agents_and_workers_along(tmp_path: Path) -> None:
    """No Ctrl-C handler runs on SIGKILL: the kernel stops the children (parent-death signal)."""
    cluster = LocalProcess(
        ["--port", str(free_port()), "--agents", "2", "--worker", OFFICIAL_WORKER,
         "--data-dir", str(tmp_path)]
    )  # fmt: skip
    cluster.start()
    assert cluster.process is not None
    try:
        deadline = time.monotonic() + 30
        while len(everything := descendants(cluster.process.pid)) < 4:
            assert time.monotonic() < deadline, "two agents and their two workers did not start"
            time.sleep(0.1)
        cluster.process.kill()
        cluster.process.wait()
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in everything):
            assert time.monotonic() < deadline, "agents or workers outlived a killed cluster"
            time.sleep(0.1)
    finally:
        cluster.stop()
