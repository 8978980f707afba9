"""Several agents in one process, sharing its database connection and object storage.

Each agent stays whole: its owner id and liveness endpoint, its worker process, its queue
consumer, its heartbeats. What they share is what costs per process, not per task: the
database (on SQLite one writer connection, so that write blocks of different agents issued
in the same loop turns commit in one transaction), the object storage, gRPC's threads, the
interpreter. `pyarmonik agent --agents K` runs a group; `pyarmonik local` groups its agents
by `agents_per_process` (docs/performance.md, "Agents grouped in processes").

A crash of the process ends every agent of the group; `local` starts the process again and
the tasks they held are recovered like those of any dead agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace

from pyarmonik.aio import cancel_and_wait
from pyarmonik.config import Settings
from pyarmonik.storage.database import Database
from pyarmonik.storage.factory import open_backends

from .agent import Agent, AgentSettings, relay_event

log = logging.getLogger(__name__)

# Bounds a fan-out wait when a wake-up is lost; each agent bounds its own wait too.
FANOUT_WAIT = 10.0


class ChangeFanout:
    """One waiter on the shared database for every agent of the process.

    `Database.wait_for_changes` serves one waiter per instance (a wake-up is consumed by the
    wait that returns). Here one task waits on the database while any agent waits, and each
    change is marked on every agent, waiting or not: an agent busy reading when it came
    returns at once from its next wait, as it would with a database of its own. While no
    agent waits, the database is not waited on either (on SQLite, other processes' commits
    are then not even sent to us). Only that task ever waits on the database: a cancelled
    wait pauses the wake-ups as it ends, which must not overlap the next wait."""

    def __init__(self, database: Database):
        self.database = database
        self._marks: list[asyncio.Event] = []
        self._waiting = 0
        self._someone_waits = asyncio.Event()
        self._nobody_waits = asyncio.Event()
        self._nobody_waits.set()
        self._waiter: asyncio.Task[None] | None = None
        self.listening = False  # the database is waited on

    def subscribe(self) -> Changes:
        mark = asyncio.Event()
        mark.set()  # a new agent looks at the queue first
        self._marks.append(mark)
        return Changes(self, mark)

    async def wait(self, mark: asyncio.Event, timeout: float) -> None:
        if not mark.is_set():
            if self._waiter is None:
                self._waiter = asyncio.create_task(self._wait_on_database(), name="fanout")
            self._waiting += 1
            self._someone_waits.set()
            self._nobody_waits.clear()
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await mark.wait()
            finally:
                self._waiting -= 1
                if not self._waiting:
                    self._someone_waits.clear()
                    self._nobody_waits.set()
        mark.clear()

    async def _wait_on_database(self) -> None:
        while True:
            await self._someone_waits.wait()
            self.listening = True
            changed = asyncio.ensure_future(self.database.wait_for_changes(FANOUT_WAIT))
            nobody = asyncio.ensure_future(self._nobody_waits.wait())
            try:
                await asyncio.wait((changed, nobody), return_when=asyncio.FIRST_COMPLETED)
            finally:
                nobody.cancel()
                if not changed.done():
                    changed.cancel()
                # Its end pauses the wake-ups: before the next wait. (asyncio.wait: a
                # cancellation of ours still ends this task; theirs is not raised here.)
                await asyncio.wait((changed,))
                self.listening = False
            if changed.cancelled():
                continue
            if (error := changed.exception()) is not None:  # the agents' pulls report it
                log.warning("waiting for database changes failed: %r", error)
                await asyncio.sleep(1.0)
            for each in self._marks:
                each.set()

    async def close(self) -> None:
        if self._waiter is not None:
            await cancel_and_wait(self._waiter)


class Changes:
    """One agent's view of the fan-out: `Database.wait_for_changes`'s contract."""

    def __init__(self, fanout: ChangeFanout, mark: asyncio.Event):
        self._fanout = fanout
        self._mark = mark

    async def wait_for_changes(self, timeout: float) -> None:
        await self._fanout.wait(self._mark, timeout)


def member_settings(settings: AgentSettings, index: int) -> AgentSettings:
    """The settings of agent `index` of a group: a work folder each, the rest shared."""
    return replace(settings, work_dir=settings.work_dir / str(index))


async def run_group(
    count: int, settings: AgentSettings, config: Settings, stop: asyncio.Event
) -> None:
    """Run `count` agents until `stop`, on one database and object storage; each agent has
    its own queue consumer (a broker's, or the table queue's on the shared database). An
    agent that fails stops the others (gracefully) and the process: `local` starts it again."""
    shared = open_backends(config)
    await shared.database.start()
    await shared.objects.start()
    fanout = ChangeFanout(shared.database)
    group_stop = asyncio.Event()
    relay = asyncio.create_task(relay_event(stop, group_stop))

    async def run(agent: Agent) -> None:
        try:
            await agent.run(group_stop)
        except BaseException:
            group_stop.set()
            raise

    try:
        agents = []
        for index in range(count):
            agent = Agent(open_backends(config, sharing=shared), member_settings(settings, index))
            agent.changes = fanout.subscribe()
            agents.append(agent)
        outcomes = await asyncio.gather(*(run(a) for a in agents), return_exceptions=True)
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        for failure in failures[1:]:
            log.error("another agent of the group failed too", exc_info=failure)
        if failures:
            raise failures[0]
    finally:
        relay.cancel()
        await fanout.close()
        await shared.objects.close()
        await shared.database.close()
