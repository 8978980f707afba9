"""The agent's fetch stage: while tasks are short it holds a window of them ahead of the
worker, started with their pull; behind a long task that window is given back for other
agents and shrinks to one task, acquired but not started."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from itertools import pairwise
from pathlib import Path

import grpc
from armonik.client import ArmoniKEvents, ArmoniKResults, ArmoniKSessions, ArmoniKTasks
from armonik.common import ResultStatus, Task, TaskOptions, TaskStatus

from tests.helpers import local_cluster, submit_orders

OPTIONS = TaskOptions(max_duration=timedelta(seconds=60), priority=1, max_retries=1)
LONG = 3.0  # seconds; the reserve is held 0.2 s at most behind it
Run = tuple[grpc.Channel, str, list[str], list[str]]


@contextmanager
def one_agent_running(tmp_path: Path, orders: list[dict[str, object]]) -> Iterator[Run]:
    """A cluster of one agent running a session of these orders: (channel, session id,
    task ids, output ids); on leaving, every output holds its order's value."""
    with (
        local_cluster(tmp_path, agents=1) as cluster,
        grpc.insecure_channel(cluster.endpoint) as channel,
    ):
        session_id = ArmoniKSessions(channel).create_session(OPTIONS)
        task_ids, output_ids = submit_orders(channel, session_id, orders)
        yield channel, session_id, task_ids, output_ids
        ArmoniKEvents(channel).wait_for_result_availability(output_ids, session_id)
        results = ArmoniKResults(channel)
        for order, output_id in zip(orders, output_ids, strict=True):
            value = str(order["value"]).encode()
            assert results.download_result_data(output_id, session_id) == value


def wait_until_processing(tasks: ArmoniKTasks, task_id: str) -> None:
    """Until the (long) task is PROCESSING; fails after 30 s."""
    deadline = time.monotonic() + 30
    while tasks.get_task(task_id).status != TaskStatus.PROCESSING:
        assert time.monotonic() < deadline, "the long task did not start"
        time.sleep(0.05)


def test_behind_a_long_task_only_the_prepared_one_stays_held(tmp_path: Path) -> None:
    """One agent: the window grows as the first tasks prove short; once T5 (long) has run
    past the hold, what was taken after it is back in the queue but one task, DISPATCHED
    (prepared, not started), and the rest of the session is SUBMITTED."""
    orders: list[dict[str, object]] = [{"kind": "value", "value": i} for i in range(12)]
    orders[5] = {"kind": "value", "value": 5, "sleep": LONG}
    with one_agent_running(tmp_path, orders) as (channel, session_id, task_ids, _):
        tasks = ArmoniKTasks(channel)
        wait_until_processing(tasks, task_ids[5])
        time.sleep(1.0)  # well past the reserve's hold, well before the long task ends
        counts = tasks.count_tasks_by_status(Task.session_id == session_id)
        assert counts.get(TaskStatus.PROCESSING) == 1, counts
        assert counts.get(TaskStatus.DISPATCHED) == 1, f"only T6 is held: {counts}"
        assert counts.get(TaskStatus.SUBMITTED) == 5, f"T7 given back, T8-T11 untouched: {counts}"


def test_short_tasks_are_taken_and_started_a_window_at_a_time(tmp_path: Path) -> None:
    """One agent, 200 short tasks of the official worker: once the first have shown they are
    short, tasks are acquired and started several in one transaction (they share their
    acquisition and start stamps), and each still runs once, in its own Process call."""
    orders: list[dict[str, object]] = [{"kind": "value", "value": i} for i in range(200)]
    with one_agent_running(tmp_path, orders) as (channel, session_id, task_ids, output_ids):
        ArmoniKEvents(channel).wait_for_result_availability(output_ids, session_id)
        tasks = ArmoniKTasks(channel)
        details = [tasks.get_task(task_id) for task_id in task_ids]
        assert all(t.status == TaskStatus.COMPLETED for t in details)
        assert all(not t.retry_of_ids for t in details), "no task ran twice"
        together: dict[object, int] = {}
        for task in details:
            together[(task.acquired_at, task.started_at)] = (
                together.get((task.acquired_at, task.started_at), 0) + 1
            )
        assert max(together.values()) >= 2, "every task was started on its own"


def test_a_held_task_cancelled_before_its_start_never_completes(tmp_path: Path) -> None:
    """A task held behind a long one and cancelled while held: its start is refused, the
    task ends CANCELLED with its output aborted, never run, and the agent goes on."""
    orders: list[dict[str, object]] = [{"kind": "value", "value": i} for i in range(12)]
    orders[5] = {"kind": "value", "value": 5, "sleep": LONG}
    with (
        local_cluster(tmp_path, agents=1) as cluster,
        grpc.insecure_channel(cluster.endpoint) as channel,
    ):
        session_id = ArmoniKSessions(channel).create_session(OPTIONS)
        task_ids, output_ids = submit_orders(channel, session_id, orders)
        tasks, results = ArmoniKTasks(channel), ArmoniKResults(channel)
        wait_until_processing(tasks, task_ids[5])
        time.sleep(1.0)  # the window is down to one task, held (DISPATCHED)
        held = [i for i in task_ids[6:] if tasks.get_task(i).status == TaskStatus.DISPATCHED]
        assert len(held) == 1, "one task is held behind the long one"
        tasks.cancel_tasks(held)
        others = [o for t, o in zip(task_ids, output_ids, strict=True) if t != held[0]]
        ArmoniKEvents(channel).wait_for_result_availability(others, session_id)
        for order, task_id, output_id in zip(orders, task_ids, output_ids, strict=True):
            if task_id == held[0]:
                assert tasks.get_task(task_id).status == TaskStatus.CANCELLED
                assert results.get_result(output_id).status == ResultStatus.ABORTED
            else:
                value = str(order["value"]).encode()
                assert results.download_result_data(output_id, session_id) == value


def test_the_next_task_starts_while_the_one_before_runs_and_never_runs_twice(
    tmp_path: Path,
) -> None:
    """One agent, tasks of 0.3 s (one at a time ahead, not started with their pull): the next
    task's start is committed before the running task ends (its start stamp comes before the
    previous task's end of processing). Behind a task longer than predicted, the task
    started ahead is given back and held again unstarted. Every task runs once."""
    orders: list[dict[str, object]] = [
        {"kind": "value", "value": i, "sleep": 0.3} for i in range(10)
    ]
    orders[6] = {"kind": "value", "value": 6, "sleep": LONG}
    with one_agent_running(tmp_path, orders) as (channel, session_id, task_ids, output_ids):
        tasks = ArmoniKTasks(channel)
        wait_until_processing(tasks, task_ids[6])
        time.sleep(1.0)  # past the hold of a task started ahead, before the long task ends
        counts = tasks.count_tasks_by_status(Task.session_id == session_id)
        assert counts.get(TaskStatus.PROCESSING) == 1, counts
        assert counts.get(TaskStatus.DISPATCHED) == 1, f"T7 is held, not started: {counts}"
        ArmoniKEvents(channel).wait_for_result_availability(output_ids, session_id)
        details = [tasks.get_task(task_id) for task_id in task_ids]
    assert all(t.status == TaskStatus.COMPLETED for t in details)
    assert all(not t.retry_of_ids for t in details), "no task ran twice"
    ahead = [
        after.id
        for before, after in pairwise(details[:6])
        if after.started_at is not None
        and before.processed_at is not None
        and after.started_at < before.processed_at
    ]
    assert ahead, "no task was started while the one before it ran"
