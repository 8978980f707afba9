"""The chaos suite: while fork-join trees with output delegation run (submitted through the
official client, run by a worker of the official SDK), processes are killed with SIGKILL at
random moments (workers, agents, a control plane while the client goes on through the
other) and, on PostgreSQL + RabbitMQ + Redis, each backend server is restarted. At the end:

- every task ended COMPLETED (or RETRIED, replaced by a later attempt), and every tree's
  output holds exactly the value computed for it;
- no result was written twice with different data, and what is stored is what was written;
- no attempt ran twice, no task ran more often than its retries allow, and the retry chains
  are `<initial>`, `<initial>###1`, ... as the API lists them;
- no message is left in the queue (nor parked in the database);
- no blob is orphaned (every stored blob belongs to a result) nor missing.

The schedule comes from a seed, printed at the start and in every failure: rerun one with
`pytest tests/chaos --chaos-seed N --chaos-seconds S`. CI runs a short fixed-seed run of each
variant; `pytest -m chaos --chaos-seconds 600` is the long one.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from armonik.client import ArmoniKResults, ArmoniKSessions, ArmoniKTasks
from armonik.common import ResultStatus, Task, TaskOptions, TaskStatus

from tests.chaos.support import (
    Backends,
    Chaos,
    Deployment,
    Records,
    StoredResult,
    Workload,
    initial_id,
    schedule,
)
from tests.helpers import (
    ACTIVE,
    EMBEDDED,
    PG_RABBIT_REDIS,
    all_tasks,
    cluster_backends,
    retrying,
    session_finished,
)
from tests.processes import require_restartable, service_left_running, wait_until

MAX_RETRIES = 5
OPTIONS = TaskOptions(max_duration=timedelta(seconds=60), priority=1, max_retries=MAX_RETRIES)
DEPTH = 3  # 15 nodes and 7 joins per tree
WAVE = 2  # trees per submission
BUSY = 40  # tasks still to run below which the client submits another wave
FINISH_SECONDS = 240  # for the session to finish once the chaos stopped
DRAIN_SECONDS = 60  # for the queue to drain once the session finished


@dataclass(frozen=True)
class Variant:
    backends: str
    services: tuple[str, ...]  # backend servers restarted during the run
    control_planes: int
    agents: int
    lease: float  # table queue: seconds before a dead agent's message is seen again


VARIANTS = {
    # Two control planes on one SQLite file is supported: every process of `pyarmonik local`
    # already shares it, and the control plane keeps no state of its own.
    EMBEDDED: Variant(EMBEDDED, (), control_planes=2, agents=3, lease=5.0),
    PG_RABBIT_REDIS: Variant(
        PG_RABBIT_REDIS, ("postgresql", "rabbitmq", "redis"), control_planes=2, agents=3, lease=5.0
    ),
}


@pytest.mark.chaos
@pytest.mark.parametrize(
    "variant",
    [
        pytest.param(VARIANTS[EMBEDDED], id=EMBEDDED),
        pytest.param(VARIANTS[PG_RABBIT_REDIS], id=PG_RABBIT_REDIS, marks=pytest.mark.cluster),
    ],
)
def test_chaos(variant: Variant, chaos_seed: int, chaos_seconds: float, tmp_path: Path) -> None:
    for service in variant.services:
        require_restartable(service)
    run = ChaosRun(variant, chaos_seed, chaos_seconds, tmp_path)
    with run.reported():
        run.execute()


class ChaosRun:
    """One seeded run: deploy, submit while the chaos plays, wait for the end, check."""

    def __init__(self, variant: Variant, seed: int, seconds: float, root: Path):
        self.variant, self.seed, self.seconds, self.root = variant, seed, seconds, root
        self.rng = random.Random(seed)
        self.events = schedule(self.rng, seconds, variant.services)
        self.played: list[str] = []

    @property
    def rerun(self) -> str:
        return (
            f"chaos seed {self.seed} ({self.variant.backends}, {self.seconds:g} s; rerun with "
            f"--chaos-seed {self.seed} --chaos-seconds {self.seconds:g})"
        )

    @contextmanager
    def reported(self) -> Iterator[None]:
        """Every failure names the seed, what the chaos did and where the logs are."""
        print(f"\n{self.rerun}\nschedule: {[(e.at, e.kind) for e in self.events]}")
        try:
            yield
        except Exception as error:
            report = AssertionError(
                f"{self.rerun}: {error}\nplayed:\n  "
                + "\n  ".join(self.played or ["nothing"])
                + f"\nlogs and records: {self.root}"
            )
            if isinstance(error, AssertionError):  # its message says it all
                raise report from None
            raise report from error

    def execute(self) -> None:
        started = time.monotonic()
        with ExitStack() as stack:
            urls = stack.enter_context(cluster_backends(self.variant.backends, ["default"]))
            # Entered after the backends: left running before their cleanup needs them.
            stack.enter_context(service_left_running(*self.variant.services))
            deployment = stack.enter_context(
                Deployment(
                    self.root,
                    urls,
                    self.variant.control_planes,
                    self.variant.agents,
                    self.variant.lease,
                )
            )
            channel = stack.enter_context(deployment.channel())
            session_id = retrying(lambda: ArmoniKSessions(channel).create_session(OPTIONS))
            workload = Workload(session_id, self.rng.randrange(10**9), DEPTH, WAVE)
            chaos = Chaos(deployment, self.events, random.Random(self.rng.random()))
            self._drive(channel, workload, chaos)
            assert chaos.error is None, f"the chaos itself failed: {chaos.error}"
            assert not deployment.dead(), f"processes died on their own: {deployment.dead()}"

            wait_until(
                lambda: session_finished(channel, session_id),
                "the session finished after the chaos",
                FINISH_SECONDS,
            )
            backends = Backends(deployment)
            wait_until(
                lambda: not backends.queued() and not backends.parked(),
                "the queue drained",
                DRAIN_SECONDS,
            )
            deployment.stop_agents()  # what they held, if anything, is back in the queue
            checks = Checks(channel, deployment, backends, workload, chaos.started_at)
            failures = checks.run()
            print(
                f"{self.variant.backends}: {workload.trees} trees, "
                f"{workload.failed_submissions} submissions cut by the chaos, "
                f"{len(self.played)} events, {time.monotonic() - started:.0f} s"
            )
            if failures:
                raise AssertionError(
                    f"{len(failures)} check(s) failed:\n- " + "\n- ".join(failures)
                )

    def _drive(self, channel: grpc.Channel, workload: Workload, chaos: Chaos) -> None:
        """Keep the cluster busy for the chaos window while the chaos plays."""
        tasks = ArmoniKTasks(channel)
        chaos.start()
        try:
            deadline = time.monotonic() + self.seconds
            while time.monotonic() < deadline and chaos.error is None:
                try:
                    counts = tasks.count_tasks_by_status(Task.session_id == workload.session_id)
                except grpc.RpcError:  # a control plane just died, or a backend is down
                    time.sleep(0.5)
                    continue
                if sum(n for status, n in counts.items() if status in ACTIVE) < BUSY:
                    workload.submit_wave(channel)
                time.sleep(0.3)
            chaos.join(self.seconds + 300)  # an event may still be under way
        finally:
            chaos.stopping.set()
            chaos.join()
            self.played = chaos.played
        for line in self.played:
            print(line)


class Checks:
    """The end-of-run checks; `run` returns what failed (all of it, not the first)."""

    def __init__(
        self,
        channel: grpc.Channel,
        deployment: Deployment,
        backends: Backends,
        workload: Workload,
        started_at: float,
    ):
        self.channel = channel
        self.started_at = started_at  # when the chaos started (time.time())
        self.backends = backends
        self.workload = workload
        self.session_id = workload.session_id
        self.tasks = retrying(lambda: all_tasks(channel, self.session_id))
        self.results = {r.result_id: r for r in backends.results()}
        self.records = Records.read(deployment.records)
        self.failures: list[str] = []
        self.data = self._download(
            [
                rid
                for rid in self.records.writes
                if rid in self.results and self.results[rid].status == ResultStatus.COMPLETED
            ]
        )

    def _download(self, result_ids: list[str]) -> dict[str, bytes]:
        results = ArmoniKResults(self.channel)

        def one(result_id: str) -> bytes:
            return retrying(lambda: results.download_result_data(result_id, self.session_id))

        with ThreadPoolExecutor(4) as pool:
            return dict(zip(result_ids, pool.map(one, result_ids), strict=True))

    def fail(self, what: str, cases: list[str]) -> None:
        if cases:
            shown = "; ".join(cases[:10]) + (
                f"; ... ({len(cases)} in all)" if len(cases) > 10 else ""
            )
            self.failures.append(f"{what}: {shown}")

    def run(self) -> list[str]:
        self.tasks_ended_right()
        self.outputs_right()
        self.written_once()
        self.runs_within_retries()
        self.queue_empty()
        self.no_orphan_blob()
        statuses = Counter(task.status.name for task in self.tasks)
        print(f"tasks: {dict(statuses)}, attempts run: {sum(self.records.runs.values())}")
        return self.failures

    def tasks_ended_right(self) -> None:
        self.fail(
            "tasks not COMPLETED nor RETRIED",
            [
                f"{task.id} {task.status.name} ({task.output.error or task.status_message})"
                for task in self.tasks
                if task.status not in (TaskStatus.COMPLETED, TaskStatus.RETRIED)
            ],
        )

    def outputs_right(self) -> None:
        wrong = []
        for root in self.workload.roots:
            result = self.results.get(root.output_id)
            if result is None or result.status != ResultStatus.COMPLETED:
                # A tree whose submission was cut may never have been submitted.
                if root.confirmed:
                    status = "absent" if result is None else ResultStatus(result.status).name
                    wrong.append(f"tree output {root.output_id} is {status}")
            elif self.data.get(root.output_id) != root.expected:
                wrong.append(
                    f"tree output {root.output_id} holds {self.data.get(root.output_id)!r}, "
                    f"not {root.expected!r}"
                )
        self.fail("wrong tree outputs", wrong)

    def written_once(self) -> None:
        differing, mismatched, unfinished = [], [], []
        for result_id, by_sha in self.records.writes.items():
            if len(by_sha) > 1:
                differing.append(f"{result_id} by {dict(by_sha)}")
            result = self.results.get(result_id)
            if result is None or result.status != ResultStatus.COMPLETED:
                unfinished.append(
                    f"{result_id} written by {sorted(t for ts in by_sha.values() for t in ts)}"
                )
                continue
            stored = hashlib.sha256(self.data[result_id]).hexdigest()
            if stored not in by_sha:
                mismatched.append(f"{result_id} holds {stored[:12]}, written {sorted(by_sha)}")
        self.fail("results written with different data", differing)
        self.fail("results whose data is not what was written", mismatched)
        self.fail("results written but not COMPLETED", unfinished)

    def runs_within_retries(self) -> None:
        runs = self.records.runs
        self.fail(
            "attempts run more than once", [f"{t} ran {n} times" for t, n in runs.items() if n > 1]
        )
        chains: dict[str, list[Task]] = defaultdict(list)
        for task in self.tasks:
            chains[task.initial_task_id].append(task)
        too_many, malformed = [], []
        for initial, attempts in chains.items():
            ids = {task.id for task in attempts}
            expected = {initial} | {f"{initial}###{n}" for n in range(1, len(attempts))}
            if ids != expected:
                malformed.append(f"{initial}: {sorted(ids)}")
            executions = sum(runs.get(task_id, 0) for task_id in ids)
            if len(attempts) > MAX_RETRIES + 1 or executions > MAX_RETRIES + 1:
                too_many.append(f"{initial}: {len(attempts)} attempts, {executions} runs")
        self.fail(f"tasks run more than {MAX_RETRIES} retries allow", too_many)
        self.fail("retry chains not <initial>###<n>", malformed)
        known = {task.id for task in self.tasks}
        self.fail(
            "attempts run that the API does not list",
            sorted(t for t in runs if t not in known and initial_id(t) in chains),
        )
        # The records are what the run counts rest on: every completion must be in them.
        self.fail(
            "COMPLETED attempts the workers did not record",
            [t.id for t in self.tasks if t.status == TaskStatus.COMPLETED and t.id not in runs],
        )

    def queue_empty(self) -> None:
        queued = self.backends.queued()
        self.fail("messages left in the queue", [f"{n} in {name}" for name, n in queued.items()])
        parked = self.backends.parked()
        self.fail("messages parked in the database", [f"{parked}"] if parked else [])

    def no_orphan_blob(self) -> None:
        blobs, leftovers = self.backends.blobs()
        referenced = {r.opaque_id for r in self.results.values() if r.opaque_id}
        owners: dict[bytes, StoredResult] = {r.opaque_id: r for r in self.results.values()}
        self.fail(
            "orphan blobs (stored, no result refers to them)",
            [self.backends.describe(blob, self.started_at) for blob in sorted(blobs - referenced)],
        )
        self.fail("storage leftovers", leftovers)
        self.fail(
            "COMPLETED results whose blob is missing",
            sorted(
                owners[opaque].result_id
                for opaque in referenced - blobs
                if owners[opaque].status == ResultStatus.COMPLETED
            ),
        )
