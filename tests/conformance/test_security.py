"""Authentication and authorization as ArmoniK (reference: armonik-auth.md §5), over mutual TLS
with the official client and CLI: the reference's test matrix for a unary call and for
streaming ones, GetCurrentUser in its three modes, impersonation, trusted proxy headers,
provisioning, session isolation, and a removed certificate refused within seconds. On the
embedded backends and on PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from armonik.client import ArmoniKResults, ArmoniKSessions, ArmoniKTasks
from armonik.common import ResultStatus, TaskDefinition, TaskOptions, create_channel
from armonik.protogen.client import submitter_service_pb2
from armonik.protogen.client.auth_service_pb2_grpc import AuthenticationStub
from armonik.protogen.client.submitter_service_pb2_grpc import SubmitterStub
from armonik.protogen.common import auth_common_pb2, objects_pb2
from armonik.protogen.common import submitter_common_pb2 as submitter_pb

from pyarmonik.certificates import issue_client_certificate, issue_server_certificate, make_ca
from pyarmonik.control.auth import permissions_of
from pyarmonik.domain.auth import ALL_SESSIONS, MONITORING_PERMISSIONS, PERMISSIONS
from pyarmonik.scheduling.auth import AuthStore
from tests.helpers import (
    EMBEDDED,
    PG_TABLE_S3,
    BackgroundControlPlane,
    cluster_backends,
    control_plane,
)

OPTIONS = TaskOptions(max_duration=timedelta(seconds=60), priority=1, max_retries=1)
OK = grpc.StatusCode.OK
DENIED = grpc.StatusCode.PERMISSION_DENIED
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
# Half of the permissions: every Sessions one, none of the Results ones.
HALF = [p for p in PERMISSIONS if not p.startswith(("Results:", "Events:"))]


@dataclass
class Pki:
    """A CA, the server's certificate, and client certificates by user."""

    root: Path
    ca: Path
    ca_key: Path

    def client(
        self, name: str, cn: str | None = None, ca: tuple[bytes, bytes] | None = None
    ) -> tuple[Path, Path, str]:
        """(certificate, key, fingerprint) of a new client certificate."""
        from pyarmonik.certificates import cn_and_fingerprint

        ca_cert, ca_key = ca or (self.ca.read_bytes(), self.ca_key.read_bytes())
        cert, key, _ = issue_client_certificate(ca_cert, ca_key, cn or name, 1)
        (self.root / f"{name}.crt").write_bytes(cert)
        (self.root / f"{name}.key").write_bytes(key)
        return self.root / f"{name}.crt", self.root / f"{name}.key", cn_and_fingerprint(cert)[1]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca_cert, ca_key = make_ca("pyarmonik test CA", 1)
    (root / "ca.crt").write_bytes(ca_cert)
    (root / "ca.key").write_bytes(ca_key)
    cert, key = issue_server_certificate(ca_cert, ca_key, ["127.0.0.1", "localhost"], 1)
    (root / "server.crt").write_bytes(cert)
    (root / "server.key").write_bytes(key)
    return Pki(root, root / "ca.crt", root / "ca.key")


@dataclass
class Secured:
    """A control plane with mutual TLS and authentication, and its users' certificates."""

    plane: BackgroundControlPlane
    pki: Pki
    store: AuthStore
    users: dict[str, tuple[Path, Path, str]]

    def run(self, coroutine: Any) -> Any:
        return self.plane.call(coroutine)

    def channel(self, user: str | None, **metadata: str) -> grpc.Channel:
        cert, key = (self.users[user][0], self.users[user][1]) if user else (None, None)
        channel = create_channel(
            f"https://{self.plane.endpoint}",
            certificate_authority=str(self.pki.ca),
            client_certificate=str(cert) if cert else None,
            client_key=str(key) if key else None,
        )
        if metadata:
            pairs = tuple(metadata.items())
            return grpc.intercept_channel(channel, _Headers(pairs))
        return channel


class _Headers(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """Adds metadata to every call (what a proxy or an impersonating client sends)."""

    def __init__(self, pairs: tuple[tuple[str, str], ...]):
        self.pairs = pairs

    def _details(self, details: Any) -> Any:
        metadata = [*(details.metadata or ()), *self.pairs]
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)


