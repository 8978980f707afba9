"""The chaos suite's machinery: a deployment whose processes can be killed and replaced, a
seeded schedule of kills and restarts played by a thread, the workload's submission through
the official client, and a look at what the backends hold at the end."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import traceback
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from armonik.client import ArmoniKResults, ArmoniKTasks
from armonik.common import TaskDefinition

from tests.chaos.workload import tree_value
from tests.helpers import (
    POSTGRES_URL,
    REDIS_URL,
    BackendUrls,
    _run_async,
    free_port,
)
from tests.processes import (
    RESTARTS,
    descendants,
    start_pyarmonik,
    stop_process,
    wait_for_port,
)

WORKER = f"{sys.executable} {Path(__file__).with_name('worker.py')}"
PARTITION = "default"
AGENT_STARTS = 5  # tries to start an agent

# -- the deployment ---------------------------------------------------------------------------


class Deployment:
    """`control_planes` control planes and `agents` agents (each with its chaos worker) on
    `backends`; every process is a slot that a kill empties and a replacement fills. The
    client reaches the control planes through one channel that balances over all of them."""

    def __init__(
        self,
        root: Path,
        backends: BackendUrls,
        control_planes: int,
        agents: int,
        lease: float,
    ):
        self.root = root
        self.backends = backends
        self.logs = root / "logs"
        self.records = root / "records"  # the workers' records (worker.py)
        self.data = root / "data"  # the embedded backends, when they are the ones used
        self.lease = lease
        self.ports = [free_port() for _ in range(control_planes)]
        self.controls: list[subprocess.Popen[bytes]] = []
        self.agents: list[subprocess.Popen[bytes]] = []
        self.agent_count = agents
        self.started_agents = 0
        self.every: list[subprocess.Popen[bytes]] = []  # killed ones too, reaped at the end
        # Every process is started by this one thread, alive until `close`: the kernel kills
        # a child "dying with its parent" when the *thread* that forked it ends, and the
        # chaos thread, which starts replacements, ends before the run does.
        self._spawner = ThreadPoolExecutor(1, thread_name_prefix="spawner")

    # starting and stopping

    def start(self) -> None:
        for directory in (self.logs, self.records, self.data):
            directory.mkdir(parents=True, exist_ok=True)
        self.controls = [self._control(slot) for slot in range(len(self.ports))]
        for slot, process in enumerate(self.controls):
            wait_for_port(self.ports[slot], process)
        self.agents = [self._agent() for _ in range(self.agent_count)]

    def _control(self, slot: int) -> subprocess.Popen[bytes]:
        args = ["control", "--port", str(self.ports[slot]), "--http-port", "0"]
        args += ["--partition", PARTITION, "--data-dir", str(self.data)]
        return self._started(f"control-{slot}", args + self.backends.cli_args())

    def _agent(self) -> subprocess.Popen[bytes]:
        """A new agent, once it serves. One that exits while starting is started again, as
        its pod would be (an agent refuses to start while a backend is down)."""
        self.started_agents += 1
        name = f"agent-{self.started_agents}"
        args = ["agent", "--partition", PARTITION, "--worker", WORKER]
        args += ["--work-dir", str(self.root / name), "--data-dir", str(self.data)]
        args += ["--lease", str(self.lease), *self.backends.cli_args()]
        for _ in range(AGENT_STARTS):
            process = self._started(name, args, {"CHAOS_RECORD_DIR": str(self.records)})
            deadline = time.monotonic() + 60
            while process.poll() is None and time.monotonic() < deadline:
                if b"serving partition" in (self.logs / f"{name}.log").read_bytes():
                    return process
                time.sleep(0.1)
            if process.poll() is None:
                raise AssertionError(f"{name} did not start serving within 60 s")
            time.sleep(1.0)
        raise AssertionError(f"{name} exited while starting {AGENT_STARTS} times")

    def _started(
        self, name: str, args: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        process = self._spawner.submit(start_pyarmonik, name, args, self.logs, env).result()
        self.every.append(process)
        return process

    def stop_agents(self) -> None:
        """Stop the agents gracefully (they give back what they hold)."""
        for agent in self.agents:
            agent.send_signal(signal.SIGTERM)
        for agent in self.agents:
            stop_process(agent)

    def close(self) -> None:
        """Stop every process ever started, agents first (they need the backends only)."""
        for process in [*self.agents, *self.controls, *self.every]:
            stop_process(process, grace=15)
        self._spawner.shutdown()

    def __enter__(self) -> Deployment:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # the client's side

    @property
    def target(self) -> str:
        """A gRPC target naming every control plane."""
        return "ipv4:" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    @contextmanager
    def channel(self) -> Iterator[grpc.Channel]:
        """A channel that sends each call to a live control plane (round robin skips the
        dead one) and finds a restarted one again within a second."""
        options = [
            ("grpc.lb_policy_name", "round_robin"),
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]
        with grpc.insecure_channel(self.target, options=options) as channel:
            yield channel

    # chaos

    def kill_worker(self, rng: random.Random) -> str:
        """SIGKILL the worker of a random agent (the agent restarts it)."""
        candidates = [
            (agent.pid, pid)
            for agent in self.agents
            for pid in descendants(agent.pid)
            if b"worker.py" in _command_line(pid)
        ]
        if not candidates:
            return "no worker to kill"
        agent_pid, pid = rng.choice(sorted(candidates))
        os.kill(pid, signal.SIGKILL)
        return f"worker {pid} of agent {agent_pid}"

    def kill_agent(self, rng: random.Random) -> str:
        """SIGKILL a random agent (its worker dies with it), then start another one."""
        slot = rng.randrange(len(self.agents))
        victim = self.agents[slot]
        victim.kill()
        victim.wait()
        self.agents[slot] = self._agent()
        return f"agent {victim.pid}, replaced by agent-{self.started_agents}"

    def kill_control(self, rng: random.Random) -> str:
        """SIGKILL a random control plane, and restart it on its port a moment later."""
        slot = rng.randrange(len(self.controls))
        victim = self.controls[slot]
        victim.kill()
        victim.wait()
        down = rng.uniform(0.5, 3.0)
        time.sleep(down)
        self.controls[slot] = self._control(slot)
        wait_for_port(self.ports[slot], self.controls[slot])
        return f"control plane {slot} (pid {victim.pid}), down {down:.1f} s"

    def dead(self) -> list[str]:
        """The processes that should run and do not."""
        return [
            f"{kind} pid {process.pid} exited with {process.returncode}"
            for kind, processes in (("control plane", self.controls), ("agent", self.agents))
            for process in processes
            if process.poll() is not None
        ]


def _command_line(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


# -- the schedule -----------------------------------------------------------------------------


@dataclass(order=True)
class Event:
    at: float  # seconds after the chaos started
    kind: str  # worker, agent, control, or a service of RESTARTS


# Mean seconds between two kills of each kind (a run of S seconds has about S / mean).
MEAN_INTERVAL = {"worker": 15.0, "agent": 22.0, "control": 22.0}
# Each backend server is restarted once per run, and once more per such many seconds.
SERVICE_INTERVAL = 300.0


def schedule(rng: random.Random, seconds: float, services: tuple[str, ...]) -> list[Event]:
    """The run's events, at random moments of the chaos window (at least one of each)."""
    counts = {kind: max(1, round(seconds / mean)) for kind, mean in MEAN_INTERVAL.items()}
    counts |= {service: max(1, round(seconds / SERVICE_INTERVAL)) for service in services}
    # Not in the first seconds: the first trees are being submitted and started.
    return sorted(
        Event(round(rng.uniform(min(3.0, seconds / 2), seconds), 1), kind)
        for kind, count in counts.items()
        for _ in range(count)
    )


