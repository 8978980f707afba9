"""OpenTelemetry traces of a task's path: submission → queue → agent → worker → post-processing.

Off unless configured: `configure()` exports over OTLP/gRPC when an endpoint is given (the
`otlp_endpoint` setting, PYARMONIK_OTLP_ENDPOINT) or OTEL_EXPORTER_OTLP_ENDPOINT is set. While
off, every helper costs one global read and returns a shared no-op; OpenTelemetry is not even
imported.

The queue carries task ids only, so no trace context travels with a task from the control
plane to an agent. Ids are derived instead:
- one trace per session, whose id is the session's UUID (find a session's trace by its id);
  its root is a zero-length "session" span emitted when the session is created;
- a task's spans hang under a "task" span whose span id derives from the task id, so any
  process (the agent, its worker through `worker_metadata`) can attach spans to it; the task
  span itself and its stages (queue, acquire, prefetch, worker, post-processing) are emitted
  when the task ends (`record_task`), from the timestamps the database keeps anyway.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from pyarmonik.domain.records import Session, Task
from pyarmonik.domain.statuses import TaskStatus

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.trace import Span, SpanContext, Tracer

_tracer: Tracer | None = None
_provider: TracerProvider | None = None
# (trace id, span id) the next span must take (see _ForcedIds).
_forced: ContextVar[tuple[int, int] | None] = ContextVar("pyarmonik_forced_ids", default=None)
_NOOP: contextlib.nullcontext[None] = contextlib.nullcontext()

# A task's stages: (span name, start field, end field) of the Task record.
STAGES = (
    ("dependencies", "created_at", "submitted_at"),
    ("queue", "submitted_at", "received_at"),
    ("acquire", "received_at", "acquired_at"),
    ("prefetch", "acquired_at", "fetched_at"),
    ("wait_worker", "fetched_at", "started_at"),
    ("worker", "started_at", "processed_at"),
    ("post_processing", "processed_at", "ended_at"),
)


def enabled() -> bool:
    return _tracer is not None


def configure(service_name: str, endpoint: str = "") -> bool:
    """Export spans over OTLP/gRPC to `endpoint` (else OTEL_EXPORTER_OTLP_ENDPOINT); without
    either, or with OTEL_SDK_DISABLED=true, tracing stays as it is (off by default)."""
    endpoint = endpoint or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
    if not endpoint or os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    install(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)), service_name)
    return True


def install(processor: SpanProcessor, service_name: str = "pyarmonik") -> None:
    """Turn tracing on with this span processor (tests pass an in-memory exporter's)."""
    global _tracer, _provider
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    shutdown()
    _provider = TracerProvider(
        resource=Resource.create({"service.name": service_name}), id_generator=_forced_ids()
    )
    _provider.add_span_processor(processor)
    _tracer = _provider.get_tracer("pyarmonik")


def shutdown() -> None:
    """Flush and turn tracing off."""
    global _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    _tracer, _provider = None, None


def _forced_ids() -> Any:
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    class _ForcedIds(RandomIdGenerator):
        """Random ids, except for the spans whose ids are derived (session root, task)."""

        def generate_span_id(self) -> int:
            forced = _forced.get()
            return forced[1] if forced else super().generate_span_id()

        def generate_trace_id(self) -> int:
            forced = _forced.get()
            return forced[0] if forced else super().generate_trace_id()

    return _ForcedIds()


# -- derived ids ------------------------------------------------------------------------------


def _digest(text: str, size: int) -> int:
    value = int.from_bytes(hashlib.sha256(text.encode()).digest()[:size], "big")
    return value or 1  # zero is the invalid id


def session_trace_id(session_id: str) -> int:
    """The trace id of a session: its UUID (a hash for ids that are not UUIDs)."""
    try:
        return uuid.UUID(session_id).int or 1
    except ValueError:
        return _digest(session_id, 16)


def session_span_id(session_id: str) -> int:
    return _digest(f"session:{session_id}", 8)


def task_span_id(task_id: str) -> int:
    return _digest(f"task:{task_id}", 8)


def _remote(trace_id: int, span_id: int) -> SpanContext:
    from opentelemetry.trace import SpanContext, TraceFlags

    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(1))


def _parent(trace_id: int, span_id: int) -> Any:
    from opentelemetry.trace import NonRecordingSpan, set_span_in_context

    return set_span_in_context(NonRecordingSpan(_remote(trace_id, span_id)))


def traceparent(task: Task) -> str:
    """W3C traceparent naming the task's span."""
    return f"00-{session_trace_id(task.session_id):032x}-{task_span_id(task.task_id):016x}-01"


