"""The agent's batched path, for a worker that speaks the lean protocol (compute/frames.py):
the SDK's function worker. Official workers keep ArmoniK's one `Process` call per task.

    fetch    keep the worker's window filled: pull and acquire many tasks in one
             transaction, start them in one statement, read their payloads and inputs in
             one query, send them in one `tasks` frame
    receive  each `done` frame becomes an outcome (outputs, created results, subtasks)
    commit   every success that arrived meanwhile is committed in one transaction
    watch    a task running long has the rest of the window taken back (for idle agents);
             a timeout, a cancellation or the worker's death ends the running task, and
             the tasks behind it are given back, never lost nor run twice

The window adapts to the tasks: as many as the worker runs in BATCH_SECONDS (at least 1,
at most MAX_WINDOW); behind a task running longer than HOLD, the others are taken back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from armonik.protogen.common import agent_common_pb2

from pyarmonik.compute.agent import Agent, Ended, Held, window_size
from pyarmonik.compute.agent_api import check_known, store_output
from pyarmonik.compute.frames import Frame, FrameError
from pyarmonik.compute.inputs import read_inputs
from pyarmonik.compute.worker_process import BatchChannel
from pyarmonik.control.convert import task_creations
from pyarmonik.domain.errors import ArmoniKError, InvalidArgument, NotFound
from pyarmonik.domain.records import Result, Session, Task
from pyarmonik.domain.statuses import SessionStatus, TaskStatus
from pyarmonik.observability.metrics import BACKEND_ERRORS
from pyarmonik.scheduling.backends import now
from pyarmonik.scheduling.processing import StoredResult, TaskOutcome
from pyarmonik.scheduling.tasks import plan_tasks
from pyarmonik.storage.objects import read_all

log = logging.getLogger(__name__)

# Shorter than the official path's WINDOW_SECONDS: a batch holds up to MAX_WINDOW tasks
# already, and the fewer sit behind a slow one, the less is taken back.
BATCH_SECONDS = 0.02
MAX_WINDOW = 64
START_WINDOW = 8
HOLD = 0.2  # a task running longer than this has the tasks queued behind it taken back
WATCH_EVERY = 0.05
TaskCreation = agent_common_pb2.SubmitTasksRequest.TaskCreation


@dataclass
class Sent:
    held: Held
    sent_at: float


@dataclass
class Stop:
    """Why the agent stops the running task (the worker is killed for it)."""

    kind: str  # timeout | cancelled
    detail: str


@dataclass
class WorkerLife:
    """One connection to the worker: what it holds, in the order it runs them."""

    channel: BatchChannel
    window: dict[str, Sent] = field(default_factory=dict)
    running_since: float = 0.0
    stop: Stop | None = None
    returned: asyncio.Future[list[str]] | None = None
    lost: bool = False  # its connection ended: it takes no more tasks


class BatchRunner:
    def __init__(self, agent: Agent):
        self.agent = agent
        self.backends = agent.backends
        self.objects = agent.backends.objects
        self.life: WorkerLife | None = None
        # Seconds of a task in the worker, smoothed; a new agent starts with a window of
        # START_WINDOW (take-backs protect the tasks behind a long first one).
        self.mean_seconds = BATCH_SECONDS / START_WINDOW
        self._room = asyncio.Event()  # the window has room, or the worker changed
        self._filled = asyncio.Event()  # tasks were sent: the watch has work (idle: no polls)
        self._receivers: set[asyncio.Task[None]] = set()

    @property
    def size(self) -> int:
        """How many tasks to keep in the worker's hands."""
        return window_size(self.mean_seconds, MAX_WINDOW, BATCH_SECONDS)

    async def run(self) -> None:
        """The batched stages, until the agent stops: then the window drains (the running
        task finishes, those behind it are given back) and the last outcomes commit."""
        agent = self.agent
        self._attach()
        stages = [
            asyncio.create_task(self._fetch_loop(), name="batch-fetch"),
            asyncio.create_task(self._watch_loop(), name="batch-watch"),
            asyncio.create_task(agent._post_loop(), name="batch-post"),
        ]
        stopper = asyncio.create_task(agent._stopping.wait())
        done, _ = await asyncio.wait([stopper, *stages], return_when=asyncio.FIRST_COMPLETED)
        for stage in done:
            if stage is not stopper and stage.exception() is not None:
                log.error("agent stage %s failed", stage.get_name(), exc_info=stage.exception())
        agent._stopping.set()
        stopper.cancel()
        await stages[0]  # fetching ends
        await self._drain()
        stages[1].cancel()
        await agent.ended.put(None)
        await asyncio.gather(*stages[1:], return_exceptions=True)
        for receiver in list(self._receivers):
            receiver.cancel()

    def _attach(self) -> None:
        """Start receiving from the worker's current connection."""
        channel = self.agent.worker.batch
        assert channel is not None, "the worker does not speak the batched protocol"
        life = self.life = WorkerLife(channel)
        receiver = asyncio.create_task(self._receive(life), name="batch-receive")
        self._receivers.add(receiver)
        receiver.add_done_callback(self._receivers.discard)
        self._room.set()

    # -- fetch -------------------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        agent = self.agent
        idle = 0.01
        while not agent._stopping.is_set():
            life = self.life
            assert life is not None
            room = self.size - len(life.window)
            if life.lost or room <= 0 or (life.window and room < self.size // 2):
                self._room.clear()
                await _wait_either(self._room, agent._stopping)
                continue
            messages, taken, idle = await agent._pull_or_wait(room, idle, start=True)
            if not messages:
                continue
            held: list[Held] = []
            for message in messages:
                try:
                    one = await agent._hold(message, taken.get(message.task_id), None)
                except Exception:  # a backend down: the message comes back, we go on
                    BACKEND_ERRORS.labels("acquire").inc()
                    log.exception("acquiring task %s failed", message.task_id)
                    await agent._release_quietly(message)
                    continue
                if one is not None:
                    held.append(one)
            if held:
                try:
                    await self._send(life, held)
                except Exception as error:
                    log.exception("preparing %d tasks failed", len(held))
                    for one in held:
                        if one.task.task_id not in life.window:
                            await agent._post_process(
                                Ended(one, "crash", f"Agent failed to prepare it: {error!r}")
                            )

    async def _send(self, life: WorkerLife, held: list[Held]) -> None:
        """Start the tasks (PROCESSING) and send them with their data to the worker."""
        agent = self.agent
        assert agent.processing is not None
        fetched_at = now()
        # Tasks taken in the common case were started with their pull; the others now.
        dispatched = [h.task for h in held if h.task.status != TaskStatus.PROCESSING]
        started = (
            {t.task_id: t for t in await agent.processing.start_many(dispatched, fetched_at)}
            if dispatched
            else {}
        )
        started.update(
            {h.task.task_id: h.task for h in held if h.task.status == TaskStatus.PROCESSING}
        )
        for one in held:
            if one.task.task_id not in started:  # paused or cancelled meanwhile
                await agent._post_process(Ended(one, "skipped"))
        held = [h for h in held if h.task.task_id in started]
        if not held:
            return
        for one in held:
            one.task = started[one.task.task_id]
            one.fetched_at = one.task.fetched_at or fetched_at
        data, missing = await read_inputs(self.backends, [h.task for h in held])
        frames: list[Frame] = []
        ready: list[Held] = []
        for one in held:
            task = one.task
            absent = [i for i in (task.payload_id, *task.data_dependencies) if i in missing]
            if absent:
                await agent._post_process(
                    Ended(one, "error", f"Missing input data: {', '.join(absent)}")
                )
                continue
            frames.append(
                {
                    "id": task.task_id,
                    "session": task.session_id,
                    "payload": data[task.payload_id],
                    "outputs": task.expected_output_ids,
                    "priority": task.options.priority,
                    "inputs": {i: data[i] for i in task.data_dependencies},
                }
            )
            ready.append(one)
        if not frames:
            return
        if life.lost and self.life is not None:
            life = self.life  # the worker was replaced meanwhile: its successor runs them
        if life.lost:  # no worker to run them now: back to the queue
            await agent._give_back(*ready)
            return
        stamp = now()
        if not life.window:
            life.running_since = stamp
        for one in ready:
            life.window[one.task.task_id] = Sent(one, stamp)
            self._filled.set()
        # If the worker died, its receiver hands these tasks back.
        with contextlib.suppress(OSError, RuntimeError):
            await life.channel.send({"t": "tasks", "tasks": frames})

    # -- receive -----------------------------------------------------------------------------

    async def _receive(self, life: WorkerLife) -> None:
        """Outcomes of one worker life; at its end (the worker died or was killed) the
        running task ends and the tasks behind it are given back."""
        try:
            while (frame := await life.channel.receive()) is not None:
                kind = frame["t"]
                if kind == "done":
                    await self._done(life, frame)
                elif kind == "returned" and life.returned is not None:
                    if not life.returned.done():
                        ids: list[Any] = frame.get("ids", [])
                        life.returned.set_result([str(i) for i in ids])
                elif kind == "resource":
                    answer = asyncio.create_task(self._resource(life, frame))
                    self._receivers.add(answer)
                    answer.add_done_callback(self._receivers.discard)
                else:
                    raise FrameError(f"unexpected frame {kind!r}")
        except (FrameError, OSError, KeyError, TypeError, ValueError) as error:
            log.warning("the worker's connection failed: %r", error)
        await self._worker_lost(life)

    async def _done(self, life: WorkerLife, frame: Frame) -> None:
        task_id = str(frame["id"])
        sent = life.window.pop(task_id, None)
        if sent is None:
            log.warning("the worker reported task %s, which it does not hold", task_id)
            return
        stamp = now()
        life.running_since = stamp
        seconds = float(frame.get("seconds", 0.0))
        self.mean_seconds = 0.8 * self.mean_seconds + 0.2 * max(seconds, 0.0)
        self._room.set()
        held = sent.held
        if frame.get("error") is not None:
            ended = Ended(held, "error", str(frame["error"]), processed_at=stamp)
        else:
            try:
                outcome = await self._outcome(held, frame)
            except ArmoniKError as error:
                ended = Ended(held, "error", f"Post-processing failed: {error}", processed_at=stamp)
            else:
                ended = Ended(held, "ok", outcome=outcome, processed_at=stamp)
        self.agent.ended.put_nowait(ended)

    async def _outcome(self, held: Held, frame: Frame) -> TaskOutcome:
        """What a task declared, checked as the Agent API checks it; data stored."""
        task = held.task
        outcome = TaskOutcome()
        data: dict[str, bytes] = {}
        for entry in frame.get("results", []):
            result_id, name, blob = entry
            if not isinstance(name, str) or not _is_uuid(result_id):
                raise InvalidArgument(f"invalid result declaration {result_id!r}")
            outcome.created.append(
                Result(
                    result_id=result_id,
                    session_id=task.session_id,
                    name=name,
                    created_by=task.task_id,
                    created_at=now(),
                )
            )
            if blob is not None:
                data[result_id] = bytes(blob)
        created = {r.result_id for r in outcome.created}
        outputs: dict[str, bytes] = frame.get("outputs", {})
        unknown = [i for i in outputs if i not in created and i not in task.expected_output_ids]
        if unknown:
            raise NotFound(
                f"Results {', '.join(unknown)} are neither outputs of the task nor created by it"
            )
        data.update({i: bytes(d) for i, d in outputs.items()})
        if frame.get("subtasks"):
            creations = []
            for raw in frame["subtasks"]:
                creation = TaskCreation()
                creation.ParseFromString(raw)
                creations.append(creation)
            outcome.subtasks = plan_tasks(
                held.session, None, task_creations(creations), parent=task
            )
            await check_known(self.backends, task, created, outcome.subtasks)
        for result_id, blob in data.items():
            opaque_id, size = await store_output(self.objects, outcome, task.task_id, blob)
            outcome.stored.append(StoredResult(result_id, opaque_id, size))
        return outcome

    async def _resource(self, life: WorkerLife, frame: Frame) -> None:
        """GetResourceData of the batched protocol: a result of the task's session."""
        result_id = str(frame.get("result", ""))
        sent = life.window.get(str(frame.get("id", "")))
        reply: Frame = {"t": "resource", "result": result_id}
        try:
            if sent is None:
                raise NotFound("the task is not running")
            async with self.backends.database.read() as repository:
                result = await repository.get(Result, result_id)
            if result is None or result.session_id != sent.held.task.session_id:
                raise NotFound(f"Result {result_id} not found")
            if not result.opaque_id:
                raise NotFound(f"Result {result_id} has no data ({result.status.name})")
            reply["data"] = await read_all(self.objects, result.opaque_id)
        except ArmoniKError as error:
            reply["error"] = str(error)
        with contextlib.suppress(OSError, RuntimeError):
            await life.channel.send(reply)

    async def _worker_lost(self, life: WorkerLife) -> None:
        """The worker's connection ended: the running task ends (crash: retried; or why we
        stopped it), the tasks behind it go back to the queue, and a new worker starts."""
        agent = self.agent
        life.lost = True
        if life.returned is not None and not life.returned.done():
            life.returned.set_result([])
        sents = list(life.window.values())
        life.window.clear()
        if sents:
            running, behind = sents[0], sents[1:]
            stop = life.stop or Stop("crash", "Worker exited while running the task")
            agent.ended.put_nowait(Ended(running.held, stop.kind, stop.detail, processed_at=now()))
            await agent._give_back(*(sent.held for sent in behind))
        if agent._stopping.is_set():
            self._room.set()
            return
        await agent._recover_worker(life.stop.kind if life.stop else "worker exited")
        if agent.worker.batch is not None and not agent._stopping.is_set():
            self._attach()

    # -- watch -------------------------------------------------------------------------------

    async def _watch_loop(self) -> None:
        """Take back the tasks queued behind a long one; stop a task past its max_duration
        or cancelled (every `cancel_poll`)."""
        next_cancel_check = asyncio.get_running_loop().time()
        while True:
            await asyncio.sleep(WATCH_EVERY)
            life = self.life
            if life is None or not life.window:
                self._filled.clear()
                await self._filled.wait()
                continue
            try:
                next_cancel_check = await self._watch(life, next_cancel_check)
            except Exception:  # the watch goes on: a task past its time must still stop
                log.exception("watching the worker's tasks failed")

    async def _watch(self, life: WorkerLife, next_cancel_check: float) -> float:
        """One look at the running task; returns when to check cancellations next."""
        agent, loop = self.agent, asyncio.get_running_loop()
        if life.window:
            running = next(iter(life.window.values()))
            elapsed = now() - max(life.running_since, running.sent_at)
            if elapsed > running.held.task.options.max_duration:
                self._kill(life, Stop("timeout", "Deadline exceeded (max_duration)"))
                return next_cancel_check
            if elapsed > HOLD:
                # A long task: the window shrinks to it, what waits behind it goes back.
                self.mean_seconds = max(self.mean_seconds, elapsed)
                if len(life.window) > 1:
                    await self._take_back(life)
        if life.window and loop.time() >= next_cancel_check:
            next_cancel_check = loop.time() + agent.settings.cancel_poll
            await self._check_cancellations(life)
        return next_cancel_check

    async def _take_back(self, life: WorkerLife) -> None:
        """Ask the worker for the tasks it has not started, and give them back."""
        if life.returned is not None:
            return
        life.returned = asyncio.get_running_loop().create_future()
        try:
            await life.channel.send({"t": "giveback"})
            async with asyncio.timeout(10):
                ids = await asyncio.shield(life.returned)
        except (OSError, RuntimeError, TimeoutError):
            ids = []
        finally:
            life.returned = None
        returned = [life.window.pop(i) for i in ids if i in life.window]
        await self.agent._give_back(*(sent.held for sent in returned))
        self._room.set()

    async def _check_cancellations(self, life: WorkerLife) -> None:
        ids = list(life.window)
        try:
            async with self.backends.database.read() as repository:
                tasks = {t.task_id: t for t in await repository.find(Task, {"task_id": ids})}
                session_ids = list({t.session_id for t in tasks.values()})
                cancelled_sessions = {
                    s.session_id
                    for s in await repository.find(Session, {"session_id": session_ids})
                    if s.status == SessionStatus.CANCELLED
                }
        except Exception as error:  # unknown is not cancelled: the tasks go on
            BACKEND_ERRORS.labels("cancel_poll").inc()
            log.warning("checking whether tasks are cancelled failed: %r", error)
            return
        cancelled = {
            i
            for i in ids
            if i not in tasks
            or tasks[i].status in (TaskStatus.CANCELLING, TaskStatus.CANCELLED)
            or tasks[i].session_id in cancelled_sessions
        }
        if not cancelled or not life.window:
            return
        if next(iter(life.window)) in cancelled:
            self._kill(life, Stop("cancelled", "Task was cancelled"))
        else:  # those not started are dropped when acquired again
            await self._take_back(life)

    def _kill(self, life: WorkerLife, stop: Stop) -> None:
        """Stop the running task: user code is only stopped by killing its process."""
        if life.stop is None:
            life.stop = stop
            self.agent.worker.kill()

    async def _drain(self) -> None:
        """The agent stops: what has not started is given back, the running task finishes."""
        life = self.life
        if life is None:
            return
        if len(life.window) > 1:
            await self._take_back(life)
        while life.window and self.life is life:
            self._room.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._room.wait()


def _is_uuid(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


async def _wait_either(first: asyncio.Event, second: asyncio.Event) -> None:
    waiters = [asyncio.create_task(first.wait()), asyncio.create_task(second.wait())]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