USERS = {
    # user: (roles, the certificate's CN)
    "admin": (["Submitter"], "admin"),
    "bob": (["Submitter"], "bob"),
    "monitor": (["Monitoring"], "monitor"),
    "nobody": ([], "nobody"),
    "half": (["Half"], "half"),
    "impersonator": (["Impersonator"], "impersonator"),
    "anti": (["AntiImpersonate"], "anti"),
    "super": (["Submitter", "AllSessions"], "super"),
}


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(EMBEDDED, id=EMBEDDED),
        pytest.param(PG_TABLE_S3, id=PG_TABLE_S3, marks=pytest.mark.cluster),
    ],
)
def secured(
    request: pytest.FixtureRequest, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Secured]:
    with (
        cluster_backends(request.param) as backends,
        control_plane(
            tmp_path_factory.mktemp("control"),
            backends=backends,
            tls_cert=pki.root / "server.crt",
            tls_key=pki.root / "server.key",
            tls_client_ca=pki.ca,
            require_authentication=True,
            require_authorization=True,
            session_isolation=True,
            trusted_proxy_cns=["armonik.proxy"],
        ) as plane,
    ):
        assert plane.plane is not None
        store = AuthStore(plane.plane.backends)
        secured = Secured(plane, pki, store, {})

        async def provision() -> None:
            await store.add_role("Half", HALF)
            await store.add_role(
                "Impersonator", ["General:Impersonate", "General:Impersonate:Submitter"]
            )
            await store.add_role("AntiImpersonate", ["Sessions:ListSessions"])
            await store.add_role("AllSessions", [ALL_SESSIONS])
            for user, (roles, cn) in USERS.items():
                await store.add_user(user, roles)
                cert, key, fingerprint = pki.client(user, cn)
                secured.users[user] = (cert, key, fingerprint)
                await store.add_certificate(user, cn, fingerprint)
            await store.add_user("proxy", ["Submitter"])
            proxy = pki.client("proxy", "armonik.proxy")
            secured.users["proxy"] = proxy
            await store.add_certificate("proxy", "armonik.proxy", proxy[2])
            secured.users["stranger"] = pki.client("stranger")  # from our CA, never registered

        secured.run(provision())
        yield secured


def code(call: Callable[[], Any]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return]
    return OK


def list_sessions(channel: grpc.Channel) -> Any:
    return ArmoniKSessions(channel).list_sessions()


def first_event(channel: grpc.Channel, session_id: str) -> None:
    """A server stream: the first message of GetEvents (its snapshot may be empty: then the
    deadline ends it, which is a success here)."""
    from armonik.protogen.client.events_service_pb2_grpc import EventsStub
    from armonik.protogen.common import events_common_pb2

    stream = EventsStub(channel).GetEvents(
        events_common_pb2.EventSubscriptionRequest(session_id=session_id), timeout=1
    )
    try:
        next(iter(stream))
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            raise
    except StopIteration:
        pass


def first_values(channel: grpc.Channel, session_id: str) -> dict[str, Any]:
    """pyarmonik's own stream (control/values.py): its first message."""
    from pyarmonik.control import sdk_service as values

    request = values.encode({"session_id": session_id})
    stream = channel.unary_stream(values.WATCH)(request, timeout=5)
    try:
        return values.decode(next(iter(stream)))
    finally:
        stream.cancel()


def sdk_submit(channel: grpc.Channel, session_id: str) -> Any:
    """pyarmonik's one-call submission (control/sdk_service.py)."""
    from pyarmonik.control import sdk_service

    task = {"payload_name": "p", "payload": b"x", "output_name": "o"}
    request = sdk_service.encode({"session_id": session_id, "tasks": [task]})
    return channel.unary_unary(sdk_service.SUBMIT)(request, timeout=5)


def submitter_sessions(channel: grpc.Channel) -> list[str]:
    """The legacy Submitter service: a unary call."""
    return list(SubmitterStub(channel).ListSessions(submitter_pb.SessionFilter()).session_ids)


