"""gRPC-Web on the HTTP port (issue 15, item 1), called as a browser calls it: an HTTP/1.1
POST with `application/grpc-web+proto` (or the base64 `-text` form), the reply's status in a
trailer frame of the body. Unary and server-streaming calls, errors, CORS, and the rule that a
caller cannot pass itself off as the gateway."""

from __future__ import annotations

import base64
import http.client
import json
import logging
import struct
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from armonik.client import ArmoniKResults, ArmoniKSessions
from armonik.common import TaskOptions
from armonik.protogen.common import (
    events_common_pb2,
    objects_pb2,
    results_common_pb2,
    sessions_common_pb2,
)
from google.protobuf.duration_pb2 import Duration

from pyarmonik.certificates import cn_and_fingerprint, issue_client_certificate, make_ca
from pyarmonik.control.auth import GATEWAY_HEADER
from tests.helpers import BackgroundControlPlane, control_plane, free_port

ORIGIN = "http://gui.example"
SESSIONS = "armonik.api.grpc.v1.sessions.Sessions"
RESULTS = "armonik.api.grpc.v1.results.Results"


@dataclass
class Reply:
    http_status: int
    headers: dict[str, str]
    messages: list[bytes]
    trailers: dict[str, str]

    @property
    def status(self) -> int:
        return int(self.trailers.get("grpc-status", "-1"))


def parse(body: bytes) -> tuple[list[bytes], dict[str, str]]:
    """Message frames and the trailer frame of a gRPC-Web body."""
    messages, trailers, offset = [], {}, 0
    while offset < len(body):
        flag, length = struct.unpack(">BI", body[offset : offset + 5])
        payload = body[offset + 5 : offset + 5 + length]
        offset += 5 + length
        if flag & 0x80:
            for line in payload.decode().split("\r\n"):
                if line:
                    key, _, value = line.partition(":")
                    trailers[key.strip().lower()] = value.strip()
        else:
            messages.append(payload)
    return messages, trailers


def grpc_web(
    base: str,
    path: str,
    message: bytes,
    text: bool = False,
    headers: dict[str, str] | None = None,
    raw_body: bytes | None = None,
) -> Reply:
    kind = "application/grpc-web-text" if text else "application/grpc-web+proto"
    body = raw_body if raw_body is not None else struct.pack(">BI", 0, len(message)) + message
    request = urllib.request.Request(
        base + path,
        data=base64.b64encode(body) if text and raw_body is None else body,
        method="POST",
        headers={"Content-Type": kind, "X-Grpc-Web": "1", **(headers or {})},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        data = response.read()
        if text:  # the reply is base64, frame by frame
            data = b"".join(
                base64.b64decode(chunk + b"=" * (-len(chunk) % 4)) for chunk in _b64_chunks(data)
            )
        messages, trailers = parse(data)
        return Reply(response.status, dict(response.headers), messages, trailers)


def _b64_chunks(data: bytes) -> Iterator[bytes]:
    """Base64 pieces as the server wrote them (each ends at its padding, if any)."""
    start = 0
    for index in range(len(data)):
        if data[index : index + 1] == b"=" and (
            index + 1 == len(data) or data[index + 1 : index + 2] != b"="
        ):
            yield data[start : index + 1]
            start = index + 1
    if start < len(data):
        yield data[start:]


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BackgroundControlPlane, str]]:
    http_port = free_port()
    with control_plane(
        Path(tmp_path_factory.mktemp("grpcweb")),
        http_port=http_port,
        grpc_web_origins=[ORIGIN],
        data_chunk_max_size=256 * 1024,
    ) as running:
        yield running, f"http://127.0.0.1:{http_port}"


def create_session(base: str, text: bool = False) -> Reply:
    request = sessions_common_pb2.CreateSessionRequest(
        default_task_option=objects_pb2.TaskOptions(
            max_duration=Duration(seconds=60), max_retries=1, priority=1
        ),
        partition_ids=["default"],
    )
    return grpc_web(base, f"/{SESSIONS}/CreateSession", request.SerializeToString(), text)


