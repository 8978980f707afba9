"""gRPC-Web on the HTTP port: browsers (ArmoniK's Admin GUI, `@aneoconsultingfr/armonik.api.angular`)
call every ArmoniK service there, with no proxy in front.

A gRPC-Web request (`application/grpc-web[+proto]`, or its base64 form
`application/grpc-web-text`) is relayed to the control plane's own gRPC server through a
private unix socket, so that authentication, permissions, session isolation and error
mapping are exactly those of gRPC. The reply goes back as gRPC-Web frames: each message,
then a trailer frame with `grpc-status` and `grpc-message` (which a browser can read, unlike
HTTP/2 trailers). Unary and server-streaming calls; client streaming does not exist in
gRPC-Web.

Identity: the caller's TLS client certificate, verified by the HTTP port, or the certificate
headers of a trusted proxy, are handed to the gRPC side as certificate headers with a secret
known only to this process (`GATEWAY_HEADER`): any such header a caller sends is dropped.
Bearer tokens, which only the HTTP API knows, do not authenticate gRPC-Web calls.

CORS: with `grpc_web_origins` set, browsers of those origins (or `*`) may call from other
pages; without it, only pages the HTTP port serves itself.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import struct
from collections.abc import AsyncGenerator

import grpc
from aiohttp import web
from armonik.protogen.client import (
    applications_service_pb2,
    auth_service_pb2,
    events_service_pb2,
    health_checks_service_pb2,
    partitions_service_pb2,
    results_service_pb2,
    sessions_service_pb2,
    submitter_service_pb2,
    tasks_service_pb2,
    versions_service_pb2,
)

from pyarmonik.config import Settings
from pyarmonik.control.auth import GATEWAY_HEADER
from pyarmonik.control.httpauth import HttpAuth

TRAILER_FLAG = 0x80
# Request headers that describe the HTTP request itself, not the call.
_NOT_METADATA = {
    "accept", "accept-encoding", "accept-language", "connection", "content-length",
    "content-type", "cookie", "host", "origin", "referer", "te", "user-agent",
    "x-grpc-web", "x-user-agent", "grpc-timeout", "keep-alive", "pragma", "cache-control",
    "transfer-encoding", "upgrade", "authorization",
}  # fmt: skip
_ALLOWED_HEADERS = (
    "content-type, x-grpc-web, x-user-agent, grpc-timeout, authorization, "
    "x-impersonate-username, x-impersonate-id"
)


def frame(message: bytes, flag: int = 0) -> bytes:
    """One gRPC-Web frame: flag byte, big-endian length, message."""
    return struct.pack(">BI", flag, len(message)) + message


def trailer_frame(code: grpc.StatusCode, message: str) -> bytes:
    text = f"grpc-status:{code.value[0]}\r\ngrpc-message:{_percent_encode(message)}\r\n"
    return frame(text.encode(), TRAILER_FLAG)


def _percent_encode(text: str) -> str:
    """grpc-message is percent-encoded (gRPC's HTTP/2 spec): printable ASCII but '%' stays."""
    return "".join(
        chr(byte) if 0x20 <= byte <= 0x7E and byte != 0x25 else f"%{byte:02X}"
        for byte in text.encode()
    )


def first_message(body: bytes) -> bytes:
    """The request message of a gRPC-Web body (a unary or server-streaming call has one)."""
    if len(body) < 5:
        raise ValueError("a gRPC-Web body starts with a 5-byte frame header")
    flag, length = struct.unpack(">BI", body[:5])
    if flag & TRAILER_FLAG or len(body) < 5 + length:
        raise ValueError("the gRPC-Web body does not hold a whole message frame")
    if flag & 0x01:
        raise ValueError("compressed gRPC-Web messages are not supported")
    return body[5 : 5 + length]


def _timeout(header: str | None) -> float | None:
    """gRPC's `grpc-timeout` header (e.g. `10S`, `500m`) in seconds."""
    if not header or len(header) < 2 or not header[:-1].isdigit():
        return None
    units = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
    unit = units.get(header[-1])
    return int(header[:-1]) * unit if unit is not None else None


def _call_kinds() -> tuple[set[str], set[str]]:
    """`service/method` of the server-streaming and of the client-streaming methods of
    ArmoniK's services (their descriptors), and of our own SDK service."""
    streaming, client_streaming = {"pyarmonik.v1.Sdk/Watch"}, set()
    for module in _SERVICE_MODULES:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                name = f"{service.full_name}/{method.name}"
                if method.client_streaming:
                    client_streaming.add(name)
                elif method.server_streaming:
                    streaming.add(name)
    return streaming, client_streaming


_SERVICE_MODULES = (
    applications_service_pb2, auth_service_pb2, events_service_pb2, health_checks_service_pb2,
    partitions_service_pb2, results_service_pb2, sessions_service_pb2, submitter_service_pb2,
    tasks_service_pb2, versions_service_pb2,
)  # fmt: skip
_STREAMING, _CLIENT_STREAMING = _call_kinds()


def server_streaming(service: str, method: str) -> bool | None:
    """Whether the method streams replies; None when it is client-streaming (an unknown
    method is taken as unary: gRPC answers it UNIMPLEMENTED)."""
    name = f"{service}/{method}"
    return None if name in _CLIENT_STREAMING else name in _STREAMING


class GrpcWebGateway:
    """The gRPC-Web routes of the HTTP port, relaying to the gRPC server at `target`."""

    def __init__(self, settings: Settings, target: str, secret: str):
        self.settings = settings
        self.target = target
        self.secret = secret
        self.origins = set(settings.grpc_web_origins)
        self._channel: grpc.aio.Channel | None = None
        self.auth: HttpAuth | None = None
        # Headers a caller may not set: the gateway's, and the certificate headers (it sets
        # them from what the HTTP port verified).
        self._reserved = {
            GATEWAY_HEADER,
            settings.cn_header.lower(),
            settings.fingerprint_header.lower(),
        }

    def install(self, app: web.Application, auth: HttpAuth) -> None:
        """Serve gRPC-Web on `app`; `auth` tells the callers' certificates."""
        self.auth = auth
        path = r"/{service:[A-Za-z_][\w]*(?:\.[\w]+)+}/{method:\w+}"
        app.router.add_post(path, self.call)
        app.router.add_route("OPTIONS", path, self.preflight)
        app.on_cleanup.append(self._close)

    async def _close(self, app: web.Application) -> None:
        if self._channel is not None:
            await self._channel.close()

    @property
    def channel(self) -> grpc.aio.Channel:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(
                self.target,
                options=[("grpc.max_receive_message_length", -1),
                         ("grpc.max_send_message_length", -1)],
            )  # fmt: skip
        return self._channel

    def _cors(self, request: web.Request) -> dict[str, str]:
        origin = request.headers.get("Origin")
        if not origin or not ({"*", origin} & self.origins):
            return {}
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Expose-Headers": "grpc-status, grpc-message",
            "Vary": "Origin",
        }

    async def preflight(self, request: web.Request) -> web.Response:
        headers = self._cors(request)
        if headers:
            headers["Access-Control-Allow-Methods"] = "POST, OPTIONS"
            headers["Access-Control-Allow-Headers"] = _ALLOWED_HEADERS
            headers["Access-Control-Max-Age"] = "600"
        return web.Response(status=204 if headers else 403, headers=headers)

    def _metadata(self, request: web.Request) -> list[tuple[str, str]]:
        metadata = [
            (name.lower(), value)
            for name, value in request.headers.items()
            if name.lower() not in _NOT_METADATA
            and name.lower() not in self._reserved
            and not name.lower().startswith(("sec-", "access-control-"))
            and not name.lower().endswith("-bin")
        ]
        assert self.auth is not None, "installed first"
        cn, fingerprint = self.auth.certificate(request)
        if cn or fingerprint:
            metadata += [
                (self.settings.cn_header.lower(), cn),
                (self.settings.fingerprint_header.lower(), fingerprint),
            ]
        metadata.append((GATEWAY_HEADER, self.secret))
        return metadata

    async def call(self, request: web.Request) -> web.StreamResponse:
        content_type = request.headers.get("Content-Type", "")
        if not content_type.startswith("application/grpc-web"):
            return web.Response(status=415, text="gRPC-Web requests only")
        text = content_type.startswith("application/grpc-web-text")
        service, method = request.match_info["service"], request.match_info["method"]
        response = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "application/grpc-web-text+proto"
                if text
                else "application/grpc-web+proto",
                **self._cors(request),
            },
        )
        await response.prepare(request)

        async def send(data: bytes) -> None:
            await response.write(base64.b64encode(data) if text else data)

        try:
            body = await request.read()
            message = first_message(base64.b64decode(body, validate=False) if text else body)
        except (ValueError, binascii.Error) as error:
            await send(trailer_frame(grpc.StatusCode.INVALID_ARGUMENT, str(error)))
            return response
        streaming = server_streaming(service, method)
        if streaming is None:
            await send(
                trailer_frame(
                    grpc.StatusCode.UNIMPLEMENTED, "client-streaming calls do not exist in gRPC-Web"
                )
            )
            return response
        code, details = grpc.StatusCode.OK, ""
        replies = self._relay(request, f"/{service}/{method}", message, streaming)
        try:
            async with contextlib.aclosing(replies):  # closing it cancels the relayed call
                async for reply in replies:
                    await send(frame(reply))
        except grpc.aio.AioRpcError as error:
            code, details = error.code(), error.details() or ""
        except ConnectionResetError:
            # The browser went away (the GUI drops a call it superseded, a page was left):
            # nobody to answer.
            return response
        with contextlib.suppress(ConnectionResetError):
            await send(trailer_frame(code, details))
            await response.write_eof()
        return response

    async def _relay(
        self, request: web.Request, path: str, message: bytes, streaming: bool
    ) -> AsyncGenerator[bytes, None]:
        metadata = self._metadata(request)
        timeout = _timeout(request.headers.get("grpc-timeout"))
        if streaming:
            call = self.channel.unary_stream(path)(message, metadata=metadata, timeout=timeout)
            try:
                async for reply in call:
                    yield reply
            finally:
                call.cancel()  # a no-op once it ended; else its caller is gone
        else:
            yield await self.channel.unary_unary(path)(message, metadata=metadata, timeout=timeout)
