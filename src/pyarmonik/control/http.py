"""The control plane's HTTP side: Prometheus /metrics, health endpoints and the admin GUI."""

from __future__ import annotations

import errno
import logging

from aiohttp import web

from pyarmonik.control.gui import AdminGui
from pyarmonik.observability.metrics import CONTENT_TYPE, exposition, set_task_counts
from pyarmonik.scheduling.backends import Backends

log = logging.getLogger(__name__)


class HttpServer:
    def __init__(self, backends: Backends, host: str, port: int):
        self.backends = backends
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    def application(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/liveness", self.liveness)
        app.router.add_get("/readiness", self.readiness)
        AdminGui(self.backends).install(app)
        return app

    async def start(self, any_port_if_taken: bool = False) -> int:
        """Serve; with `any_port_if_taken`, a busy port is replaced by a free one."""
        self._runner = web.AppRunner(self.application(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except OSError as error:
            if not any_port_if_taken or error.errno != errno.EADDRINUSE:
                raise
            log.warning("HTTP port %s is taken; using a free one", self.port)
            site = web.TCPSite(self._runner, self.host, 0)
            await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def metrics(self, request: web.Request) -> web.Response:
        # Gauges are read from the database at scrape time: any replica gives the same answer.
        async with self.backends.database.read() as repository:
            counts = await repository.count_tasks_by_partition_status()
        set_task_counts(counts, [p.partition_id for p in self.backends.partitions])
        return web.Response(body=exposition(), headers={"Content-Type": CONTENT_TYPE})

    async def liveness(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readiness(self, request: web.Request) -> web.Response:
        failures = []
        for name, check in (
            ("database", self.backends.database.check_health),
            ("queue", self.backends.queue.check_health),
            ("object", self.backends.objects.check_health),
        ):
            try:
                await check()
            except Exception as error:  # an unhealthy backend is the answer here
                failures.append(f"{name}: {error}")
        if failures:
            return web.Response(status=503, text="\n".join(failures))
        return web.Response(text="ok")
