"""Unary gRPC between an agent and its worker over a lean HTTP/2, without grpcio.

The agent calls its worker's `Worker.Process` once per task and serves the `Agent` calls the
worker makes meanwhile (`NotifyResultData` at least once per task). Through grpcio's asyncio
API each side of a call costs the agent about 0.3 ms of CPU; most of it is the library's
machinery, not the bytes. Here both are an asyncio protocol speaking just what a unary gRPC
call needs of HTTP/2 (RFC 9113) on a local socket: plain text with prior knowledge, headers
sent as literals (HPACK's static table only), headers received decoded by `hpack`, flow
control, PING, SETTINGS, RST_STREAM, GOAWAY. About 0.1 ms a call; the worker cannot tell
(it is the official SDK, on grpcio). Client-streaming calls (the Agent API's old
`CreateTask`) are served by collecting their messages first.

What it does not do: TLS (the link is a unix socket or loopback TCP: compute/worker_process.py
`Endpoint.private`), compression (never asked for: we advertise none), server streaming,
server push, priorities.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import grpc
import hpack
from google.protobuf.message import DecodeError, Message

log = logging.getLogger(__name__)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# Frame types and flags (RFC 9113 §6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20
# Settings.
HEADER_TABLE_SIZE, ENABLE_PUSH, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE = 1, 2, 4, 5
# Error codes.
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, CANCEL, COMPRESSION_ERROR = 0, 1, 3, 8, 9
MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65_535
DEFAULT_FRAME = 16_384
# Largest frame a peer may send us: the default, which we never raise.
LARGEST_FRAME = DEFAULT_FRAME
FRAME_SIZE_ERROR = 6

# Unary replies above this are refused (as grpcio's default receive limit would, but larger:
# the Agent API's CreateResults carries data inline).
MAX_MESSAGE = 2**31 - 1

_HEADER = struct.Struct(">BHBBI")


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    size = len(payload)
    return _HEADER.pack(size >> 16, size & 0xFFFF, kind, flags, stream) + payload


def _integer(value: int, prefix_bits: int) -> bytes:
    """HPACK's prefixed integer (RFC 7541 §5.1), first byte's high bits zero."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((value,))
    out = bytearray((limit,))
    value -= limit
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal(name: bytes, value: bytes) -> bytes:
    """A header field as a literal never added to the dynamic table, new name, no Huffman
    (RFC 7541 §6.2.2): what a decoder takes at any table size."""
    return b"\x00" + _integer(len(name), 7) + name + _integer(len(value), 7) + value


def message(payload: bytes) -> bytes:
    """A gRPC length-prefixed message, uncompressed."""
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


def split_messages(body: bytes | bytearray) -> list[bytes]:
    """The gRPC messages of a request or reply body; ValueError if malformed or compressed."""
    messages, position = [], 0
    while position < len(body):
        if len(body) - position < 5:
            raise ValueError("truncated gRPC message prefix")
        if body[position] != 0:
            raise ValueError("compressed gRPC message (no compression was offered)")
        size = int.from_bytes(body[position + 1 : position + 5], "big")
        end = position + 5 + size
        if end > len(body):
            raise ValueError("truncated gRPC message")
        messages.append(bytes(body[position + 5 : end]))
        position = end
    return messages


