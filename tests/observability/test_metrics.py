"""/metrics of the control plane and of an agent parse as Prometheus text and move as a
session runs."""

from __future__ import annotations

import json
import urllib.request
from datetime import timedelta
from pathlib import Path

import grpc
from armonik.client import ArmoniKEvents, ArmoniKResults, ArmoniKSessions, ArmoniKTasks
from armonik.common import TaskDefinition, TaskOptions
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import OFFICIAL_WORKER, LocalProcess, free_port

OPTIONS = TaskOptions(max_duration=timedelta(seconds=60), priority=1, max_retries=2)


def scrape(address: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_move_as_a_session_runs(tmp_path: Path) -> None:
    port, http_port = free_port(), free_port()
    cluster = LocalProcess(
        ["--port", str(port), "--http-port", str(http_port), "--agents", "1", "--worker", OFFICIAL_WORKER,
         "--data-dir", str(tmp_path)]
    )  # fmt: skip
    cluster.start()
    try:
        control = f"127.0.0.1:{http_port}"
        before = scrape(control)
        assert before[("armonik_tasks_queued", ())] == 0
        assert before[("armonik_default_tasks_queued", ())] == 0
        with grpc.insecure_channel(cluster.endpoint) as channel:
            sessions, results, tasks = (
                ArmoniKSessions(channel),
                ArmoniKResults(channel),
                ArmoniKTasks(channel),
            )
            session_id = sessions.create_session(OPTIONS)
            outputs = results.create_results_metadata([f"o{i}" for i in range(20)], session_id)
            payload = results.create_results(
                {"p": json.dumps({"kind": "value", "value": 1, "sleep": 0.2}).encode()}, session_id
            )
            tasks.submit_tasks(
                session_id,
                [
                    TaskDefinition(
                        payload_id=payload["p"].result_id, expected_output_ids=[o.result_id]
                    )
                    for o in outputs.values()
                ],
            )
            queued = scrape(control)  # 20 tasks of 0.2 s on one agent: most still queued
            assert queued[("armonik_tasks_queued", ())] > 0
            assert queued[("pyarmonik_rpc_total", (("code", "OK"), ("method", "SubmitTasks")))] >= 1
            ArmoniKEvents(channel).wait_for_result_availability(
                [o.result_id for o in outputs.values()], session_id
            )
            owner = tasks.list_tasks()[1][0].owner_pod_id
        after = scrape(control)
        assert after[("armonik_tasks_queued", ())] == 0
        assert after[("pyarmonik_tasks", (("partition", "default"), ("status", "COMPLETED")))] == 20
        agent = scrape(owner)
        assert (
            agent[
                (
                    "pyarmonik_agent_tasks_total",
                    (("outcome", "completed"), ("partition", "default")),
                )
            ]
            == 20
        )
        assert (
            agent[
                (
                    "pyarmonik_agent_stage_seconds_count",
                    (("partition", "default"), ("stage", "processing")),
                )
            ]
            == 20
        )
    finally:
        cluster.stop()
