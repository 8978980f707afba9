"""The other security configurations: authentication without authorization behind a trusted
proxy (GetCurrentUser's second mode), users provisioned from ArmoniK's InitServices variables
and from an auth file, a call without a client certificate, `pyarmonik auth issue` making a
certificate the official client uses (PEM and PKCS#12), and bad TLS files refusing to start."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from armonik.client import ArmoniKSessions
from armonik.common import create_channel
from armonik.protogen.client.auth_service_pb2_grpc import AuthenticationStub
from armonik.protogen.client.sessions_service_pb2_grpc import SessionsStub
from armonik.protogen.common import auth_common_pb2
from armonik.protogen.common.sessions_common_pb2 import ListSessionsRequest

from pyarmonik.certificates import issue_server_certificate, make_ca
from pyarmonik.domain.auth import PERMISSIONS
from tests.helpers import BackgroundControlPlane, control_plane

PYARMONIK = [sys.executable, "-m", "pyarmonik.cli.main"]
REQUEST = auth_common_pb2.GetCurrentUserRequest()


def current_user(channel: grpc.Channel, **headers: str) -> auth_common_pb2.User:
    metadata = tuple(headers.items()) or None
    return AuthenticationStub(channel).GetCurrentUser(REQUEST, metadata=metadata).user


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pki")
    cert, key = make_ca("modes CA", 1)
    (root / "ca.crt").write_bytes(cert)
    (root / "ca.key").write_bytes(key)
    server_cert, server_key = issue_server_certificate(cert, key, ["127.0.0.1"], 1)
    (root / "server.crt").write_bytes(server_cert)
    (root / "server.key").write_bytes(server_key)
    return root


@pytest.fixture(scope="module")
def proxied(ca: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundControlPlane]:
    """TLS without client certificates, authentication without authorization, behind a
    proxy trusted by address; users from the InitServices variables and from an auth file."""
    auth_file = tmp_path_factory.mktemp("auth") / "auth.yaml"
    auth_file.write_text(
        json.dumps(
            {
                "roles_list": [{"RoleName": "Reader", "Permissions": ["Sessions:ListSessions"]}],
                "users_list": [{"Username": "from-file", "Roles": ["Reader"]}],
                "certificates_list": [
                    {"Cn": "file-cn", "Fingerprint": "ab" * 20, "Username": "from-file"}
                ],
            }
        )
    )
    variables = {
        "InitServices__Authentication__Roles__0": json.dumps(
            {"Name": "Role1", "Permissions": ["Submitter:ListTasks", "General:Impersonate:Role2"]}
        ),
        "InitServices__Authentication__Users__0": json.dumps({"Name": "User1", "Roles": ["Role1"]}),
        "InitServices__Authentication__UserCertificates__0": json.dumps(
            {"User": "User1", "Cn": "CN1"}  # no fingerprint: any certificate with this CN
        ),
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in variables.items():
            patch.setenv(name, value)
        with control_plane(
            tmp_path_factory.mktemp("control"),
            tls_cert=ca / "server.crt",
            tls_key=ca / "server.key",
            require_authentication=True,
            require_authorization=False,
            trusted_proxy_addresses=["127.0.0.0/8"],
            auth_file=auth_file,
        ) as plane:
            yield plane


def tls_channel(plane: BackgroundControlPlane, ca: Path) -> grpc.Channel:
    return create_channel(f"https://{plane.endpoint}", certificate_authority=str(ca / "ca.crt"))


def test_users_from_the_variables_and_the_file(proxied: BackgroundControlPlane, ca: Path) -> None:
    headers = {"x-certificate-client-fingerprint": "00" * 20}
    with tls_channel(proxied, ca) as channel:
        user = current_user(channel, **headers, **{"x-certificate-client-cn": "CN1"})
        # Authentication without authorization: the user, no roles, every permission.
        assert (user.username, list(user.roles)) == ("User1", [])
        assert sorted(user.permissions) == sorted(PERMISSIONS)
        from_file = current_user(
            channel,
            **{"x-certificate-client-cn": "file-cn", "x-certificate-client-fingerprint": "ab" * 20},
        )
        assert from_file.username == "from-file"
        # Authorization is off: User1 calls an rpc none of its roles permits.
        metadata = (("x-certificate-client-cn", "CN1"), *headers.items())
        SessionsStub(channel).ListSessions(ListSessionsRequest(page_size=1), metadata=metadata)


def test_no_certificate_is_unauthenticated(proxied: BackgroundControlPlane, ca: Path) -> None:
    with tls_channel(proxied, ca) as channel, pytest.raises(grpc.RpcError) as raised:
        ArmoniKSessions(channel).list_sessions()
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_issued_certificates_work_with_the_official_client(ca: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    issued = subprocess.run(
        [*PYARMONIK, "auth", "issue", "alice", "--ca-cert", str(ca / "ca.crt"),
         "--ca-key", str(ca / "ca.key"), "--out", str(tmp_path), "--role", "Monitoring",
         "--data-dir", str(data)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert issued.returncode == 0, issued.stderr
    with control_plane(
        data,
        tls_cert=ca / "server.crt",
        tls_key=ca / "server.key",
        tls_client_ca=ca / "ca.crt",
        require_authentication=True,
        require_authorization=True,
    ) as plane:
        uri, authority = f"https://{plane.endpoint}", str(ca / "ca.crt")
        pem = create_channel(
            uri,
            certificate_authority=authority,
            client_certificate=str(tmp_path / "alice.crt"),
            client_key=str(tmp_path / "alice.key"),
        )
        p12 = create_channel(
            uri, certificate_authority=authority, client_certificate=str(tmp_path / "alice.p12")
        )
        for channel in (pem, p12):
            with channel:
                user = current_user(channel)
                assert (user.username, list(user.roles)) == ("alice", ["Monitoring"])
                ArmoniKSessions(channel).list_sessions()


BAD_TLS = {
    "missing certificate file": ("nowhere.crt", "server.key", "nowhere.crt"),
    "key of another certificate": ("server.crt", "ca.key", "does not match"),
    "not a certificate": ("ca.key", "server.key", "not a PEM certificate"),
}


@pytest.mark.parametrize("case", sorted(BAD_TLS))
def test_bad_tls_files_stop_the_start(ca: Path, tmp_path: Path, case: str) -> None:
    cert, key, message = BAD_TLS[case]
    started = subprocess.run(
        [*PYARMONIK, "control", "--port", "0", "--http-port", "0", "--data-dir", str(tmp_path),
         "--tls-cert", str(ca / cert), "--tls-key", str(ca / key)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert started.returncode == 2
    errors = [line for line in started.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], started.stderr


def test_an_auth_file_naming_an_unknown_role_stops_the_start(tmp_path: Path) -> None:
    auth_file = tmp_path / "auth.json"
    auth_file.write_text(json.dumps({"users_list": [{"Username": "u", "Roles": ["Nowhere"]}]}))
    started = subprocess.run(
        [*PYARMONIK, "control", "--port", "0", "--http-port", "0", "--data-dir", str(tmp_path),
         "--auth-file", str(auth_file)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert started.returncode == 2
    errors = [line for line in started.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(auth_file) in errors[0] and "Nowhere" in errors[0], (
        started.stderr
    )
