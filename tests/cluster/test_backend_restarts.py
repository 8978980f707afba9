"""A backend restarted while a session runs: RabbitMQ, Redis or PostgreSQL goes down for a
couple of seconds under a cluster (`pyarmonik local`, two agents, PostgreSQL + RabbitMQ +
Redis) busy with a few hundred tasks; the session still completes, every output is right,
no task is lost, none completes twice (tasks may be retried).

Redis runs without persistence here: it is restarted with SHUTDOWN SAVE into a file of ours,
which the new server loads, as a Redis that keeps its data would be (a Redis that loses its
data on restart loses completed results, which no orchestrator can give back)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from armonik.client import ArmoniKEvents, ArmoniKResults, ArmoniKSessions, ArmoniKTasks
from armonik.common import Task, TaskDefinition, TaskOptions, TaskStatus

from tests.helpers import (
    ACTIVE,
    PG_RABBIT_REDIS,
    all_tasks,
    cluster_backends,
    local_cluster,
    retrying,
    session_finished,
    submit_orders,
    with_query,
)
from tests.processes import (
    RESTARTS,
    require_restartable,
    run,
    service_left_running,
    succeeds,
    wait_until,
)

pytestmark = pytest.mark.cluster

OPTIONS = TaskOptions(max_duration=timedelta(seconds=60), priority=1, max_retries=5)
VALUES = 240  # "value" tasks sleeping 50 ms
FANOUTS = 10  # tasks submitting 4 children and an aggregation task that inherits their output


def submit(channel: grpc.Channel, session_id: str) -> list[tuple[str, bytes]]:
    """The session's tasks; returns (output id, expected data) pairs."""
    orders: list[tuple[dict[str, object], bytes]] = [
        ({"kind": "value", "value": i * 11, "sleep": 0.05}, str(i * 11).encode())
        for i in range(VALUES)
    ]
    for n in range(FANOUTS):
        orders.insert(n * (VALUES // FANOUTS), ({"kind": "fanout", "n": 4}, b"10"))
    _, output_ids = submit_orders(channel, session_id, [order for order, _ in orders])
    return [(out, expected) for out, (_, expected) in zip(output_ids, orders, strict=True)]


@pytest.mark.parametrize("service", list(RESTARTS))
def test_session_survives_a_restart_of(service: str, tmp_path: Path) -> None:
    require_restartable(service)
    restart = RESTARTS[service][1]
    with (
        cluster_backends(PG_RABBIT_REDIS, partitions=["default"]) as backends,
        local_cluster(tmp_path, backends=backends) as cluster,
        grpc.insecure_channel(cluster.endpoint) as channel,
        service_left_running(service),
    ):
        session_id = ArmoniKSessions(channel).create_session(OPTIONS)
        expected = submit(channel, session_id)
        tasks = ArmoniKTasks(channel)

        def completed() -> int:
            counts = tasks.count_tasks_by_status(Task.session_id == session_id)
            return counts.get(TaskStatus.COMPLETED, 0)

        wait_until(lambda: completed() >= 30, "the session started")
        restart()
        after = retrying(lambda: tasks.count_tasks_by_status(Task.session_id == session_id))
        assert ACTIVE.intersection(after), f"the session ended before the restart did: {after}"

        wait_until(
            lambda: session_finished(channel, session_id),
            "the session finished after the restart",
            timeout=180,
        )
        listed = retrying(lambda: all_tasks(channel, session_id))
        statuses = Counter(task.status for task in listed)
        assert set(statuses) <= {TaskStatus.COMPLETED, TaskStatus.RETRIED}, statuses
        completed_once = Counter(
            task.initial_task_id for task in listed if task.status == TaskStatus.COMPLETED
        )
        # Every task (client's, children, aggregations) completed, exactly once.
        assert len(completed_once) == VALUES + FANOUTS * 6
        assert set(completed_once.values()) == {1}
        results = ArmoniKResults(channel)
        for output_id, data in expected:
            assert retrying(lambda o=output_id: results.download_result_data(o, session_id)) == data
        print(f"{service}: {dict(statuses)}")


def test_tasks_made_ready_while_rabbitmq_is_down_are_queued_when_it_is_back(
    tmp_path: Path,
) -> None:
    """RabbitMQ down for longer than the queue waits for it (`?reconnect_for=0.5`): the
    client's submission still succeeds, its tasks are parked in the database instead of
    being left SUBMITTED without a message, and the control plane queues them once the
    broker is back; so are the tasks that a completion made ready during the outage."""
    require_restartable("rabbitmq")
    with cluster_backends(PG_RABBIT_REDIS, partitions=["default"]) as backends:
        assert backends.queue is not None
        backends.queue = with_query(backends.queue, reconnect_for="0.5")
        with (
            local_cluster(tmp_path, backends=backends) as cluster,
            grpc.insecure_channel(cluster.endpoint) as channel,
            service_left_running("rabbitmq"),
        ):
            session_id = ArmoniKSessions(channel).create_session(OPTIONS)
            results, tasks = ArmoniKResults(channel), ArmoniKTasks(channel)
            # `waiting` depends on `slow`'s output, which is completed during the outage.
            slow_out, waiting_out = (
                results.create_results_metadata(["slow", "waiting"], session_id)[name].result_id
                for name in ("slow", "waiting")
            )
            payloads = results.create_results(
                {
                    "slow": json.dumps({"kind": "value", "value": 7, "sleep": 2}).encode(),
                    "waiting": json.dumps({"kind": "sum_deps", "add": 1}).encode(),
                },
                session_id,
            )
            slow, _ = tasks.submit_tasks(
                session_id,
                [
                    TaskDefinition(
                        payload_id=payloads["slow"].result_id, expected_output_ids=[slow_out]
                    ),
                    TaskDefinition(
                        payload_id=payloads["waiting"].result_id,
                        expected_output_ids=[waiting_out],
                        data_dependencies=[slow_out],
                    ),
                ],
            )
            wait_until(
                lambda: (
                    tasks.count_tasks_by_status(Task.session_id == session_id).get(
                        TaskStatus.PROCESSING, 0
                    )
                    == 1
                ),
                "the slow task started",
            )
            run("rabbitmqctl stop_app")
            try:
                expected = submit(channel, session_id)  # succeeds: the messages are parked
                wait_until(
                    lambda: tasks.get_task(slow.id).status == TaskStatus.COMPLETED,
                    "the slow task completed during the outage",
                )
            finally:
                run("rabbitmqctl start_app")
                wait_until(lambda: succeeds("rabbitmqctl await_startup"), "RabbitMQ up again")
            wait_until(
                lambda: session_finished(channel, session_id),
                "every task ran once RabbitMQ was back",
            )
            assert results.download_result_data(waiting_out, session_id) == b"8"
            for output_id, data in expected:
                assert results.download_result_data(output_id, session_id) == data


def test_post_processing_given_up_is_recovered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Post-processing that fails for longer than the agent retries it (a backend down for
    good): the message is given back, the next acquisition finds the task PROCESSING under
    an owner that no longer holds it, and retries it; the retry completes."""
    from pyarmonik.compute.agent import Agent, AgentSettings
    from pyarmonik.config import Settings
    from pyarmonik.scheduling.processing import TaskProcessing
    from pyarmonik.storage.factory import open_backends
    from tests.helpers import OFFICIAL_WORKER, control_plane

    complete = TaskProcessing.complete
    failures: list[str] = []

    async def down_once(self: TaskProcessing, task: Any, *args: Any, **kwargs: Any) -> bool:
        if not failures:
            failures.append(task.task_id)
            raise ConnectionError("the database is down (injected)")
        return await complete(self, task, *args, **kwargs)

    monkeypatch.setattr(TaskProcessing, "complete", down_once)
    with control_plane(tmp_path, partitions=("default",)) as plane:
        agent = Agent(
            open_backends(Settings(data_dir=tmp_path)),
            AgentSettings(
                worker_command=OFFICIAL_WORKER, work_dir=tmp_path / "agent", post_retry_for=0.0
            ),
        )
        loop = asyncio.new_event_loop()
        stop = asyncio.Event()
        runner = threading.Thread(target=loop.run_until_complete, args=(agent.run(stop),))
        runner.start()
        try:
            with grpc.insecure_channel(plane.endpoint) as channel:
                session_id = ArmoniKSessions(channel).create_session(OPTIONS)
                results = ArmoniKResults(channel)
                output = results.create_results_metadata(["out"], session_id)["out"].result_id
                payload = results.create_results(
                    {"p": json.dumps({"kind": "value", "value": 42}).encode()}, session_id
                )["p"].result_id
                ArmoniKTasks(channel).submit_tasks(
                    session_id,
                    [TaskDefinition(payload_id=payload, expected_output_ids=[output])],
                )
                ArmoniKEvents(channel).wait_for_result_availability([output], session_id)
                assert results.download_result_data(output, session_id) == b"42"
                attempts = sorted(
                    ArmoniKTasks(channel).list_tasks(Task.session_id == session_id)[1],
                    key=lambda t: t.id,
                )
        finally:
            loop.call_soon_threadsafe(stop.set)
            runner.join(60)
            loop.close()
    assert [t.status for t in attempts] == [TaskStatus.RETRIED, TaskStatus.COMPLETED]
    assert failures == [attempts[0].id]
    assert attempts[1].id == f"{attempts[0].id}###1"
    assert "died" in attempts[0].output.error
