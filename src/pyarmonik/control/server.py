"""The control plane: every ArmoniK service on one grpc.aio server."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import tempfile

import grpc
from armonik.protogen.client import (
    applications_service_pb2_grpc,
    auth_service_pb2_grpc,
    events_service_pb2_grpc,
    health_checks_service_pb2_grpc,
    partitions_service_pb2_grpc,
    results_service_pb2_grpc,
    sessions_service_pb2_grpc,
    submitter_service_pb2_grpc,
    tasks_service_pb2_grpc,
    versions_service_pb2_grpc,
)

from pyarmonik.aio import cancel_and_wait
from pyarmonik.config import Settings
from pyarmonik.control.auth import Authenticator, AuthInterceptor
from pyarmonik.control.events import Events
from pyarmonik.control.grpcweb import GrpcWebGateway
from pyarmonik.control.http import HttpServer
from pyarmonik.control.info import Applications, Authentication, HealthChecks, Partitions, Versions
from pyarmonik.control.isolation import SessionGuard
from pyarmonik.control.memory import keep_memory_low
from pyarmonik.control.results import Results
from pyarmonik.control.sdk_service import SdkService, add_sdk_service_to_server
from pyarmonik.control.sessions import Sessions
from pyarmonik.control.submitter import Submitter
from pyarmonik.control.tasks import Tasks
from pyarmonik.control.tls import TlsFiles
from pyarmonik.control.watch import ResultWatcher
from pyarmonik.domain.errors import Unavailable
from pyarmonik.observability import tracing
from pyarmonik.scheduling.auth import (
    AuthStore,
    provisioning_from_environment,
    provisioning_from_file,
)
from pyarmonik.scheduling.backends import Backends
from pyarmonik.scheduling.changes import ChangeFeed
from pyarmonik.scheduling.graph import push_parked
from pyarmonik.scheduling.liveness import watch_agents
from pyarmonik.scheduling.results import ResultService
from pyarmonik.scheduling.sessions import SessionService
from pyarmonik.scheduling.tasks import TaskService
from pyarmonik.storage.factory import open_backends

log = logging.getLogger(__name__)

# How often a control plane pushes the messages parked while the queue was unreachable.
PUSH_PARKED_EVERY = 2.0


# Keepalive (docs/reliability.md, "Connections and keepalive"). ArmoniK's Kestrel answers every
# client ping; gRPC's defaults refuse pings on a connection without calls and more than one
# every 5 minutes, and close the connection (GOAWAY "too_many_pings") at the third such ping:
# a client pinging every 30 s was cut off after 90-120 s. Pings are accepted from every 5 s,
# calls or not; only a client pinging faster (three pings under 5 s apart, with no data sent
# back in between) is still cut off, which bounds the cost of a ping flood.
MIN_CLIENT_PING_INTERVAL_MS = 5_000
MAX_PING_STRIKES = 2
# The server's own pings, to find connections whose peer vanished (their streams, e.g. Events,
# would otherwise hold resources for ever): every 5 minutes of silence, 20 s to answer.
SERVER_PING_INTERVAL_MS = 300_000
SERVER_PING_TIMEOUT_MS = 20_000


def server_options(settings: Settings) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", settings.max_request_size),
        # What a client receives is bounded by what it asks for (page sizes, chunk size).
        ("grpc.max_send_message_length", -1),
        ("grpc.so_reuseport", 0),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", MIN_CLIENT_PING_INTERVAL_MS),
        ("grpc.http2.max_ping_strikes", MAX_PING_STRIKES),
        ("grpc.keepalive_time_ms", SERVER_PING_INTERVAL_MS),
        ("grpc.keepalive_timeout_ms", SERVER_PING_TIMEOUT_MS),
        # The server's pings go on while nothing else is sent (gRPC stops after 2 by default).
        ("grpc.http2.max_pings_without_data", 0),
    ]


def exposure_warning(settings: Settings) -> str | None:
    """A warning when the API is reachable beyond this machine unprotected, else None."""
    loopback = settings.host in ("127.0.0.1", "::1", "localhost")
    if loopback or (settings.tls_cert is not None and settings.require_authentication):
        return None
    missing = " and ".join(
        what
        for what, absent in (
            ("TLS", settings.tls_cert is None),
            ("authentication", not settings.require_authentication),
        )
        if absent
    )
    return (
        f"WARNING: the control plane listens on {settings.host} without {missing}: anyone "
        "who reaches the port can read and delete every session, and run code on the "
        "workers. See docs/security.md."
    )


class ControlPlane:
    def __init__(self, settings: Settings, backends: Backends | None = None):
        self.settings = settings
        self.backends = backends or open_backends(settings)
        self.feed = ChangeFeed(self.backends.database)
        self.server: grpc.aio.Server | None = None
        self.port = settings.port
        self.http: HttpServer | None = None
        self._pusher: asyncio.Task[None] | None = None
        self._memory: asyncio.Task[None] | None = None
        self._agents: asyncio.Task[None] | None = None
        self._private_dir: str | None = None

    async def start(self) -> int:
        """Start the backends and serve; return the bound port (useful with port 0)."""
        tracing.configure("pyarmonik-control", self.settings.otlp_endpoint)
        tls = TlsFiles.of(self.settings)  # bad files stop the start before anything opens
        await self.backends.start()
        await self._register_partitions()
        authenticator = Authenticator(self.settings, AuthStore(self.backends))
        await self._provision(authenticator.store)
        await self.feed.start()
        # No interceptor without authentication: every call would pay for it.
        gateway_secret = secrets.token_hex(32)
        interceptors = (
            [AuthInterceptor(authenticator, gateway_secret)]
            if self.settings.require_authentication
            else []
        )
        server = grpc.aio.server(options=server_options(self.settings), interceptors=interceptors)
        backends, database = self.backends, self.backends.database
        guard = SessionGuard(self.settings, backends)
        sessions_service_pb2_grpc.add_SessionsServicer_to_server(
            Sessions(SessionService(backends), guard), server
        )
        tasks_service_pb2_grpc.add_TasksServicer_to_server(
            Tasks(TaskService(backends), guard), server
        )
        results_service_pb2_grpc.add_ResultsServicer_to_server(
            Results(
                ResultService(backends, self.settings.data_chunk_max_size),
                ResultWatcher(database, self.feed),
                guard,
            ),
            server,
        )
        submitter_service_pb2_grpc.add_SubmitterServicer_to_server(
            Submitter(
                SessionService(backends),
                TaskService(backends),
                ResultService(backends, self.settings.data_chunk_max_size),
                ResultWatcher(database, self.feed),
                self.feed,
                guard,
            ),
            server,
        )
        events_service_pb2_grpc.add_EventsServicer_to_server(
            Events(database, self.feed, guard), server
        )
        add_sdk_service_to_server(SdkService(backends, self.feed, guard), server)
        partitions_service_pb2_grpc.add_PartitionsServicer_to_server(Partitions(backends), server)
        applications_service_pb2_grpc.add_ApplicationsServicer_to_server(
            Applications(backends, guard), server
        )
        versions_service_pb2_grpc.add_VersionsServicer_to_server(Versions(), server)
        health_checks_service_pb2_grpc.add_HealthChecksServiceServicer_to_server(
            HealthChecks(backends), server
        )
        auth_service_pb2_grpc.add_AuthenticationServicer_to_server(
            Authentication(authenticator), server
        )
        address = f"{self.settings.host}:{self.settings.port}"
        try:
            if tls is None:
                self.port = server.add_insecure_port(address)
            else:
                self.port = server.add_secure_port(address, tls.grpc_credentials())
        except RuntimeError as error:
            raise Unavailable(f"cannot listen on {address}: {error}") from error
        gateway: GrpcWebGateway | None = None
        if self.settings.http_port is not None:
            # gRPC-Web calls reach this server through a socket only this process knows.
            self._private_dir = tempfile.mkdtemp(prefix="pyarmonik-plane-")
            target = f"unix://{self._private_dir}/grpc.sock"
            server.add_insecure_port(target)
            gateway = GrpcWebGateway(self.settings, target, gateway_secret)
        await server.start()
        self.server = server
        if self.settings.http_port is not None:
            self.http = HttpServer(
                self.backends,
                self.settings.host,
                self.settings.http_port,
                settings=self.settings,
                authenticator=authenticator,
                gateway=gateway,
            )
            http_port = await self.http.start(any_port_if_taken=not self.settings.http_port_strict)
            log.info(
                "metrics and health on %s://%s:%s", self.http.scheme, self.settings.host, http_port
            )
        self._memory = asyncio.create_task(keep_memory_low(), name="memory")
        # Tasks of agents that stopped beating go back to the queue (scheduling/liveness.py).
        self._agents = asyncio.create_task(watch_agents(self.backends), name="agents")
        if self.backends.queue_in_database is None:  # a table queue never refuses a push
            self._pusher = asyncio.create_task(self._push_parked(), name="push-parked")
        log.info("control plane listening on %s:%s", self.settings.host, self.port)
        return self.port

    async def _push_parked(self) -> None:
        while True:
            await asyncio.sleep(PUSH_PARKED_EVERY)
            try:
                if pushed := await push_parked(self.backends):
                    log.info("queued %d parked ready tasks", pushed)
            except Exception as error:  # still down: next round
                log.debug("pushing parked ready tasks failed: %r", error)

    async def _provision(self, store: AuthStore) -> None:
        """Built-in roles, then ArmoniK's InitServices__Authentication__* variables, then the
        auth file; all upserts, so every replica may do it at every start."""
        settings = self.settings
        if not (settings.require_authentication or settings.auth_file):
            return
        await store.ensure_builtin_roles()
        await store.provision(provisioning_from_environment(os.environ))
        if settings.auth_file is not None:
            await store.provision(provisioning_from_file(settings.auth_file))

    async def _register_partitions(self) -> None:
        partitions = self.backends.partitions
        # An upsert: replicas starting together register the same partitions at once.
        async with self.backends.database.write() as repository:
            await repository.insert(partitions, replace=True)

    async def wait(self) -> None:
        if self.server is not None:
            await self.server.wait_for_termination()

    async def stop(self, grace: float = 2.0) -> None:
        for background in (self._pusher, self._memory, self._agents):
            await cancel_and_wait(background)
        self._pusher = self._memory = self._agents = None
        if self.http is not None:
            await self.http.stop()
            self.http = None
        if self.server is not None:
            await self.server.stop(grace)
            self.server = None
        await self.feed.stop()
        await self.backends.close()
        if self._private_dir is not None:
            shutil.rmtree(self._private_dir, ignore_errors=True)
            self._private_dir = None