def _percent_encode(text: str) -> bytes:
    return urllib.parse.quote(text, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~").encode()


def _timeout_header(seconds: float) -> bytes:
    """grpc-timeout: at most 8 digits, in the finest unit that fits."""
    for unit, scale in ((b"u", 1e6), (b"m", 1e3), (b"S", 1.0), (b"M", 1 / 60), (b"H", 1 / 3600)):
        value = max(int(seconds * scale), 1)
        if value < 100_000_000:
            return str(value).encode() + unit
    return b"99999999H"


class RpcError(Exception):
    """A call that did not succeed: its gRPC status code and details."""

    def __init__(self, code: grpc.StatusCode, details: str = ""):
        super().__init__(f"{code.name}: {details}")
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def _status(headers: list[tuple[bytes, bytes]]) -> tuple[grpc.StatusCode, str] | None:
    """grpc-status and grpc-message of a header block, if it carries one."""
    code = None
    details = ""
    for name, value in headers:
        if name == b"grpc-status":
            try:
                code = _CODES.get(int(value), grpc.StatusCode.UNKNOWN)
            except ValueError:
                code = grpc.StatusCode.UNKNOWN
        elif name == b"grpc-message":
            details = urllib.parse.unquote(value.decode("utf-8", "replace"))
    return None if code is None else (code, details)


@dataclass
class _Stream:
    window: int  # what we may still send on it
    headers: list[tuple[bytes, bytes]] | None = None
    body: bytearray = field(default_factory=bytearray)
    trailers: list[tuple[bytes, bytes]] | None = None
    done: asyncio.Future[None] | None = None  # client: set when the reply is complete


class ProtocolError(Exception):
    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code = code


class _Connection(asyncio.Protocol):
    """One HTTP/2 connection, either end: framing, settings, flow control, header blocks."""

    client = False

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, _Stream] = {}
        self._buffer = bytearray()
        self._preface_pending = not self.client  # a server first reads the client's preface
        self._decoder = hpack.Decoder()
        self._block: tuple[int, int, bytearray] | None = None  # header block in progress
        self._send_window = DEFAULT_WINDOW  # connection-level, what we may send
        self._peer_stream_window = DEFAULT_WINDOW
        self._peer_frame = DEFAULT_FRAME
        self._consumed = 0  # received DATA not yet given back with a WINDOW_UPDATE
        self._window_opened = asyncio.Event()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.going_away = False

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop's: no subclass
        # Streams may send us all they want (a unary message is read whole anyway); the
        # connection's window opens to the most the protocol allows and is given back as used.
        settings = struct.pack(">HIHI", ENABLE_PUSH, 0, INITIAL_WINDOW_SIZE, MAX_WINDOW)
        opening = PREFACE if self.client else b""
        window = struct.pack(">I", MAX_WINDOW - DEFAULT_WINDOW)
        transport.write(
            opening + frame(SETTINGS, 0, 0, settings) + frame(WINDOW_UPDATE, 0, 0, window)
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.going_away = True
        self._window_opened.set()  # senders waiting see the connection gone
        if not self.closed.done():
            self.closed.set_result(None)
        self._lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return  # failed: what still comes is dropped
        buffer = self._buffer
        buffer += data
        position = 0
        if self._preface_pending:
            if len(buffer) < len(PREFACE):
                return
            if bytes(buffer[: len(PREFACE)]) != PREFACE:
                self._fail(ProtocolError(PROTOCOL_ERROR, "not an HTTP/2 client preface"))
                return
            position = len(PREFACE)
            self._preface_pending = False
        end = len(buffer)
        try:
            while end - position >= 9:
                size = (buffer[position] << 16) | (buffer[position + 1] << 8) | buffer[position + 2]
                if size > LARGEST_FRAME:
                    raise ProtocolError(FRAME_SIZE_ERROR, f"frame of {size} bytes")
                if end - position < 9 + size:
                    break
                kind, flags = buffer[position + 3], buffer[position + 4]
                stream = int.from_bytes(buffer[position + 5 : position + 9], "big") & MAX_WINDOW
                payload = bytes(buffer[position + 9 : position + 9 + size])
                position += 9 + size
                self._frame(kind, flags, stream, payload)
        except ProtocolError as error:
            self._fail(error)
            return
        del buffer[:position]

    # -- frames in ----------------------------------------------------------------------------

    def _frame(self, kind: int, flags: int, stream: int, payload: bytes) -> None:
        if self._block is not None and kind != CONTINUATION:
            raise ProtocolError(PROTOCOL_ERROR, "header block interrupted")
        if kind == DATA:
            self._data(flags, stream, payload)
        elif kind in (HEADERS, CONTINUATION):
            self._header_fragment(kind, flags, stream, payload)
        elif kind == SETTINGS:
            if not flags & ACK:
                self._settings(payload)
        elif kind == PING:
            if not flags & ACK:
                self._write(frame(PING, ACK, 0, payload))
        elif kind == WINDOW_UPDATE:
            self._window_update(stream, payload)
        elif kind == RST_STREAM:
            code = int.from_bytes(payload[:4], "big") if len(payload) >= 4 else PROTOCOL_ERROR
            self._reset(stream, code)
        elif kind == GOAWAY:
            self.going_away = True
            last = int.from_bytes(payload[:4], "big") & MAX_WINDOW if len(payload) >= 4 else 0
            self._going_away(last)
        elif kind == PUSH_PROMISE:
            raise ProtocolError(PROTOCOL_ERROR, "push was disabled")
        # PRIORITY and unknown types are ignored (RFC 9113 §5.5).

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        self._consumed += len(payload)  # padding counts towards flow control
        if self._consumed >= MAX_WINDOW // 2:
            self._write(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self._consumed)))
            self._consumed = 0
        if flags & PADDED:
            payload = _unpad(payload)
        stream = self.streams.get(stream_id)
        if stream is None:
            return  # reset or ended: ignored
        stream.body += payload
        if len(stream.body) > MAX_MESSAGE + 5:
            raise ProtocolError(PROTOCOL_ERROR, "message too large")
        if flags & END_STREAM:
            self._end_of_stream(stream_id, stream)

    def _header_fragment(self, kind: int, flags: int, stream: int, payload: bytes) -> None:
        if kind == HEADERS:
            if flags & PADDED:
                payload = _unpad(payload)
            if flags & PRIORITY_FLAG:
                payload = payload[5:]
            self._block = (stream, flags, bytearray(payload))
        else:
            if self._block is None or self._block[0] != stream:
                raise ProtocolError(PROTOCOL_ERROR, "CONTINUATION without HEADERS")
            self._block[2].extend(payload)
            self._block = (stream, self._block[1] | (flags & END_HEADERS), self._block[2])
        block = self._block
        if not block[1] & END_HEADERS:
            return
        self._block = None
        try:
            decoded = self._decoder.decode(bytes(block[2]), raw=True)  # (bytes, bytes) pairs
            headers = cast(list[tuple[bytes, bytes]], decoded)
        except hpack.HPACKError as error:
            raise ProtocolError(COMPRESSION_ERROR, f"header block: {error}") from error
        self._headers(block[0], headers, bool(block[1] & END_STREAM))

    def _settings(self, payload: bytes) -> None:
        if len(payload) % 6:
            raise ProtocolError(PROTOCOL_ERROR, "SETTINGS of a wrong size")
        for offset in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HI", payload, offset)
            if key == INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ProtocolError(FLOW_CONTROL_ERROR, "initial window too large")
                delta = value - self._peer_stream_window
                self._peer_stream_window = value
                for stream in self.streams.values():
                    stream.window += delta
                self._window_opened.set()
            elif key == MAX_FRAME_SIZE:
                self._peer_frame = max(DEFAULT_FRAME, min(value, (1 << 24) - 1))
            # HEADER_TABLE_SIZE: we never index, so the peer's table size is nothing to us;
            # the others (push, concurrency, header list size) bind a server we are not.
        self._write(frame(SETTINGS, ACK, 0))

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        increment = int.from_bytes(payload[:4], "big") & MAX_WINDOW if len(payload) >= 4 else 0
        if stream_id == 0:
            self._send_window += increment
        elif (stream := self.streams.get(stream_id)) is not None:
            stream.window += increment
        self._window_opened.set()

    # -- frames out ---------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def _header_frames(self, stream_id: int, block: bytes, end_stream: bool) -> bytes:
        """A header block as HEADERS (+ CONTINUATION when over the peer's frame size)."""
        flags = END_STREAM if end_stream else 0
        size = self._peer_frame
        if len(block) <= size:
            return frame(HEADERS, flags | END_HEADERS, stream_id, block)
        parts = [block[i : i + size] for i in range(0, len(block), size)]
        out = [frame(HEADERS, flags, stream_id, parts[0])]
        out += [frame(CONTINUATION, 0, stream_id, p) for p in parts[1:-1]]
        out.append(frame(CONTINUATION, END_HEADERS, stream_id, parts[-1]))
        return b"".join(out)

    def _data_now(self, stream_id: int, stream: _Stream, body: bytes, end: bool) -> bytes | None:
        """The DATA frame of `body` if it can go at once (the common case), else None."""
        size = len(body)
        if size > self._peer_frame or size > self._send_window or size > stream.window:
            return None
        self._send_window -= size
        stream.window -= size
        return frame(DATA, END_STREAM if end else 0, stream_id, body)

    async def _send_data(self, stream_id: int, stream: _Stream, body: bytes, end: bool) -> None:
        """DATA frames of `body`, as flow control and the peer's frame size let them go."""
        view = memoryview(body)
        while True:
            if self.closed.done():
                raise ConnectionError("connection closed")
            if self.streams.get(stream_id) is not stream:
                return  # reset meanwhile
            room = min(len(view), self._peer_frame, self._send_window, stream.window)
            if room <= 0 and len(view) > 0:
                self._window_opened.clear()
                await self._window_opened.wait()
                continue
            last = room == len(view)
            self._send_window -= room
            stream.window -= room
            self._write(
                frame(DATA, END_STREAM if end and last else 0, stream_id, bytes(view[:room]))
            )
            view = view[room:]
            if last:
                return

    def _fail(self, error: ProtocolError) -> None:
        log.warning("HTTP/2 connection closed: %s", error)
        goaway = struct.pack(">II", 0, error.code) + str(error).encode()[:200]
        self._write(frame(GOAWAY, 0, 0, goaway))
        if self.transport is not None:
            self.transport.close()

    def close(self) -> None:
        """Tell the peer we are going (no error), and close."""
        if self.transport is not None and not self.transport.is_closing():
            self._write(frame(GOAWAY, 0, 0, struct.pack(">II", 0, NO_ERROR)))
            self.transport.close()

    # -- hooks ---------------------------------------------------------------------------------

    def _headers(self, stream_id: int, headers: list[tuple[bytes, bytes]], end: bool) -> None:
        raise NotImplementedError

    def _end_of_stream(self, stream_id: int, stream: _Stream) -> None:
        raise NotImplementedError

    def _reset(self, stream_id: int, code: int) -> None:
        raise NotImplementedError

    def _going_away(self, last_stream: int) -> None:
        pass

    def _lost(self, exc: Exception | None) -> None:
        pass