class Chaos(threading.Thread):
    """Plays the schedule against the deployment; `played` says what was done, when."""

    def __init__(self, deployment: Deployment, events: list[Event], rng: random.Random):
        super().__init__(name="chaos", daemon=True)
        self.deployment = deployment
        self.events = events
        self.rng = rng
        self.played: list[str] = []
        self.error: str | None = None
        self.stopping = threading.Event()
        self.started_at = time.time()  # when the schedule's clock started

    def run(self) -> None:
        started = time.monotonic()
        self.started_at = time.time()
        for event in self.events:
            if self.stopping.wait(max(0.0, started + event.at - time.monotonic())):
                return
            try:
                done = self._play(event)
            except BaseException:
                self.error = f"{event.kind} at {event.at} s failed:\n{traceback.format_exc()}"
                return
            self.played.append(f"{event.at:6.1f} s  {event.kind}: {done}")

    def _play(self, event: Event) -> str:
        actions: dict[str, Callable[[random.Random], str]] = {
            "worker": self.deployment.kill_worker,
            "agent": self.deployment.kill_agent,
            "control": self.deployment.kill_control,
        }
        if event.kind in actions:
            return actions[event.kind](self.rng)
        down = self.rng.uniform(1.0, 4.0)
        RESTARTS[event.kind][1](down)
        return f"restarted, down {down:.1f} s"


