"""Prometheus metrics of pyarmonik processes (one registry per process: the default one).

ArmoniK's names are kept where autoscaling depends on them: `armonik_<partition>_tasks_queued`
and `armonik_tasks_queued` count the tasks waiting for or held by an agent (SUBMITTED,
DISPATCHED, PROCESSING), which is what KEDA/HPA scale the compute deployments on.
"""

from __future__ import annotations

import re

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from pyarmonik.domain.statuses import TaskStatus

QUEUED_STATUSES = (TaskStatus.SUBMITTED, TaskStatus.DISPATCHED, TaskStatus.PROCESSING)
CONTENT_TYPE = CONTENT_TYPE_LATEST

RPCS = Counter(
    "pyarmonik_rpc_total", "gRPC calls served, by method and status code", ["method", "code"]
)
RPC_SECONDS = Histogram(
    "pyarmonik_rpc_seconds",
    "Time to serve a gRPC call (until the last message for streams)",
    ["method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60),
)
TASKS = Gauge(
    "pyarmonik_tasks", "Tasks in the database, by partition and status", ["partition", "status"]
)
TASKS_QUEUED = Gauge(
    "armonik_tasks_queued", "Tasks submitted, dispatched or processing (all partitions)"
)

AGENT_TASKS = Counter(
    "pyarmonik_agent_tasks_total", "Tasks an agent ended, by outcome", ["partition", "outcome"]
)
AGENT_STAGE_SECONDS = Histogram(
    "pyarmonik_agent_stage_seconds",
    "Time of each stage of a task in an agent: queue wait, prefetch, processing, post-processing",
    ["partition", "stage"],
    buckets=(
        0.0005,
        0.001,
        0.0025,
        0.005,
        0.01,
        0.025,
        0.05,
        0.1,
        0.25,
        0.5,
        1,
        2.5,
        5,
        10,
        30,
        60,
        300,
    ),
)
WORKER_RESTARTS = Counter(
    "pyarmonik_worker_restarts_total", "Worker restarts by its agent", ["partition"]
)
BACKEND_ERRORS = Counter(
    "pyarmonik_backend_errors_total",
    "Failed calls to a backend, by the operation that failed",
    ["operation"],
)

_queued_by_partition: dict[str, Gauge] = {}


def partition_queued_gauge(partition_id: str) -> Gauge:
    """`armonik_<partition>_tasks_queued` (partition ids are sanitised into a metric name)."""
    name = f"armonik_{re.sub(r'[^a-zA-Z0-9_]', '_', partition_id)}_tasks_queued"
    if name not in _queued_by_partition:
        _queued_by_partition[name] = Gauge(
            name, f"Tasks submitted, dispatched or processing in partition {partition_id}"
        )
    return _queued_by_partition[name]


def set_task_counts(counts: list[tuple[str, int, int]], partitions: list[str]) -> None:
    """Refresh the task gauges from (partition, status, count) rows."""
    TASKS.clear()
    queued = dict.fromkeys(partitions, 0)
    for partition, status, count in counts:
        TASKS.labels(partition, TaskStatus(status).name).set(count)
        if status in QUEUED_STATUSES:
            queued[partition] = queued.get(partition, 0) + count
    for partition, count in queued.items():
        partition_queued_gauge(partition).set(count)
    TASKS_QUEUED.set(sum(queued.values()))


def exposition() -> bytes:
    return bytes(generate_latest())