def _unpad(payload: bytes) -> bytes:
    if not payload or payload[0] >= len(payload):
        raise ProtocolError(PROTOCOL_ERROR, "bad padding")
    return payload[1 : len(payload) - payload[0]]


# -- client ------------------------------------------------------------------------------------


class _ClientConnection(_Connection):
    client = True

    def __init__(self, authority: bytes):
        super().__init__()
        self.authority = authority
        self.next_stream = 1

    def _headers(self, stream_id: int, headers: list[tuple[bytes, bytes]], end: bool) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        if stream.headers is None:
            stream.headers = headers
        else:
            stream.trailers = headers
        if end:
            self._end_of_stream(stream_id, stream)

    def _end_of_stream(self, stream_id: int, stream: _Stream) -> None:
        self.streams.pop(stream_id, None)
        if stream.done is not None and not stream.done.done():
            stream.done.set_result(None)

    def _reset(self, stream_id: int, code: int) -> None:
        status = grpc.StatusCode.CANCELLED if code == CANCEL else grpc.StatusCode.UNAVAILABLE
        self._refuse(stream_id, f"stream reset by the peer (code {code})", status)

    def _going_away(self, last_stream: int) -> None:
        for stream_id in [s for s in self.streams if s > last_stream]:
            self._refuse(stream_id, "the peer is going away")

    def _lost(self, exc: Exception | None) -> None:
        for stream_id in list(self.streams):
            self._refuse(stream_id, f"connection lost ({exc or 'closed'})")

    def _refuse(
        self, stream_id: int, reason: str, status: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    ) -> None:
        """End a call under way with an error (no reply will come)."""
        stream = self.streams.pop(stream_id, None)
        if stream is not None and stream.done is not None and not stream.done.done():
            stream.done.set_exception(RpcError(status, reason))

    async def unary(
        self, path: bytes, request: bytes, timeout: float | None, metadata: Any
    ) -> bytes:
        if self.going_away:  # lost or told to go between our choice of it and now
            raise RpcError(grpc.StatusCode.UNAVAILABLE, "the connection is going away")
        stream_id = self.next_stream
        self.next_stream += 2
        stream = _Stream(self._peer_stream_window, done=asyncio.get_running_loop().create_future())
        self.streams[stream_id] = stream
        block = [
            b"\x83\x86",  # :method POST, :scheme http (static table)
            literal(b":path", path),
            literal(b":authority", self.authority),
            literal(b"content-type", b"application/grpc"),
            literal(b"te", b"trailers"),
        ]
        if timeout is not None:
            block.append(literal(b"grpc-timeout", _timeout_header(timeout)))
        for name, value in metadata or ():
            block.append(literal(name.encode(), value.encode()))
        body = message(request)
        try:
            head = self._header_frames(stream_id, b"".join(block), end_stream=False)
            data = self._data_now(stream_id, stream, body, end=True)
            if data is not None:
                self._write(head + data)
            else:
                self._write(head)
                await self._send_data(stream_id, stream, body, end=True)
            async with asyncio.timeout(timeout):
                await stream.done  # type: ignore[misc]
        except TimeoutError:
            self._cancel(stream_id)
            raise RpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
        except asyncio.CancelledError:
            self._cancel(stream_id)
            raise
        except ConnectionError as error:
            self.streams.pop(stream_id, None)
            raise RpcError(grpc.StatusCode.UNAVAILABLE, str(error)) from None
        return _reply(stream)

    def _cancel(self, stream_id: int) -> None:
        if self.streams.pop(stream_id, None) is not None:
            self._write(frame(RST_STREAM, 0, stream_id, struct.pack(">I", CANCEL)))