# -- the workload -----------------------------------------------------------------------------


@dataclass
class Root:
    """A tree submitted by the client: its output must end holding `expected`. Unconfirmed:
    the submission failed (a control plane died under it), so the tree may not exist."""

    output_id: str
    expected: bytes
    confirmed: bool = False


@dataclass
class Workload:
    """Trees of `depth` submitted in waves of `wave` while fewer than `active` tasks run."""

    session_id: str
    salt: int
    depth: int
    wave: int
    roots: list[Root] = field(default_factory=list)
    trees: int = 0  # trees whose submission was attempted
    failed_submissions: int = 0

    def submit_wave(self, channel: grpc.Channel) -> None:
        """One wave of trees; a failure leaves them unconfirmed (never retried: a retried
        submission whose first try went through would submit the tree twice)."""
        results, tasks = ArmoniKResults(channel), ArmoniKTasks(channel)
        first, self.trees = self.trees, self.trees + self.wave
        salts = [self.salt + 7919 * (first + n) for n in range(self.wave)]
        roots: list[Root] = []
        try:
            created = results.create_results_metadata(
                [f"root-{first + n}" for n in range(self.wave)], self.session_id
            )
            for n, salt in enumerate(salts):
                expected = str(tree_value(salt, self.depth)).encode()
                roots.append(Root(created[f"root-{first + n}"].result_id, expected))
            self.roots += roots
            payloads = results.create_results(
                {
                    f"tree-{first + n}": json.dumps(
                        {"kind": "node", "depth": self.depth, "index": 1, "salt": salt}
                    ).encode()
                    for n, salt in enumerate(salts)
                },
                self.session_id,
            )
            tasks.submit_tasks(
                self.session_id,
                [
                    TaskDefinition(
                        payload_id=payloads[f"tree-{first + n}"].result_id,
                        expected_output_ids=[root.output_id],
                    )
                    for n, root in enumerate(roots)
                ],
            )
        except grpc.RpcError:
            self.failed_submissions += 1
            return
        for root in roots:
            root.confirmed = True


# -- the workers' records ---------------------------------------------------------------------


@dataclass
class Records:
    """What the workers wrote down (worker.py): runs per attempt, writes per result."""

    runs: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    # result id -> {sha256 -> writing attempts}
    writes: dict[str, dict[str, list[str]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list))
    )

    @classmethod
    def read(cls, folder: Path) -> Records:
        records = cls()
        for path in sorted(folder.glob("*.log")):
            for line in path.read_text().splitlines():
                fields = line.split()
                if fields[:1] == ["run"] and len(fields) == 2:
                    records.runs[fields[1]] += 1
                elif fields[:1] == ["write"] and len(fields) == 4:
                    records.writes[fields[2]][fields[3]].append(fields[1])
        return records


def initial_id(task_id: str) -> str:
    """The first attempt's id of an attempt `<initial>###<n>`."""
    return task_id.split("###", 1)[0]


# -- what the backends hold -------------------------------------------------------------------

REDIS_BLOB = re.compile(rb"^\{([^}]+)\}(?::(\d+))?$")  # header {id}, chunks {id}:<n>


@dataclass
class StoredResult:
    result_id: str
    status: int
    opaque_id: bytes


