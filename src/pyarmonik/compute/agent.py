"""The polling agent: pulls tasks of its partitions and has its worker run them.

An agent serves its own partition and, when that one has no work, the partitions it also
serves, in their order (ArmoniK's agents serve one; sharing lets an idle application's
agents run another's tasks). One worker runs them all: only partitions with the same worker
share agents.

Three stages run concurrently, so that the worker never waits for the database:
  fetch   pull messages, acquire their tasks, prefetch their inputs into private folders
  run     call Worker.Process (deadline = max_duration), serving the Agent API meanwhile
  post    commit the outcomes in one transaction, ack the messages, clean the folders
While task n runs, the tasks after it are acquired and prefetched and those before it are
post-processed. While tasks are short, the fetch stage holds a window of them ahead (as many
as the worker runs in WINDOW_SECONDS): one transaction pulls, acquires and starts them all
(PROCESSING from then on, as in the batched path), one query finds their inputs, and their
successes commit together. Behind a task running longer than RESERVE_HOLD the window is
given back to the queue and shrinks to one task, acquired but not started (DISPATCHED).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import aiohttp
import grpc
from aiohttp import web
from armonik.protogen.common import objects_pb2, worker_common_pb2
from armonik.protogen.worker import agent_service_pb2

from pyarmonik.compute.agent_api import AgentApi, TaskContext
from pyarmonik.compute.folders import TaskFolders
from pyarmonik.compute.inputs import write_inputs
from pyarmonik.compute.lean_grpc import RpcError, Server, methods_of
from pyarmonik.compute.worker_process import Endpoint, WorkerProcess
from pyarmonik.control.convert import options_to_message
from pyarmonik.domain.errors import ArmoniKError, NotFound, Unavailable
from pyarmonik.domain.records import Session, Task
from pyarmonik.domain.statuses import SessionStatus, TaskStatus
from pyarmonik.faults import crash_point
from pyarmonik.observability import tracing
from pyarmonik.observability.logging import bind
from pyarmonik.observability.metrics import (
    AGENT_STAGE_SECONDS,
    AGENT_TASKS,
    BACKEND_ERRORS,
    CONTENT_TYPE,
    WORKER_RESTARTS,
    exposition,
)
from pyarmonik.scheduling.backends import Backends, now
from pyarmonik.scheduling.liveness import HEARTBEAT
from pyarmonik.scheduling.processing import (
    Acquisition,
    Success,
    TaskOutcome,
    TaskProcessing,
    Verdict,
)
from pyarmonik.storage.database import Repository
from pyarmonik.storage.queue import QueueMessage

log = logging.getLogger(__name__)

CANCEL_STATUSES = frozenset({TaskStatus.CANCELLING, TaskStatus.CANCELLED})
# Longest pause between two looks at an empty queue of a broker (whose pull waits already).
IDLE_POLL = 0.1
# A table queue is looked at again as soon as the database reports a commit (a task made
# ready wakes an idle agent at once), or when its next message becomes visible by itself (a
# delayed release, a lease that ran out: no write tells), or after QUIET_WAIT at the most.
# A failed pull is retried after IDLE_WAIT.
IDLE_WAIT = 1.0
QUIET_WAIT = 10.0
# Work held ahead of the worker while tasks are short: as many tasks as it runs in
# WINDOW_SECONDS (at least one, at most MAX_AHEAD with an official worker). Each window is a
# transaction to pull and one or two to commit: 20 ms held 2-4 tasks on the PostgreSQL and
# RabbitMQ stack, where a transaction costs most (its tasks/s rose 10-15% at 50 ms). What
# waits longer than RESERVE_HOLD behind the running task (a long one after all) is given back
# for idle agents. Tasks shorter than SHORT_TASK make an agent wait a little for the next
# success, to commit them together.
WINDOW_SECONDS = 0.05
MAX_AHEAD = 16
SHORT_TASK = 0.05
RESERVE_HOLD = 0.2
# A prepared task not started with its pull is started while the task before it runs,
# START_MARGIN times the smoothed commit time of a start (first guess: START_LEAD seconds)
# before that task's predicted end: a start waits for the write lock (most of a 0.2 s task's
# overhead at 64 agents), and the commit still comes before the call, so that an attempt
# runs at most once.
START_LEAD = 0.05
START_MARGIN = 2.0
COMMIT_MAX = 512  # successes committed in one transaction
# A short success waits this long for the next one to commit with it (official workers).
GROUP_WAIT = 0.02
GROUP_MAX = 32


class ChangeWaiter(Protocol):
    async def wait_for_changes(self, timeout: float) -> None: ...


@dataclass
class AgentSettings:
    partition_id: str = "default"
    # Partitions served, in this order, when `partition_id` has no work (same worker).
    also_serves: list[str] = field(default_factory=list)
    worker_command: str | None = None
    work_dir: Path = Path("pyarmonik-agent")
    host: str = "127.0.0.1"  # address other agents use to reach our liveness endpoint
    http_port: int = 0
    lease: float = 30.0  # queue visibility of a held message, renewed while we hold it
    cancel_poll: float = 0.5
    # A prefetched task waiting longer than this behind a long one is given back (ArmoniK's
    # TimeoutBeforeNextAcquisition).
    prepared_timeout: float = 10.0
    data_chunk_max_size: int = 2 * 1024 * 1024
    worker_socket: Path | None = None  # an external worker's socket (no command)
    # Channels as unix:///path, tcp://host:port or http://host:port (compute/worker_process.py
    # Endpoint); None: unix sockets in work_dir (worker_socket for the worker's).
    worker_channel: str | None = None
    agent_channel: str | None = None
    # Post-processing is retried this long while a backend is down; then the message is
    # given back and the task recovered (retried) by the next acquisition.
    post_retry_for: float = 120.0
    # Offer the worker the batched protocol (compute/frames.py); the SDK's function worker
    # takes it, other workers keep ArmoniK's Worker.Process.
    batched: bool = True
    # Stop the idle worker until the next task (compute/worker_process.py `_pause`).
    pause_idle_worker: bool = True
    # Added to the niceness of the worker the agent starts (config.py `worker_nice`).
    worker_nice: int = 0

    @property
    def served(self) -> list[str]:
        """Every partition served, in the order they are looked at."""
        return list(dict.fromkeys([self.partition_id, *self.also_serves]))


@dataclass
class Held:
    """A task in the agent's hands, from acquisition to acknowledgement."""

    message: QueueMessage
    task: Task
    session: Session
    token: str
    folder: Path | None  # its data folder; None in the batched path (data travels inline)
    fetched_at: float = 0.0
    prepared_at: float = 0.0
    forgotten: bool = False
    # Its start committed ahead, while the task before it runs (see `_start_ahead_at`).
    starting: asyncio.Task[bool] | None = None