def _reply(stream: _Stream) -> bytes:
    """The reply message of a complete stream, or its error."""
    status = _status(stream.trailers or stream.headers or [])
    if status is None:
        http = dict(stream.headers or []).get(b":status", b"?").decode()
        raise RpcError(grpc.StatusCode.UNKNOWN, f"no grpc-status in the reply (HTTP {http})")
    code, details = status
    if code != grpc.StatusCode.OK:
        raise RpcError(code, details)
    try:
        messages = split_messages(stream.body)
    except ValueError as error:
        raise RpcError(grpc.StatusCode.INTERNAL, str(error)) from None
    if len(messages) != 1:
        raise RpcError(grpc.StatusCode.INTERNAL, f"{len(messages)} messages in a unary reply")
    return messages[0]


class Channel:
    """A client channel to one endpoint (`unix:///path` or `host:port`), connected on first
    use and again after the connection is lost."""

    def __init__(self, target: str):
        self.target = target
        self._connection: _ClientConnection | None = None
        self._connecting = asyncio.Lock()

    async def _connected(self) -> _ClientConnection:
        connection = self._connection
        if connection is not None and not connection.going_away:
            return connection
        async with self._connecting:
            connection = self._connection
            if connection is None or connection.going_away:
                if connection is not None and not connection.streams:
                    connection.close()  # one with calls under way ends when they do
                self._connection = connection = await self._connect()
            return connection

    async def _connect(self) -> _ClientConnection:
        loop = asyncio.get_running_loop()
        try:
            if self.target.startswith("unix://"):
                path = self.target[len("unix://") :]
                _, connection = await loop.create_unix_connection(
                    lambda: _ClientConnection(b"localhost"), path
                )
            else:
                host, _, port = self.target.rpartition(":")
                authority = self.target.encode()
                _, connection = await loop.create_connection(
                    lambda: _ClientConnection(authority), host.strip("[]"), int(port)
                )
        except OSError as error:
            raise RpcError(
                grpc.StatusCode.UNAVAILABLE, f"cannot connect to {self.target}: {error}"
            ) from None
        return connection

    async def unary(
        self, path: str, request: Message, reply: type[Message], timeout: float | None = None,
        metadata: Any = None,
    ) -> Any:  # fmt: skip
        """Call `path` with `request`; the reply parsed as `reply`, or RpcError."""
        connection = await self._connected()
        data = await connection.unary(path.encode(), request.SerializeToString(), timeout, metadata)
        try:
            return reply.FromString(data)
        except DecodeError as error:
            raise RpcError(grpc.StatusCode.INTERNAL, f"reply not parsed: {error}") from None

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()
            with contextlib.suppress(Exception):
                await connection.closed


