"""Results service: metadata, inline data, streamed upload/download, ownership, deletion and
import (WatchResults has its own module)."""

from __future__ import annotations

import os

import grpc
import pytest
from armonik.client import ArmoniKResults, ArmoniKSessions, ArmoniKTasks
from armonik.common import ResultStatus, TaskDefinition, TaskStatus
from armonik.protogen.client.results_service_pb2_grpc import ResultsStub
from armonik.protogen.common import results_common_pb2 as pb

from tests.conformance.support import code_of, submit_one

NOT_FOUND = grpc.StatusCode.NOT_FOUND


def test_service_configuration_has_a_usable_chunk_size(results: ArmoniKResults) -> None:
    size = results.get_service_config()
    # Positive (else the client loops forever) and below gRPC's default 4 MiB message limit.
    assert 0 < size < 4 * 1024 * 1024


def test_create_results_metadata(results: ArmoniKResults, session_id: str) -> None:
    created = results.create_results_metadata(["a", "b", "c"], session_id)
    assert sorted(created) == ["a", "b", "c"]
    assert len({r.result_id for r in created.values()}) == 3
    for name, result in created.items():
        assert result.name == name
        assert result.session_id == session_id
        assert result.status == ResultStatus.CREATED
        assert result.owner_task_id == ""
        assert result.created_by == ""
        assert result.size == 0
        assert result.created_at is not None
        assert result.completed_at is None
        fetched = results.get_result(result.result_id)
        assert fetched.name == name and fetched.status == ResultStatus.CREATED


def test_create_results_metadata_manual_deletion(
    results_stub: ResultsStub, session_id: str
) -> None:
    reply = results_stub.CreateResultsMetaData(
        pb.CreateResultsMetaDataRequest(
            session_id=session_id,
            results=[
                pb.CreateResultsMetaDataRequest.ResultCreate(name="m", manual_deletion=True),
                pb.CreateResultsMetaDataRequest.ResultCreate(name="n"),
            ],
        )
    )
    assert [(r.name, r.manual_deletion) for r in reply.results] == [("m", True), ("n", False)]
    fetched = results_stub.GetResult(pb.GetResultRequest(result_id=reply.results[0].result_id))
    assert fetched.result.manual_deletion


def test_create_results_with_inline_data(results: ArmoniKResults, session_id: str) -> None:
    data = {"x": b"first", "y": b"", "z": os.urandom(3000)}
    created = results.create_results(data, session_id, batch_size=2)
    assert sorted(created) == ["x", "y", "z"]
    for name, result in created.items():
        assert result.status == ResultStatus.COMPLETED
        assert result.size == len(data[name])
        assert result.opaque_id
        assert result.completed_at is not None
        assert results.download_result_data(result.result_id, session_id) == data[name]


@pytest.mark.parametrize("size", [0, 1024, 50 * 1024 * 1024], ids=["0B", "1KiB", "50MiB"])
def test_upload_download_round_trip(results: ArmoniKResults, session_id: str, size: int) -> None:
    data = os.urandom(size)
    result_id = results.create_results_metadata(["data"], session_id)["data"].result_id
    results.upload_result_data(result_id, session_id, data)
    stored = results.get_result(result_id)
    assert stored.status == ResultStatus.COMPLETED
    assert stored.size == size
    assert stored.completed_at is not None
    assert results.download_result_data(result_id, session_id) == data


def test_download_chunks_respect_the_chunk_size(
    results: ArmoniKResults, results_stub: ResultsStub, session_id: str
) -> None:
    limit = results.get_service_config()
    data = os.urandom(2 * limit + 17)
    result_id = results.create_results({"big": data}, session_id)["big"].result_id
    chunks = [
        m.data_chunk
        for m in results_stub.DownloadResultData(
            pb.DownloadResultDataRequest(session_id=session_id, result_id=result_id)
        )
    ]
    assert b"".join(chunks) == data
    assert len(chunks) >= 3
    assert all(0 < len(c) <= limit for c in chunks)


