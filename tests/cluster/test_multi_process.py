"""Cluster mode as deployed: two `pyarmonik control` replicas and four `pyarmonik agent`
processes (each with its own official worker), sharing nothing but PostgreSQL, RabbitMQ and
Redis. A 5,000-task session is submitted half through each replica; an Events stream on
replica A sees the completions of the tasks submitted through replica B; every output is
downloaded (through the other replica than the one it was submitted to) and checked."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from armonik.client import ArmoniKEvents, ArmoniKResults, ArmoniKSessions, ArmoniKTasks
from armonik.common import (
    Event,
    EventTypes,
    ResultStatus,
    ResultStatusUpdateEvent,
    Task,
    TaskOptions,
    TaskStatus,
    TaskStatusUpdateEvent,
)

from tests.helpers import (
    OFFICIAL_WORKER,
    PG_RABBIT_REDIS,
    BackendUrls,
    cluster_backends,
    free_port,
    submit_orders,
)
from tests.processes import pyarmonik, wait_for_port

pytestmark = pytest.mark.cluster

TASKS = 5000
AGENTS = 4
OPTIONS = TaskOptions(max_duration=timedelta(seconds=60), priority=1, max_retries=3)


@contextmanager
def deployment(backends: BackendUrls, root: Path) -> Iterator[list[grpc.Channel]]:
    """Two control planes and AGENTS agents; yields a channel to each control plane."""
    logs = root / "logs"
    logs.mkdir()
    with ExitStack() as stack:
        channels = []
        for name in ("control-a", "control-b"):
            port = free_port()
            process = stack.enter_context(
                pyarmonik(
                    name,
                    [
                        "control",
                        "--port", str(port),
                        "--http-port", "0",
                        "--partition", "default",
                        *backends.cli_args(),
                    ],
                    logs,
                )
            )  # fmt: skip
            wait_for_port(port, process)
            channels.append(stack.enter_context(grpc.insecure_channel(f"127.0.0.1:{port}")))
        agents = [
            stack.enter_context(
                pyarmonik(
                    f"agent-{index}",
                    [
                        "agent",
                        "--partition", "default",
                        "--worker", OFFICIAL_WORKER,
                        "--work-dir", str(root / f"agent-{index}"),
                        *backends.cli_args(),
                    ],
                    logs,
                )
            )
            for index in range(AGENTS)
        ]  # fmt: skip
        yield channels
        for index, agent in enumerate(agents):
            assert agent.poll() is None, f"agent {index} died (see {logs})"


def submit_values(
    channel: grpc.Channel, session_id: str, values: list[int]
) -> tuple[list[str], list[str]]:
    """One "value" task per value; returns (task ids, output ids) in the order of `values`."""
    return submit_orders(channel, session_id, [{"kind": "value", "value": v} for v in values])


class Completions:
    """An Events subscription (the official client) collecting COMPLETED tasks and results."""

    def __init__(self, channel: grpc.Channel, session_id: str, marker: str):
        self.marker = marker
        self.live = threading.Event()
        self.tasks: set[str] = set()
        self.results: set[str] = set()
        # ids of the results and tasks whose completion ends the stream
        self.expected: tuple[set[str], set[str]] | None = None
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(
            target=self._run, args=(ArmoniKEvents(channel), session_id), daemon=True
        )
        self.thread.start()

    def _handle(self, _session: str, _kind: EventTypes, event: Event) -> bool:
        if isinstance(event, TaskStatusUpdateEvent) and event.status == TaskStatus.COMPLETED:
            self.tasks.add(event.task_id)
        elif isinstance(event, ResultStatusUpdateEvent):
            if event.result_id == self.marker:
                self.live.set()
            elif event.status == ResultStatus.COMPLETED:
                self.results.add(event.result_id)
        if (
            self.expected is not None
            and self.expected[0] <= self.results
            and self.expected[1] <= self.tasks
        ):
            self.done.set()
            return True  # closes the stream
        return False

    def _run(self, events: ArmoniKEvents, session_id: str) -> None:
        try:
            events.get_events(
                session_id,
                [EventTypes.TASK_STATUS_UPDATE, EventTypes.RESULT_STATUS_UPDATE],
                [self._handle],
            )
        except BaseException as error:
            self.error = error
            self.done.set()


@pytest.mark.timeout(900)  # about 80 s on an idle 2-core machine; far more when it is shared
def test_two_control_planes_four_agents_five_thousand_tasks(tmp_path: Path) -> None:
    with (
        cluster_backends(PG_RABBIT_REDIS, partitions=["default"]) as backends,
        deployment(backends, tmp_path) as (channel_a, channel_b),
    ):
        session_id = ArmoniKSessions(channel_a).create_session(OPTIONS)
        # Subscribed on A before anything runs: the marker's snapshot event says it is live.
        created = ArmoniKResults(channel_a).create_results_metadata(["marker"], session_id)
        marker_id = created["marker"].result_id
        completions = Completions(channel_a, session_id, marker_id)
        assert completions.live.wait(30), "the Events stream on A did not start"

        values = [i * 7 + 3 for i in range(TASKS)]
        half = TASKS // 2
        with ThreadPoolExecutor(2) as pool:
            through_a = pool.submit(submit_values, channel_a, session_id, values[:half])
            through_b = pool.submit(submit_values, channel_b, session_id, values[half:])
            tasks_a, outputs_a = through_a.result()
            tasks_b, outputs_b = through_b.result()
        assert len(set(outputs_a + outputs_b)) == TASKS
        started = time.monotonic()
        completions.expected = (set(outputs_a + outputs_b), set(tasks_a + tasks_b))

        deadline = time.monotonic() + 600
        while not completions.done.wait(2):
            counts = ArmoniKTasks(channel_a).count_tasks_by_status(Task.session_id == session_id)
            assert time.monotonic() < deadline, f"not finished in time: {counts}"
        assert completions.error is None, completions.error
        completions.thread.join(10)
        assert marker_id not in completions.results
        print(f"{TASKS} tasks ran in {time.monotonic() - started:.1f} s after submission")

        # Replica A's stream saw every completion of the tasks submitted through replica B.
        assert set(outputs_b) <= completions.results
        assert set(tasks_b) <= completions.tasks
        assert set(tasks_a) <= completions.tasks

        # Every output, downloaded through the replica it was not submitted to.
        def check(channel: grpc.Channel, output_id: str, value: int) -> None:
            data = ArmoniKResults(channel).download_result_data(output_id, session_id)
            assert data == str(value).encode(), (output_id, data, value)

        with ThreadPoolExecutor(8) as pool:
            checks = [
                pool.submit(check, channel_b, out, v)
                for out, v in zip(outputs_a, values[:half], strict=True)
            ] + [
                pool.submit(check, channel_a, out, v)
                for out, v in zip(outputs_b, values[half:], strict=True)
            ]
            for done in checks:
                done.result()

        tasks = ArmoniKTasks(channel_b)
        assert tasks.count_tasks_by_status(Task.session_id == session_id) == {
            TaskStatus.COMPLETED: TASKS
        }
        owners: set[str] = set()
        page = 0
        while page * 1000 < TASKS:
            _, listed = tasks.list_tasks(Task.session_id == session_id, page=page, page_size=1000)
            owners |= {task.owner_pod_id for task in listed}
            page += 1
        assert len(owners) == AGENTS, f"the tasks ran on {sorted(owners)}"