# -- server ------------------------------------------------------------------------------------


class AbortError(Exception):
    """Raised by `ServicerContext.abort`: the call ends with this status."""


class ServicerContext:
    """What a servicer method is given as its context (the part our servicers use)."""

    def __init__(self) -> None:
        self._code: grpc.StatusCode | None = None
        self._details = ""

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        self._code, self._details = code, details
        raise AbortError(details)

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str:
        return self._details


@dataclass(frozen=True)
class Method:
    """A method served: its request type, whether the client streams, its implementation."""

    request: type[Message]
    client_streaming: bool
    call: Callable[[Any, ServicerContext], Awaitable[Message]]


def methods_of(servicer: object, service: Any) -> dict[bytes, Method]:
    """The methods of `servicer` for a protobuf service descriptor, by their gRPC path; those
    it does not define answer UNIMPLEMENTED (as grpcio's generated base class does)."""
    from google.protobuf import message_factory

    found = {}
    for method in service.methods:
        if method.server_streaming:
            continue  # not served here
        implementation = getattr(servicer, method.name, None)
        if implementation is None:
            continue
        path = f"/{service.full_name}/{method.name}".encode()
        request = message_factory.GetMessageClass(method.input_type)
        found[path] = Method(request, method.client_streaming, implementation)
    return found