def test_unary_call_creates_a_session_the_grpc_side_sees(
    plane: tuple[BackgroundControlPlane, str],
) -> None:
    running, base = plane
    reply = create_session(base)
    assert reply.http_status == 200 and reply.status == 0, reply.trailers
    assert reply.headers["Content-Type"].startswith("application/grpc-web")
    session_id = sessions_common_pb2.CreateSessionReply.FromString(reply.messages[0]).session_id
    with grpc.insecure_channel(running.endpoint) as channel:
        assert ArmoniKSessions(channel).get_session(session_id).session_id == session_id


def test_text_mode_round_trips(plane: tuple[BackgroundControlPlane, str]) -> None:
    _, base = plane
    reply = create_session(base, text=True)
    assert reply.status == 0, reply.trailers
    assert reply.headers["Content-Type"].startswith("application/grpc-web-text")
    assert sessions_common_pb2.CreateSessionReply.FromString(reply.messages[0]).session_id


def test_errors_travel_in_the_trailer(plane: tuple[BackgroundControlPlane, str]) -> None:
    _, base = plane
    request = sessions_common_pb2.GetSessionRequest(session_id="no-such-session")
    reply = grpc_web(base, f"/{SESSIONS}/GetSession", request.SerializeToString())
    assert reply.http_status == 200
    assert reply.status == grpc.StatusCode.NOT_FOUND.value[0]
    assert "no-such-session" in urllib.parse.unquote(reply.trailers["grpc-message"])
    assert reply.messages == []


def test_a_malformed_body_is_invalid_argument(plane: tuple[BackgroundControlPlane, str]) -> None:
    _, base = plane
    reply = grpc_web(base, f"/{SESSIONS}/GetSession", b"", raw_body=b"\x00\x00\x00\x00\x09ab")
    assert reply.status == grpc.StatusCode.INVALID_ARGUMENT.value[0]


def test_client_streaming_is_unimplemented(plane: tuple[BackgroundControlPlane, str]) -> None:
    _, base = plane
    reply = grpc_web(base, f"/{RESULTS}/UploadResultData", b"")
    assert reply.status == grpc.StatusCode.UNIMPLEMENTED.value[0]
    assert "client-streaming" in urllib.parse.unquote(reply.trailers["grpc-message"])


def test_unknown_method_is_unimplemented(plane: tuple[BackgroundControlPlane, str]) -> None:
    _, base = plane
    reply = grpc_web(base, f"/{SESSIONS}/NoSuchMethod", b"")
    assert reply.status == grpc.StatusCode.UNIMPLEMENTED.value[0]


def test_server_streaming_call_downloads_a_result(
    plane: tuple[BackgroundControlPlane, str],
) -> None:
    running, base = plane
    data = bytes(range(256)) * 4096  # 1 MiB: four messages of 256 KiB
    with grpc.insecure_channel(running.endpoint) as channel:
        session_id = ArmoniKSessions(channel).create_session(
            TaskOptions(max_duration=timedelta(seconds=60), max_retries=1, priority=1),
            partition_ids=["default"],
        )
        result_id = (
            ArmoniKResults(channel).create_results({"blob": data}, session_id)["blob"].result_id
        )
    request = results_common_pb2.DownloadResultDataRequest(
        session_id=session_id, result_id=result_id
    )
    reply = grpc_web(base, f"/{RESULTS}/DownloadResultData", request.SerializeToString())
    assert reply.status == 0, reply.trailers
    assert len(reply.messages) > 1
    chunks = [
        results_common_pb2.DownloadResultDataResponse.FromString(m).data_chunk
        for m in reply.messages
    ]
    assert b"".join(chunks) == data


