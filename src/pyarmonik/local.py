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


class LocalCluster:
    def __init__(self, settings: Settings, default_agents: int | None = None, lease: float = 30.0):
        self.settings = settings
        self.lease = lease
        self.default_agents = default_agents or os.cpu_count() or 1
        self.plane = ControlPlane(settings)
        self.agents: list[asyncio.subprocess.Process] = []

    def _agent_command(self, partition: PartitionSettings, index: int) -> list[str]:
        settings = self.settings
        return [
            sys.executable, "-m", "pyarmonik.cli.main", "agent",
            "--partition", partition.id,
            "--worker", partition.worker or FUNCTION_WORKER,
            "--work-dir", str((settings.data_dir / "agents" / f"{partition.id}-{index}").resolve()),
            "--database", settings.database_url,
            "--queue", settings.queue_url,
            "--objects", settings.objects_url,
            "--lease", str(self.lease),
        ]  # fmt: skip

    async def start(self) -> str:
        port = await self.plane.start()
        env = dict(os.environ)
        if self.settings.otlp_endpoint:  # agents trace too, even when set by a config file
            env["PYARMONIK_OTLP_ENDPOINT"] = self.settings.otlp_endpoint
        # The agents store small outputs as the control plane stores small inputs.
        env["PYARMONIK_INLINE_THRESHOLD"] = str(self.settings.inline_threshold)
        for partition in self.settings.partition_list():
            count = partition.agents if partition.agents is not None else self.default_agents
            for index in range(count):
                command = self._agent_command(partition, index)
                self.agents.append(
                    await asyncio.create_subprocess_exec(
                        *dying_with_parent(command), env=env, start_new_session=True
                    )
                )
        return f"{self.settings.host}:{port}"

    async def wait(self, stop: asyncio.Event) -> None:
        """Until `stop`; an agent that dies is reported (and its tasks recovered by others)."""
        exits = [asyncio.create_task(a.wait()) for a in self.agents]
        stopper = asyncio.create_task(stop.wait())
        pending = {stopper, *exits}
        while not stop.is_set():
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for finished in done:
                if finished is not stopper:
                    log.warning("an agent exited with code %s", finished.result())
        for task in pending:
            task.cancel()

    async def stop(self) -> None:
        for agent in self.agents:
            if agent.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    agent.send_signal(signal.SIGTERM)
        for agent in self.agents:
            try:
                await asyncio.wait_for(agent.wait(), 30)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(agent.pid, signal.SIGKILL)
                await agent.wait()
        await self.plane.stop()