def test_upload_result_data_replies_with_the_result(
    results_stub: ResultsStub, results: ArmoniKResults, session_id: str
) -> None:
    result_id = results.create_results_metadata(["r"], session_id)["r"].result_id

    def stream() -> object:
        yield pb.UploadResultDataRequest(
            id=pb.UploadResultDataRequest.ResultIdentifier(
                session_id=session_id, result_id=result_id
            )
        )
        yield pb.UploadResultDataRequest(data_chunk=b"abc")
        yield pb.UploadResultDataRequest(data_chunk=b"def")

    reply = results_stub.UploadResultData(stream())
    assert reply.result.result_id == result_id
    assert reply.result.status == ResultStatus.COMPLETED
    assert reply.result.size == 6
    assert results.download_result_data(result_id, session_id) == b"abcdef"


def test_upload_twice_is_refused(results: ArmoniKResults, session_id: str) -> None:
    result_id = results.create_results_metadata(["once"], session_id)["once"].result_id
    results.upload_result_data(result_id, session_id, b"first")
    assert code_of(lambda: results.upload_result_data(result_id, session_id, b"second")) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    assert results.download_result_data(result_id, session_id) == b"first"


def test_unknown_results_are_not_found(
    results: ArmoniKResults, sessions: ArmoniKSessions, session_id: str
) -> None:
    assert code_of(lambda: results.get_result("nope")) == NOT_FOUND
    assert code_of(lambda: results.upload_result_data("nope", session_id, b"x")) == NOT_FOUND
    assert code_of(lambda: results.download_result_data("nope", session_id)) == NOT_FOUND
    assert code_of(lambda: results.get_owner_task_id(["nope"], session_id)) == NOT_FOUND
    assert code_of(lambda: results.delete_result_data(["nope"], session_id)) == NOT_FOUND
    assert code_of(lambda: results.create_results_metadata(["x"], "no-session")) == NOT_FOUND
    assert code_of(lambda: results.create_results({"x": b"x"}, "no-session")) == NOT_FOUND
    # A result of another session is not found in this one.
    other = sessions.create_session(sessions.get_session(session_id).options)
    foreign = results.create_results({"f": b"f"}, other)["f"].result_id
    assert code_of(lambda: results.download_result_data(foreign, session_id)) == NOT_FOUND


def test_download_by_result_id_alone(
    results: ArmoniKResults, results_stub: ResultsStub, session_id: str
) -> None:
    """As Core, which looks the result up by its id: ArmoniK's Admin GUI sends no session id."""
    result_id = results.create_results({"r": b"by id"}, session_id)["r"].result_id

    def download(result: str) -> bytes:
        request = pb.DownloadResultDataRequest(result_id=result)
        return b"".join(m.data_chunk for m in results_stub.DownloadResultData(request))

    assert download(result_id) == b"by id"
    assert code_of(lambda: download("nope")) == NOT_FOUND


def test_download_without_data_is_not_found(results: ArmoniKResults, session_id: str) -> None:
    result_id = results.create_results_metadata(["empty"], session_id)["empty"].result_id
    assert code_of(lambda: results.download_result_data(result_id, session_id)) == NOT_FOUND


def test_get_owner_task_id(results: ArmoniKResults, tasks: ArmoniKTasks, session_id: str) -> None:
    submitted = submit_one(results, tasks, session_id, outputs=2)
    loose = results.create_results_metadata(["loose"], session_id)["loose"].result_id
    owners = results.get_owner_task_id([*submitted.output_ids, loose], session_id)
    assert owners == {
        submitted.output_ids[0]: submitted.task_id,
        submitted.output_ids[1]: submitted.task_id,
        loose: "",
    }
    assert results.get_result(submitted.output_ids[0]).owner_task_id == submitted.task_id


