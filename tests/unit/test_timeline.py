"""The aggregation behind `pyarmonik stats` and the GUI's pictures (scheduling/timeline.py),
on hand-made records."""

from __future__ import annotations

import statistics
from typing import Any

import pytest

from pyarmonik.domain.statuses import TaskStatus
from pyarmonik.scheduling.timeline import (
    STAGES,
    Times,
    buckets_of,
    generation,
    graph_of,
    percentile,
    session_stats,
    stage_breakdown,
)


def completed(created: float, latency: float, **times: float) -> Times:
    return Times("COMPLETED", created_at=created, ended_at=created + latency, **times)


def test_percentile_is_statistics_inclusive() -> None:
    values = sorted([0.3, 1.7, 0.2, 9.0, 4.4, 4.4, 0.01, 2.5])
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    for q in (50, 90, 99):
        assert percentile(values, q) == pytest.approx(cuts[q - 1], rel=1e-12)
    assert percentile([], 50) is None
    assert percentile([2.0], 99) == 2.0


def test_session_stats_counts_completed_tasks_only() -> None:
    tasks = [
        completed(0.0, 2.0, started_at=1.5),  # an origin of 0 is a time like any other
        completed(1.0, 1.0, started_at=1.8),
        completed(2.0, 4.0),  # never started: out of the processing figures
        Times("ERROR", created_at=0.5, ended_at=100.0),
        Times("PROCESSING", created_at=3.0),
    ]
    stats = session_stats(tasks)
    assert stats["tasks"] == 5 and stats["completed"] == 3
    assert stats["by_status"] == {"COMPLETED": 3, "ERROR": 1, "PROCESSING": 1}
    assert (stats["first_created_at"], stats["last_ended_at"]) == (0.0, 6.0)
    assert stats["throughput"] == pytest.approx(3 / 6.0)
    assert stats["latency"]["p50"] == pytest.approx(2.0)
    assert stats["processing"]["p50"] == pytest.approx((0.5 + 0.2) / 2)
    assert session_stats([Times("ERROR")]) == {
        "tasks": 1,
        "by_status": {"ERROR": 1},
        "completed": 0,
    }


def test_stage_means_add_up_to_the_mean_latency() -> None:
    tasks = [
        Times("COMPLETED", 0.0, 0.5, 1.0, 1.1, 1.2, 2.0, 2.1),
        Times("COMPLETED", 1.0, 1.0, 3.0, 3.3, 3.4, 4.0, 4.4),
        Times("ERROR", 0.0, 0.0, 0.0, 0.0, 0.0, 50.0, 50.0),  # not completed: left out
    ]
    answer = stage_breakdown(tasks, bins=4)
    stages = {s["stage"]: s for s in answer["stages"]}
    assert [s["stage"] for s in answer["stages"]] == [name for name, _, _ in STAGES]
    assert stages["dependency wait"]["mean"] == pytest.approx(0.25)
    assert stages["queue wait"]["mean"] == pytest.approx((0.5 + 2.0) / 2)
    assert stages["worker"]["p99"] == pytest.approx(0.7 + (0.9 - 0.7) * 0.99)
    mean_latency = (2.1 + 3.4) / 2
    assert sum(s["mean"] for s in answer["stages"]) == pytest.approx(mean_latency)
    histogram = answer["histogram"]
    assert sum(histogram["counts"]) == 2 and len(histogram["counts"]) == 4
    assert histogram["low"] == pytest.approx(2.1)
    assert histogram["counts"][0] == 1 and histogram["counts"][-1] == 1
    assert answer["stats"] == session_stats(tasks)


def test_a_stage_missing_a_time_is_left_out() -> None:
    tasks = [Times("COMPLETED", 0.0, 0.0, 1.0, None, 1.5, 2.0, 2.0)]
    stages = {s["stage"]: s for s in stage_breakdown(tasks)["stages"]}
    assert stages["prefetch"]["count"] == 0 and stages["prefetch"]["mean"] is None
    assert stages["worker"]["count"] == 0
    assert stages["queue wait"]["count"] == 1


def test_buckets_cover_the_window() -> None:
    interval, count = buckets_of(100.0, 160.0, 60)
    assert interval == pytest.approx(1.0) and count == 60
    assert buckets_of(5.0, 5.0, 10)[1] == 10  # an empty window still has its buckets
    assert generation(["session"]) == 0 and generation(["session", "a", "b"]) == 2


def row(task_id: str, status: TaskStatus, **fields: Any) -> dict[str, Any]:
    return {
        "task_id": task_id,
        "status": int(status),
        "created_by": fields.get("created_by", ""),
        "initial_task_id": fields.get("initial", task_id),
        "parent_task_ids": ["s", *fields.get("parents", [])],
        "data_dependencies": fields.get("deps", []),
        "expected_output_ids": fields.get("outputs", [f"{task_id}-out"]),
        "owner_pod_id": "agent:1",
        "opt_partition_id": "p",
        "created_at": fields.get("at", 0.0),
    }


def test_graph_edges_by_kind() -> None:
    rows = [
        row("parent", TaskStatus.COMPLETED),
        row("a", TaskStatus.COMPLETED, created_by="parent", parents=["parent"]),
        row("b", TaskStatus.RETRIED, created_by="parent", parents=["parent"]),
        row("b###1", TaskStatus.COMPLETED, created_by="parent", parents=["parent"], initial="b",
            outputs=["b-out"]),
        row("agg", TaskStatus.COMPLETED, created_by="parent", parents=["parent"],
            deps=["a-out", "b-out"], outputs=["parent-out"]),
    ]  # fmt: skip
    owners = {"a-out": "a", "b-out": "b###1", "parent-out": "agg", "agg-out": "agg"}
    graph = graph_of(rows, owners)
    assert [n["id"] for n in graph["nodes"]] == [r["task_id"] for r in rows]
    assert {n["id"]: n["generation"] for n in graph["nodes"]}["agg"] == 1
    edges = {(e["source"], e["target"], e["kind"]) for e in graph["edges"]}
    assert edges == {
        ("parent", "a", "subtask"),
        ("parent", "b", "subtask"),
        ("parent", "agg", "subtask"),
        ("a", "agg", "dependency"),
        ("b###1", "agg", "dependency"),
        ("parent", "agg", "delegation"),
        ("b", "b###1", "retry"),
    }
    # Edges reach only the tasks given (a graph cut at its limit has no dangling edge).
    assert all(e["source"] != "parent" for e in graph_of(rows[1:], owners)["edges"])
