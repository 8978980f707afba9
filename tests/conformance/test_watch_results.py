"""Results.WatchResults (declared by ArmoniK, never implemented by Core): the semantics
documented at the top of pyarmonik/control/watch.py, driven through the raw stub."""

from __future__ import annotations

import queue
from collections.abc import Iterator

import grpc
import pytest
from armonik.client import ArmoniKResults, ArmoniKTasks
from armonik.common import ResultStatus
from armonik.protogen.client.results_service_pb2_grpc import ResultsStub
from armonik.protogen.common import results_common_pb2 as pb

from tests.conformance.support import Stream, submit_one

CREATED, COMPLETED, ABORTED = ResultStatus.CREATED, ResultStatus.COMPLETED, ResultStatus.ABORTED
NOTFOUND, DELETED = ResultStatus.NOTFOUND, ResultStatus.DELETED


class Watch:
    """A WatchResults call whose requests are sent on demand."""

    def __init__(self, stub: ResultsStub):
        self._requests: queue.Queue[pb.WatchResultRequest | None] = queue.Queue()
        self.replies = Stream(stub.WatchResults(self._iterate()))

    def _iterate(self) -> Iterator[pb.WatchResultRequest]:
        while (request := self._requests.get()) is not None:
            yield request

    def send(self, ids: list[str], fetch: list[int] = (), watch: list[int] = ()) -> None:  # type: ignore[assignment]
        self._requests.put(
            pb.WatchResultRequest(result_ids=ids, fetch_statuses=fetch, watch_statuses=watch)
        )

    def half_close(self) -> None:
        self._requests.put(None)

    def next(self) -> tuple[int, list[str]]:
        reply = self.replies.next()
        return reply.status, sorted(reply.result_ids)


@pytest.fixture
def watches(results_stub: ResultsStub) -> Iterator[list[Watch]]:
    opened: list[Watch] = []
    yield opened
    for watch in opened:
        watch.half_close()
        watch.replies.cancel()


@pytest.fixture
def open_watch(results_stub: ResultsStub, watches: list[Watch]) -> Watch:
    watch = Watch(results_stub)
    watches.append(watch)
    return watch


def test_fetch_reports_current_statuses(
    open_watch: Watch, results: ArmoniKResults, session_id: str
) -> None:
    done = results.create_results({"done": b"d"}, session_id)["done"].result_id
    fresh = results.create_results_metadata(["fresh"], session_id)["fresh"].result_id
    open_watch.send([done, fresh, "unknown"], fetch=[CREATED, COMPLETED])
    # One reply per status; unknown ids are always reported, as NOTFOUND.
    replies = sorted(open_watch.next() for _ in range(3))
    assert replies == sorted([(COMPLETED, [done]), (CREATED, [fresh]), (NOTFOUND, ["unknown"])])


def test_fetch_groups_ids_by_status(
    open_watch: Watch, results: ArmoniKResults, session_id: str
) -> None:
    created = results.create_results({"a": b"a", "b": b"b"}, session_id)
    fresh = results.create_results_metadata(["c"], session_id)["c"].result_id
    ids = sorted(r.result_id for r in created.values())
    # Only the statuses asked for are reported.
    open_watch.send([*ids, fresh], fetch=[COMPLETED])
    assert open_watch.next() == (COMPLETED, ids)
    assert open_watch.replies.silent(0.3)


def test_watch_reports_changes(
    open_watch: Watch, results: ArmoniKResults, tasks: ArmoniKTasks, session_id: str
) -> None:
    data = results.create_results_metadata(["data"], session_id)["data"].result_id
    task = submit_one(results, tasks, session_id)
    open_watch.send([data, task.output_ids[0]], watch=[COMPLETED, ABORTED])
    assert open_watch.replies.silent(0.3)  # nothing fetched, nothing changed yet
    results.upload_result_data(data, session_id, b"x")
    assert open_watch.next() == (COMPLETED, [data])
    tasks.cancel_tasks([task.task_id])
    assert open_watch.next() == (ABORTED, [task.output_ids[0]])