class Backends:
    """Reads the run's database, queue and object storage directly (for the checks only)."""

    def __init__(self, deployment: Deployment):
        self.urls = deployment.backends
        self.data = deployment.data

    def _query(self, sql: str) -> list[tuple[Any, ...]]:
        if self.urls.database is None:
            with sqlite3.connect(self.data / "pyarmonik.db", timeout=30) as connection:
                return connection.execute(sql).fetchall()

        async def query() -> list[tuple[Any, ...]]:
            import asyncpg

            connection = await asyncpg.connect(POSTGRES_URL, timeout=10)
            try:
                await connection.execute(f'SET search_path TO "{self.urls.schema}"')
                return [tuple(row) for row in await connection.fetch(sql)]
            finally:
                await connection.close()

        return _run_async(query)

    def results(self) -> list[StoredResult]:
        rows = self._query("SELECT result_id, status, opaque_id FROM results")
        return [StoredResult(r[0], int(r[1]), bytes(r[2] or b"")) for r in rows]

    def parked(self) -> int:
        """Ready tasks whose message waits in the database to be pushed."""
        return int(self._query("SELECT COUNT(*) FROM unqueued")[0][0])

    def queued(self) -> dict[str, int]:
        """Messages per queue (ready and unacknowledged alike)."""
        if self.urls.queue is None:
            rows = self._query("SELECT partition_id, COUNT(*) FROM queue GROUP BY partition_id")
            return {f"queue table, partition {r[0]}": int(r[1]) for r in rows if r[1]}
        listed = subprocess.run(
            ["rabbitmqctl", "list_queues", "-q", "--no-table-headers", "name", "messages"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.split("\n")
        found = {}
        for line in listed:
            parts = line.split()
            if len(parts) == 2 and parts[0].startswith(f"{self.urls.prefix}."):
                found[parts[0]] = int(parts[1])
        return {name: count for name, count in found.items() if count}

    def describe(self, opaque_id: bytes, since: float) -> str:
        """A blob's id, start and, for a file, when it was stored (seconds into the chaos):
        enough to tell which kill left it."""
        name = opaque_id.decode()
        if name.startswith("db:"):
            return f"{name} (in the database)"
        if self.urls.objects is None:
            path = self.data / "objects" / name
            return f"{name} ({path.stat().st_mtime - since:.1f} s: {path.read_bytes()[:60]!r})"
        import redis

        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=10)
        try:
            start = client.get(f"{self.urls.prefix}:{{{name}}}:0") or b""
        finally:
            client.close()
        return f"{name} ({start[:60]!r})"

    def blobs(self) -> tuple[set[bytes], list[str]]:
        """The stored blobs' opaque ids (the object storage's, and the small ones the
        database holds, storage/objects/inline.py), and leftovers that are no blob: a
        folder's temporary files, Redis chunks made permanent without their header."""
        rows = self._query("SELECT opaque_id FROM objects")
        in_database = {bytes(row[0]) for row in rows}
        blobs, leftovers = self._stored_blobs()
        return blobs | in_database, leftovers

    def _stored_blobs(self) -> tuple[set[bytes], list[str]]:
        if self.urls.objects is None:
            names = [path.name for path in (self.data / "objects").iterdir()]
            blobs = {name.encode() for name in names if not name.startswith(".")}
            return blobs, [f"temporary file {name}" for name in names if name.startswith(".")]
        import redis

        prefix = f"{self.urls.prefix}:".encode()
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=10)
        try:
            keys = list(client.scan_iter(match=prefix + b"*", count=1000))
            headers: set[bytes] = set()
            chunks: dict[bytes, list[bytes]] = defaultdict(list)
            for key in keys:
                matched = REDIS_BLOB.match(key[len(prefix) :])
                if matched is None:
                    continue
                if matched.group(2) is None:
                    headers.add(matched.group(1))
                else:
                    chunks[matched.group(1)].append(key)
            # Chunks of an upload cut short expire on their own (objects/redis.py): only
            # permanent ones without a header are leaked.
            leaked = [
                key.decode()
                for blob, blob_chunks in chunks.items()
                if blob not in headers
                for key in blob_chunks
                if client.ttl(key) == -1
            ]
        finally:
            client.close()
        return headers, [f"chunk without header {key}" for key in leaked]
