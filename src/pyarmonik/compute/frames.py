"""The lean protocol between an agent and the SDK's function worker: msgpack maps in
length-prefixed frames over a unix socket (the agent listens, the worker connects).

Frames, each a map whose "t" names its kind:
  worker → agent  hello     {t, version, pid}
  agent → worker  tasks     {t, tasks: [task...]}       a batch, run in order
  worker → agent  done      {t, id, seconds, error?, outputs, results, subtasks}
  agent → worker  giveback  {t}                          hand back what has not started
  worker → agent  returned  {t, ids}
  worker → agent  resource  {t, id, result}              data of a result not sent inline
  agent → worker  resource  {t, result, data? | error?}

msgpack, not pickle: the agent reads what user code may have shaped, and must run none of
it. Frames are bounded (MAX_FRAME) so that a corrupt length cannot exhaust memory.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from typing import Any

import msgpack  # type: ignore[import-untyped]

VERSION = 1
HEADER = struct.Struct(">I")
MAX_FRAME = 2**32 - 1
# The agent sets this for every worker it starts; a worker that speaks this protocol
# connects there, any other worker ignores it.
SOCKET_VARIABLE = "PYARMONIK_BATCH_SOCKET"

Frame = dict[str, Any]


class FrameError(Exception):
    """The peer sent something that is not a frame of this protocol."""


def encode(frame: Frame) -> bytes:
    body: bytes = msgpack.packb(frame, use_bin_type=True)
    if len(body) > MAX_FRAME:
        raise FrameError(f"frame of {len(body)} bytes exceeds the limit of {MAX_FRAME}")
    return HEADER.pack(len(body)) + body


def decode(body: bytes) -> Frame:
    try:
        frame = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as error:  # msgpack raises several kinds for malformed input
        raise FrameError(f"malformed frame: {error}") from error
    if not isinstance(frame, dict) or not isinstance(frame.get("t"), str):
        raise FrameError("a frame is a map with a kind 't'")
    return frame


async def read_frame(reader: asyncio.StreamReader) -> Frame | None:
    """The next frame, None at a clean end of stream."""
    try:
        header = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as error:
        if error.partial:
            raise FrameError("stream ended inside a frame header") from error
        return None
    (size,) = HEADER.unpack(header)
    try:
        body = await reader.readexactly(size)
    except asyncio.IncompleteReadError as error:
        raise FrameError("stream ended inside a frame") from error
    return decode(body)


class BlockingLink:
    """The worker's end: a connected unix socket read by one thread, written by others under
    a lock."""

    def __init__(self, connected: socket.socket):
        self.socket = connected
        self._file = connected.makefile("rb")
        self._sending = threading.Lock()

    @classmethod
    def connect(cls, path: str) -> BlockingLink:
        connected = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connected.connect(path)
        return cls(connected)

    def send(self, frame: Frame) -> None:
        data = encode(frame)
        with self._sending:
            self.socket.sendall(data)

    def receive(self) -> Frame | None:
        header = self._file.read(HEADER.size)
        if len(header) < HEADER.size:
            if header:
                raise FrameError("stream ended inside a frame header")
            return None
        (size,) = HEADER.unpack(header)
        body = self._file.read(size)
        if len(body) < size:
            raise FrameError("stream ended inside a frame")
        return decode(body)

    def close(self) -> None:
        self._file.close()
        self.socket.close()
