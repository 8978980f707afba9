"""Sends fuzzed calls, judges every answer, and keeps the figures of a run.

One call is a `Call`: a request (or a sequence of them for client streams), how long to read a
server stream, when to cancel. The runner gives every call a deadline, so nothing can hang,
and checks its status against `verdict`, the single place that says which answers are
acceptable."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from armonik.protogen.client import results_service_pb2_grpc, sessions_service_pb2_grpc
from armonik.protogen.common import result_status_pb2, sessions_common_pb2
from armonik.protogen.common import results_common_pb2 as rc
from google.protobuf import text_format
from google.protobuf.message import Message

from tests.fuzz.messages import MAX_RECEIVE_SIZE, IdPool, Rpc

Code = grpc.StatusCode

# A unary call (and a finite stream) answering later than this is a failure: generous, so that
# a 1,500-condition filter on SQLite on a busy 2-core machine still fits.
UNARY_BOUND = 10.0
# Slack over a stream's own deadline before the call counts as slow (time to notice the
# deadline and to tear the call down).
STREAM_SLACK = 5.0
# Calls that may never end by themselves (streams, and the Submitter's waits on tasks that may
# never run): their deadline is ours, DEADLINE_EXCEEDED is expected.
ENDLESS = {
    "Events.GetEvents",
    "Results.WatchResults",
    "Submitter.WatchResults",
    "Submitter.WaitForCompletion",
    "Submitter.WaitForAvailability",
}

# The answers a fuzzed request may get, whatever it holds. Never acceptable: UNKNOWN and
# INTERNAL (an unhandled error), UNAVAILABLE (the server or a backend broke), DATA_LOSS,
# UNAUTHENTICATED and PERMISSION_DENIED (no authentication is configured), and the codes
# below outside their conditions.
ALLOWED = {
    Code.OK,
    Code.INVALID_ARGUMENT,
    Code.NOT_FOUND,
    Code.ALREADY_EXISTS,
    Code.FAILED_PRECONDITION,
    Code.OUT_OF_RANGE,
    Code.ABORTED,  # a conflict with a concurrent change (the agent works meanwhile)
}


def verdict(
    code: Code, *, rpc: str, cancelled: bool, request_size: int, elapsed: float, bound: float
) -> str | None:
    """Why the answer `code` to a call is a failure; None if it is acceptable.

    - CANCELLED only when we cancelled the call ourselves;
    - DEADLINE_EXCEEDED only on endless streams (our deadline ends them); elsewhere it means
      slower than the bound;
    - RESOURCE_EXHAUSTED only for a request over the server's maximum receive size (4 MiB);
    - and no call slower than its bound."""
    if elapsed > bound:
        return f"slower than {bound:.0f}s ({elapsed:.1f}s)"
    if code in ALLOWED:
        return None
    if code == Code.CANCELLED and cancelled:
        return None
    if code == Code.DEADLINE_EXCEEDED:
        return None if rpc in ENDLESS else f"slower than its {bound - STREAM_SLACK:.0f}s deadline"
    if code == Code.RESOURCE_EXHAUSTED and request_size > MAX_RECEIVE_SIZE:
        return None
    return code.name


@dataclass
class Call:
    """One fuzzed call of `rpc`."""

    rpc: Rpc
    requests: list[Message]  # one for unary and server-streaming calls
    read: int | None = None  # stream responses to read before cancelling; None: all
    cancel: bool = False  # client streams: cancel instead of half-closing
    deadline: float = UNARY_BOUND
    label: str = "random"  # which strategy built it (for the counts)


@dataclass
class Violation:
    """Every failure of one kind (RPC, verdict, first words of the details) and the smallest
    request that caused it."""

    rpc: str
    reason: str
    details: str
    count: int = 0
    request: str = ""
    request_size: int = 10**12

    def describe(self) -> str:
        return (f"{self.rpc}: {self.reason} x{self.count}: {self.details[:200]!r}\n"
                f"    smallest request ({self.request_size} bytes): {self.request}")  # fmt: skip


def show(requests: list[Message], limit: int = 600) -> str:
    """A short readable form of a request (long strings and bytes cut)."""
    parts = []
    for request in requests:
        text = text_format.MessageToString(request, as_one_line=True, as_utf8=True)
        text = re.sub(
            r'"([^"\\]|\\.){80,}"', lambda m: f'"{m.group()[1:40]}…({len(m.group())})"', text
        )
        parts.append(f"{type(request).__name__}{{{text}}}")
    joined = " | ".join(parts) if parts else "<empty stream>"
    return joined if len(joined) <= limit else joined[:limit] + "…"


_NOISE = re.compile(r"[0-9a-f]{8}-[0-9a-f-]{27}|\d+")  # ids and numbers: one kind of failure


@dataclass
class Runner:
    """Sends calls on one channel and keeps counts and violations."""

    channel: grpc.Channel
    pool: IdPool
    requests: Counter[str] = field(default_factory=Counter)
    codes: Counter[tuple[str, str]] = field(default_factory=Counter)
    labels: Counter[str] = field(default_factory=Counter)
    violations: dict[tuple[str, str, str], Violation] = field(default_factory=dict)
    slowest: dict[str, float] = field(default_factory=dict)

    def run(self, call: Call) -> None:
        name = call.rpc.name
        self.requests[name] += 1
        self.labels[call.label] += 1
        start = time.monotonic()
        code, details, cancelled = self._send(call)
        elapsed = time.monotonic() - start
        self.slowest[name] = max(self.slowest.get(name, 0.0), elapsed)
        self.codes[(name, code.name)] += 1
        reason = verdict(
            code,
            rpc=name,
            cancelled=cancelled,
            request_size=sum(r.ByteSize() for r in call.requests),
            elapsed=elapsed,
            bound=call.deadline + (1.0 if call.rpc.kind == "unary" else STREAM_SLACK),
        )
        if reason is not None:
            self.record(name, reason, details, call.requests)

    def record(self, rpc: str, reason: str, details: str, requests: list[Message]) -> None:
        """Count a failure under its kind, keeping the smallest request."""
        key = (rpc, reason, _NOISE.sub("#", details)[:60])
        violation = self.violations.setdefault(key, Violation(rpc, reason, details))
        violation.count += 1
        size = sum(r.ByteSize() for r in requests)
        if size < violation.request_size:
            violation.request, violation.request_size = show(requests), size

    # -- sending --------------------------------------------------------------------------

    def _send(self, call: Call) -> tuple[Code, str, bool]:
        """Make the call; (status code, details, whether we cancelled it)."""
        method = call.rpc.callable(self.channel)
        sent, stop = threading.Event(), threading.Event()
        try:
            if call.rpc.kind == "unary":
                self.pool.harvest(method(call.requests[0], timeout=call.deadline))
                self.pool.learn(call.requests[0])
                return Code.OK, "", False
            if call.rpc.kind == "client_stream":
                return self._client_stream(method, call, sent, stop)
            if call.rpc.kind == "server_stream":
                stream = method(call.requests[0], timeout=call.deadline)
            else:
                stream = method(self._requests(call, sent, stop), timeout=call.deadline)
            return self._read(stream, call.read)
        except grpc.RpcError as error:
            return error.code(), error.details() or "", False
        finally:
            stop.set()

    def _read(self, stream: Any, count: int | None) -> tuple[Code, str, bool]:
        """Read `count` responses (None: to the end), then cancel the call."""
        read = 0
        try:
            if count != 0:
                for response in stream:
                    self.pool.harvest(response)
                    read += 1
                    if count is not None and read >= count:
                        break
        except grpc.RpcError as error:
            return error.code(), error.details() or "", False
        if count is not None and read >= count:
            stream.cancel()
            return Code.CANCELLED, "", True
        return Code.OK, "", False

    @staticmethod
    def _requests(call: Call, sent: threading.Event, stop: threading.Event) -> Iterator[Message]:
        """The request stream: every message, then, to cancel rather than half-close, wait
        until the call is over."""
        yield from call.requests
        sent.set()
        if call.cancel:
            stop.wait(call.deadline)

    def _client_stream(
        self, method: Any, call: Call, sent: threading.Event, stop: threading.Event
    ) -> tuple[Code, str, bool]:
        if not call.cancel:
            self.pool.harvest(method(iter(call.requests), timeout=call.deadline))
            return Code.OK, "", False
        future = method.future(self._requests(call, sent, stop), timeout=call.deadline)
        limit = time.monotonic() + call.deadline
        while not sent.wait(0.02) and not future.done() and time.monotonic() < limit:
            pass  # until every message is handed to gRPC, or the server answered early
        if sent.is_set() and not future.done():
            time.sleep(0.2)  # the messages reach the server before the cancellation
        future.cancel()
        try:
            self.pool.harvest(future.result())
            return Code.OK, "", False
        except grpc.FutureCancelledError:
            return Code.CANCELLED, "", True
        except grpc.RpcError as error:
            return error.code(), error.details() or "", error.code() == Code.CANCELLED

    # -- cancelled uploads ----------------------------------------------------------------

    def cancelled_upload_keeps_result(self, upload: Rpc, session_id: str, chunk: bytes) -> None:
        """Create a result, upload its id and one chunk, cancel: the result must stay as it was
        (an upload is committed only by a normal half-close)."""
        stub = results_service_pb2_grpc.ResultsStub(self.channel)
        self.requests["Results.CreateResultsMetaData"] += 1
        try:
            created = stub.CreateResultsMetaData(
                rc.CreateResultsMetaDataRequest(
                    session_id=session_id,
                    results=[rc.CreateResultsMetaDataRequest.ResultCreate(name="cancelled")],
                ),
                timeout=UNARY_BOUND,
            )
        except grpc.RpcError:
            return  # the session takes no new results (closed, deleted...): nothing to check
        result_id = created.results[0].result_id
        identifier = rc.UploadResultDataRequest.ResultIdentifier(
            session_id=session_id, result_id=result_id
        )
        requests = [
            rc.UploadResultDataRequest(id=identifier),
            rc.UploadResultDataRequest(data_chunk=chunk),
        ]
        self.run(Call(upload, requests, cancel=True, deadline=5.0, label="cancelled upload"))
        time.sleep(0.3)  # a server that commits on cancellation has done so by now
        self.requests["Results.GetResult"] += 1
        try:
            result = stub.GetResult(
                rc.GetResultRequest(result_id=result_id), timeout=UNARY_BOUND
            ).result
        except grpc.RpcError as error:
            if error.code() != Code.NOT_FOUND:  # the session may be gone meanwhile
                self.record("Results.GetResult", error.code().name, error.details() or "", [])
            return
        if result.status == result_status_pb2.RESULT_STATUS_COMPLETED:
            self.record(
                upload.name,
                "cancelled upload stored as COMPLETED",
                f"result COMPLETED with {result.size} bytes, the partial upload",
                requests,
            )

    def session_status(self, session_id: str) -> int | None:
        """A session's status, None if it cannot be read."""
        stub = sessions_service_pb2_grpc.SessionsStub(self.channel)
        try:
            return int(
                stub.GetSession(
                    sessions_common_pb2.GetSessionRequest(session_id=session_id),
                    timeout=UNARY_BOUND,
                ).session.status
            )
        except grpc.RpcError:
            return None


# Lines of the run's summary, printed by tests/fuzz/conftest.py at the end of the session.
SUMMARY: list[str] = []
