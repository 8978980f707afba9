"""Connected agents, for the admin GUI.

Agents are separate processes that register nowhere; each stamps the tasks it takes with its
id (`owner_pod_id`, the host:port of its HTTP endpoint) and host name. So the directory
derives candidates from tasks — those held now (DISPATCHED, PROCESSING) and the last ended
ones of the recent sessions — remembers them for a while, and asks each agent over HTTP
what it is doing (/liveness, /taskprocessing, /metrics). No heartbeat table and no change
to the agent: what is shown is what the agents answer now. An agent that has not run a task
since this control plane started stays unknown until it takes one.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from pyarmonik.domain.filters import Condition, Filter, Kind, ListQuery, Op, Sort
from pyarmonik.domain.records import Task
from pyarmonik.domain.statuses import TaskStatus
from pyarmonik.scheduling.sessions import SessionService
from pyarmonik.scheduling.tasks import TaskService

HELD: Filter = tuple(
    (Condition("status", Kind.STATUS, Op.EQ, int(s)),)
    for s in (TaskStatus.DISPATCHED, TaskStatus.PROCESSING)
)

# Outcomes an agent counts (pyarmonik_agent_tasks_total) that are failures of the task.
FAILURES = frozenset({"error", "timeout", "crash"})


@dataclass
class Agent:
    owner_id: str
    hostname: str = ""
    partition_id: str = ""
    last_task_at: float = 0.0  # last time a task of it was seen moving
    state: str = "unknown"  # ok | stopping | unreachable
    held: list[str] = field(default_factory=list)
    completed: int = 0
    failed: int = 0
    worker_restarts: int = 0
    mean_processing: float | None = None


class AgentDirectory:
    """Agents seen as task owners, probed on demand (answers cached for `ttl` seconds)."""

    def __init__(
        self,
        tasks: TaskService,
        sessions: SessionService,
        forget_after: float = 600.0,
        ttl: float = 1.0,
    ):
        self.tasks = tasks
        self.sessions = sessions
        self.forget_after = forget_after
        self.ttl = ttl
        self.known: dict[str, Agent] = {}
        self._client: aiohttp.ClientSession | None = None
        self._cached: tuple[float, list[dict[str, Any]]] = (0.0, [])
        self._lock = asyncio.Lock()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()

    async def snapshot(self) -> list[dict[str, Any]]:
        async with self._lock:  # concurrent pollers share one round of probes
            at, agents = self._cached
            if time.monotonic() - at < self.ttl:
                return agents
            await self._discover()
            await asyncio.gather(*(self._probe(a) for a in self.known.values()))
            horizon = time.time() - self.forget_after
            for owner, agent in list(self.known.items()):
                if agent.state == "unreachable" and agent.last_task_at < horizon:
                    del self.known[owner]
            agents = [asdict(a) for a in sorted(self.known.values(), key=lambda a: a.owner_id)]
            self._cached = (time.monotonic(), agents)
            return agents

    def _see(self, task: Task, at: float) -> None:
        if not task.owner_pod_id:
            return
        agent = self.known.setdefault(task.owner_pod_id, Agent(task.owner_pod_id))
        agent.hostname = task.pod_hostname or agent.hostname
        agent.partition_id = task.options.partition_id or agent.partition_id
        agent.last_task_at = max(agent.last_task_at, at)

    async def _discover(self) -> None:
        held, _ = await self.tasks.list_page(ListQuery(filter=HELD, page_size=1000))
        stamp = time.time()
        for task in held:
            self._see(task, stamp)
        recent, _ = await self.sessions.list_page(
            ListQuery(sort=Sort("created_at", descending=True), page_size=5)
        )
        for session in recent:
            ended, _ = await self.tasks.list_page(
                ListQuery(
                    filter=((Condition("session_id", Kind.STRING, Op.EQ, session.session_id),),),
                    sort=Sort("ended_at", descending=True),
                    page_size=100,
                )
            )
            for task in ended:
                if task.ended_at is not None:
                    self._see(task, task.ended_at)

    async def _probe(self, agent: Agent) -> None:
        if self._client is None:
            self._client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0))
        base = f"http://{agent.owner_id}"
        try:
            liveness, held, metrics = await asyncio.gather(
                *(
                    self._text(f"{base}/{path}")
                    for path in ("liveness", "taskprocessing", "metrics")
                )
            )
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
            agent.state, agent.held = "unreachable", []
            return
        agent.state = "ok" if liveness == "ok" else "stopping"
        agent.held = [t for t in held.split(",") if t]
        _read_metrics(agent, metrics)

    async def _text(self, url: str) -> str:
        assert self._client is not None
        async with self._client.get(url) as response:
            response.raise_for_status()
            return await response.text()


def _read_metrics(agent: Agent, text: str) -> None:
    completed = failed = restarts = 0.0
    seconds = count = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "pyarmonik_agent_tasks_total":
                if labels.get("outcome") == "completed":
                    completed += sample.value
                elif labels.get("outcome") in FAILURES:
                    failed += sample.value
            elif sample.name == "pyarmonik_worker_restarts_total":
                restarts += sample.value
            elif labels.get("stage") == "processing":
                if sample.name == "pyarmonik_agent_stage_seconds_sum":
                    seconds += sample.value
                elif sample.name == "pyarmonik_agent_stage_seconds_count":
                    count += sample.value
    agent.completed, agent.failed, agent.worker_restarts = (
        int(completed),
        int(failed),
        int(restarts),
    )
    agent.mean_processing = seconds / count if count else None