class _ServerConnection(_Connection):
    def __init__(self, server: Server):
        super().__init__()
        self.server = server
        self.calls: set[asyncio.Task[None]] = set()

    def _headers(self, stream_id: int, headers: list[tuple[bytes, bytes]], end: bool) -> None:
        if stream_id % 2 == 0:
            raise ProtocolError(PROTOCOL_ERROR, "even stream id from a client")
        stream = self.streams.get(stream_id)
        if stream is None:
            stream = self.streams[stream_id] = _Stream(self._peer_stream_window, headers=headers)
        else:  # trailers of a request: nothing in them for us
            stream.trailers = headers
        if end:
            self._end_of_stream(stream_id, stream)

    def _end_of_stream(self, stream_id: int, stream: _Stream) -> None:
        call = asyncio.get_running_loop().create_task(self._call(stream_id, stream))
        self.calls.add(call)
        call.add_done_callback(self.calls.discard)

    def _reset(self, stream_id: int, code: int) -> None:
        self.streams.pop(stream_id, None)  # a call under way finishes; its reply is dropped

    def _lost(self, exc: Exception | None) -> None:
        self.streams.clear()
        self.server.connections.discard(self)

    async def _call(self, stream_id: int, stream: _Stream) -> None:
        headers = stream.headers or []
        path = next((v for k, v in headers if k == b":path"), b"")
        method = self.server.methods.get(path)
        try:
            if method is None:
                raise RpcError(grpc.StatusCode.UNIMPLEMENTED, f"Method not found: {path.decode()}")
            try:
                messages = [method.request.FromString(m) for m in split_messages(stream.body)]
            except (ValueError, DecodeError) as error:
                raise RpcError(grpc.StatusCode.INTERNAL, f"request not parsed: {error}") from None
            context = ServicerContext()
            if method.client_streaming:
                argument: Any = _iterate(messages)
            elif len(messages) == 1:
                argument = messages[0]
            else:
                raise RpcError(
                    grpc.StatusCode.INTERNAL, f"{len(messages)} messages in a unary call"
                )
            try:
                reply = await method.call(argument, context)
            except AbortError:
                raise RpcError(
                    context.code() or grpc.StatusCode.UNKNOWN, context.details()
                ) from None
            except NotImplementedError:  # the generated base class: code and details set
                code = context.code() or grpc.StatusCode.UNIMPLEMENTED
                raise RpcError(code, context.details() or "Method not implemented!") from None
        except RpcError as error:
            self._respond(stream_id, stream, None, error.code(), error.details())
            return
        except Exception as error:  # a bug of ours: the worker gets UNKNOWN, as with grpcio
            log.exception("Agent API call %s failed", path.decode())
            self._respond(
                stream_id, stream, None, grpc.StatusCode.UNKNOWN, f"Unexpected error: {error!r}"
            )
            return
        body = message(reply.SerializeToString())
        data = self._data_now(stream_id, stream, body, end=False)
        head = self._header_frames(
            stream_id, b"\x88" + literal(b"content-type", b"application/grpc"), False
        )
        if data is not None:
            self._respond(stream_id, stream, head + data, grpc.StatusCode.OK, "")
            return
        self._write(head)
        try:
            await self._send_data(stream_id, stream, body, end=False)
        except ConnectionError:
            return
        self._respond(stream_id, stream, b"", grpc.StatusCode.OK, "")

    def _respond(
        self, stream_id: int, stream: _Stream, sent: bytes | None, code: grpc.StatusCode, details: str
    ) -> None:  # fmt: skip
        """End the call: trailers after `sent` (headers and data), or a trailers-only reply."""
        if self.streams.pop(stream_id, None) is not stream:
            return  # reset by the client meanwhile
        status = literal(b"grpc-status", str(code.value[0]).encode())
        if details:
            status += literal(b"grpc-message", _percent_encode(details))
        if sent is None:  # trailers only
            block = b"\x88" + literal(b"content-type", b"application/grpc") + status
            self._write(self._header_frames(stream_id, block, end_stream=True))
        else:
            self._write(sent + self._header_frames(stream_id, status, end_stream=True))