def test_delete_result_data(
    results: ArmoniKResults, results_stub: ResultsStub, session_id: str
) -> None:
    plain = results.create_results({"plain": b"bytes"}, session_id)["plain"].result_id
    manual = (
        results_stub.CreateResults(
            pb.CreateResultsRequest(
                session_id=session_id,
                results=[
                    pb.CreateResultsRequest.ResultCreate(
                        name="manual", data=b"mine", manual_deletion=True
                    )
                ],
            )
        )
        .results[0]
        .result_id
    )
    reply = results_stub.DeleteResultsData(
        pb.DeleteResultsDataRequest(session_id=session_id, result_id=[plain, manual])
    )
    assert reply.session_id == session_id
    assert sorted(reply.result_id) == sorted([plain, manual])
    deleted = results.get_result(plain)
    assert deleted.status == ResultStatus.DELETED
    assert deleted.opaque_id == b""
    assert code_of(lambda: results.download_result_data(plain, session_id)) == NOT_FOUND
    # manual_deletion: ArmoniK never deletes that data itself.
    assert results.get_result(manual).status == ResultStatus.COMPLETED
    assert results.download_result_data(manual, session_id) == b"mine"


def test_import_results_data(results: ArmoniKResults, tasks: ArmoniKTasks, session_id: str) -> None:
    source = results.create_results({"source": b"imported bytes"}, session_id)["source"]
    waiting = submit_one(results, tasks, session_id, payload=None)
    assert tasks.get_task(waiting.task_id).status == TaskStatus.PENDING

    imported = results.import_data(session_id, [(waiting.payload_id, source.opaque_id)])
    assert list(imported) == [waiting.payload_id]
    result = imported[waiting.payload_id]
    assert result.status == ResultStatus.COMPLETED
    assert result.size == len(b"imported bytes")
    assert result.opaque_id == source.opaque_id
    assert results.download_result_data(waiting.payload_id, session_id) == b"imported bytes"
    # Importing completes the result, so the task waiting on it is queued.
    assert tasks.get_task(waiting.task_id).status == TaskStatus.SUBMITTED


def test_import_results_data_errors(results: ArmoniKResults, session_id: str) -> None:
    source = results.create_results({"source": b"x"}, session_id)["source"]
    target = results.create_results_metadata(["target"], session_id)["target"].result_id
    assert code_of(lambda: results.import_data(session_id, [("nope", source.opaque_id)])) == (
        NOT_FOUND
    )
    assert code_of(lambda: results.import_data(session_id, [(target, b"no-such-blob")])) == (
        NOT_FOUND
    )
    # The source is COMPLETED already: only CREATED results accept data.
    assert (
        code_of(lambda: results.import_data(session_id, [(source.result_id, source.opaque_id)]))
        == grpc.StatusCode.FAILED_PRECONDITION
    )
    assert results.get_result(target).status == ResultStatus.CREATED


def test_create_results_in_a_closed_session_is_refused(
    results: ArmoniKResults, sessions: ArmoniKSessions, session_id: str
) -> None:
    sessions.close_session(session_id)
    fp = grpc.StatusCode.FAILED_PRECONDITION
    assert code_of(lambda: results.create_results_metadata(["late"], session_id)) == fp
    assert code_of(lambda: results.create_results({"late": b"x"}, session_id)) == fp


def test_submitted_task_lists_its_results(
    results: ArmoniKResults, tasks: ArmoniKTasks, session_id: str
) -> None:
    created = results.create_results_metadata(["p", "o1", "o2"], session_id)
    results.upload_result_data(created["p"].result_id, session_id, b"p")
    (task,) = tasks.submit_tasks(
        session_id,
        [
            TaskDefinition(
                payload_id=created["p"].result_id,
                expected_output_ids=[created["o1"].result_id, created["o2"].result_id],
            )
        ],
    )
    assert tasks.get_result_ids([task.id]) == {
        task.id: [created["o1"].result_id, created["o2"].result_id]
    }


def test_large_inline_data(results: ArmoniKResults, session_id: str) -> None:
    """Inline data comes in one message: larger than gRPC's default 4 MiB, it still fits."""
    data = os.urandom(6 * 1024 * 1024)
    created = results.create_results({"inline": data}, session_id)["inline"]
    assert created.size == len(data)
    assert results.download_result_data(created.result_id, session_id) == data