def test_a_caller_that_goes_away_ends_its_call_quietly(
    plane: tuple[BackgroundControlPlane, str], caplog: pytest.LogCaptureFixture
) -> None:
    """The Admin GUI drops calls it no longer needs (a page left, a request superseded): the
    gateway stops relaying, logs no error, and serves the next call."""
    running, base = plane
    with grpc.insecure_channel(running.endpoint) as channel:
        session_id = ArmoniKSessions(channel).create_session(
            TaskOptions(max_duration=timedelta(seconds=60), max_retries=1, priority=1),
            partition_ids=["default"],
        )
        results = ArmoniKResults(channel)
        results.create_results_metadata(["first"], session_id)
        request = events_common_pb2.EventSubscriptionRequest(session_id=session_id)
        body = request.SerializeToString()
        connection = http.client.HTTPConnection(urllib.parse.urlsplit(base).netloc, timeout=30)
        connection.request(
            "POST",
            "/armonik.api.grpc.v1.events.Events/GetEvents",
            body=struct.pack(">BI", 0, len(body)) + body,
            headers={"Content-Type": "application/grpc-web+proto", "X-Grpc-Web": "1"},
        )
        response = connection.getresponse()
        assert response.status == 200
        assert response.read1(5)  # the stream's first frame (the snapshot): it is running
        connection.close()
        with caplog.at_level(logging.ERROR, logger="aiohttp"):
            for index in range(5):  # live events to relay to nobody
                results.create_results_metadata([f"after-{index}"], session_id)
                time.sleep(0.2)
    assert not [r for r in caplog.records if r.name.startswith("aiohttp")], caplog.text
    assert create_session(base).status == 0


def test_cors_preflight_answers_the_allowed_origin_only(
    plane: tuple[BackgroundControlPlane, str],
) -> None:
    _, base = plane

    def preflight(origin: str) -> tuple[int, dict[str, str]]:
        request = urllib.request.Request(
            f"{base}/{SESSIONS}/CreateSession",
            method="OPTIONS",
            headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, dict(response.headers)
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers)

    status, headers = preflight(ORIGIN)
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "x-grpc-web" in headers["Access-Control-Allow-Headers"]
    status, headers = preflight("http://elsewhere.example")
    assert status == 403 and "Access-Control-Allow-Origin" not in headers
    reply = grpc_web(base, f"/{SESSIONS}/ListSessions", b"", headers={"Origin": ORIGIN})
    assert reply.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "grpc-status" in reply.headers["Access-Control-Expose-Headers"]


@pytest.mark.parametrize("trusted", [True, False], ids=["trusted-proxy", "browser"])
def test_certificate_headers_count_only_from_a_trusted_proxy(tmp_path: Path, trusted: bool) -> None:
    """With authentication on, the gateway hands the gRPC side the certificate the HTTP port
    believes: a trusted proxy's headers are; the same headers (and a forged gateway header)
    from anyone else are dropped, and the call is UNAUTHENTICATED."""
    ca_cert, ca_key = make_ca()
    cn, fingerprint = cn_and_fingerprint(issue_client_certificate(ca_cert, ca_key, "alice")[0])
    auth_file = tmp_path / "auth.json"
    auth_file.write_text(
        json.dumps(
            {
                "certificates_list": [{"Cn": cn, "Fingerprint": fingerprint, "Username": "alice"}],
                "users_list": [{"Username": "alice", "Roles": ["Submitter"]}],
            }
        )
    )
    http_port = free_port()
    with control_plane(
        tmp_path / "data",
        http_port=http_port,
        require_authentication=True,
        auth_file=auth_file,
        trusted_proxy_addresses=["127.0.0.1"] if trusted else [],
    ):
        reply = grpc_web(
            f"http://127.0.0.1:{http_port}",
            f"/{SESSIONS}/ListSessions",
            sessions_common_pb2.ListSessionsRequest(page_size=10).SerializeToString(),
            headers={
                "X-Certificate-Client-CN": cn,
                "X-Certificate-Client-Fingerprint": fingerprint,
                GATEWAY_HEADER: "forged",
            },
        )
    expected = grpc.StatusCode.OK if trusted else grpc.StatusCode.UNAUTHENTICATED
    assert reply.status == expected.value[0], reply.trailers