def submitter_result(channel: grpc.Channel, session_id: str, result_id: str) -> bytes:
    """The legacy Submitter service: a server stream (a result's data)."""
    request = objects_pb2.ResultRequest(session=session_id, result_id=result_id)
    replies = list(SubmitterStub(channel).TryGetResultStream(request, timeout=5))
    return b"".join(r.result.data for r in replies)


def submitter_large(channel: grpc.Channel, session_id: str) -> Any:
    """The legacy Submitter service: a client stream (no task in it)."""
    init = submitter_pb.CreateLargeTaskRequest.InitRequest(session_id=session_id)
    end = objects_pb2.InitTaskRequest(last_task=True)
    requests = [
        submitter_pb.CreateLargeTaskRequest(init_request=init),
        submitter_pb.CreateLargeTaskRequest(init_task=end),
    ]
    return SubmitterStub(channel).CreateLargeTasks(iter(requests), timeout=5)


def submitter_small(channel: grpc.Channel, session_id: str, output_id: str) -> Any:
    request = submitter_pb.CreateSmallTaskRequest(
        session_id=session_id,
        task_options=OPTIONS.to_message(),
        task_requests=[objects_pb2.TaskRequest(payload=b"p", expected_output_keys=[output_id])],
    )
    return SubmitterStub(channel).CreateSmallTasks(request, timeout=5)


def test_every_submitter_rpc_needs_its_permission() -> None:
    """ArmoniK's `Submitter:<Rpc>` permissions; WatchResults, which ArmoniK lacks, needs the
    read permission of what it shows."""
    (service,) = submitter_service_pb2.DESCRIPTOR.services_by_name.values()
    for method in service.methods:
        needed = permissions_of(f"/{service.full_name}/{method.name}")
        expected = "GetResultStatus" if method.name == "WatchResults" else method.name
        assert needed == (f"Submitter:{expected}",)
        assert set(needed) <= set(PERMISSIONS)


@pytest.fixture(scope="module")
def admin_data(secured: Secured) -> tuple[str, str]:
    """A session of the admin with a result holding data: (session id, result id)."""
    with secured.channel("admin") as channel:
        session_id = ArmoniKSessions(channel).create_session(OPTIONS)
        result = ArmoniKResults(channel).create_results({"data": b"secret"}, session_id)
    return session_id, result["data"].result_id


MATRIX = {
    # user: expected code, for a unary call and for the streams
    "admin": OK,
    "nobody": DENIED,
    "stranger": UNAUTHENTICATED,
}


@pytest.mark.parametrize("user", sorted(MATRIX))
def test_the_matrix_unary_and_streaming(
    secured: Secured, admin_data: tuple[str, str], user: str
) -> None:
    session_id, result_id = admin_data
    expected = MATRIX[user]
    with secured.channel(user) as channel:
        assert code(lambda: list_sessions(channel)) == expected
        assert code(lambda: first_event(channel, session_id)) == (
            expected if user != "admin" else OK
        )
        download = code(lambda: ArmoniKResults(channel).download_result_data(result_id, session_id))
        assert download == expected
        assert code(lambda: sdk_submit(channel, session_id)) == expected
        assert code(lambda: first_values(channel, session_id)) == expected
        assert code(lambda: submitter_sessions(channel)) == expected
        assert code(lambda: submitter_result(channel, session_id, result_id)) == expected
        assert code(lambda: submitter_large(channel, session_id)) == expected
        if user == "admin":
            assert submitter_result(channel, session_id, result_id) == b"secret"
            entry = [result_id, ResultStatus.COMPLETED, b"secret", "data"]
            assert entry in first_values(channel, session_id)["results"]


def test_a_certificate_of_another_ca_is_refused(secured: Secured, tmp_path: Path) -> None:
    other = make_ca("another CA", 1)
    cert, key, _ = issue_client_certificate(*other, "admin", 1)
    (tmp_path / "c.crt").write_bytes(cert)
    (tmp_path / "c.key").write_bytes(key)
    channel = create_channel(
        f"https://{secured.plane.endpoint}",
        certificate_authority=str(secured.pki.ca),
        client_certificate=str(tmp_path / "c.crt"),
        client_key=str(tmp_path / "c.key"),
    )
    with channel:
        # Refused in the TLS handshake: the client sees the connection fail.
        assert code(lambda: list_sessions(channel)) == grpc.StatusCode.UNAVAILABLE


