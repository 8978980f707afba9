"""Sessions service: creation, the lifecycle state machine and its effects on tasks/results."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import grpc
import pytest
from armonik.client import ArmoniKResults, ArmoniKSessions, ArmoniKTasks
from armonik.common import (
    ResultStatus,
    Session,
    SessionStatus,
    TaskDefinition,
    TaskOptions,
    TaskStatus,
)
from armonik.protogen.client.results_service_pb2_grpc import ResultsStub
from armonik.protogen.client.sessions_service_pb2_grpc import SessionsStub
from armonik.protogen.common import (
    results_common_pb2,
    sessions_common_pb2,
    sessions_fields_pb2,
    sessions_filters_pb2,
)
from armonik.protogen.common.filters_common_pb2 import FilterString

from tests.conformance.conftest import OPTIONS
from tests.conformance.support import code_of, submit_one

FP = grpc.StatusCode.FAILED_PRECONDITION


def test_create_session_defaults_to_the_default_partition(sessions: ArmoniKSessions) -> None:
    session_id = sessions.create_session(OPTIONS)
    session = sessions.get_session(session_id)
    assert session.session_id == session_id
    assert session.status == SessionStatus.RUNNING
    assert session.partition_ids == ["default"]
    assert session.options.partition_id == "default"
    assert session.options.max_duration == timedelta(seconds=60)
    assert (session.options.priority, session.options.max_retries) == (1, 2)
    assert session.client_submission and session.worker_submission
    assert session.created_at is not None
    assert session.cancelled_at is None and session.closed_at is None


def test_create_session_keeps_partitions_and_options(sessions: ArmoniKSessions) -> None:
    options = TaskOptions(
        max_duration=timedelta(minutes=5),
        priority=7,
        max_retries=3,
        application_name="app",
        application_version="1.0",
        engine_type="python",
        options={"k": "v"},
    )
    session = sessions.get_session(sessions.create_session(options, partition_ids=["other"]))
    assert session.partition_ids == ["other"]
    assert session.options.partition_id == "other"
    assert session.options.application_name == "app"
    assert session.options.application_version == "1.0"
    assert session.options.engine_type == "python"
    assert session.options.options == {"k": "v"}
    assert session.options.priority == 7


def test_create_session_adds_the_default_option_partition(sessions: ArmoniKSessions) -> None:
    options = TaskOptions(timedelta(seconds=10), priority=1, max_retries=1, partition_id="other")
    session = sessions.get_session(sessions.create_session(options, partition_ids=["default"]))
    assert sorted(session.partition_ids) == ["default", "other"]
    assert session.options.partition_id == "other"


def test_create_session_with_unknown_partition_is_not_found(sessions: ArmoniKSessions) -> None:
    assert code_of(lambda: sessions.create_session(OPTIONS, partition_ids=["nope"])) == (
        grpc.StatusCode.NOT_FOUND
    )
    options = TaskOptions(timedelta(seconds=10), priority=1, max_retries=1, partition_id="nope")
    assert code_of(lambda: sessions.create_session(options)) == grpc.StatusCode.NOT_FOUND


def test_get_unknown_session_is_not_found(sessions: ArmoniKSessions) -> None:
    assert code_of(lambda: sessions.get_session("no-such-session")) == grpc.StatusCode.NOT_FOUND


# -- the lifecycle state machine --------------------------------------------------------------

Setup = Callable[[ArmoniKSessions, str], object]
SETUPS: dict[str, Setup] = {
    "running": lambda s, i: None,
    "paused": lambda s, i: s.pause_session(i),
    "closed": lambda s, i: s.close_session(i),
    "cancelled": lambda s, i: s.cancel_session(i),
    "purged": lambda s, i: (s.close_session(i), s.purge_session(i)),
}
ACTIONS: dict[str, Callable[[ArmoniKSessions, str], Session]] = {
    "pause": lambda s, i: s.pause_session(i),
    "resume": lambda s, i: s.resume_session(i),
    "close": lambda s, i: s.close_session(i),
    "cancel": lambda s, i: s.cancel_session(i),
    "purge": lambda s, i: s.purge_session(i),
}
R, P, C, X, G = (
    SessionStatus.RUNNING,
    SessionStatus.PAUSED,
    SessionStatus.CLOSED,
    SessionStatus.CANCELLED,
    SessionStatus.PURGED,
)
# Outcome of each action from each state: the new status, or None for FAILED_PRECONDITION.
EXPECTED: dict[tuple[str, str], SessionStatus | None] = {
    ("running", "pause"): P,
    ("running", "resume"): R,  # resuming a running session is a no-op
    ("running", "close"): C,
    ("running", "cancel"): X,
    ("running", "purge"): None,
    ("paused", "pause"): None,
    ("paused", "resume"): R,
    ("paused", "close"): C,
    ("paused", "cancel"): X,
    ("paused", "purge"): None,
    ("closed", "pause"): None,
    ("closed", "resume"): None,
    ("closed", "close"): None,
    ("closed", "cancel"): X,
    ("closed", "purge"): G,
    ("cancelled", "pause"): None,
    ("cancelled", "resume"): None,
    ("cancelled", "close"): None,
    ("cancelled", "cancel"): None,
    ("cancelled", "purge"): G,
    ("purged", "pause"): None,
    ("purged", "resume"): None,
    ("purged", "close"): None,
    ("purged", "cancel"): None,
    ("purged", "purge"): None,
}


@pytest.mark.parametrize(("state", "action"), sorted(EXPECTED))
def test_session_transition(sessions: ArmoniKSessions, state: str, action: str) -> None:
    session_id = sessions.create_session(OPTIONS)
    SETUPS[state](sessions, session_id)
    before = sessions.get_session(session_id).status
    expected = EXPECTED[(state, action)]
    if expected is None:
        assert code_of(lambda: ACTIONS[action](sessions, session_id)) == FP
        assert sessions.get_session(session_id).status == before
    else:
        reply = ACTIONS[action](sessions, session_id)
        assert reply.session_id == session_id
        assert reply.status == expected
        assert sessions.get_session(session_id).status == expected


@pytest.mark.parametrize("action", [*sorted(ACTIONS), "get", "stop_submission"])
def test_actions_on_a_deleted_session_are_not_found(sessions: ArmoniKSessions, action: str) -> None:
    session_id = sessions.create_session(OPTIONS)
    sessions.delete_session(session_id)
    calls: dict[str, Callable[[], object]] = {
        "get": lambda: sessions.get_session(session_id),
        "stop_submission": lambda: sessions.stop_submission_session(session_id, True, True),
        **{name: (lambda a=act: a(sessions, session_id)) for name, act in ACTIONS.items()},
    }
    assert code_of(calls[action]) == grpc.StatusCode.NOT_FOUND


def test_close_records_time_and_duration_and_stops_submission(sessions: ArmoniKSessions) -> None:
    session_id = sessions.create_session(OPTIONS)
    closed = sessions.close_session(session_id)
    assert closed.closed_at is not None
    assert closed.duration is not None and closed.duration >= timedelta(0)
    assert not closed.client_submission and not closed.worker_submission
    assert sessions.get_session(session_id).closed_at == closed.closed_at


def test_cancel_records_time_and_stops_submission(sessions: ArmoniKSessions) -> None:
    session_id = sessions.create_session(OPTIONS)
    cancelled = sessions.cancel_session(session_id)
    assert cancelled.cancelled_at is not None
    assert not cancelled.client_submission and not cancelled.worker_submission


def test_purge_records_time(sessions: ArmoniKSessions) -> None:
    session_id = sessions.create_session(OPTIONS)
    sessions.cancel_session(session_id)
    purged = sessions.purge_session(session_id)
    assert purged.status == SessionStatus.PURGED
    assert purged.purged_at is not None


# -- effects on tasks and results -------------------------------------------------------------


def test_pause_and_resume_move_tasks(
    sessions: ArmoniKSessions, results: ArmoniKResults, tasks: ArmoniKTasks, session_id: str
) -> None:
    ready = submit_one(results, tasks, session_id)
    waiting = submit_one(results, tasks, session_id, payload=None)
    assert tasks.get_task(ready.task_id).status == TaskStatus.SUBMITTED

    assert sessions.pause_session(session_id).status == SessionStatus.PAUSED
    assert tasks.get_task(ready.task_id).status == TaskStatus.PAUSED
    assert tasks.get_task(waiting.task_id).status == TaskStatus.PENDING
    # Tasks becoming ready while paused are PAUSED too, new or old.
    late = submit_one(results, tasks, session_id)
    assert tasks.get_task(late.task_id).status == TaskStatus.PAUSED
    results.upload_result_data(waiting.payload_id, session_id, b"now")
    assert tasks.get_task(waiting.task_id).status == TaskStatus.PAUSED

    assert sessions.resume_session(session_id).status == SessionStatus.RUNNING
    for task_id in (ready.task_id, waiting.task_id, late.task_id):
        assert tasks.get_task(task_id).status == TaskStatus.SUBMITTED


def test_cancel_session_cancels_tasks_and_aborts_results(
    sessions: ArmoniKSessions, results: ArmoniKResults, tasks: ArmoniKTasks, session_id: str
) -> None:
    first = submit_one(results, tasks, session_id)
    second = submit_one(results, tasks, session_id, dependencies=first.output_ids)
    loose = results.create_results_metadata(["loose"], session_id)["loose"].result_id
    done = results.create_results({"done": b"data"}, session_id)["done"].result_id

    sessions.cancel_session(session_id)
    for task_id in (first.task_id, second.task_id):
        task = tasks.get_task(task_id)
        assert task.status == TaskStatus.CANCELLED
        assert task.ended_at is not None
    for result_id in (*first.output_ids, *second.output_ids, loose):
        assert results.get_result(result_id).status == ResultStatus.ABORTED
    # Completed data is kept: it is not a CREATED result.
    assert results.get_result(done).status == ResultStatus.COMPLETED
    assert results.download_result_data(done, session_id) == b"data"


def test_purge_deletes_data_but_respects_manual_deletion(
    sessions: ArmoniKSessions,
    results: ArmoniKResults,
    results_stub: ResultsStub,
    session_id: str,
) -> None:
    plain = results.create_results({"plain": b"plain data"}, session_id)["plain"]
    uploaded = results.create_results_metadata(["uploaded"], session_id)["uploaded"]
    results.upload_result_data(uploaded.result_id, session_id, b"uploaded data")
    kept = results_stub.CreateResults(
        results_common_pb2.CreateResultsRequest(
            session_id=session_id,
            results=[
                results_common_pb2.CreateResultsRequest.ResultCreate(
                    name="kept", data=b"kept data", manual_deletion=True
                )
            ],
        )
    ).results[0]
    assert kept.manual_deletion

    assert code_of(lambda: sessions.purge_session(session_id)) == FP  # still running
    sessions.close_session(session_id)
    sessions.purge_session(session_id)

    for result_id in (plain.result_id, uploaded.result_id):
        result = results.get_result(result_id)
        assert result.status == ResultStatus.DELETED
        assert result.opaque_id == b""
        assert code_of(lambda r=result_id: results.download_result_data(r, session_id)) == (
            grpc.StatusCode.NOT_FOUND
        )
    assert results.get_result(kept.result_id).status == ResultStatus.COMPLETED
    assert results.download_result_data(kept.result_id, session_id) == b"kept data"


def test_delete_session_removes_its_metadata(
    sessions: ArmoniKSessions, results: ArmoniKResults, tasks: ArmoniKTasks, session_id: str
) -> None:
    task = submit_one(results, tasks, session_id)
    sessions.cancel_session(session_id)
    sessions.purge_session(session_id)
    deleted = sessions.delete_session(session_id)
    assert deleted.session_id == session_id
    assert deleted.status == SessionStatus.DELETED
    assert deleted.deleted_at is not None
    assert code_of(lambda: sessions.get_session(session_id)) == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: tasks.get_task(task.task_id)) == grpc.StatusCode.NOT_FOUND
    for result_id in (task.payload_id, *task.output_ids):
        assert code_of(lambda r=result_id: results.get_result(r)) == grpc.StatusCode.NOT_FOUND
    # Deleting again (or any unknown id) is idempotent.
    assert sessions.delete_session(session_id).status == SessionStatus.DELETED


def test_delete_unknown_session_returns_a_deleted_session(sessions: ArmoniKSessions) -> None:
    deleted = sessions.delete_session("never-existed")
    assert deleted.session_id == "never-existed"
    assert deleted.status == SessionStatus.DELETED


def test_delete_running_session_is_allowed(
    sessions: ArmoniKSessions, results: ArmoniKResults, tasks: ArmoniKTasks, session_id: str
) -> None:
    task = submit_one(results, tasks, session_id)
    assert sessions.delete_session(session_id).status == SessionStatus.DELETED
    assert code_of(lambda: tasks.get_task(task.task_id)) == grpc.StatusCode.NOT_FOUND


def test_stop_client_submission_refuses_new_tasks(
    sessions: ArmoniKSessions, results: ArmoniKResults, tasks: ArmoniKTasks, session_id: str
) -> None:
    submit_one(results, tasks, session_id)
    stopped = sessions.stop_submission_session(session_id, client=True, worker=False)
    assert not stopped.client_submission and stopped.worker_submission
    session = sessions.get_session(session_id)
    assert not session.client_submission and session.worker_submission
    assert session.status == SessionStatus.RUNNING
    assert code_of(lambda: submit_one(results, tasks, session_id)) == FP


def test_stop_worker_submission_keeps_clients(
    sessions: ArmoniKSessions, results: ArmoniKResults, tasks: ArmoniKTasks, session_id: str
) -> None:
    stopped = sessions.stop_submission_session(session_id, client=False, worker=True)
    assert stopped.client_submission and not stopped.worker_submission
    submit_one(results, tasks, session_id)
    both = sessions.stop_submission_session(session_id, client=True, worker=True)
    assert not both.client_submission and not both.worker_submission


@pytest.mark.parametrize("state", ["closed", "cancelled"])
def test_submission_to_a_finished_session_is_refused(
    sessions: ArmoniKSessions,
    results: ArmoniKResults,
    tasks: ArmoniKTasks,
    session_id: str,
    state: str,
) -> None:
    created = results.create_results_metadata(["payload", "out"], session_id)
    results.upload_result_data(created["payload"].result_id, session_id, b"p")
    SETUPS[state](sessions, session_id)
    definition = TaskDefinition(
        payload_id=created["payload"].result_id, expected_output_ids=[created["out"].result_id]
    )
    assert code_of(lambda: tasks.submit_tasks(session_id, [definition])) == FP


def test_list_sessions_with_task_options(sessions_stub: SessionsStub, session_id: str) -> None:
    only = sessions_filters_pb2.Filters(
        **{
            "or": [
                sessions_filters_pb2.FiltersAnd(
                    **{
                        "and": [
                            sessions_filters_pb2.FilterField(
                                field=sessions_fields_pb2.SessionField(
                                    session_raw_field=sessions_fields_pb2.SessionRawField(
                                        field=sessions_fields_pb2.SESSION_RAW_ENUM_FIELD_SESSION_ID
                                    )
                                ),
                                filter_string=FilterString(value=session_id),
                            )
                        ]
                    }
                )
            ]
        }
    )
    reply = sessions_stub.ListSessions(
        sessions_common_pb2.ListSessionsRequest(
            page=0, page_size=10, filters=only, with_task_options=True
        )
    )
    assert reply.total == 1
    assert [s.session_id for s in reply.sessions] == [session_id]
    assert reply.sessions[0].options.max_retries == 2