@dataclass
class Running:
    """The task whose Worker.Process call is under way."""

    task_id: str
    call: asyncio.Task[worker_common_pb2.ProcessReply]
    cancelled: bool = False


@dataclass
class Ended:
    """How a run ended, for the post-processing stage."""

    held: Held
    kind: str  # ok | error | timeout | crash | cancelled | skipped
    detail: str = ""
    outcome: TaskOutcome | None = None
    processed_at: float = 0.0


class Agent:
    def __init__(self, backends: Backends, settings: AgentSettings):
        self.backends = backends
        self.settings = settings
        self.work_dir = settings.work_dir.resolve()
        self.held: dict[str, Held] = {}
        self.folders = TaskFolders(self.work_dir / "tasks")
        self.prepared: asyncio.Queue[Held | None] = asyncio.Queue(maxsize=1)
        # Acquired and prefetched, next in line for `prepared`, in the order they run.
        self.reserve: collections.deque[Held] = collections.deque()
        self.ended: asyncio.Queue[Ended | None] = asyncio.Queue()
        self.api = AgentApi(backends, self.folders)
        self.worker = WorkerProcess(
            settings.worker_command,
            Endpoint.parse(settings.worker_channel)
            if settings.worker_channel
            else settings.worker_socket or self.work_dir / "worker.sock",
            Endpoint.parse(settings.agent_channel or str(self.work_dir / "agent.sock")),
            batch_socket=self.work_dir / "batch.sock" if settings.batched else None,
            pause_idle=settings.pause_idle_worker,
            nice=settings.worker_nice,
        )
        self.owner_id = ""
        # What the agent waits on for new work: the database, or a group's fan-out of it.
        self.changes: ChangeWaiter = backends.database
        self.processing: TaskProcessing | None = None
        self.completed = 0
        self._stopping = asyncio.Event()
        self._running: Running | None = None
        self._executing = False  # the run stage has a task in hand
        self._queue_was_empty = True
        self._prepared_held: Held | None = None  # what `prepared` holds, if anything
        self._running_since: float | None = None  # loop time the worker's current call began
        # Seconds a start (DISPATCHED → PROCESSING) takes to commit, smoothed.
        self._start_seconds = START_LEAD
        # Seconds of a task in the worker, smoothed; the window starts at one task.
        self._mean_run_seconds = SHORT_TASK
        self.served = settings.served
        self._stage_seconds = {  # metrics are labelled by the task's partition
            partition: [
                AGENT_STAGE_SECONDS.labels(partition, stage)
                for stage in ("queue_wait", "prefetch", "processing", "post_processing")
            ]
            for partition in self.served
        }
        self._run_started = asyncio.Event()  # a worker call is under way (cancellation polls)
        self._slot_free = asyncio.Event()
        self._holding = asyncio.Event()  # set when a task is held (the heartbeat's cue)
        self._http: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        # The Agent API has no authentication (as in ArmoniK): its socket lives in a folder
        # only our user (and so our worker) can open. On TCP nothing but the address guards
        # it (docs/security.md).
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.work_dir.chmod(0o700)
        await self.folders.start()
        await self.backends.start()
        await self._start_http()
        self.processing = TaskProcessing(self.backends, self.owner_id, socket.gethostname())
        self._client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        # The Agent API server is opened by the worker process with its channel (first, so
        # that the worker is given its bound address) and closed with it while idle, so that
        # an idle agent keeps no gRPC thread waking (compute/grpc_idle.py).
        self.worker.agent_api = self._serve_api
        await self.worker.start()
        log.info("agent %s serving partitions %s", self.owner_id, ", ".join(self.served))

    async def _serve_api(self) -> Server:
        """Start the Agent API server for the worker (again, after an idle pause)."""
        service = agent_service_pb2.DESCRIPTOR.services_by_name["Agent"]
        server = Server(methods_of(self.api, service))
        endpoint = self.worker.agent_endpoint
        if endpoint.path is not None:
            endpoint.path.unlink(missing_ok=True)
        try:  # no SO_REUSEPORT: a second agent given the same TCP port fails, not shares it
            port = await server.start(endpoint.target)
        except OSError as error:
            raise Unavailable(f"cannot serve the Agent API on {endpoint}: {error}") from error
        self.worker.agent_endpoint = endpoint.with_port(port)
        return server

    async def run(self, stop: asyncio.Event) -> None:
        """Process tasks until `stop` is set, then stop gracefully: the task running is
        finished, the one prefetched is given back."""
        await self.start()
        bind(partition=",".join(self.served), agent=self.owner_id)
        keeper = asyncio.create_task(self._keep_leases(), name="leases")
        beater = asyncio.create_task(self._beat(), name="heartbeat")
        if self.worker.batch is not None:  # the worker speaks the batched protocol
            from pyarmonik.compute.batch import BatchRunner

            relay = asyncio.create_task(relay_event(stop, self._stopping))
            await BatchRunner(self).run()
            relay.cancel()
            keeper.cancel()
            beater.cancel()
            await self.close()
            return
        stages = [
            asyncio.create_task(self._fetch_loop(), name="fetch"),
            asyncio.create_task(self._run_loop(), name="run"),
            asyncio.create_task(self._post_loop(), name="post"),
        ]
        watcher = asyncio.create_task(self._watch_cancellations(), name="cancellations")
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([stopper, *stages], return_when=asyncio.FIRST_COMPLETED)
        for stage in done:
            if stage is not stopper and stage.exception() is not None:
                log.error("agent stage %s failed", stage.get_name(), exc_info=stage.exception())
        self._stopping.set()
        await asyncio.gather(*stages, return_exceptions=True)
        keeper.cancel()
        beater.cancel()
        watcher.cancel()
        stopper.cancel()
        await self.close()

    async def close(self) -> None:
        await self.worker.close()  # the Agent API server too
        if self._client is not None:
            await self._client.close()
        if self._http is not None:
            await self._http.cleanup()
        await self.backends.close()

    # -- liveness endpoint -------------------------------------------------------------------

    async def _start_http(self) -> None:
        app = web.Application()
        app.router.add_get("/liveness", self._liveness)
        app.router.add_get("/readiness", self._liveness)
        app.router.add_get("/taskprocessing", self._task_processing)
        app.router.add_get("/metrics", self._metrics)
        self._http = web.AppRunner(app, access_log=None)
        await self._http.setup()
        site = web.TCPSite(self._http, self.settings.host, self.settings.http_port)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.owner_id = f"{self.settings.host}:{port}"

    async def _liveness(self, request: web.Request) -> web.Response:
        return web.Response(text="ok" if not self._stopping.is_set() else "stopping")

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=exposition(), headers={"Content-Type": CONTENT_TYPE})

    async def _task_processing(self, request: web.Request) -> web.Response:
        return web.Response(text=",".join(self.held))

    async def probe(self, owner: str, task_id: str) -> bool:
        """Is agent `owner` alive and still holding `task_id`? Unreachable means dead."""
        assert self._client is not None
        for attempt in range(3):
            try:
                async with self._client.get(f"http://{owner}/taskprocessing") as response:
                    return task_id in (await response.text()).split(",")
            except (aiohttp.ClientConnectorError, OSError):
                return False
            except (aiohttp.ClientError, TimeoutError):
                await asyncio.sleep(0.5 * (attempt + 1))
        return False

    # -- fetch stage -------------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        """Keep the window ahead of the running task filled: the next task prepared, the
        others in reserve; refilled once half of it has gone to the worker."""
        idle = 0.01
        try:
            while not self._stopping.is_set():
                if self.prepared.empty() and self.reserve:
                    self._prepare(self.reserve.popleft())
                    continue
                window = self._window()
                room = window - len(self.reserve) - (0 if self.prepared.empty() else 1)
                if room <= 0 or (self.reserve and room < window // 2):
                    await self._slot_freed()
                    continue
                # Short tasks start with their pull: they reach the worker within
                # WINDOW_SECONDS, and a transaction per task is saved.
                messages, taken, idle = await self._pull_or_wait(room, idle, start=window > 1)
                if messages:
                    await self._take_in(messages, taken)
        finally:
            await self._give_back_reserve()
            await self._give_back_prepared()
            self.prepared.put_nowait(None)

    def _window(self) -> int:
        """How many tasks to hold ahead of the worker."""
        return window_size(self._mean_run_seconds, MAX_AHEAD, WINDOW_SECONDS)

    def _prepare(self, held: Held) -> None:
        self._prepared_held = held
        self.prepared.put_nowait(held)

    async def _take_in(self, messages: list[QueueMessage], taken: dict[str, Acquisition]) -> None:
        """Hold the tasks of pulled messages (acquired already when in `taken`), prefetch
        their inputs, and line them up for the worker."""
        held: list[Held] = []
        for message in messages:
            try:
                one = await self._hold(message, taken.get(message.task_id), self.folders.take())
            except Exception:  # a backend down: the message comes back, we go on
                BACKEND_ERRORS.labels("acquire").inc()
                log.exception("handling the message of task %s failed", message.task_id)
                await self._release_quietly(message)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        await self._stopping.wait()
                continue
            if one is not None:
                held.append(one)
        for one in await self._prefetch(held):
            one.prepared_at = now()
            if self.prepared.empty():
                self._prepare(one)
            else:
                self.reserve.append(one)

    async def _pull_or_wait(
        self, count: int, idle: float, start: bool = False
    ) -> tuple[list[QueueMessage], dict[str, Acquisition], float]:
        """`_pull`; when it brings nothing (or fails, logged), wait `idle` seconds first.
        Returns the messages, the tasks taken, and the wait for the next empty look."""
        try:
            messages, taken = await self._pull(count, start)
        except Exception:
            BACKEND_ERRORS.labels("queue.pull").inc()
            log.exception("pulling from the queue failed; retrying")
            messages, taken, idle = [], {}, 1.0
        if messages:
            return messages, taken, 0.01
        await self._wait_for_work(idle)
        return messages, taken, min(idle * 2, IDLE_POLL)

    async def _wait_for_work(self, idle: float) -> None:
        """The queue was empty: wait before looking again (both fetch paths wait here)."""
        queue = self.backends.queue_in_database
        if queue is None or idle >= IDLE_WAIT:  # or a failed pull
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(idle):
                    await self._stopping.wait()
            return
        # Wake-ups wake us for new work (then nobody polls: at 64 idle agents, polls were
        # most of their cost); only messages that become visible with time need a timer.
        try:
            at = await queue.next_visible(self.served)
        except Exception:  # the pull that follows reports it
            at = time.time() + IDLE_WAIT
        timeout = QUIET_WAIT if at is None else min(max(at - time.time(), 0.0), QUIET_WAIT)
        if timeout <= 0.0:
            self._queue_was_empty = False
            return
        changed = asyncio.ensure_future(self.changes.wait_for_changes(timeout))
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait((changed, stopping), return_when=asyncio.FIRST_COMPLETED)
        finally:
            changed.cancel()
            stopping.cancel()

    async def _slot_freed(self) -> None:
        """Wait until the prepared slot is empty. Tasks held ahead for too long (the running
        one is long) are given back, so that an idle agent can take them: those started with
        their pull after RESERVE_HOLD (the window then shrinks to one task, not started), one
        only acquired after `prepared_timeout`."""
        if self.prepared.empty():
            return
        self._slot_free.clear()
        if self.prepared.empty():  # taken meanwhile
            return
        started_ahead = bool(self.reserve) or self._prepared_started
        if not started_ahead and (at := self._start_ahead_at()) is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(at):
                    await self._slot_free.wait()
                return
            await self._start_prepared_ahead()
            return  # started: held from now on as what started with its pull
        hold = RESERVE_HOLD if started_ahead else self.settings.prepared_timeout
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(hold):
                await self._slot_free.wait()
            return
        if started_ahead:
            self._mean_run_seconds = max(self._mean_run_seconds, hold)
        await self._give_back_reserve()
        if self._prepared_started or not started_ahead:
            await self._give_back_prepared()

    @property
    def _prepared_started(self) -> bool:
        """The prepared task was started (with its pull, or ahead)."""
        held = self._prepared_held
        return held is not None and held.task.status == TaskStatus.PROCESSING

    def _start_ahead_at(self) -> float | None:
        """When (loop time) to start the prepared task ahead: its start's predicted commit
        time before the running task's predicted end; None while the worker is not running,
        once tried, or when the running task is past its predicted end (a long one: what
        started now would wait behind it and be given back)."""
        held = self._prepared_held
        if self._running_since is None or held is None or held.starting is not None:
            return None
        end = self._running_since + self._mean_run_seconds
        if asyncio.get_running_loop().time() > end:
            return None
        return end - START_MARGIN * self._start_seconds

    async def _start_prepared_ahead(self) -> None:
        held = self._prepared_held
        if held is None or held.starting is not None or self.prepared.empty():
            return
        held.starting = asyncio.create_task(self._start(held))
        await asyncio.wait((held.starting,))  # its failure is for the run stage to handle

    async def _start(self, held: Held) -> bool:
        """DISPATCHED → PROCESSING, before the worker is called; False when the task was
        paused or cancelled meanwhile."""
        assert self.processing is not None
        began = time.monotonic()
        started = await self.processing.start(held.task, held.fetched_at)
        self._start_seconds = 0.8 * self._start_seconds + 0.2 * (time.monotonic() - began)
        if started is None:
            return False
        held.task = started
        return True

    async def _pull(
        self, count: int, start: bool = False
    ) -> tuple[list[QueueMessage], dict[str, Acquisition]]:
        """Pull up to `count` messages, and acquire their tasks in one transaction when in
        the common case (SUBMITTED, session RUNNING): with the pull itself when the queue
        is in the database. `start`: the tasks taken are PROCESSING at once."""
        assert self.processing is not None
        lease = self.settings.lease
        queue = self.backends.queue_in_database
        if queue is None:
            messages = await self._pull_broker(count)
            fresh = [m.task_id for m in messages if m.task_id not in self.held]
            if not fresh:
                return messages, {}
            try:
                async with self.backends.database.write() as repository:
                    taken = await self.processing.take(repository, fresh, now(), start)
            except Exception as error:  # the messages are ours: each goes the slow path
                BACKEND_ERRORS.labels("acquire").inc()
                log.warning("acquiring %d pulled tasks failed: %r", len(fresh), error)
                return messages, {}
            return messages, {a.task.task_id: a for a in taken if a.task is not None}
        if self._queue_was_empty:  # an empty queue is watched without taking the write lock
            at = await queue.next_visible(self.served)
            if at is None or at > time.time():
                return [], {}
        async with self.backends.database.write() as repository:
            messages = []
            for partition in self.served:  # the first partitions in order that have work
                messages += await queue.pull_within(
                    repository, partition, count - len(messages), lease
                )
                if len(messages) >= count:
                    break
            self._queue_was_empty = not messages
            fresh = [m.task_id for m in messages if m.task_id not in self.held]
            taken = await self.processing.take(repository, fresh, now(), start) if fresh else []
        return messages, {a.task.task_id: a for a in taken if a.task is not None}

    async def _pull_broker(self, count: int) -> list[QueueMessage]:
        """From a broker, the first partitions in order that have work at hand; when none
        has, the wait for one is on our own partition (then the others are looked at again
        by the next pull: within IDLE_POLL)."""
        queue, lease = self.backends.queue, self.settings.lease
        messages: list[QueueMessage] = []
        if len(self.served) > 1:
            for partition in self.served:
                messages += await queue.pull(partition, count - len(messages), lease, wait=False)
                if len(messages) >= count:
                    break
            if messages:
                return messages
        return await queue.pull(self.settings.partition_id, count, lease)

    async def _hold(
        self, message: QueueMessage, taken: Acquisition | None, folder: Path | None
    ) -> Held | None:
        """Acquire the task of a message (unless `taken` already) and hold it; None when
        there is nothing to run (the message is acked or released, `folder` given back)."""
        held = await self._acquire_only(message, taken)
        if held is None:
            if folder is not None:
                self.folders.give_back(folder)
            return None
        task, session = held
        held_task = Held(message, task, session, uuid.uuid4().hex, folder)
        self.held[task.task_id] = held_task
        self._holding.set()
        return held_task

    async def _acquire_only(
        self, message: QueueMessage, taken: Acquisition | None
    ) -> tuple[Task, Session] | None:
        assert self.processing is not None
        queue = self.backends.queue
        if taken is None and message.task_id in self.held:
            await queue.ack([message])  # a duplicate of a message we are handling
            return None
        try:
            acquisition = taken or await self.processing.acquire(
                message.task_id,
                self.probe,
                now(),
                tried_take=True,  # `_pull` tried the common case
            )
        except Exception:
            log.exception("acquiring task %s failed", message.task_id)
            await queue.release([message], delay=1.0)
            return None
        if acquisition.verdict is Verdict.DROP:
            await queue.ack([message])
            return None
        if acquisition.verdict is Verdict.LATER:
            await queue.release([message], delay=1.0)
            return None
        assert acquisition.task is not None and acquisition.session is not None
        return acquisition.task, acquisition.session

    async def _prefetch(self, held: list[Held]) -> list[Held]:
        """Write the inputs of these tasks into their folders; returns those ready to run
        (the others end: an input missing is the task's error, a failure to fetch a crash)."""
        if not held:
            return []
        try:
            missing = await write_inputs(
                self.backends,
                self.folders,
                {h.task.task_id: h.folder for h in held if h.folder is not None},
                [h.task for h in held],
            )
        except Exception as error:
            log.exception("prefetching %d tasks failed", len(held))
            for one in held:
                detail = f"Agent failed to fetch inputs: {error!r}"
                await self._post_process(Ended(one, "crash", detail))
            return []
        fetched_at = now()
        ready: list[Held] = []
        for one in held:
            absent = missing.get(one.task.task_id)
            if absent:
                detail = f"Missing input data: {', '.join(absent)}"
                await self._post_process(Ended(one, "error", detail))
                continue
            one.fetched_at = fetched_at
            if one.folder is not None:
                self.folders.place_outputs(one.folder, one.task.expected_output_ids)
            ready.append(one)
        return ready

    async def _give_back_reserve(self) -> None:
        reserve = list(self.reserve)
        self.reserve.clear()
        await self._give_back(*reserve)

    async def _give_back_prepared(self) -> None:
        self._prepared_held = None
        while not self.prepared.empty():
            held = self.prepared.get_nowait()
            if held is not None:
                await self._give_back(held)

    async def _give_back(self, *held: Held) -> None:
        """Release tasks acquired but not run: SUBMITTED again, messages visible again."""
        assert self.processing is not None
        if not held:
            return
        if starting := [h.starting for h in held if h.starting is not None]:
            await asyncio.wait(starting)  # a start landing after the release would be lost
        try:
            await self.processing.release([h.task for h in held])
            await self.backends.queue.release([h.message for h in held])
        except Exception:  # the lease runs out and the next acquisition recovers them
            log.exception("giving back %d tasks failed", len(held))
        for one in held:
            self._forget(one)

    # -- run stage ---------------------------------------------------------------------------

    async def _run_loop(self) -> None:
        try:
            while (held := await self.prepared.get()) is not None:
                self._prepared_held = None
                self._slot_free.set()
                self._executing = True
                try:
                    ended = await self._execute(held)
                except Exception as error:  # never lose the task: it goes the retry path
                    log.exception("running task %s failed", held.task.task_id)
                    ended = Ended(held, "crash", f"Agent failed to run the task: {error!r}")
                    await self._recover_worker()
                self._executing = False
                self.ended.put_nowait(ended)
        finally:
            await self.ended.put(None)

    async def _execute(self, held: Held) -> Ended:
        assert self.processing is not None
        bind(session_id=held.task.session_id, task_id=held.task.task_id)
        if self.worker.exited:
            await self._recover_worker("worker exited")
        if held.starting is not None:  # started ahead (or starting)
            started = await held.starting
        else:  # unless started with its pull
            started = held.task.status == TaskStatus.PROCESSING or await self._start(held)
        if not started:
            return Ended(held, "skipped")
        task = held.task
        assert held.folder is not None
        self.api.context = TaskContext(held.token, task, held.session, held.folder)
        request = worker_common_pb2.ProcessRequest(
            communication_token=held.token,
            session_id=task.session_id,
            task_id=task.task_id,
            task_options=options_to_message(task.options),
            expected_output_keys=task.expected_output_ids,
            payload_id=task.payload_id,
            data_dependencies=task.data_dependencies,
            data_folder=str(held.folder),
            configuration=objects_pb2.Configuration(
                data_chunk_max_size=self.settings.data_chunk_max_size
            ),
        )
        self._running_since = asyncio.get_running_loop().time()
        call = await self.worker.process(
            request,
            timeout=task.options.max_duration,
            metadata=tracing.worker_metadata(task) or None,
        )
        began = time.monotonic()
        try:
            kind, detail = await self._await_unless_cancelled(call, task.task_id)
        finally:
            self._running_since = None
            outcome = self.api.context.outcome
            self.api.context = None
        processed_at = now()
        self._mean_run_seconds = 0.8 * self._mean_run_seconds + 0.2 * (time.monotonic() - began)
        if kind in ("timeout", "cancelled", "crash"):
            await self._recover_worker(f"task {task.task_id}: {kind}")
        return Ended(held, kind, detail, outcome, processed_at)

    async def _recover_worker(self, reason: str = "agent error") -> None:
        """Restart the worker until it is healthy again (it is our only way to run tasks)."""
        pause = 1.0
        while not self._stopping.is_set():
            try:
                WORKER_RESTARTS.labels(self.settings.partition_id).inc()
                await self.worker.restart(reason)
                return
            except Exception:
                log.exception("restarting the worker failed; trying again in %.0fs", pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 30.0)

    async def _await_unless_cancelled(
        self, call: asyncio.Task[worker_common_pb2.ProcessReply], task_id: str
    ) -> tuple[str, str]:
        """Await the worker's reply; `_watch_cancellations` cancels the call meanwhile if the
        task or its session is cancelled."""
        running = self._running = Running(task_id, call)
        self._run_started.set()
        try:
            reply = await call
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the agent itself is being cancelled
            if running.cancelled:
                return "cancelled", "Task was cancelled"
            return "crash", "Worker call was cancelled"
        except RpcError as error:
            if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return "timeout", "Deadline exceeded (max_duration)"
            if running.cancelled:
                return "cancelled", "Task was cancelled"
            return "crash", f"Worker returned error {error.code().name}:\n{error.details()}"
        finally:
            self._running = None
            self._run_started.clear()
        if reply.output.WhichOneof("type") == "error":
            return "error", reply.output.error.details
        return "ok", ""

    async def _watch_cancellations(self) -> None:
        """Every `cancel_poll` seconds, stop the running task if it or its session was
        cancelled (one loop for the agent's life, not a watcher per task)."""
        assert self.processing is not None
        while True:
            await self._run_started.wait()  # an idle agent does not poll
            await asyncio.sleep(self.settings.cancel_poll)
            running = self._running
            if running is None:
                continue
            try:
                status = await self.processing.status_of(running.task_id)
            except Exception as error:  # unknown is not cancelled: the task goes on
                BACKEND_ERRORS.labels("cancel_poll").inc()
                log.warning(
                    "checking whether task %s is cancelled failed: %r", running.task_id, error
                )
                continue
            cancelled = (
                status is None
                or status[0] in CANCEL_STATUSES
                or status[1] == SessionStatus.CANCELLED
            )
            if cancelled and self._running is running:
                running.cancelled = True
                running.call.cancel()

    # -- post stage --------------------------------------------------------------------------

    async def _post_loop(self) -> None:
        """Post-process what ended; the successes that ended meanwhile commit together, in
        one transaction (both paths: tasks end one by one with an official worker, in
        bursts with the batched one)."""
        while (first := await self.ended.get()) is not None:
            batch = await self._gather_ended(first)
            successes = [e for e in batch if e.kind == "ok" and e.outcome is not None]
            for ended in batch:
                if ended.kind != "ok" or ended.outcome is None:
                    await self._post_process(ended)
            if len(successes) == 1:
                await self._post_process(successes[0])
            elif successes:
                await self._commit_successes(successes)

    async def _gather_ended(self, first: Ended) -> list[Ended]:
        """`first` and what ended meanwhile. With an official worker tasks end one at a
        time: a short success waits up to GROUP_WAIT for the task running behind it, so
        that they commit together (a commit writes the same index pages for one task or
        for several: half the commits, half the pages)."""
        batch = [first]
        deadline = asyncio.get_running_loop().time() + GROUP_WAIT
        while len(batch) < COMMIT_MAX:
            if self.ended.empty():
                wait = deadline - asyncio.get_running_loop().time()
                if not (len(batch) < GROUP_MAX and wait > 0 and self._short_run_in_worker()):
                    break
                try:
                    async with asyncio.timeout(wait):
                        ended = await self.ended.get()
                except TimeoutError:
                    break
            else:
                ended = self.ended.get_nowait()
            if ended is None:
                self.ended.put_nowait(None)  # seen by the next turn
                break
            batch.append(ended)
        return batch

    def _short_run_in_worker(self) -> bool:
        """The run stage has a task in hand and tasks have been short: its end is near."""
        return self._executing and self._mean_run_seconds < SHORT_TASK

    async def _commit_successes(self, batch: list[Ended]) -> None:
        """Commit successes in one transaction, acked with it when the queue is a table;
        any failure falls back to the single-task path, task by task."""
        assert self.processing is not None
        queue = self.backends.queue_in_database
        by_task = {e.held.task.task_id: e for e in batch}

        async def ack(repository: Repository, committed: list[Success]) -> None:
            assert queue is not None
            await queue.ack_within(
                repository, [by_task[s.task.task_id].held.message for s in committed]
            )

        crash_point("before_complete")
        successes = [
            Success(e.held.task, e.outcome, e.processed_at) for e in batch if e.outcome is not None
        ]
        try:
            committed = await self.processing.complete_many(
                successes, within=ack if queue is not None else None
            )
        except Exception as error:  # one at a time, each with the single-task path's care
            log.warning("committing %d tasks together failed (%r); one by one", len(batch), error)
            for ended in batch:
                await self._post_process(ended, maybe_committed=True)
            return
        done = {s.task.task_id for s in committed}
        if queue is None:
            with contextlib.suppress(Exception):  # an unacked message is redelivered and dropped
                await self.backends.queue.ack([by_task[i].held.message for i in done])
        for ended in batch:
            if ended.held.task.task_id in done:
                self.completed += 1
                self._forget(ended.held)
                self._observe(ended, "completed")
            else:  # cancelled or taken over meanwhile: the single-task path ends it
                await self._post_process(ended)

    async def _post_process(self, ended: Ended, maybe_committed: bool = False) -> None:
        """`_finish`, retried with backoff while a backend is down (the worker's work is not
        thrown away for an outage); never raises. After `post_retry_for` seconds the message
        is given back: the next acquisition finds the task still ours but no longer held,
        and retries it (processing.acquire → _recover). `maybe_committed`: an earlier commit
        of this success failed in a way that may hide that it went through."""
        task_id = ended.held.task.task_id
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.post_retry_for
        pause, attempt = 0.2, 1 if maybe_committed else 0
        while True:
            try:
                if attempt and ended.kind == "ok" and await self._committed(ended.held):
                    # The commit went through but what followed failed (or its reply was
                    # lost): completing again would find the task not ours and undo nothing
                    # but its outputs' data. Only the ack is left to do.
                    await self.backends.queue.ack([ended.held.message])
                    self.completed += 1
                    self._forget(ended.held)
                    return
                await self._finish(ended)
                return
            except NotFound as error:
                # Its session or the task itself is gone (deleted): nothing is left to commit
                # to, and retrying would hold up every task behind this one.
                log.info("task %s vanished during its post-processing: %s", task_id, error)
                await self._abandon(ended)
                return
            except Exception as error:
                BACKEND_ERRORS.labels("post_process").inc()
                if self._stopping.is_set() or loop.time() + pause > deadline:
                    log.exception("post-processing of task %s failed; giving it back", task_id)
                    self._forget(ended.held)
                    await self._release_quietly(ended.held.message)
                    return
                log.warning(
                    "post-processing of task %s failed (%r); retrying in %.1fs",
                    task_id,
                    error,
                    pause,
                )
            await asyncio.sleep(pause)
            pause, attempt = min(pause * 2, 5.0), attempt + 1

    async def _abandon(self, ended: Ended) -> None:
        """Drop a task that vanished: its stored outputs and its message go, best effort."""
        outcome = ended.outcome or TaskOutcome()
        try:
            blobs = outcome.replaced + [s.opaque_id for s in outcome.stored]
            if blobs:
                await self.backends.objects.delete(blobs)
            await self.backends.queue.ack([ended.held.message])
        except Exception as error:  # a message left is dropped by the next acquisition
            log.warning("dropping vanished task %s: %r", ended.held.task.task_id, error)
        self._forget(ended.held)
        self._observe(ended, "vanished")

    async def _committed(self, held: Held) -> bool:
        """Whether our completion of this task is already in the database."""
        assert self.processing is not None
        status = await self.processing.status_of(held.task.task_id)
        return status is not None and status[0] == TaskStatus.COMPLETED

    async def _release_quietly(self, message: QueueMessage) -> None:
        """Make a message visible again, best effort: if this fails too, the queue gives it
        back anyway (RabbitMQ when our connection is lost, the table queue when the lease we
        no longer renew runs out)."""
        try:
            await self.backends.queue.release([message])
        except Exception as error:
            log.warning("giving back the message of task %s failed: %r", message.task_id, error)

    async def _finish(self, ended: Ended) -> None:
        assert self.processing is not None
        held, task = ended.held, ended.held.task
        bind(session_id=task.session_id, task_id=task.task_id)
        outcome = ended.outcome or TaskOutcome()
        committed = False
        if ended.kind == "ok":
            committed = await self._complete(held, outcome, ended.processed_at)
        elif ended.kind == "error":
            await self.processing.fail(task, ended.detail, retry=False)
        elif ended.kind == "timeout":
            await self.processing.fail(task, ended.detail, retry=False, status=TaskStatus.TIMEOUT)
        elif ended.kind == "crash":
            await self.processing.fail(task, ended.detail, retry=True)
        elif ended.kind == "cancelled":
            await self.processing.cancelled(task)
        unused = outcome.replaced + ([] if committed else [s.opaque_id for s in outcome.stored])
        if unused:
            await self.backends.objects.delete(unused)
        if not (committed and self.backends.queue_in_database is not None):
            await self.backends.queue.ack([held.message])
        self._forget(held)
        self._observe(ended, "completed" if committed else ended.kind)

    def _observe(self, ended: Ended, outcome: str) -> None:
        task = ended.held.task
        partition = task.options.partition_id
        if partition not in self._stage_seconds:  # labels only of the partitions served
            partition = self.served[0]
        AGENT_TASKS.labels(partition, outcome).inc()
        seconds = self._stage_seconds[partition]
        stages = (
            (seconds[0], task.submitted_at, task.received_at),
            (seconds[1], task.acquired_at, ended.held.fetched_at or None),
            (seconds[2], task.started_at, ended.processed_at or None),
            (seconds[3], ended.processed_at or None, now()),
        )
        for histogram, begin, end in stages:
            if begin is not None and end is not None:
                histogram.observe(max(end - begin, 0.0))

    async def _complete(self, held: Held, outcome: TaskOutcome, processed_at: float) -> bool:
        """Commit a success (with the message's ack when the queue lives in the database)."""
        assert self.processing is not None
        queue = self.backends.queue_in_database

        async def ack(repository: Repository) -> None:
            assert queue is not None
            await queue.ack_within(repository, [held.message])

        crash_point("before_complete")
        try:
            committed = await self.processing.complete(
                held.task, outcome, processed_at, within=ack if queue is not None else None
            )
        except Unavailable:
            raise  # a backend is down: not the task's fault, post-processing is retried
        except ArmoniKError as error:  # e.g. a subtask refers to a result that is gone
            await self.processing.fail(held.task, f"Post-processing failed: {error}", retry=False)
            return False
        if not committed:
            await self.processing.cancelled(held.task)
            return False
        self.completed += 1
        return True

    def _forget(self, held: Held) -> None:
        self.held.pop(held.task.task_id, None)
        if not held.forgotten:  # a folder given back twice would go to two tasks
            held.forgotten = True
            if held.folder is not None:
                self.folders.give_back(held.folder)

    async def _beat(self) -> None:
        """While we hold tasks, beat (scheduling/liveness.py): silent, we would be found dead
        and our tasks handed to others. An agent holding nothing sleeps until it holds some
        (its acquisition's transaction beats)."""
        assert self.processing is not None
        heartbeat = self.processing.heartbeat
        while True:
            if not self.held:
                self._holding.clear()
                await self._holding.wait()
            await asyncio.sleep(HEARTBEAT)
            if self.held and heartbeat.due():
                try:
                    await heartbeat.beat()
                except Exception as error:
                    log.warning("heartbeat failed: %r", error)

    async def _keep_leases(self) -> None:
        while True:
            await asyncio.sleep(self.settings.lease / 3)
            messages = [h.message for h in list(self.held.values())]
            try:
                await self.backends.queue.extend(messages, self.settings.lease)
            except Exception:
                log.exception("renewing queue leases failed")


def window_size(mean_seconds: float, largest: int, horizon: float) -> int:
    """How many tasks a worker runs in `horizon` seconds, from 1 to `largest`."""
    return max(1, min(largest, int(horizon / max(mean_seconds, 1e-4))))


async def relay_event(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()