# -- control plane ----------------------------------------------------------------------------


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def session_started(session: Session) -> None:
    """Emit the root span of the session's trace (zero length, at its creation)."""
    tracer = _tracer
    if tracer is None:
        return
    from opentelemetry.context import Context

    ids = (session_trace_id(session.session_id), session_span_id(session.session_id))
    token = _forced.set(ids)
    try:
        stamp = _ns(session.created_at) if session.created_at else None
        span = tracer.start_span(
            "session",
            context=Context(),
            start_time=stamp,
            attributes={
                "armonik.session_id": session.session_id,
                "armonik.partition_ids": session.partition_ids,
            },
        )
        span.end(end_time=stamp)
    finally:
        _forced.reset(token)


def submission_span(
    session_id: str,
    task_count: int,
    metadata: Callable[[], Sequence[tuple[str, Any]] | None] | None = None,
) -> contextlib.AbstractContextManager[Span | None]:
    """A span around one SubmitTasks request, in the session's trace; a W3C trace context sent
    by the client (`traceparent` metadata) becomes a link to the client's trace."""
    tracer = _tracer
    if tracer is None:
        return _NOOP
    return _submission_span(tracer, session_id, task_count, metadata)


@contextlib.contextmanager
def _submission_span(
    tracer: Tracer,
    session_id: str,
    task_count: int,
    metadata: Callable[[], Sequence[tuple[str, Any]] | None] | None,
) -> Iterator[Span]:
    from opentelemetry.propagate import extract
    from opentelemetry.trace import Link, get_current_span

    links = []
    carrier = {k: v for k, v in (metadata() or ()) if isinstance(v, str)} if metadata else {}
    if "traceparent" in carrier:
        client = get_current_span(extract(carrier)).get_span_context()
        if client.is_valid:
            links.append(Link(client))
    with tracer.start_as_current_span(
        "SubmitTasks",
        context=_parent(session_trace_id(session_id), session_span_id(session_id)),
        links=links,
        attributes={"armonik.session_id": session_id, "armonik.task_count": task_count},
    ) as span:
        yield span


# -- agents -----------------------------------------------------------------------------------


def task_span(
    task: Task, name: str, **attributes: str | int | float
) -> contextlib.AbstractContextManager[Span | None]:
    """A live span under the task's span, e.g. `with task_span(task, "prefetch"): ...`; it can
    be opened in any process and any asyncio task (the parent is derived from the task)."""
    tracer = _tracer
    if tracer is None:
        return _NOOP
    return tracer.start_as_current_span(
        name,
        context=_parent(session_trace_id(task.session_id), task_span_id(task.task_id)),
        attributes={"armonik.task_id": task.task_id, **attributes},
    )


def worker_metadata(task: Task) -> tuple[tuple[str, str], ...]:
    """gRPC metadata for the worker's Process call: a worker with OpenTelemetry continues the
    trace under the task's span. Empty while tracing is off."""
    if _tracer is None:
        return ()
    return (("traceparent", traceparent(task)),)


def record_task(
    task: Task,
    status: TaskStatus,
    ended_at: float,
    processed_at: float | None = None,
    error: str = "",
) -> None:
    """Emit the task's span and one span per stage of its path, from its timestamps (called
    once the outcome of an attempt is committed)."""
    tracer = _tracer
    if tracer is None:
        return
    from opentelemetry.trace import Link, Status, StatusCode, set_span_in_context

    trace_id = session_trace_id(task.session_id)
    stamps: dict[str, float | None] = {
        name: getattr(task, name) for _, start, end in STAGES for name in (start, end)
    }
    # A failed attempt has no processed_at: its worker stage lasts until it ended.
    worker_end = processed_at or task.processed_at or (ended_at if task.started_at else None)
    stamps.update(ended_at=ended_at, processed_at=worker_end)
    links = (
        [Link(_remote(trace_id, task_span_id(task.retry_of_ids[-1])))] if task.retry_of_ids else []
    )
    token = _forced.set((trace_id, task_span_id(task.task_id)))
    try:
        span = tracer.start_span(
            "task",
            context=_parent(trace_id, session_span_id(task.session_id)),
            start_time=_ns(task.created_at or ended_at),
            links=links,
            attributes={
                "armonik.session_id": task.session_id,
                "armonik.task_id": task.task_id,
                "armonik.initial_task_id": task.initial_task_id,
                "armonik.attempt": len(task.retry_of_ids) + 1,
                "armonik.partition_id": task.options.partition_id,
                "armonik.status": status.name,
                "armonik.owner_pod_id": task.owner_pod_id,
                "armonik.pod_hostname": task.pod_hostname,
            },
        )
    finally:
        _forced.reset(token)
    if status is not TaskStatus.COMPLETED:
        span.set_status(Status(StatusCode.ERROR, error or status.name))
    inside = set_span_in_context(span)
    for name, start, end in STAGES:
        begin, finish = stamps[start], stamps[end]
        if begin is not None and finish is not None and finish >= begin:
            tracer.start_span(name, context=inside, start_time=_ns(begin)).end(_ns(finish))
    span.end(end_time=_ns(ended_at))
