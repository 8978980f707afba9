from __future__ import annotations

from armonik.client import ArmoniKResults, ArmoniKSessions, ArmoniKTasks, ArmoniKVersions
from armonik.common import SessionStatus, TaskDefinition, TaskStatus


def test_versions(versions: ArmoniKVersions) -> None:
    found = versions.list_versions()
    assert found["core"].startswith("pyarmonik-")
    assert found["api"] == "3.29.4"


def test_session_submit_flow(
    sessions: ArmoniKSessions, results: ArmoniKResults, tasks: ArmoniKTasks, session_id: str
) -> None:
    assert sessions.get_session(session_id).status == SessionStatus.RUNNING
    meta = results.create_results_metadata(["out", "payload"], session_id)
    submitted = tasks.submit_tasks(
        session_id,
        [
            TaskDefinition(
                payload_id=meta["payload"].result_id, expected_output_ids=[meta["out"].result_id]
            )
        ],
    )
    task_id = submitted[0].id
    assert tasks.get_task(task_id).status == TaskStatus.PENDING
    results.upload_result_data(meta["payload"].result_id, session_id, b"hello")
    assert tasks.get_task(task_id).status == TaskStatus.SUBMITTED
    assert results.download_result_data(meta["payload"].result_id, session_id) == b"hello"
