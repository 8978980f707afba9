"""`pyarmonik bench gui`: the size and time of each picture's data request of the admin GUI
on one big session (100,000 tasks by default).

The session is written straight into a fresh SQLite database through the Repository, as a
run would have left it (nothing runs): several agents in two partitions, fan-outs whose
parents delegate their output to an aggregation task that depends on the children's outputs,
errors, crashes retried, a few timeouts and cancellations, every stage timestamped. The GUI
is then served on a local port and each /api request is timed from an HTTP client.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

from pyarmonik.control.gui import AdminGui
from pyarmonik.domain.options import TaskOptions
from pyarmonik.domain.records import Result, Session, Task
from pyarmonik.domain.statuses import ResultStatus, TaskStatus
from pyarmonik.scheduling.backends import Backends
from pyarmonik.storage.database.sqlite import SqliteDatabase
from pyarmonik.storage.objects.files import FileStorage
from pyarmonik.storage.queue.table import TableQueue

FANOUT = 10  # children of a fan-out (plus its parent and its aggregation task)


@dataclass
class Synthetic:
    """A finished session's records, as a run would have left them."""

    session: Session
    tasks: list[Task] = field(default_factory=list)
    results: list[Result] = field(default_factory=list)


def synthetic_session(
    session_id: str,
    tasks: int,
    agents: int = 8,
    partitions: int = 2,
    start: float | None = None,
    seed: int = 1,
) -> Synthetic:
    """About `tasks` task records (a fan-out is not cut short) ending near `start` plus
    their span, submitted faster than the agents run them (the queues fill up)."""
    rng = random.Random(seed)
    t0 = time.time() - tasks * 0.006 if start is None else start
    names = [f"part-{p}" for p in range(partitions)]
    owners = [
        (f"10.0.{i // 250}.{i % 250 + 1}:{9000 + i}", names[i % partitions]) for i in range(agents)
    ]
    free = {owner: t0 for owner, _ in owners}
    made = Synthetic(Session(session_id, partition_ids=names, created_at=t0))
    count = 0

    def run(
        task_id: str,
        created: float,
        submitted: float,
        status: TaskStatus,
        parents: list[str],
        partition: str,
        deps: list[str] = [],  # noqa: B006 - never mutated
        output: str | None = None,
        initial: str = "",
        retry_of: list[str] = [],  # noqa: B006 - never mutated
        by: str = "",
    ) -> Task:
        nonlocal count
        count += 1
        output_id = output or f"{task_id}-out"
        task = Task(
            task_id,
            session_id,
            payload_id=f"{task_id}-in",
            options=TaskOptions(max_retries=1, partition_id=partition),
            status=status,
            initial_task_id=initial or task_id,
            parent_task_ids=[session_id, *parents],
            data_dependencies=deps,
            expected_output_ids=[output_id],
            retry_of_ids=retry_of,
            created_by=by,
            created_at=created,
            submitted_at=submitted,
        )
        if status == TaskStatus.CANCELLED:  # cancelled while queued: no agent
            task.ended_at = submitted + rng.uniform(0.5, 2.0)
        else:
            owner = min((o for o, p in owners if p == partition), key=lambda o: free[o])
            acquired = max(free[owner], submitted) + rng.uniform(0.0002, 0.001)
            work = rng.uniform(0.01, 0.05) * (20 if rng.random() < 0.005 else 1)
            task.owner_pod_id, task.pod_hostname = owner, owner.split(":")[0]
            task.received_at = acquired - 0.0001
            task.acquired_at = acquired
            task.fetched_at = acquired + rng.uniform(0.0005, 0.004)
            task.started_at = task.fetched_at + 0.0003
            task.processed_at = task.started_at + work
            task.ended_at = task.processed_at + rng.uniform(0.0005, 0.003)
            free[owner] = task.ended_at
            if status != TaskStatus.COMPLETED:
                task.error = {
                    TaskStatus.ERROR: "ValueError: refused on purpose",
                    TaskStatus.RETRIED: "Worker exited with code 3",
                    TaskStatus.TIMEOUT: "Task exceeded its max duration",
                }.get(status, "")
        task.creation_to_end_duration = task.ended_at - created
        made.tasks.append(task)
        return task

    def result(result_id: str, owner: str, by: str, at: float) -> None:
        made.results.append(
            Result(
                result_id,
                session_id,
                name=result_id,
                status=ResultStatus.COMPLETED,
                owner_task_id=owner,
                created_by=by,
                completed_by=owner,
                size=16,
                created_at=at,
                completed_at=at,
            )
        )

    while count < tasks:
        created = t0 + count * 0.004  # submitted faster than the agents run them
        partition = rng.choice(names)
        task_id = f"task-{count:07d}"
        draw = rng.random()
        if draw < 0.02 and tasks - count > FANOUT + 2:
            parent = run(task_id, created, created, TaskStatus.COMPLETED, [], partition)
            stamp = parent.processed_at or created
            children = [
                run(
                    f"{task_id}-c{i}",
                    stamp,
                    stamp,
                    TaskStatus.COMPLETED,
                    [task_id],
                    partition,
                    by=task_id,
                )
                for i in range(FANOUT)
            ]
            ready = max(c.ended_at or stamp for c in children)
            deps = [c.expected_output_ids[0] for c in children]
            aggregate = run(
                f"{task_id}-agg",
                stamp,
                ready,
                TaskStatus.COMPLETED,
                [task_id],
                partition,
                deps=deps,
                output=parent.expected_output_ids[0],
                by=task_id,
            )
            for child in children:
                result(child.expected_output_ids[0], child.task_id, task_id, stamp)
            # the parent's output, delegated to the aggregation task
            result(parent.expected_output_ids[0], aggregate.task_id, "", created)
            continue
        if draw < 0.05:  # crashed, then retried once
            run(task_id, created, created, TaskStatus.RETRIED, [], partition)
            final = TaskStatus.ERROR if rng.random() < 0.3 else TaskStatus.COMPLETED
            retry = run(
                f"{task_id}###1",
                created,
                created,
                final,
                [],
                partition,
                output=f"{task_id}-out",
                initial=task_id,
                retry_of=[task_id],
            )
            result(f"{task_id}-out", retry.task_id, "", created)
            continue
        status = TaskStatus.COMPLETED
        if draw < 0.07:
            status = TaskStatus.ERROR
        elif draw < 0.072:
            status = TaskStatus.TIMEOUT
        elif draw < 0.074:
            status = TaskStatus.CANCELLED
        run(task_id, created, created, status, [], partition)
        result(f"{task_id}-out", task_id, "", created)
    return made