def test_half_rights(secured: Secured, admin_data: tuple[str, str]) -> None:
    with secured.channel("half") as channel:
        session_id = ArmoniKSessions(channel).create_session(OPTIONS)
        assert code(lambda: ArmoniKSessions(channel).get_session(session_id)) == OK
        results = ArmoniKResults(channel)
        assert code(lambda: results.create_results_metadata(["r"], session_id)) == DENIED
        assert code(lambda: first_event(channel, session_id)) == DENIED
        assert code(lambda: first_values(channel, session_id)) == DENIED
        assert code(lambda: sdk_submit(channel, session_id)) == DENIED  # no Results rights
        assert code(lambda: submitter_sessions(channel)) == OK  # every Submitter right
    with secured.channel("monitor") as channel:  # the read-only built-in role
        session_id, result_id = admin_data
        assert code(lambda: submitter_sessions(channel)) == OK
        assert code(lambda: submitter_large(channel, session_id)) == DENIED
        assert code(lambda: submitter_small(channel, session_id, result_id)) == DENIED


def test_impersonation(secured: Secured) -> None:
    admin_id = secured.run(secured.store.identity_of_user(None, "admin")).user_id
    for headers in ({"x-impersonate-username": "admin"}, {"x-impersonate-id": str(admin_id)}):
        with secured.channel("impersonator", **headers) as channel:
            user = (
                AuthenticationStub(channel)
                .GetCurrentUser(auth_common_pb2.GetCurrentUserRequest())
                .user
            )
            assert user.username == "admin" and list(user.roles) == ["Submitter"]
            assert code(lambda c=channel: list_sessions(c)) == OK
    refused = [
        ("impersonator", {"x-impersonate-username": "anti"}),  # a role not covered
        ("nobody", {"x-impersonate-username": "admin"}),  # cannot impersonate at all
        ("impersonator", {"x-impersonate-id": "404"}),  # no such user
        ("impersonator", {"x-impersonate-id": "not a number"}),
    ]
    for user, headers in refused:
        with secured.channel(user, **headers) as channel:
            assert code(lambda c=channel: list_sessions(c)) == UNAUTHENTICATED, (user, headers)


def test_get_current_user_with_both_flags(secured: Secured) -> None:
    with secured.channel("monitor") as channel:
        user = (
            AuthenticationStub(channel).GetCurrentUser(auth_common_pb2.GetCurrentUserRequest()).user
        )
    assert user.username == "monitor"
    assert list(user.roles) == ["Monitoring"]
    assert sorted(user.permissions) == sorted(MONITORING_PERMISSIONS)
    with secured.channel("stranger") as channel:
        request = auth_common_pb2.GetCurrentUserRequest()
        assert code(lambda: AuthenticationStub(channel).GetCurrentUser(request)) == UNAUTHENTICATED


def test_proxy_headers_only_from_a_trusted_proxy(secured: Secured) -> None:
    monitor_cert = secured.users["monitor"]
    forwarded = {
        "x-certificate-client-cn": "monitor",
        "x-certificate-client-fingerprint": monitor_cert[2],
    }
    request = auth_common_pb2.GetCurrentUserRequest()
    with secured.channel("proxy", **forwarded) as channel:  # the trusted proxy acts for monitor
        assert AuthenticationStub(channel).GetCurrentUser(request).user.username == "monitor"
    with secured.channel("nobody", **forwarded) as channel:  # a client forging them: ignored
        assert AuthenticationStub(channel).GetCurrentUser(request).user.username == "nobody"


