"""The control plane's HTTP side: Prometheus /metrics, health endpoints, the admin GUI and
gRPC-Web (control/grpcweb.py).

It serves TLS with the gRPC port's files; with a client CA it asks for a client certificate
but does not require one (a browser without one logs in with a token). With authentication
on, /api needs an identified caller (control/httpauth.py) and /metrics too when
`metrics_require_token`; the health probes stay open.
"""

from __future__ import annotations

import errno
import logging

from aiohttp import web

from pyarmonik.config import Settings
from pyarmonik.control.auth import Authenticator, Unauthenticated
from pyarmonik.control.grpcweb import GrpcWebGateway
from pyarmonik.control.gui import AdminGui
from pyarmonik.control.gui.official import OfficialGui
from pyarmonik.control.httpauth import HttpAuth
from pyarmonik.control.tls import TlsFiles
from pyarmonik.observability.metrics import CONTENT_TYPE, exposition, set_task_counts
from pyarmonik.scheduling.auth import AuthStore
from pyarmonik.scheduling.backends import Backends

log = logging.getLogger(__name__)


class HttpServer:
    """/metrics, /liveness, /readiness and the admin GUI on `host:port`.

    `settings` bring TLS (`tls_cert`, `tls_key`, `tls_client_ca`), authentication and
    session isolation (without them: plain HTTP, everything open, as before); `authenticator`
    identifies callers (the gRPC port's, to share its cache; made when missing)."""

    def __init__(
        self,
        backends: Backends,
        host: str,
        port: int,
        settings: Settings | None = None,
        authenticator: Authenticator | None = None,
        gateway: GrpcWebGateway | None = None,
    ):
        self.backends = backends
        self.gateway = gateway
        self.host = host
        self.port = port
        self.settings = settings or Settings()
        if authenticator is None and settings is not None and settings.require_authentication:
            # Never open by omission: authentication asked for, authentication done.
            authenticator = Authenticator(settings, AuthStore(backends))
        self.auth = HttpAuth(self.settings, authenticator)
        # Read and checked now: bad files fail the start with the file named.
        self.tls = TlsFiles.of(self.settings) if settings is not None else None
        directory = settings.official_gui_dir if settings is not None else None
        self.official_gui = OfficialGui(directory) if directory is not None else None
        self._runner: web.AppRunner | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"

    def application(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/liveness", self.liveness)
        app.router.add_get("/readiness", self.readiness)
        if self.gateway is not None:
            self.gateway.install(app, self.auth)
        if self.official_gui is not None:  # first: it answers two of /static/
            self.official_gui.install(app)
        AdminGui(self.backends, self.auth).install(app)
        return app

    async def start(self, any_port_if_taken: bool = False) -> int:
        """Serve; with `any_port_if_taken`, a busy port is replaced by a free one."""
        self._runner = web.AppRunner(self.application(), access_log=None)
        await self._runner.setup()
        ssl_context = self.tls.ssl_context() if self.tls is not None else None
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=ssl_context)
        try:
            await site.start()
        except OSError as error:
            if not any_port_if_taken or error.errno != errno.EADDRINUSE:
                raise
            log.warning("HTTP port %s is taken; using a free one", self.port)
            site = web.TCPSite(self._runner, self.host, 0, ssl_context=ssl_context)
            await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def metrics(self, request: web.Request) -> web.Response:
        if self.settings.metrics_require_token:
            try:  # any identified user: the figures are the cluster's, no rpc's
                await self.auth.caller(request)
            except Unauthenticated as error:
                return web.json_response(
                    {"error": str(error)}, status=401, headers={"WWW-Authenticate": "Bearer"}
                )
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
