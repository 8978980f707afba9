"""`pyarmonik bench share`: how long a small application waits behind a big one.

On a fresh `pyarmonik local` cluster (official Python worker) per queue order, session A
submits `a_tasks` sleep tasks, then session B `b_tasks`, at the same priority on the same
partition. Each session's time runs from its first task created to its last task ended
(the tasks' own timestamps); B's time as a fraction of A's says whether B was served in turn
(fair share) or after A (strict FIFO, ArmoniK's order).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from armonik.client import ArmoniKSessions, ArmoniKTasks
from armonik.common import Task

from pyarmonik.bench.run import OPTIONS, Cluster, _wait_done, submit_independent


@dataclass
class ShareRow:
    order: str
    a_seconds: float  # A: first created → last ended
    b_seconds: float  # B: first created → last ended
    b_over_a: float
    a_left: int  # A's tasks not ended yet when B's last one ended


def _tasks(channel: grpc.Channel, session_id: str) -> list[Task]:
    client, page, rows = ArmoniKTasks(channel), 0, []
    while True:
        total, listed = client.list_tasks(Task.session_id == session_id, page=page, page_size=1000)
        rows += listed
        if len(rows) >= total or not listed:
            return rows
        page += 1


def _span(tasks: list[Task]) -> float:
    return float(
        (max(t.ended_at for t in tasks) - min(t.created_at for t in tasks)).total_seconds()
    )


def measure(
    order: str, a_tasks: int, b_tasks: int, task_ms: int, agents: int, extra: list[str]
) -> ShareRow:
    with tempfile.TemporaryDirectory(prefix="pyarmonik-share-") as folder:
        config = Path(folder) / "config.yaml"
        config.write_text(f"queue_order: {order}\n")
        with (
            Cluster(agents, [*extra, "--config", str(config)]) as cluster,
            grpc.insecure_channel(cluster.endpoint) as channel,
        ):
            sessions = ArmoniKSessions(channel)
            a, b = sessions.create_session(OPTIONS), sessions.create_session(OPTIONS)
            submit_independent(channel, a, a_tasks, f"sleep:{task_ms}".encode())
            submit_independent(channel, b, b_tasks, f"sleep:{task_ms}".encode())
            _wait_done(channel, a, a_tasks)
            _wait_done(channel, b, b_tasks)
            a_rows, b_rows = _tasks(channel, a), _tasks(channel, b)
    b_end = max(t.ended_at for t in b_rows)
    a_seconds, b_seconds = _span(a_rows), _span(b_rows)
    return ShareRow(
        order=order,
        a_seconds=round(a_seconds, 2),
        b_seconds=round(b_seconds, 2),
        b_over_a=round(b_seconds / a_seconds, 3) if a_seconds > 0 else 0.0,
        a_left=sum(1 for t in a_rows if t.ended_at > b_end),
    )


HEADER = "| order | A's time (s) | B's time (s) | B's time / A's | A's tasks left when B ended |"


def share(
    orders: list[str],
    a_tasks: int,
    b_tasks: int,
    task_ms: int,
    agents: int,
    extra: list[str],
    backends: str,
) -> Iterator[str]:
    """One row per queue order, each on its own fresh cluster, line by line."""
    yield (
        f"share: A {a_tasks} tasks then B {b_tasks} tasks of {task_ms} ms, same priority, "
        f"{agents} agents; backends {backends}; {os.cpu_count()} cores"
    )
    yield HEADER
    yield "|---|---|---|---|---|"
    for order in orders:
        row = measure(order, a_tasks, b_tasks, task_ms, agents, extra)
        cells = [row.order, row.a_seconds, row.b_seconds, f"{row.b_over_a:.1%}", row.a_left]
        yield "| " + " | ".join(str(cell) for cell in cells) + " |"
