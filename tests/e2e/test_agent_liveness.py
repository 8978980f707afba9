"""Dead agents are detected in seconds and `pyarmonik local` restarts them: a SIGKILLed
agent's tasks, the running one and the one it fetched ahead, complete within 10 s of the kill
whatever the queue (the lease stays at its default 30 s), and a new agent takes its place."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from armonik.client import ArmoniKResults, ArmoniKSessions, ArmoniKTasks
from armonik.common import ResultStatus, Task, TaskOptions, TaskStatus

from pyarmonik.config import Settings
from pyarmonik.local import RESTART_FIRST, LocalCluster
from tests.helpers import (
    BACKEND_PARAMS,
    BackendUrls,
    cluster_backends,
    local_cluster,
    submit_orders,
)
from tests.processes import agent_pids, alive, wait_until

OPTIONS = TaskOptions(max_duration=timedelta(seconds=60), priority=1, max_retries=3)
HELD = (TaskStatus.DISPATCHED, TaskStatus.PROCESSING)


@pytest.fixture(params=BACKEND_PARAMS)
def backends(request: pytest.FixtureRequest) -> Iterator[BackendUrls]:
    with cluster_backends(request.param, partitions=["default"]) as urls:
        yield urls


def _listener(owner: str, pids: list[int]) -> int:
    """Which of the processes listens on `owner`'s port (an agent id is its address)."""
    port = int(owner.rsplit(":", 1)[1])
    inodes = {
        fields[9]
        for fields in (line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:])
        if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port  # LISTEN
    }
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd).removeprefix("socket:[").rstrip("]") in inodes:
                    return pid
    raise AssertionError(f"no agent listens on {owner}")


@pytest.mark.parametrize(
    "how",
    [
        pytest.param(signal.SIGKILL, id="killed"),
        # A lost host: its connections stay open (RabbitMQ keeps its deliveries) and its
        # liveness endpoint accepts connections but never answers.
        pytest.param(signal.SIGSTOP, id="frozen"),
    ],
)
def test_a_dead_agents_tasks_complete_within_10_s(
    backends: BackendUrls, how: signal.Signals, tmp_path: Path
) -> None:
    with (
        local_cluster(tmp_path, agents=2, backends=backends) as cluster,
        grpc.insecure_channel(cluster.endpoint) as channel,
    ):
        assert cluster.process is not None
        wait_until(lambda: len(agent_pids(cluster.process.pid)) == 2, "two agents", 30)
        session_id = ArmoniKSessions(channel).create_session(OPTIONS)
        tasks = ArmoniKTasks(channel)
        # Enough for each agent to run one task while holding the next, a few times over.
        orders = [{"kind": "value", "value": i, "sleep": 1.0} for i in range(6)]
        task_ids, output_ids = submit_orders(channel, session_id, orders)
        orphans: dict[str, TaskStatus] = {}  # the victim's tasks when it is stopped
        victims: list[str] = []

        def an_agent_runs_one_and_holds_another() -> bool:
            held: dict[str, dict[str, TaskStatus]] = {}
            for task in tasks.list_tasks(Task.session_id == session_id, page_size=100)[1]:
                if task.status in HELD and task.owner_pod_id:
                    held.setdefault(task.owner_pod_id, {})[task.id] = task.status
            for owner, statuses in held.items():
                if set(statuses.values()) == set(HELD):
                    orphans.update(statuses)
                    victims.append(owner)
                    return True
            return False

        wait_until(an_agent_runs_one_and_holds_another, "an agent running one and holding one", 30)
        (owner,) = victims
        victim = _listener(owner, agent_pids(cluster.process.pid))
        os.kill(victim, how)
        stopped_at = time.monotonic()

        def completed() -> Counter[str]:
            listed = tasks.list_tasks(Task.session_id == session_id, page_size=100)[1]
            return Counter(t.initial_task_id for t in listed if t.status == TaskStatus.COMPLETED)

        try:
            wait_until(lambda: set(orphans) <= set(completed()), "its tasks completed", 10)
            took = time.monotonic() - stopped_at
            print(f"\n{backends.name}, {how.name}: its tasks completed {took:.1f} s after")
        finally:
            if how == signal.SIGSTOP:
                os.kill(victim, signal.SIGCONT)  # it comes back: its work is refused
        results = ArmoniKResults(channel)
        for i, output_id in enumerate(output_ids):
            wait_until(
                lambda output_id=output_id: (
                    results.get_result(output_id).status == ResultStatus.COMPLETED
                ),
                "every output completed",
                30,
            )
            assert results.download_result_data(output_id, session_id) == str(i).encode()
        time.sleep(2)  # a revived agent's late completions would show now
        assert completed() == Counter(task_ids), "each task completed exactly once"


def test_local_restarts_a_crashed_agent(tmp_path: Path) -> None:
    with (
        local_cluster(tmp_path, agents=1) as cluster,
        grpc.insecure_channel(cluster.endpoint) as channel,
    ):
        assert cluster.process is not None
        wait_until(lambda: len(agent_pids(cluster.process.pid)) == 1, "the agent", 30)
        session_id = ArmoniKSessions(channel).create_session(OPTIONS)
        tasks = ArmoniKTasks(channel)
        (first,), _ = submit_orders(channel, session_id, [{"kind": "value", "value": 1}])
        wait_until(lambda: tasks.get_task(first).status == TaskStatus.COMPLETED, "served", 30)
        (victim,) = agent_pids(cluster.process.pid)
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: not alive(victim), "the agent killed", 10)
        wait_until(
            lambda: any(p != victim for p in agent_pids(cluster.process.pid)),
            "a new agent started",
            30,
        )
        (second,), (output,) = submit_orders(channel, session_id, [{"kind": "value", "value": 2}])
        wait_until(lambda: tasks.get_task(second).status == TaskStatus.COMPLETED, "served", 30)
        assert tasks.get_task(second).owner_pod_id != tasks.get_task(first).owner_pod_id
        assert ArmoniKResults(channel).download_result_data(output, session_id) == b"2"


async def test_an_agent_that_keeps_exiting_is_restarted_with_back_off(tmp_path: Path) -> None:
    """RESTART_FIRST, then twice, then four times as long between the starts of an agent
    that exits at once; no start once the cluster stops."""
    cluster = LocalCluster(Settings(data_dir=tmp_path))
    cluster._env = dict(os.environ)
    cluster._commands = [[sys.executable, "-c", "raise SystemExit(3)"]]
    cluster.agents = [await cluster._spawn(cluster._commands[0])]
    stop = asyncio.Event()
    supervising = asyncio.create_task(cluster.wait(stop))
    starts, pid = [time.monotonic()], cluster.agents[0].pid
    try:
        while len(starts) < 4:
            assert time.monotonic() - starts[0] < 30, "not started again"
            await asyncio.sleep(0.02)
            if cluster.agents[0].pid != pid:
                starts.append(time.monotonic())
                pid = cluster.agents[0].pid
    finally:
        stop.set()
        await asyncio.wait_for(supervising, 5)
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert all(gap >= RESTART_FIRST * 2**i for i, gap in enumerate(gaps)), gaps
    await asyncio.sleep(RESTART_FIRST * 2)
    assert cluster.agents[0].pid == pid, "started again after the stop"