def test_only_watched_statuses_are_reported(
    open_watch: Watch, results: ArmoniKResults, tasks: ArmoniKTasks, session_id: str
) -> None:
    task = submit_one(results, tasks, session_id)
    open_watch.send(task.output_ids, watch=[COMPLETED])
    tasks.cancel_tasks([task.task_id])  # ABORTED is not watched
    assert open_watch.replies.silent(0.5)


def test_later_requests_add_results(
    open_watch: Watch, results: ArmoniKResults, session_id: str
) -> None:
    created = results.create_results_metadata(["one", "two"], session_id)
    one, two = created["one"].result_id, created["two"].result_id
    open_watch.send([one], watch=[COMPLETED])
    open_watch.send([two], fetch=[CREATED], watch=[COMPLETED])
    assert open_watch.next() == (CREATED, [two])
    results.upload_result_data(two, session_id, b"2")
    assert open_watch.next() == (COMPLETED, [two])
    results.upload_result_data(one, session_id, b"1")
    assert open_watch.next() == (COMPLETED, [one])


def test_stream_ends_after_half_close_once_settled(
    open_watch: Watch, results: ArmoniKResults, session_id: str
) -> None:
    pending = results.create_results_metadata(["pending"], session_id)["pending"].result_id
    open_watch.send([pending], watch=[COMPLETED])
    open_watch.half_close()
    # Half-closed, but the watched result can still change: the stream stays open.
    assert not open_watch.replies.ended(timeout=0.5)
    results.upload_result_data(pending, session_id, b"x")
    assert open_watch.next() == (COMPLETED, [pending])
    assert open_watch.replies.ended()
    assert open_watch.replies.error is None


def test_half_close_with_settled_results_sends_every_reply_then_ends(
    open_watch: Watch, results: ArmoniKResults, session_id: str
) -> None:
    done = results.create_results({"d1": b"1", "d2": b"2"}, session_id)
    ids = sorted(r.result_id for r in done.values())
    open_watch.send(ids[:1], fetch=[COMPLETED])
    open_watch.send(ids[1:], fetch=[COMPLETED])
    open_watch.send(["unknown"], fetch=[COMPLETED])
    open_watch.half_close()
    replies = sorted(open_watch.next() for _ in range(3))
    assert replies == sorted([(COMPLETED, ids[:1]), (COMPLETED, ids[1:]), (NOTFOUND, ["unknown"])])
    assert open_watch.replies.ended()
    assert open_watch.replies.error is None


def test_stream_without_half_close_stays_open(
    open_watch: Watch, results: ArmoniKResults, session_id: str
) -> None:
    done = results.create_results({"d": b"d"}, session_id)["d"].result_id
    open_watch.send([done], fetch=[COMPLETED])
    assert open_watch.next() == (COMPLETED, [done])
    assert not open_watch.replies.ended(timeout=0.5)


def test_unknown_status_is_invalid(open_watch: Watch) -> None:
    open_watch.send(["x"], fetch=[42])
    assert open_watch.replies.ended()
    assert open_watch.replies.error is not None
    assert open_watch.replies.error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_half_close_right_after_a_request_loses_no_reply(
    open_watch: Watch, results: ArmoniKResults, session_id: str
) -> None:
    created = results.create_results({"d": b"d", "x": b"x"}, session_id)
    done, deleted = created["d"].result_id, created["x"].result_id
    results.delete_result_data([deleted], session_id)
    open_watch.send([done, deleted, "unknown"], fetch=[COMPLETED, DELETED])
    open_watch.half_close()
    # Everything is settled at once: every reply must still be sent before the end.
    replies = sorted(open_watch.next() for _ in range(3))
    assert replies == sorted([(COMPLETED, [done]), (DELETED, [deleted]), (NOTFOUND, ["unknown"])])
    assert open_watch.replies.ended()
