"""Trace spans of one task's path reach an in-memory OpenTelemetry exporter: the control plane's
SubmitTasks (gRPC, official client stubs) and the agent's side (acquire, start, fail then
complete through scheduling.processing, in-process), all in the session's trace."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from armonik.client import ArmoniKResults, ArmoniKSessions, ArmoniKTasks
from armonik.common import TaskOptions
from armonik.protogen.client.tasks_service_pb2_grpc import TasksStub
from armonik.protogen.common import tasks_common_pb2 as pb
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from pyarmonik.domain.options import TaskOptions as DomainOptions
from pyarmonik.domain.records import Task
from pyarmonik.observability import tracing
from tests.helpers import control_plane
from tests.observability.support import run_task

OPTIONS = TaskOptions(max_duration=timedelta(seconds=60), priority=1, max_retries=1)
CLIENT_TRACE = 0x0AF7651916CD43DD8448EB211C80319C
CLIENT_PARENT = f"00-{CLIENT_TRACE:032x}-b7ad6b7169203331-01"
STAGES = ["dependencies", "queue", "acquire", "prefetch", "wait_worker", "worker"]


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    memory = InMemorySpanExporter()
    tracing.install(SimpleSpanProcessor(memory), "test")
    yield memory
    tracing.shutdown()


def _parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def test_spans_of_one_task_path(tmp_path: Path, exporter: InMemorySpanExporter) -> None:
    with control_plane(tmp_path) as plane, grpc.insecure_channel(plane.endpoint) as channel:
        session_id = ArmoniKSessions(channel).create_session(OPTIONS)
        results = ArmoniKResults(channel)
        output = results.create_results_metadata(["out"], session_id)["out"].result_id
        payload = results.create_results({"in": b"x"}, session_id)["in"].result_id
        # The raw stub, to send a W3C trace context as a traced client would.
        reply = TasksStub(channel).SubmitTasks(
            pb.SubmitTasksRequest(
                session_id=session_id,
                task_creations=[
                    pb.SubmitTasksRequest.TaskCreation(
                        payload_id=payload, expected_output_keys=[output]
                    )
                ],
            ),
            metadata=[("traceparent", CLIENT_PARENT)],
        )
        first_id = reply.task_infos[0].task_id
        backends = plane.plane.backends  # type: ignore[union-attr]
        plane.call(run_task(backends, first_id, "crash"))
        retry_id = f"{first_id}###1"
        retry: Task = plane.call(run_task(backends, retry_id, "ok"))
        with tracing.task_span(retry, "agent-stage", detail="live"):
            pass  # what an agent adds around one of its stages
        _, listed = ArmoniKTasks(channel).list_tasks(page_size=10)

    spans = exporter.get_finished_spans()
    trace_id = uuid.UUID(session_id).int
    assert {s.context.trace_id for s in spans} == {trace_id}  # the session's trace: its id
    (root,) = [s for s in spans if s.name == "session"]
    assert root.parent is None and root.context.span_id == tracing.session_span_id(session_id)

    (submit,) = [s for s in spans if s.name == "SubmitTasks"]
    assert _parent_id(submit) == root.context.span_id
    assert submit.attributes is not None and submit.attributes["armonik.task_count"] == 1
    assert [link.context.trace_id for link in submit.links] == [CLIENT_TRACE]

    task_spans = {s.attributes["armonik.task_id"]: s for s in spans if s.name == "task"}  # type: ignore[index]
    assert set(task_spans) == {first_id, retry_id}
    first, second = task_spans[first_id], task_spans[retry_id]
    for task_id, span in task_spans.items():
        assert span.context.span_id == tracing.task_span_id(task_id)
        assert _parent_id(span) == root.context.span_id
    assert first.status.status_code.name == "ERROR" and second.status.status_code.name == "UNSET"
    assert [link.context.span_id for link in second.links] == [first.context.span_id]

    under = {
        s.name: s for s in spans if _parent_id(s) == second.context.span_id and s.name != "task"
    }
    assert set(STAGES + ["post_processing", "agent-stage"]) == set(under)
    # Stages are timed by the database's timestamps, as ListTasksDetailed shows them.
    shown = next(t for t in listed if t.id == retry_id)
    for name, stamp in (("queue", shown.submitted_at), ("worker", shown.started_at)):
        assert under[name].start_time == pytest.approx(stamp.timestamp() * 1e9, abs=2e3)
    assert under["post_processing"].end_time == pytest.approx(
        shown.ended_at.timestamp() * 1e9, abs=2e3
    )
    assert tracing.worker_metadata(retry) == (
        ("traceparent", f"00-{trace_id:032x}-{second.context.span_id:016x}-01"),
    )


def test_off_by_default_and_cheap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    tracing.shutdown()
    assert not tracing.configure("test")  # no endpoint: stays off
    assert not tracing.enabled()
    task = Task(task_id="t", session_id=str(uuid.uuid4()), payload_id="p", options=DomainOptions())
    assert isinstance(tracing.submission_span("s", 1), contextlib.nullcontext)
    assert isinstance(tracing.task_span(task, "x"), contextlib.nullcontext)
    assert tracing.worker_metadata(task) == ()
    tracing.record_task(task, task.status, 1.0)  # nothing to do, nothing raised


def test_otlp_export_when_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    try:
        assert tracing.configure("test")
        assert tracing.enabled()
        monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
        tracing.shutdown()
        assert not tracing.configure("test")
    finally:
        tracing.shutdown()