def test_session_isolation(secured: Secured, admin_data: tuple[str, str]) -> None:
    session_id, result_id = admin_data
    not_found = grpc.StatusCode.NOT_FOUND
    with secured.channel("bob") as channel:  # user B: every right, but not A's session
        sessions, results = ArmoniKSessions(channel), ArmoniKResults(channel)
        _, listed = sessions.list_sessions()
        assert session_id not in {s.session_id for s in listed}
        assert code(lambda: sessions.get_session(session_id)) == not_found
        assert code(lambda: sessions.cancel_session(session_id)) == not_found
        assert code(lambda: results.get_result(result_id)) == not_found
        assert code(lambda: results.download_result_data(result_id, session_id)) == not_found
        assert code(lambda: results.create_results_metadata(["x"], session_id)) == not_found
        definition = TaskDefinition(payload_id=result_id, expected_output_ids=[result_id])
        submit = ArmoniKTasks(channel).submit_tasks
        assert code(lambda: submit(session_id, [definition])) == not_found
        assert code(lambda: first_event(channel, session_id)) == not_found
        assert code(lambda: first_values(channel, session_id)) == not_found
        assert code(lambda: sdk_submit(channel, session_id)) == not_found
        _, visible = results.list_results()
        assert result_id not in {r.result_id for r in visible}
        # The same through the legacy Submitter service.
        submitter = SubmitterStub(channel)
        assert session_id not in submitter_sessions(channel)
        by_session = submitter_pb.TaskFilter(
            session=submitter_pb.TaskFilter.IdsRequest(ids=[session_id])
        )
        assert list(submitter.CountTasks(by_session).values) == []
        status = submitter_pb.GetResultStatusRequest(result_ids=[result_id])
        assert list(submitter.GetResultStatus(status).id_statuses) == []
        admins = objects_pb2.Session(id=session_id)
        assert code(lambda: submitter.CancelSession(admins)) == not_found
        assert code(lambda: submitter_result(channel, session_id, result_id)) == not_found
        assert code(lambda: submitter_large(channel, session_id)) == not_found
        assert code(lambda: submitter_small(channel, session_id, result_id)) == not_found
        wait = objects_pb2.ResultRequest(session=session_id, result_id=result_id)
        assert code(lambda: submitter.WaitForAvailability(wait, timeout=5)) == not_found
        own = sessions.create_session(OPTIONS)  # B's own work is B's
        assert sessions.get_session(own).session_id == own
    with secured.channel("admin") as channel:
        assert ArmoniKSessions(channel).get_session(session_id).status.name == "RUNNING"
    with secured.channel("super") as channel:  # holds General:AllSessions
        _, listed = ArmoniKSessions(channel).list_sessions()
        assert {session_id, own} <= {s.session_id for s in listed}
        assert ArmoniKResults(channel).download_result_data(result_id, session_id) == b"secret"


def test_a_removed_certificate_is_refused_within_seconds(secured: Secured) -> None:
    cert, key, fingerprint = secured.pki.client("leaving")
    secured.run(secured.store.add_user("leaving", ["Monitoring"]))
    secured.run(secured.store.add_certificate("leaving", "leaving", fingerprint))
    secured.users["leaving"] = (cert, key, fingerprint)
    with secured.channel("leaving") as channel:  # one open connection throughout
        assert code(lambda: list_sessions(channel)) == OK
        secured.run(secured.store.remove_certificate("leaving", fingerprint))
        deadline = time.monotonic() + 30
        while code(lambda: list_sessions(channel)) == OK:
            assert time.monotonic() < deadline, "the removed certificate still works"
            time.sleep(0.5)
        assert code(lambda: list_sessions(channel)) == UNAUTHENTICATED


def test_the_official_cli_over_mutual_tls(secured: Secured) -> None:
    cert, key, _ = secured.users["admin"]
    armonik = str(Path(sys.executable).parent / "armonik")
    base = [
        armonik,
        "--endpoint",
        f"https://{secured.plane.endpoint}",
        "--certificate-authority",
        str(secured.pki.ca),
    ]
    listed = subprocess.run(
        [*base, "--client-certificate", str(cert), "--client-key", str(key), "session", "list"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    refused = subprocess.run([*base, "session", "list"], capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0
    assert "Traceback" not in refused.stderr


def test_the_sdk_connects_over_mutual_tls(secured: Secured) -> None:
    from pyarmonik import Cluster

    cert, key, _ = secured.users["admin"]
    with Cluster.connect(
        f"https://{secured.plane.endpoint}",
        certificate_authority=str(secured.pki.ca),
        client_certificate=str(cert),
        client_key=str(key),
    ) as cluster:
        session_id = cluster.session.id
    with secured.channel("admin") as channel:
        assert ArmoniKSessions(channel).get_session(session_id).session_id == session_id
