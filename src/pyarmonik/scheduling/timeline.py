"""Where the time of tasks goes, and the data of the admin GUI's pictures, free of HTTP.

`session_stats` is the one computation of `pyarmonik stats` (throughput, latency and
processing percentiles of the COMPLETED tasks) and of the GUI's stage breakdown; `Pictures`
answers the GUI's picture requests from the Repository.

Every answer is bounded whatever the size of the session:
- task stream: up to `STREAM_BARS` task attempts held by agents during the window come back
  one by one (read by acquisition time, `LIMIT STREAM_BARS + 1`); beyond that, counts per
  agent, time bucket (`STREAM_BUCKETS` over the window, by acquisition time) and status,
  counted by the database.
- session graph: up to `GRAPH_NODES` tasks with their edges (subtask creation, data
  dependency, output delegation, retry); beyond that, counts per generation and status,
  counted by the database.
- breakdown: 5 stages, percentiles and `HISTOGRAM_BINS` bins; the database returns the 8 time
  columns of the session's tasks (the one read growing with the session, as `pyarmonik
  stats` reads every task: measured by `pyarmonik bench gui`).
- flow: `FLOW_BUCKETS` buckets per partition, one share per agent, counted by the database.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from pyarmonik.domain.filters import Filter
from pyarmonik.domain.statuses import TaskStatus
from pyarmonik.scheduling.backends import Backends

STREAM_BARS = 2000
STREAM_BUCKETS = 120
GRAPH_NODES = 1000
HISTOGRAM_BINS = 40
FLOW_BUCKETS = 60
CACHED_ANSWERS = 256
PERCENTILES = (50, 90, 99)
# A task's stages, each from one timestamp to the next: their durations add up to its
# latency (creation to end).
STAGES = (
    ("dependency wait", "created_at", "submitted_at"),
    ("queue wait", "submitted_at", "acquired_at"),
    ("prefetch", "acquired_at", "fetched_at"),
    ("worker", "fetched_at", "processed_at"),
    ("post-processing", "processed_at", "ended_at"),
)
TIMES = (
    "created_at",
    "submitted_at",
    "acquired_at",
    "fetched_at",
    "started_at",
    "processed_at",
    "ended_at",
)
FAILED = frozenset({TaskStatus.ERROR, TaskStatus.TIMEOUT, TaskStatus.CANCELLED})


@dataclass(frozen=True)
class Times:
    """A task's status name and stage times (seconds, from any origin; None: not reached)."""

    status: str
    created_at: float | None = None
    submitted_at: float | None = None
    acquired_at: float | None = None
    fetched_at: float | None = None
    started_at: float | None = None
    processed_at: float | None = None
    ended_at: float | None = None

    @staticmethod
    def of_row(row: dict[str, Any]) -> Times:
        """From a row of `Repository.task_times`."""
        return Times(TaskStatus(row["status"]).name, *(row[name] for name in TIMES))


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) of sorted values, interpolating linearly between the
    closest ranks (numpy's default, `statistics.quantiles(method="inclusive")`)."""
    if not ordered:
        return None
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _completed(tasks: Sequence[Times]) -> list[Times]:
    return [
        t
        for t in tasks
        if t.status == "COMPLETED" and t.ended_at is not None and t.created_at is not None
    ]


def session_stats(tasks: Sequence[Times]) -> dict[str, Any]:
    """Throughput and latencies of the COMPLETED tasks among `tasks`: throughput = completed
    / (last ended_at - first created_at); latency = ended_at - created_at; processing =
    ended_at - started_at; percentiles p50, p90, p99 (first and last as given, not dates)."""
    by_status: dict[str, int] = {}
    for task in tasks:
        by_status[task.status] = by_status.get(task.status, 0) + 1
    done = _completed(tasks)
    stats: dict[str, Any] = {"tasks": len(tasks), "by_status": by_status, "completed": len(done)}
    if not done:
        return stats
    first = min(t.created_at for t in done if t.created_at is not None)
    last = max(t.ended_at for t in done if t.ended_at is not None)
    elapsed = last - first
    latencies = sorted(t.ended_at - t.created_at for t in done)  # type: ignore[operator]
    processing = sorted(t.ended_at - t.started_at for t in done if t.started_at is not None)  # type: ignore[operator]
    stats.update(
        first_created_at=first,
        last_ended_at=last,
        elapsed_seconds=elapsed,
        throughput=len(done) / elapsed if elapsed > 0 else None,
        latency={f"p{q}": percentile(latencies, q) for q in PERCENTILES},
        processing={f"p{q}": percentile(processing, q) for q in PERCENTILES},
    )
    return stats


def stage_breakdown(tasks: Sequence[Times], bins: int = HISTOGRAM_BINS) -> dict[str, Any]:
    """`session_stats` of `tasks`, the mean and p99 of each stage of the COMPLETED ones (a
    stage missing a timestamp is left out of its figures) and a histogram of their latency
    (`bins` equal bins from the lowest to the highest)."""
    stats = session_stats(tasks)
    done = _completed(tasks)
    stages = []
    for name, start, end in STAGES:
        values = sorted(
            b - a
            for t in done
            if (a := getattr(t, start)) is not None and (b := getattr(t, end)) is not None
        )
        stages.append(
            {
                "stage": name,
                "from": start,
                "to": end,
                "count": len(values),
                "mean": sum(values) / len(values) if values else None,
                "p99": percentile(values, 99),
            }
        )
    latencies = [t.ended_at - t.created_at for t in done]  # type: ignore[operator]
    low, high = (min(latencies), max(latencies)) if latencies else (0.0, 0.0)
    width = (high - low) / bins if high > low else 1.0
    counts = [0] * bins if latencies else []
    for value in latencies:
        counts[min(int((value - low) / width), bins - 1)] += 1
    return {
        "stats": stats,
        "stages": stages,
        "histogram": {"low": low, "width": width, "counts": counts},
    }


def outcome(status: int) -> str:
    """The colour class of a task status: its name, lowercased."""
    return TaskStatus(status).name.lower()


def buckets_of(since: float, until: float, count: int) -> tuple[float, int]:
    """(interval, number of buckets) covering [since, until] with at most `count` buckets."""
    span = max(until - since, 1e-3)
    interval = span / count
    return interval, max(1, math.ceil(span / interval - 1e-9))


def generation(parent_task_ids: Sequence[str]) -> int:
    """0 for a task a client submitted (its parents are its session alone), 1 for its
    subtasks..."""
    return max(len(parent_task_ids) - 1, 0)


def graph_of(rows: Sequence[dict[str, Any]], owners: dict[str, str]) -> dict[str, Any]:
    """Nodes and edges of tasks (rows of `Repository.graph_tasks`); `owners`: the task that
    must produce each result now. Edges (between the given tasks only): `subtask` (created
    by), `dependency` (producer of a data dependency to its consumer), `delegation` (a task to
    the one that took over its output), `retry` (an attempt to the next)."""
    ids = {row["task_id"] for row in rows}
    nodes, edges = [], []
    seen: set[tuple[str, str, str]] = set()
    attempts: dict[str, list[dict[str, Any]]] = defaultdict(list)

    def edge(source: str, target: str, kind: str) -> None:
        if source in ids and target in ids and source != target:
            key = (source, target, kind)
            if key not in seen:
                seen.add(key)
                edges.append({"source": source, "target": target, "kind": kind})

    for row in rows:
        nodes.append(
            {
                "id": row["task_id"],
                "status": TaskStatus(row["status"]).name,
                "generation": generation(row["parent_task_ids"]),
                "agent": row["owner_pod_id"],
                "partition": row["opt_partition_id"] or "",
                "created_at": row["created_at"],
            }
        )
        attempts[row["initial_task_id"] or row["task_id"]].append(row)
    initial = {row["task_id"]: row["initial_task_id"] or row["task_id"] for row in rows}
    for row in rows:
        task_id = row["task_id"]
        if row["created_by"] and initial[task_id] == task_id:  # retries are not subtasks
            edge(row["created_by"], task_id, "subtask")
        for result_id in row["data_dependencies"]:
            edge(owners.get(result_id, ""), task_id, "dependency")
        for result_id in row["expected_output_ids"]:
            owner = owners.get(result_id, "")
            if owner in initial and initial[owner] != initial[task_id]:
                edge(task_id, owner, "delegation")
    for chain in attempts.values():
        for before, after in pairwise(chain):
            edge(before["task_id"], after["task_id"], "retry")
    return {"nodes": nodes, "edges": edges}


class Pictures:
    """The data of the GUI's pictures, on `backends`' database. Every method takes a task
    filter (the session, narrowed to what the caller may see).

    Answers are kept per question (filter and window length) for max(1 s, 10 times what
    they cost): pages polling every second cost at most a tenth of a core per question,
    whatever the number of viewers, and a big session's picture lags by seconds."""

    def __init__(self, backends: Backends):
        self.backends = backends
        self._answers: dict[Hashable, tuple[float, dict[str, Any]]] = {}

    async def _cached(
        self, key: Hashable, compute: Callable[[], Awaitable[dict[str, Any]]]
    ) -> dict[str, Any]:
        clock = time.monotonic()
        kept = self._answers.get(key)
        if kept is not None and clock < kept[0]:
            return kept[1]
        answer = await compute()
        done = time.monotonic()
        if len(self._answers) >= CACHED_ANSWERS:
            self._answers = {k: v for k, v in self._answers.items() if v[0] > done}
        self._answers[key] = (done + max(1.0, 10 * (done - clock)), answer)
        return answer

    async def stream(self, where: Filter, since: float, until: float) -> dict[str, Any]:
        """`_stream`, kept a while (see the class)."""
        key = ("stream", where, round(until - since, 3))
        return await self._cached(key, lambda: self._stream(where, since, until))

    async def graph(self, where: Filter) -> dict[str, Any]:
        """`_graph`, kept a while (see the class)."""
        return await self._cached(("graph", where), lambda: self._graph(where))

    async def breakdown(self, where: Filter) -> dict[str, Any]:
        """`_breakdown`, kept a while (see the class)."""
        return await self._cached(("breakdown", where), lambda: self._breakdown(where))

    async def flow(self, where: Filter, since: float, until: float) -> dict[str, Any]:
        """`_flow`, kept a while (see the class)."""
        key = ("flow", where, round(until - since, 3))
        return await self._cached(key, lambda: self._flow(where, since, until))

    async def span(self, where: Filter) -> tuple[float | None, float | None, float | None]:
        """First creation, first acquisition, last end of the matching tasks."""
        async with self.backends.database.read() as repository:
            return await repository.task_span(where)

    async def _stream(self, where: Filter, since: float, until: float) -> dict[str, Any]:
        """Task attempts held by agents during [since, until]: one bar each up to
        STREAM_BARS, else counts per agent, bucket and status."""
        async with self.backends.database.read() as repository:
            rows = await repository.task_attempts(where, since, until, STREAM_BARS + 1)
            if len(rows) <= STREAM_BARS:
                bars = [
                    {
                        "id": row["task_id"],
                        "status": TaskStatus(row["status"]).name,
                        "agent": row["owner_pod_id"],
                        "partition": row["opt_partition_id"] or "",
                        **{name: row[name] for name in TIMES[2:]},
                    }
                    for row in rows
                ]
                agents = sorted({(b["partition"], b["agent"]) for b in bars})
                return {
                    "mode": "bars",
                    "since": since,
                    "until": until,
                    "agents": [{"partition": p, "agent": a} for p, a in agents],
                    "bars": bars,
                }
            interval, count = buckets_of(since, until, STREAM_BUCKETS)
            counted = await repository.count_tasks_by_bucket(
                where,
                "acquired",
                since,
                until + interval,
                interval,
                ("owner_pod_id", "opt_partition_id", "status"),
            )
        cells: dict[tuple[str, str, int], Counter[str]] = defaultdict(Counter)
        for row in counted:
            k = min(max(int(row["k"]), 0), count - 1)
            key = (row["opt_partition_id"] or "", row["owner_pod_id"], k)
            cells[key][TaskStatus(row["status"]).name] += int(row["n"])
        agents = sorted({(p, a) for p, a, _ in cells})
        return {
            "mode": "buckets",
            "since": since,
            "until": until,
            "interval": interval,
            "agents": [{"partition": p, "agent": a} for p, a in agents],
            "buckets": [
                {"agent": a, "k": k, "counts": dict(sorted(c.items()))}
                for (_, a, k), c in sorted(cells.items())
            ],
            "limit": STREAM_BARS,
        }

    async def _graph(self, where: Filter) -> dict[str, Any]:
        """Nodes and edges up to GRAPH_NODES tasks, else counts per generation."""
        async with self.backends.database.read() as repository:
            rows = await repository.graph_tasks(where, GRAPH_NODES + 1)
            if len(rows) <= GRAPH_NODES:
                wanted = [r for row in rows for r in row["data_dependencies"]]
                wanted += [r for row in rows for r in row["expected_output_ids"]]
                owners = await repository.result_owners(wanted)
                return {"mode": "graph", **graph_of(rows, owners)}
            counted = await repository.count_generations(where)
        generations: dict[int, dict[str, int]] = defaultdict(dict)
        for g, status, n in counted:
            generations[g][TaskStatus(status).name] = n
        return {
            "mode": "summary",
            "limit": GRAPH_NODES,
            "generations": [
                {"generation": g, "counts": dict(sorted(c.items()))}
                for g, c in sorted(generations.items())
            ],
        }

    async def _breakdown(self, where: Filter) -> dict[str, Any]:
        """`stage_breakdown` of the matching tasks."""
        async with self.backends.database.read() as repository:
            rows = await repository.task_times(where)
        # Sorting 100,000 durations takes a while: off the event loop.
        return await asyncio.to_thread(lambda: stage_breakdown([Times.of_row(r) for r in rows]))

    async def _flow(self, where: Filter, since: float, until: float) -> dict[str, Any]:
        """Per partition and bucket of [since, until]: tasks ended (completed, failed) per
        second and tasks queued at the bucket's end; per agent, the share of the window it
        held tasks (busy, at most 1) or not (idle)."""
        interval, count = buckets_of(since, until, FLOW_BUCKETS)
        end = until + interval  # the last bucket takes what ends at `until` (clamped below)
        async with self.backends.database.read() as repository:
            ended = await repository.count_tasks_by_bucket(
                where, "ended", since, end, interval, ("opt_partition_id", "status")
            )
            submitted = await repository.count_tasks_by_bucket(
                where, "submitted", since, end, interval, ("opt_partition_id",)
            )
            dequeued = await repository.count_tasks_by_bucket(
                where, "dequeued", since, end, interval, ("opt_partition_id",)
            )
            queued = await repository.count_queued_at(where, since)
            busy = await repository.agent_busy(where, since, until)
        names = set(queued) | {
            row["opt_partition_id"] or "" for row in [*ended, *submitted, *dequeued]
        }
        series: dict[str, dict[str, list[int]]] = {
            p: {key: [0] * count for key in ("completed", "failed", "in", "out")} for p in names
        }
        for row in ended:
            k, status = int(row["k"]), row["status"]
            if k >= 0 and status in _ENDED_KEYS:
                k = min(k, count - 1)
                key = "completed" if status == TaskStatus.COMPLETED else "failed"
                series[row["opt_partition_id"] or ""][key][k] += int(row["n"])
        for rows, key in ((submitted, "in"), (dequeued, "out")):
            for row in rows:
                if (k := int(row["k"])) >= 0:
                    k = min(k, count - 1)
                    series[row["opt_partition_id"] or ""][key][k] += int(row["n"])
        partitions = []
        for name in sorted(names):
            s = series[name]
            depth, level = [], queued.get(name, 0)
            for k in range(count):
                level += s["in"][k] - s["out"][k]
                depth.append(level)
            partitions.append(
                {
                    "partition": name,
                    "completed": s["completed"],
                    "failed": s["failed"],
                    "queued": depth,
                }
            )
        window = max(until - since, 1e-9)
        agents = [
            {
                "agent": row["owner"],
                "partition": row["p"] or "",
                "tasks": int(row["n"]),
                "busy": min(max(float(row["busy"] or 0.0) / window, 0.0), 1.0),
            }
            for row in sorted(busy, key=lambda r: (r["p"] or "", r["owner"]))
        ]
        return {
            "since": since,
            "until": until,
            "interval": interval,
            "partitions": partitions,
            "agents": agents,
        }


# Statuses counted as ended in the throughput: final ones (a RETRIED attempt counts too,
# as failed: its agent spent the time).
_ENDED_KEYS = frozenset(int(s) for s in (*FAILED, TaskStatus.COMPLETED, TaskStatus.RETRIED))
