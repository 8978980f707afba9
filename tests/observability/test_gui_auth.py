"""The HTTP port with authentication on (issue 11, item 6): the admin GUI's /api identifies
its caller by client certificate (HTTPS with a client CA) or bearer token, checks the
permission of the matching rpc, confines a user to its sessions with session isolation, and
/metrics asks for a token when told to.

The control plane runs in-process without authentication (its gRPC port feeds the data); the
HTTP server under test runs beside it, on the same backends and event loop, with its own
settings: the tests do not depend on how ControlPlane wires it."""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from armonik.client import ArmoniKSessions

from pyarmonik.certificates import (
    cn_and_fingerprint,
    issue_client_certificate,
    issue_server_certificate,
    make_ca,
)
from pyarmonik.config import Settings
from pyarmonik.control.auth import Authenticator
from pyarmonik.control.http import HttpServer
from pyarmonik.domain.auth import ALL_SESSIONS, MONITORING_PERMISSIONS, PERMISSIONS
from pyarmonik.domain.records import Session
from pyarmonik.scheduling.auth import AuthStore
from tests.helpers import (
    BACKEND_PARAMS,
    PG_RABBIT_REDIS,
    BackgroundControlPlane,
    cluster_backends,
    control_plane,
    free_port,
)
from tests.observability.support import run_task
from tests.observability.test_gui_api import OPTIONS, submit

ACTION = {"X-Requested-With": "pyarmonik"}