async def _iterate(messages: list[Message]) -> AsyncIterator[Message]:
    for one in messages:
        yield one


class Server:
    """Serves `methods` (see `methods_of`) on a unix socket or TCP address."""

    def __init__(self, methods: dict[bytes, Method]):
        self.methods = methods
        self.connections: set[_ServerConnection] = set()
        self._server: asyncio.Server | None = None
        self.port = 0  # the TCP port bound

    def _connection(self) -> _ServerConnection:
        connection = _ServerConnection(self)
        self.connections.add(connection)
        return connection

    async def start(self, target: str) -> int:
        """Listen at `target` (`unix:///path` or `host:port`, port 0 for any); the TCP port
        bound (0 on a unix socket)."""
        loop = asyncio.get_running_loop()
        if target.startswith("unix://"):
            self._server = await loop.create_unix_server(self._connection, target[len("unix://") :])
            return 0
        host, _, port = target.rpartition(":")
        self._server = await loop.create_server(self._connection, host.strip("[]"), int(port))
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        """Stop listening; calls under way finish within `grace` seconds, then connections
        are told to go away and closed."""
        if self._server is not None:
            self._server.close()
        calls = [c for connection in self.connections for c in connection.calls]
        if calls and grace:
            await asyncio.wait(calls, timeout=grace)
        for connection in list(self.connections):
            connection.close()
        self.connections.clear()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
