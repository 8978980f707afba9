"""`pyarmonik.v1.Values/Watch`: pyarmonik's own stream for its SDK — results of a session
as they complete or abort, with the data of the small ones inline.

ArmoniK's API tells a client that a result completed (Events), then the client downloads it
(DownloadResultData): two messages and one call per result. A Python client of pyarmonik
asks for this instead and gets batches of `[result_id, status, data or None]`; larger data
is downloaded as usual. Official clients never see it: it is one more gRPC service, in
msgpack rather than protobuf (no schema to ship), and a server without it answers
UNIMPLEMENTED, which the SDK takes as "use Events".

Request {session_id, name_prefix}; the stream starts with the results already ended (so a
reconnection loses nothing), then follows the change feed, as Events does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import msgpack  # type: ignore[import-untyped]

from pyarmonik.control.errors import rpc
from pyarmonik.control.isolation import SessionGuard
from pyarmonik.domain.errors import InvalidArgument
from pyarmonik.domain.records import Result
from pyarmonik.domain.statuses import ResultStatus
from pyarmonik.scheduling.backends import Backends
from pyarmonik.scheduling.changes import ChangeFeed, ChangeKind
from pyarmonik.scheduling.sessions import load_session
from pyarmonik.storage.objects.inline import InlineObjects

SERVICE = "pyarmonik.v1.Values"
WATCH = f"/{SERVICE}/Watch"
ENDED = (ResultStatus.COMPLETED, ResultStatus.ABORTED)
# Data up to this size travels in the stream; larger data is downloaded on demand.
VALUE_INLINE = 64 * 1024
SNAPSHOT_PAGE = 1000

Entry = list[Any]  # [result_id, status, data or None]


def encode(message: dict[str, Any]) -> bytes:
    data: bytes = msgpack.packb(message, use_bin_type=True)
    return data


def decode(data: bytes) -> dict[str, Any]:
    try:
        message = msgpack.unpackb(data, raw=False)
    except Exception as error:
        raise InvalidArgument(f"malformed request: {error}") from error
    if not isinstance(message, dict):
        raise InvalidArgument("a request is a map")
    return message


class Values:
    def __init__(self, backends: Backends, feed: ChangeFeed, guard: SessionGuard):
        self.backends = backends
        self.feed = feed
        self.guard = guard
        objects = backends.objects
        self.inline = objects if isinstance(objects, InlineObjects) else None

    @rpc
    async def Watch(self, raw: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        request = decode(raw)
        session_id, prefix = request.get("session_id"), request.get("name_prefix", "")
        if not isinstance(session_id, str) or not session_id:
            raise InvalidArgument("session_id is required")
        if not isinstance(prefix, str):
            raise InvalidArgument("name_prefix must be a string")
        await self.guard.session(session_id)
        async with self.backends.database.read() as repository:
            await load_session(repository, session_id)  # NotFound for an unknown session
        subscription = await self.feed.subscribe(session_id)
        try:
            async for entries in self._snapshot(session_id, prefix):
                yield encode({"results": entries})
            async for batch in subscription.batches():
                ids = [
                    c.entity_id
                    for c in batch
                    if c.kind == ChangeKind.RESULT_STATUS and c.status in ENDED
                ]
                if ids:
                    async with self.backends.database.read() as repository:
                        results = await repository.find(Result, {"result_id": ids})
                    entries = await self._entries([r for r in results if r.name.startswith(prefix)])
                    if entries:
                        yield encode({"results": entries})
        finally:
            subscription.close()

    async def _snapshot(self, session_id: str, prefix: str) -> AsyncIterator[list[Entry]]:
        after = ""
        while True:
            async with self.backends.database.read() as repository:
                page = await repository.ended_results(session_id, prefix, after, SNAPSHOT_PAGE)
            if page:
                yield await self._entries(page)
            if len(page) < SNAPSHOT_PAGE:
                return
            after = page[-1].result_id

    async def _entries(self, results: list[Result]) -> list[Entry]:
        """The stream's entries: small data of those in the database read in one query."""
        inline: dict[bytes, bytes] = {}
        if self.inline is not None:
            wanted = [
                r.opaque_id
                for r in results
                if r.status == ResultStatus.COMPLETED
                and r.size <= VALUE_INLINE
                and self.inline.is_inline(r.opaque_id)
            ]
            if wanted:
                async with self.backends.database.read() as repository:
                    inline = await repository.blobs(wanted)
        return [[r.result_id, int(r.status), inline.get(r.opaque_id)] for r in results]


def add_values_to_server(values: Values, server: grpc.aio.Server) -> None:
    handler = grpc.unary_stream_rpc_method_handler(
        values.Watch, request_deserializer=None, response_serializer=None
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"Watch": handler}),)
    )
