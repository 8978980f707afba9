"""Agents' heartbeats, and what becomes of the tasks of an agent that stops beating.

An agent beats (table `agents`, stamped by the database's clock, so hosts' clocks do not
matter) while it holds tasks: within the very transaction that acquires one, then every
HEARTBEAT seconds until it holds none. An idle agent writes nothing, and a beat wakes no
other process (SQLite's wake-ups are for queue work): at 64 agents this costs nothing when
they are idle, nothing more when their tasks are short (a beat is one more statement in an
acquisition's transaction), and one small write per second per agent running a long task.

Control planes look every SWEEP_EVERY seconds for agents that hold tasks (DISPATCHED or
PROCESSING) and have been silent for SILENT_AFTER seconds. One of them marks such an agent
lost and hands its tasks back to the queue: a table queue makes their messages visible at
once (instead of when their lease runs out), a broker gets a copy of each through the outbox
(RabbitMQ redelivers by itself when the agent's connection drops, which for a lost host takes
as long as the broker's heartbeat timeout). The agent that pulls such a message recovers the
task as for any dead owner (processing.TaskProcessing.acquire): an owner found lost is dead
without being asked (a lost host would keep the HTTP probe waiting for its timeouts), a
PROCESSING task is retried and a DISPATCHED one taken over. A lease that runs out stays the
last resort.
"""

from __future__ import annotations

import asyncio
import logging
import time

from pyarmonik.domain.records import Task
from pyarmonik.domain.statuses import TaskStatus
from pyarmonik.scheduling.backends import Backends
from pyarmonik.scheduling.graph import ReadyTask, push_ready, push_ready_within
from pyarmonik.storage.database import Database, Repository

log = logging.getLogger(__name__)

HEARTBEAT = 1.0  # seconds between two beats of an agent holding tasks
# An agent holding tasks and silent this long is lost. Beats are at most about two HEARTBEATs
# apart (the loop's period, and a beat skipped when the last one is younger than that).
SILENT_AFTER = 4.0
SWEEP_EVERY = 1.0  # how often a control plane looks for lost agents
FORGET_AFTER = 3600.0  # rows of agents silent this long are deleted (a live one beats again)
FORGET_EVERY = 60.0


class Heartbeat:
    """An agent's beats."""

    def __init__(self, database: Database, owner_id: str, hostname: str):
        self.database = database
        self.owner_id = owner_id
        self.hostname = hostname
        self._last = -HEARTBEAT  # time.monotonic() of the last beat written

    def due(self) -> bool:
        return time.monotonic() - self._last >= HEARTBEAT

    async def within(self, repository: Repository) -> None:
        """Beat inside the caller's transaction (an acquisition's) unless one is recent."""
        if self.due():
            await repository.beat(self.owner_id, self.hostname)
            self._last = time.monotonic()

    async def beat(self) -> None:
        """Beat in a transaction of its own, which wakes no other process."""
        async with self.database.write(announce=False) as repository:
            await repository.beat(self.owner_id, self.hostname)
        self._last = time.monotonic()

    async def lost(self, owner_id: str) -> bool:
        """Whether a control plane found agent `owner_id` lost (and it has not beaten since).
        Only they judge: they allow for a database that was down (nobody could beat)."""
        async with self.database.read() as repository:
            return await repository.agent_lost(owner_id)


async def hand_back_lost(backends: Backends) -> dict[str, int]:
    """Mark lost the agents that hold tasks and stopped beating, and hand their tasks back
    to the queue (see the module docstring); {agent: tasks handed back}. Control planes may
    run it together: one marks each agent."""
    async with backends.database.read() as repository:
        silent = await repository.silent_owners(SILENT_AFTER)
    if not silent:
        return {}
    ready: list[ReadyTask] = []
    async with backends.database.write() as repository:
        lost = await repository.mark_lost(silent, SILENT_AFTER)
        if not lost:
            return {}
        tasks = await repository.find(
            Task,
            {"owner_pod_id": lost, "status": [TaskStatus.DISPATCHED, TaskStatus.PROCESSING]},
        )
        queue = backends.queue_in_database
        if queue is not None:
            await queue.reclaim_within(repository, [task.task_id for task in tasks])
        else:
            ready = await push_ready_within(
                backends,
                repository,
                [
                    ReadyTask(t.task_id, t.options.partition_id, t.options.priority, t.session_id)
                    for t in tasks
                ],
            )
    await push_ready(backends, ready)
    handed_back = {owner: 0 for owner in lost}
    for task in tasks:
        handed_back[task.owner_pod_id] += 1
    return handed_back


async def watch_agents(backends: Backends) -> None:
    """A control plane's loop: `hand_back_lost` every SWEEP_EVERY seconds, and the rows of
    long-silent agents deleted now and then. Silence is judged only once the database has
    answered for SILENT_AFTER seconds in a row: after an outage (or our own start), agents
    get that long to beat again."""
    forgotten_at = time.monotonic()
    up_since: float | None = None  # since when every look at the database succeeded
    while True:
        await asyncio.sleep(SWEEP_EVERY)
        try:
            if up_since is None or time.monotonic() - up_since < SILENT_AFTER:
                await backends.database.check_health()
                if up_since is None:
                    up_since = time.monotonic()
                continue
            for owner, count in (await hand_back_lost(backends)).items():
                log.warning(
                    "agent %s has been silent for %.0f s: %d of its tasks handed back",
                    owner,
                    SILENT_AFTER,
                    count,
                )
            if time.monotonic() - forgotten_at >= FORGET_EVERY:
                forgotten_at = time.monotonic()
                async with backends.database.write(announce=False) as repository:
                    await repository.forget_agents(FORGET_AFTER)
        except Exception as error:  # a backend down: next round
            up_since = None
            log.debug("looking for lost agents failed: %r", error)
