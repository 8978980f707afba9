"""`pyarmonik local`: a control plane and agent/worker pairs on one machine."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal
import sys

from pyarmonik.compute.orphans import dying_with_parent
from pyarmonik.config import PartitionSettings, Settings
from pyarmonik.control.server import ControlPlane

log = logging.getLogger(__name__)

# The worker of a partition that names none: the SDK's function worker.
FUNCTION_WORKER = f"{shlex.quote(sys.executable)} -m pyarmonik.sdk.worker"
# An agent that exits is started again after RESTART_FIRST seconds, doubled at each exit up
# to RESTART_MAX, and back to RESTART_FIRST once it has run HEALTHY_AFTER seconds.
RESTART_FIRST = 1.0
RESTART_MAX = 30.0
HEALTHY_AFTER = 60.0
# Without `agents_per_process`, agents get a process each up to this many processes per core,
# and are grouped beyond: at 64 agents on 2 cores a process each spent twice the CPU per task
# (docs/performance.md, "Agents grouped in processes").
PROCESSES_PER_CORE = 4


def agents_per_process(agents: int, configured: int | None) -> int:
    """How many agents each process of a partition's `agents` runs."""
    if configured is not None:
        return configured
    processes = PROCESSES_PER_CORE * (os.cpu_count() or 1)
    return max(1, -(-agents // processes))


class LocalCluster:
    def __init__(self, settings: Settings, default_agents: int | None = None, lease: float = 30.0):
        self.settings = settings
        self.lease = lease
        self.default_agents = default_agents or os.cpu_count() or 1
        self.plane = ControlPlane(settings)
        self.agents: list[asyncio.subprocess.Process] = []
        self._commands: list[list[str]] = []  # of each agent, to start it again
        self._env: dict[str, str] = {}

    def _agent_command(self, partition: PartitionSettings, index: int, agents: int) -> list[str]:
        settings = self.settings
        return [
            sys.executable, "-m", "pyarmonik.cli.main", "agent",
            *(arg for p in [partition.id, *partition.also_serves] for arg in ("--partition", p)),
            "--worker", partition.worker or FUNCTION_WORKER,
            "--work-dir", str((settings.data_dir / "agents" / f"{partition.id}-{index}").resolve()),
            "--database", settings.database_url,
            "--queue", settings.queue_url,
            "--objects", settings.objects_url,
            "--lease", str(self.lease),
            "--agents", str(agents),
        ]  # fmt: skip

    async def start(self) -> str:
        port = await self.plane.start()
        env = self._env = dict(os.environ)
        if self.settings.otlp_endpoint:  # agents trace too, even when set by a config file
            env["PYARMONIK_OTLP_ENDPOINT"] = self.settings.otlp_endpoint
        # The agents store small outputs as the control plane stores small inputs.
        env["PYARMONIK_INLINE_THRESHOLD"] = str(self.settings.inline_threshold)
        # They push ready tasks too: in the same order as the control plane.
        env["PYARMONIK_QUEUE_ORDER"] = self.settings.queue_order
        env["PYARMONIK_PAUSE_IDLE_WORKER"] = str(self.settings.pause_idle_worker).lower()
        env["PYARMONIK_WORKER_NICE"] = str(self.settings.worker_nice)
        for partition in self.settings.partition_list():
            count = partition.agents if partition.agents is not None else self.default_agents
            per_process = agents_per_process(count, self.settings.agents_per_process)
            for index, first in enumerate(range(0, count, per_process)):
                command = self._agent_command(partition, index, min(per_process, count - first))
                self._commands.append(command)
                self.agents.append(await self._spawn(command))
        return f"{self.settings.host}:{port}"

    async def _spawn(self, command: list[str]) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *dying_with_parent(command), env=self._env, start_new_session=True
        )

    async def wait(self, stop: asyncio.Event) -> None:
        """Until `stop`; an agent that exits is started again (its tasks are recovered by
        the others meanwhile, scheduling/liveness.py)."""
        await asyncio.gather(*(self._supervise(index, stop) for index in range(len(self.agents))))

    async def _supervise(self, index: int, stop: asyncio.Event) -> None:
        """Start agent `index` again whenever it exits before `stop` (see RESTART_FIRST)."""
        loop = asyncio.get_running_loop()
        delay = RESTART_FIRST
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while True:
                agent, started = self.agents[index], loop.time()
                exited = asyncio.ensure_future(agent.wait())
                await asyncio.wait((exited, stopping), return_when=asyncio.FIRST_COMPLETED)
                if stop.is_set():
                    exited.cancel()
                    return
                if loop.time() - started >= HEALTHY_AFTER:
                    delay = RESTART_FIRST
                log.warning(
                    "agent %d (pid %d) exited with code %s; starting it again in %.0f s",
                    index,
                    agent.pid,
                    agent.returncode,
                    delay,
                )
                await asyncio.wait((stopping,), timeout=delay)
                if stop.is_set():
                    return
                self.agents[index] = await self._spawn(self._commands[index])
                log.info("agent %d started again (pid %d)", index, self.agents[index].pid)
                delay = min(delay * 2, RESTART_MAX)
        finally:
            stopping.cancel()

    async def stop(self) -> None:
        for agent in self.agents:
            if agent.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    agent.send_signal(signal.SIGTERM)
        for agent in self.agents:
            try:
                async with asyncio.timeout(30):
                    await agent.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(agent.pid, signal.SIGKILL)
                await agent.wait()
        await self.plane.stop()
