"""The batched path between an agent and the SDK's function worker (compute/batch.py):
a long task does not hold the tasks batched behind it hostage, and kill -9 of a worker or
of an agent in the middle of a batch re-runs only that batch's unfinished tasks, each once."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from armonik.common import Task, TaskStatus

from pyarmonik.local import FUNCTION_WORKER
from pyarmonik.sdk import Cluster, TaskError, task, wait
from tests.helpers import REPO, LocalProcess, free_port
from tests.sdk.support import by_value

by_value(__name__)


@contextmanager
def function_cluster(data_dir: Path, agents: int, *args: str) -> Iterator[Cluster]:
    process = LocalProcess(
        ["--port", str(free_port()), "--agents", str(agents), "--data-dir", str(data_dir),
         "--worker", FUNCTION_WORKER, *args],
        env={"PYTHONPATH": str(REPO)},
    )  # fmt: skip
    process.start()
    try:
        with Cluster.connect(process.endpoint, max_duration=120, max_retries=3) as cluster:
            yield cluster
    finally:
        process.stop()


@task
def noop(x: int) -> int:
    return x


@task
def work(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@task
def recorded(folder: str, index: int, kill: str = "") -> int:
    """Appends a line to its own file at each run; `kill` ("worker" or "agent") kills that
    process the first time this task runs."""
    path = Path(folder) / str(index)
    with path.open("a") as file:
        file.write("run\n")
    if kill and path.read_text().count("run") == 1:
        time.sleep(0.05)  # the tasks batched behind this one are in the worker by now
        os.kill(os.getppid() if kill == "agent" else os.getpid(), signal.SIGKILL)
    return index


def runs(folder: Path, count: int) -> list[int]:
    return [
        (folder / str(i)).read_text().count("run") if (folder / str(i)).exists() else 0
        for i in range(count)
    ]


def attempts(cluster: Cluster) -> list[Task]:
    listed: list[Task] = []
    page = 0
    while True:
        total, chunk = cluster._tasks.list_tasks(
            Task.session_id == cluster.session.id, page=page, page_size=1000
        )
        listed += chunk
        if len(listed) >= total or not chunk:
            return listed
        page += 1


def test_a_long_task_does_not_hold_the_short_ones_behind_it(tmp_path: Path) -> None:
    with function_cluster(tmp_path / "cluster", 2) as cluster:
        assert noop.submit(0).result(60) == 0
        # One submission: the agent that takes the long task takes a window of short ones
        # with it (8 tasks when it starts), which go to the other agent when taken back.
        long, *short = work.map([4.0] + [0.0] * 60)
        assert all(f.result(120) == 0.0 for f in short)
        assert long.result(120) == 4.0
        ended = {t.expected_output_ids[0]: t.ended_at for t in attempts(cluster)}
        long_end = ended[long.result_id]
        assert long_end is not None
        late = [f for f in short if (ended[f.result_id] or long_end) >= long_end]
        assert not late, f"{len(late)} short tasks waited for the long one"


def test_worker_killed_mid_batch_reruns_only_the_unfinished_tasks_once(tmp_path: Path) -> None:
    marks = tmp_path / "runs"
    marks.mkdir()
    count, victim = 300, 120
    with function_cluster(tmp_path / "cluster", 1) as cluster:
        wait(noop.map(range(200)), timeout=120)  # the window is large by now
        futures = [
            recorded.submit(str(marks), i, "worker" if i == victim else "") for i in range(count)
        ]
        assert [f.result(120) for f in futures] == list(range(count))
        counted = runs(marks, count)
        assert counted[victim] == 2, "the task that killed its worker is retried once"
        assert [c for i, c in enumerate(counted) if i != victim] == [1] * (count - 1)
        listed = [t for t in attempts(cluster) if t.initial_task_id]
        completed = Counter(t.initial_task_id for t in listed if t.status == TaskStatus.COMPLETED)
        assert set(completed.values()) == {1}


def test_agent_killed_mid_batch_reruns_only_its_unfinished_tasks_once(tmp_path: Path) -> None:
    marks = tmp_path / "runs"
    marks.mkdir()
    count, victim = 300, 150
    with function_cluster(tmp_path / "cluster", 2, "--lease", "3") as cluster:
        wait(noop.map(range(200)), timeout=120)
        kills = ["agent" if i == victim else "" for i in range(count)]
        futures = recorded.map([str(marks)] * count, range(count), kills)
        assert [f.result(180) for f in futures] == list(range(count))
        counted = runs(marks, count)
        assert all(c >= 1 for c in counted)
        rerun = [i for i, c in enumerate(counted) if c > 1]
        assert victim in rerun
        assert max(counted) == 2, "a task re-runs at most once"
        # Only what the dead agent held runs again: its window, at most 64 tasks.
        assert len(rerun) <= 64
        listed = attempts(cluster)
        completed = Counter(t.initial_task_id for t in listed if t.status == TaskStatus.COMPLETED)
        assert len(completed) == count + 200 and set(completed.values()) == {1}


@task(max_duration=1, max_retries=1)
def sleeps_too_long() -> None:
    time.sleep(60)


def test_a_task_past_its_max_duration_times_out_and_the_worker_goes_on(tmp_path: Path) -> None:
    with function_cluster(tmp_path / "cluster", 1) as cluster:
        assert noop.submit(0).result(60) == 0
        doomed = sleeps_too_long.submit()
        after = noop.submit(7)  # batched behind it: given back, then run by the new worker
        with pytest.raises(TaskError, match="TIMEOUT"):
            doomed.result(60)
        assert after.result(60) == 7
        owner = cluster._results.get_owner_task_id([doomed.result_id], cluster.session.id)
        assert cluster._tasks.get_task(owner[doomed.result_id]).status == TaskStatus.TIMEOUT