@dataclass
class Answer:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """HTTP(S) calls to one server, as one caller (token and/or client certificate)."""

    def __init__(self, base: str, token: str = "", context: ssl.SSLContext | None = None):
        self.base, self.token, self.context = base, token, context

    def call(self, path: str, method: str = "GET", headers: dict[str, str] | None = None) -> Answer:
        sent = dict(headers or {})
        if self.token:
            sent["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.base + path, method=method, headers=sent)
        try:
            with urllib.request.urlopen(request, timeout=30, context=self.context) as response:
                return Answer(response.status, response.read(), dict(response.headers))
        except urllib.error.HTTPError as error:
            return Answer(error.code, error.read(), dict(error.headers))

    def status(self, path: str, method: str = "GET") -> int:
        return self.call(path, method, ACTION if method == "POST" else None).status


def serve_http(plane: BackgroundControlPlane, **settings: Any) -> HttpServer:
    """An HTTP server on the plane's backends and loop, with these settings."""
    assert plane.plane is not None
    merged = Settings(**{**plane.settings.model_dump(), "http_port": free_port(), **settings})
    authenticator = Authenticator(merged, AuthStore(plane.plane.backends))
    server = HttpServer(
        plane.plane.backends,
        merged.host,
        merged.http_port or 0,
        settings=merged,
        authenticator=authenticator,
    )
    plane.call(server.start())
    return server


def session_of(plane: BackgroundControlPlane, channel: grpc.Channel, user: str) -> str:
    """A running session recorded as created by `user` (the gRPC side records the caller)."""
    assert plane.plane is not None
    session_id = ArmoniKSessions(channel).create_session(OPTIONS)

    async def record() -> None:
        async with plane.plane.backends.database.write() as repository:  # type: ignore[union-attr]
            await repository.update(Session, {"session_id": session_id}, {"created_by_user": user})

    plane.call(record())
    return str(session_id)


@dataclass
class Cluster:
    plane: BackgroundControlPlane
    channel: grpc.Channel
    store: AuthStore
    tokens: dict[str, str]
    certs: Path


async def provision(store: AuthStore) -> dict[str, str]:
    """Users of the built-in roles, a user without rights and an admin seeing every
    session; a token each, named after its user."""
    await store.ensure_builtin_roles()
    await store.add_role("AllSessions", [ALL_SESSIONS, *MONITORING_PERMISSIONS])
    for username, roles in (
        ("monitor", ["Monitoring"]),
        ("alice", ["Submitter"]),
        ("bob", ["Submitter"]),
        ("nobody", []),
        ("admin", ["Monitoring", "AllSessions"]),
    ):
        await store.add_user(username, roles)
    users = ("monitor", "alice", "bob", "nobody", "admin")
    return {u: await store.issue_token(u, name=u) for u in users}  # revoked by user name


@pytest.fixture(scope="module", params=[p for p in BACKEND_PARAMS if p.id != PG_RABBIT_REDIS])
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """On SQLite and on PostgreSQL: isolation's filters are SQL of each dialect."""
    folder = Path(tmp_path_factory.mktemp("gui-auth"))
    with (
        cluster_backends(request.param) as urls,
        control_plane(folder, backends=urls) as plane,
        grpc.insecure_channel(plane.endpoint) as channel,
    ):
        assert plane.plane is not None
        store = AuthStore(plane.plane.backends)
        tokens = plane.call(provision(store))
        yield Cluster(plane, channel, store, tokens, folder)


@pytest.fixture(scope="module")
def api(cluster: Cluster) -> Iterator[str]:
    """Plain HTTP, authentication and authorization on, no isolation."""
    server = serve_http(cluster.plane, require_authentication=True, require_authorization=True)
    yield f"http://127.0.0.1:{server.port}"
    cluster.plane.call(server.stop())


def test_authentication_off_is_open_as_before(cluster: Cluster) -> None:
    server = serve_http(cluster.plane)  # the settings ControlPlane passes, by default
    try:
        anonymous = Client(f"http://127.0.0.1:{server.port}")
        me = anonymous.call("/api/me").json()
        assert (me["username"], me["authenticated"], me["authentication_required"]) == (
            "Anonymous",
            False,
            False,
        )
        assert sorted(me["permissions"]) == sorted(PERMISSIONS)
        assert anonymous.status("/api/sessions") == 200
        # A token of no one changes nothing: nobody is asked who they are.
        assert Client(anonymous.base, "nonsense").status("/api/sessions") == 200
    finally:
        cluster.plane.call(server.stop())
    # Isolation needs identities: without authentication, every session is seen.
    server = serve_http(cluster.plane, session_isolation=True)
    try:
        session_id = session_of(cluster.plane, cluster.channel, "")
        listed = Client(f"http://127.0.0.1:{server.port}").call("/api/sessions?size=500").json()
        assert session_id in [s["session_id"] for s in listed["items"]]
    finally:
        cluster.plane.call(server.stop())


def test_no_credentials_is_401_and_me_says_log_in(cluster: Cluster, api: str) -> None:
    anonymous = Client(api)
    for path in ("/api/sessions", "/api/tasks", "/api/dashboard", "/api/partitions"):
        answer = anonymous.call(path)
        assert answer.status == 401, path
        assert answer.headers["WWW-Authenticate"] == "Bearer"
        assert "token" in answer.json()["error"]
    assert anonymous.status("/api/sessions/x/cancel", "POST") == 401
    me = anonymous.call("/api/me").json()
    assert me["authenticated"] is False and me["authentication_required"] is True
    assert me["permissions"] == []
    # The pages and probes stay open; /metrics too unless told otherwise.
    for path in ("/", "/sessions", "/static/app.js", "/liveness", "/readiness", "/metrics"):
        assert anonymous.status(path) == 200, path
    assert Client(api, token="not-a-token").status("/api/sessions") == 401


def test_monitoring_lists_but_acts_on_nothing(cluster: Cluster, api: str) -> None:
    session_id = ArmoniKSessions(cluster.channel).create_session(OPTIONS)
    (task_id,) = submit(cluster.channel, session_id, 1)
    assert cluster.plane.plane is not None
    cluster.plane.call(run_task(cluster.plane.plane.backends, task_id, "ok"))
    monitor = Client(api, cluster.tokens["monitor"])
    me = monitor.call("/api/me").json()
    assert (me["username"], me["roles"], me["via"]) == ("monitor", ["Monitoring"], "token")
    assert me["authenticated"] is True
    assert sorted(me["permissions"]) == sorted(MONITORING_PERMISSIONS)
    listed = monitor.call("/api/sessions").json()
    assert session_id in [s["session_id"] for s in listed["items"]]
    for path in (
        "/api/dashboard",
        f"/api/tasks?session={session_id}",
        f"/api/tasks/{task_id}",
        f"/api/results?session={session_id}",
        "/api/partitions",
        "/api/agents",
    ):
        assert monitor.status(path) == 200, path
    output = monitor.call(f"/api/results?session={session_id}&q=out-0").json()["items"][0]
    download = monitor.call(f"/api/results/{output['result_id']}/data")
    assert download.status == 403 and "Results:DownloadResultData" in download.json()["error"]
    for action in ("pause", "cancel", "close", "purge", "delete"):
        answer = monitor.call(f"/api/sessions/{session_id}/{action}", "POST", ACTION)
        assert answer.status == 403, action
    assert ArmoniKSessions(cluster.channel).get_session(session_id).status == 1  # RUNNING
    # A user without any role is identified, and refused everything.
    nobody = Client(api, cluster.tokens["nobody"])
    assert nobody.call("/api/me").json()["permissions"] == []
    assert nobody.status("/api/sessions") == 403
    assert nobody.status("/api/dashboard") == 403


def test_submitter_acts_and_a_revoked_token_stops_at_once(cluster: Cluster, api: str) -> None:
    session_id = ArmoniKSessions(cluster.channel).create_session(OPTIONS)
    (task_id,) = submit(cluster.channel, session_id, 1)
    assert cluster.plane.plane is not None
    cluster.plane.call(run_task(cluster.plane.plane.backends, task_id, "ok", data=b"7"))
    token = cluster.plane.call(cluster.store.issue_token("alice", "revoked-soon"))
    alice = Client(api, token)
    output = alice.call(f"/api/results?session={session_id}&q=out-0").json()["items"][0]
    download = alice.call(f"/api/results/{output['result_id']}/data")
    assert (download.status, download.body) == (200, b"7")
    answer = alice.call(f"/api/sessions/{session_id}/cancel", "POST", ACTION)
    assert answer.status == 200 and answer.json()["session"]["status"] == "CANCELLED"
    cluster.plane.call(cluster.store.revoke_token("revoked-soon"))
    assert alice.status("/api/sessions") == 401
    assert alice.call("/api/me").json()["authenticated"] is False


def test_authorization_off_admits_any_identified_user(cluster: Cluster) -> None:
    server = serve_http(cluster.plane, require_authentication=True, require_authorization=False)
    try:
        base = f"http://127.0.0.1:{server.port}"
        nobody = Client(base, cluster.tokens["nobody"])
        assert nobody.status("/api/sessions") == 200
        me = nobody.call("/api/me").json()
        assert me["roles"] == [] and "Sessions:CancelSession" in me["permissions"]
        assert Client(base).status("/api/sessions") == 401
    finally:
        cluster.plane.call(server.stop())


def test_metrics_require_a_token_when_told(cluster: Cluster) -> None:
    server = serve_http(
        cluster.plane,
        require_authentication=True,
        require_authorization=True,
        metrics_require_token=True,
    )
    try:
        base = f"http://127.0.0.1:{server.port}"
        refused = Client(base).call("/metrics")
        assert refused.status == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
        assert Client(base, "wrong").status("/metrics") == 401
        scraped = Client(base, cluster.tokens["nobody"]).call("/metrics")
        assert scraped.status == 200 and b"pyarmonik" in scraped.body
        for probe in ("/liveness", "/readiness"):
            assert Client(base).status(probe) == 200
    finally:
        cluster.plane.call(server.stop())


def test_session_isolation(cluster: Cluster) -> None:
    assert cluster.plane.plane is not None
    backends = cluster.plane.plane.backends
    mine = session_of(cluster.plane, cluster.channel, "alice")
    theirs = session_of(cluster.plane, cluster.channel, "bob")
    (my_task,) = submit(cluster.channel, mine, 1)
    (their_task,) = submit(cluster.channel, theirs, 1)
    cluster.plane.call(run_task(backends, their_task, "ok"))
    server = serve_http(
        cluster.plane,
        require_authentication=True,
        require_authorization=True,
        session_isolation=True,
    )
    try:
        base = f"http://127.0.0.1:{server.port}"
        alice = Client(base, cluster.tokens["alice"])
        assert [s["session_id"] for s in alice.call("/api/sessions").json()["items"]] == [mine]
        board = alice.call("/api/dashboard").json()
        assert [s["session_id"] for s in board["sessions"]] == [mine]
        assert board["totals"] == {"SUBMITTED": 1}
        tasks = alice.call("/api/tasks").json()["items"]
        assert [t["task_id"] for t in tasks] == [my_task]
        assert alice.call(f"/api/tasks?session={theirs}").json()["total"] == 0
        results = alice.call("/api/results").json()["items"]
        assert {r["session_id"] for r in results} == {mine}
        assert alice.status(f"/api/tasks/{my_task}") == 200
        # Another user's ids answer as unknown ones.
        answer = alice.call(f"/api/tasks/{their_task}")
        assert (answer.status, answer.json()["error"]) == (404, f"Task {their_task} not found")
        their_output = Client(base, cluster.tokens["bob"]).call(
            f"/api/results?session={theirs}&q=out-0"
        )
        output_id = their_output.json()["items"][0]["result_id"]
        assert alice.status(f"/api/results/{output_id}/data") == 404
        answer = alice.call(f"/api/sessions/{theirs}/cancel", "POST", ACTION)
        assert (answer.status, answer.json()["error"]) == (404, f"Session {theirs} not found")
        assert alice.status(f"/api/sessions/{mine}/pause", "POST") == 200
        # An admin holding General:AllSessions sees both.
        admin = Client(base, cluster.tokens["admin"])
        seen = {s["session_id"] for s in admin.call("/api/sessions").json()["items"]}
        assert {mine, theirs} <= seen
        assert admin.status(f"/api/tasks/{their_task}") == 200
    finally:
        cluster.plane.call(server.stop())


# -- HTTPS with a client CA --------------------------------------------------------------------


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path
    stranger_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = Path(tmp_path_factory.mktemp("pki"))

    def write(name: str, data: bytes) -> Path:
        (folder / name).write_bytes(data)
        return folder / name

    ca_cert, ca_key = make_ca("pyarmonik test CA")
    server = issue_server_certificate(ca_cert, ca_key, ["127.0.0.1", "localhost"])
    client = issue_client_certificate(ca_cert, ca_key, "gui-user")
    stranger = issue_client_certificate(ca_cert, ca_key, "stranger")
    return Pki(
        write("ca.crt", ca_cert),
        write("server.crt", server[0]),
        write("server.key", server[1]),
        write("client.crt", client[0]),
        write("client.key", client[1]),
        write("stranger.crt", stranger[0]),
        write("stranger.key", stranger[1]),
    )


def _tls(pki: Pki, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


def test_client_certificate_over_https(cluster: Cluster, pki: Pki) -> None:
    cn, fingerprint = cn_and_fingerprint(pki.client_cert.read_bytes())
    store = cluster.store
    cluster.plane.call(store.add_user("certified", ["Monitoring"]))
    cluster.plane.call(store.add_certificate("certified", cn, fingerprint))
    server = serve_http(
        cluster.plane,
        require_authentication=True,
        require_authorization=True,
        tls_cert=pki.server_cert,
        tls_key=pki.server_key,
        tls_client_ca=pki.ca,
    )
    try:
        assert server.scheme == "https"
        base = f"https://127.0.0.1:{server.port}"
        certified = Client(base, context=_tls(pki, pki.client_cert, pki.client_key))
        me = certified.call("/api/me").json()
        assert (me["username"], me["via"], me["authenticated"]) == (
            "certified",
            "certificate",
            True,
        )
        assert certified.status("/api/sessions") == 200
        assert certified.status("/api/sessions/x/cancel", "POST") == 403
        # No certificate: TLS still works (the port asks, does not require), and a token logs in.
        assert Client(base, context=_tls(pki)).status("/api/sessions") == 401
        with_token = Client(base, cluster.tokens["alice"], context=_tls(pki))
        assert with_token.call("/api/me").json()["username"] == "alice"
        # A certificate of the CA that no user holds identifies nobody.
        stranger = Client(base, context=_tls(pki, pki.stranger_cert, pki.stranger_key))
        answer = stranger.call("/api/sessions")
        assert answer.status == 401 and "certificate" in answer.json()["error"]
        # Plain HTTP on the TLS port is refused by the handshake.
        with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/liveness", timeout=10)
    finally:
        cluster.plane.call(server.stop())