async def store(backends: Backends, made: Synthetic, batch: int = 5000) -> None:
    """Write the records (in batches: one transaction each)."""
    async with backends.database.write() as repository:
        await repository.insert([made.session])
    for records in (made.tasks, made.results):
        for start in range(0, len(records), batch):
            async with backends.database.write() as repository:
                await repository.insert(records[start : start + batch])


async def _measure(tasks: int, folder: Path) -> list[str]:
    database = SqliteDatabase(folder / "bench.sqlite")
    backends = Backends(database, TableQueue(database), FileStorage(folder / "objects"))
    await backends.start()
    lines: list[str] = []
    runner: web.AppRunner | None = None
    try:
        session_id = "bench-gui-session"
        began = time.perf_counter()
        made = synthetic_session(session_id, tasks)
        await store(backends, made)
        lines.append(
            f"{len(made.tasks):,} tasks and {len(made.results):,} results written in "
            f"{time.perf_counter() - began:.1f} s"
        )
        app = web.Application()
        AdminGui(backends).install(app)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        base = f"http://127.0.0.1:{port}"
        some = made.tasks[len(made.tasks) // 2].task_id
        requests = [
            ("task stream, session span", f"/api/pictures/stream?session={session_id}"),
            ("task stream, last 10 min", "/api/pictures/stream?window=600"),
            ("task stream, last minute", "/api/pictures/stream?window=60"),
            ("session graph", f"/api/pictures/graph?session={session_id}"),
            ("stage breakdown", f"/api/pictures/breakdown?session={session_id}"),
            ("dashboard flow, session span", f"/api/pictures/flow?session={session_id}"),
            ("dashboard flow, last 10 min", "/api/pictures/flow?window=600"),
            ("task page (neighbourhood)", f"/api/tasks/{some}"),
        ]
        # The first answer is computed; the next two are the kept one (scheduling/timeline.py).
        lines.append(f"{'request':<32} {'bytes':>10} {'first ms':>9} {'kept ms':>8}")
        async with aiohttp.ClientSession() as client:
            for label, path in requests:
                times, size = [], 0
                for _ in range(3):
                    began = time.perf_counter()
                    async with client.get(base + path) as response:
                        body = await response.read()
                        response.raise_for_status()
                    times.append(time.perf_counter() - began)
                    size = len(body)
                lines.append(
                    f"{label:<32} {size:>10,} {times[0] * 1000:>9.0f} {min(times) * 1000:>8.0f}"
                )
    finally:
        if runner is not None:
            await runner.cleanup()
        await backends.close()
    return lines


def gui(tasks: int) -> list[str]:
    """Fill a fresh database with a `tasks`-task session; time each picture's request."""
    with tempfile.TemporaryDirectory(prefix="pyarmonik-bench-gui-") as folder:
        return asyncio.run(_measure(tasks, Path(folder)))
