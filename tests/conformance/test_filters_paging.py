"""List* rpcs: every kind of filter built with the client's DSL, sorts both ways, paging with
exact totals; on sessions, tasks, results, partitions and applications."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from armonik.client import ArmoniKPartitions, ArmoniKResults, ArmoniKSessions, ArmoniKTasks
from armonik.common import (
    Direction,
    Partition,
    Result,
    ResultStatus,
    Session,
    SessionStatus,
    Task,
    TaskDefinition,
    TaskOptions,
    TaskStatus,
)
from armonik.common.filter import Filter
from armonik.protogen.client.applications_service_pb2_grpc import ApplicationsStub
from armonik.protogen.common import (
    applications_common_pb2,
    applications_fields_pb2,
    applications_filters_pb2,
    filters_common_pb2,
)

from pyarmonik.config import PartitionSettings, Settings
from tests.conformance.support import submit_one
from tests.helpers import BACKEND_PARAMS, BackgroundControlPlane, cluster_backends, free_port

PARTITIONS = [
    PartitionSettings(id="default", priority=1),
    PartitionSettings(id="other", priority=2, pod_max=10),
    PartitionSettings(
        id="gpu", priority=5, parent_partition_ids=["default"], pod_reserved=1, pod_max=4
    ),
    PartitionSettings(id="big", priority=3, parent_partition_ids=["gpu"], pod_max=100),
]


@pytest.fixture(scope="module", params=BACKEND_PARAMS)
def plane(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BackgroundControlPlane]:
    """This module's plane has partitions that differ in every listed property; filters run
    as SQL, so every database dialect is tried."""
    with cluster_backends(request.param, partitions=[p.id for p in PARTITIONS]) as backends:
        running = BackgroundControlPlane(
            Settings(
                port=free_port(),
                data_dir=Path(tmp_path_factory.mktemp("filters")),
                partitions=PARTITIONS,
                **backends.settings(),
            )
        )
        running.start()
        try:
            yield running
        finally:
            running.stop()


def midpoint(a: datetime, b: datetime) -> datetime:
    return a + (b - a) / 2


# -- sessions -----------------------------------------------------------------------------------


@pytest.fixture
def tagged_sessions(sessions: ArmoniKSessions) -> tuple[Filter, list[Session]]:
    """Four sessions sharing a unique option tag, each created a little after the other."""
    tag = str(uuid.uuid4())
    specs = [
        (1, ["default"], "alpha"),
        (5, ["default", "other"], "beta"),
        (3, ["other"], "gamma"),
        (9, ["gpu", "big"], "alpha"),
    ]
    ids = []
    for priority, partitions, app in specs:
        options = TaskOptions(
            max_duration=timedelta(seconds=10 * priority),
            priority=priority,
            max_retries=1,
            application_name=app,
            options={"suite": tag, "rank": str(priority)},
        )
        ids.append(sessions.create_session(options, partition_ids=partitions))
        time.sleep(0.01)
    sessions.close_session(ids[2])
    sessions.stop_submission_session(ids[3], client=True, worker=False)
    return Session.options["suite"] == tag, [sessions.get_session(i) for i in ids]


def session_ids(sessions: ArmoniKSessions, where: Filter, **kwargs: object) -> list[str]:
    total, found = sessions.list_sessions(where, **kwargs)  # type: ignore[arg-type]
    assert total == len(found) or kwargs.get("page_size") is not None
    return [s.session_id for s in found]


def test_session_filters(
    sessions: ArmoniKSessions, tagged_sessions: tuple[Filter, list[Session]]
) -> None:
    tag, created = tagged_sessions
    one, two, three, four = created
    ids = [s.session_id for s in created]

    def found(condition: Filter) -> set[str]:
        return set(session_ids(sessions, tag & condition))

    assert found(Session.session_id == two.session_id) == {two.session_id}
    assert found(Session.session_id != two.session_id) == set(ids) - {two.session_id}
    # Ids begin with their creation time (domain/ids.py): the prefix reaches their random bits.
    assert found(Session.session_id.startswith(three.session_id[:28])) == {three.session_id}
    assert found(Session.session_id.endswith(four.session_id[-12:])) == {four.session_id}
    assert found(Session.status == SessionStatus.CLOSED) == {three.session_id}
    assert found(Session.status != SessionStatus.CLOSED) == set(ids) - {three.session_id}
    assert found(Session.partition_ids.contains("other")) == {two.session_id, three.session_id}
    assert found(~Session.partition_ids.contains("default")) == {
        three.session_id,
        four.session_id,
    }
    assert found(Session.client_submission == False) == {  # noqa: E712 (the DSL needs ==)
        three.session_id,
        four.session_id,
    }
    assert found(Session.worker_submission) == set(ids) - {three.session_id}
    assert found(Session.created_at > midpoint(two.created_at, three.created_at)) == {
        three.session_id,
        four.session_id,
    }
    assert found(Session.created_at <= midpoint(one.created_at, two.created_at)) == {one.session_id}
    assert found(Session.closed_at > one.created_at) == {three.session_id}
    # A time read from the API matches itself exactly (microsecond precision both ways).
    assert found(Session.created_at == two.created_at) == {two.session_id}
    assert found(Session.created_at <= two.created_at) == {one.session_id, two.session_id}
    assert found(Session.created_at >= two.created_at) == set(ids) - {one.session_id}
    assert found(Session.created_at != two.created_at) == set(ids) - {two.session_id}
    assert found(Session.closed_at == three.closed_at) == {three.session_id}
    assert found(Session.duration == three.duration) == {three.session_id}
    assert found(Session.duration >= timedelta(0)) == {three.session_id}
    assert found(Session.duration < timedelta(hours=1)) == {three.session_id}
    # Task options of the session, and the generic options map.
    assert found(Session.options.priority >= 5) == {two.session_id, four.session_id}
    assert found(Session.options.priority < 5) == {one.session_id, three.session_id}
    assert found(Session.options.application_name == "alpha") == {
        one.session_id,
        four.session_id,
    }
    assert found(Session.options.max_duration > timedelta(seconds=40)) == {
        two.session_id,
        four.session_id,
    }
    assert found(Session.options.partition_id == "other") == {three.session_id}
    assert found(Session.options["rank"] == "3") == {three.session_id}
    assert found(Session.options["missing"] == "x") == set()
    # And/or: (alpha and priority > 1) or gamma.
    assert found(
        (Session.options.application_name == "alpha") & (Session.options.priority > 1)
        | (Session.options.application_name == "gamma")
    ) == {three.session_id, four.session_id}


def test_session_sort_and_paging(
    sessions: ArmoniKSessions, tagged_sessions: tuple[Filter, list[Session]]
) -> None:
    tag, created = tagged_sessions
    by_priority = [s.session_id for s in sorted(created, key=lambda s: s.options.priority)]
    assert session_ids(sessions, tag, sort_field=Session.options.priority) == by_priority
    assert (
        session_ids(
            sessions, tag, sort_field=Session.options.priority, sort_direction=Direction.DESC
        )
        == by_priority[::-1]
    )
    by_creation = [s.session_id for s in created]
    assert session_ids(sessions, tag, sort_field=Session.created_at) == by_creation
    assert session_ids(sessions, tag, sort_field=Session.options["rank"]) == [
        created[i].session_id
        for i in (0, 2, 1, 3)  # "1" < "3" < "5" < "9"
    ]
    # Pages of 3: exact totals; pages past the end are empty; page_size 0 only counts.
    pages = [
        sessions.list_sessions(tag, page=p, page_size=3, sort_field=Session.created_at)
        for p in range(3)
    ]
    assert [total for total, _ in pages] == [4, 4, 4]
    assert [s.session_id for _, page in pages for s in page] == by_creation
    assert [len(page) for _, page in pages] == [3, 1, 0]
    assert sessions.list_sessions(tag, page_size=0) == (4, [])


# -- tasks --------------------------------------------------------------------------------------


@pytest.fixture
def task_set(
    sessions: ArmoniKSessions, results: ArmoniKResults, tasks: ArmoniKTasks
) -> tuple[str, dict[str, Task]]:
    """Tasks in every useful state, with different options, in a fresh session."""
    defaults = TaskOptions(timedelta(seconds=60), priority=1, max_retries=2, options={"k": "base"})
    session_id = sessions.create_session(defaults, partition_ids=["default", "other"])
    made = {
        "ready": submit_one(results, tasks, session_id),
        "waiting": submit_one(results, tasks, session_id, payload=None),
        "urgent": submit_one(
            results,
            tasks,
            session_id,
            options=TaskOptions(
                timedelta(seconds=5),
                priority=8,
                max_retries=4,
                partition_id="other",
                application_name="app",
                options={"k": "special"},
            ),
        ),
        "owner": submit_one(results, tasks, session_id),
    }
    made["orphan"] = submit_one(results, tasks, session_id, dependencies=made["owner"].output_ids)
    tasks.cancel_tasks([made["owner"].task_id])
    return session_id, {name: tasks.get_task(t.task_id) for name, t in made.items()}


def task_names(tasks: ArmoniKTasks, where: Filter, named: dict[str, Task]) -> set[str]:
    total, found = tasks.list_tasks(where)
    assert total == len(found)
    names = {t.id: n for n, t in named.items()}
    return {names[t.id] for t in found}


def test_task_filters(tasks: ArmoniKTasks, task_set: tuple[str, dict[str, Task]]) -> None:
    session_id, named = task_set
    scope = Task.session_id == session_id
    everything = set(named)

    def found(condition: Filter) -> set[str]:
        return task_names(tasks, scope & condition, named)

    ready = named["ready"]
    assert found(Task.id == ready.id) == {"ready"}
    assert found(Task.id != ready.id) == everything - {"ready"}
    assert found(Task.payload_id == named["waiting"].payload_id) == {"waiting"}
    assert found(Task.initial_task_id == named["urgent"].id) == {"urgent"}
    assert found(Task.created_by == "") == everything
    assert found(Task.owner_pod_id == "") == everything
    assert found(Task.status == TaskStatus.SUBMITTED) == {"ready", "urgent"}
    assert found(Task.status != TaskStatus.SUBMITTED) == {"waiting", "owner", "orphan"}
    assert found(Task.status == TaskStatus.CANCELLED) == {"owner"}
    assert found(Task.output.error.contains("aborted")) == {"orphan"}
    assert found(~Task.id.contains(ready.id[:13])) == everything - {"ready"}
    assert found(Task.id.startswith(ready.id[:13])) == {"ready"}
    assert found(Task.id.endswith(ready.id[-12:])) == {"ready"}
    # Dates: set ones compare, unset ones (NULL) never match.
    assert found(Task.created_at > ready.created_at - timedelta(seconds=1)) == everything
    assert found(Task.submitted_at >= ready.created_at - timedelta(seconds=1)) == {
        "ready",
        "urgent",
        "owner",  # queued before it was cancelled
    }
    assert found(Task.ended_at < datetime.now().astimezone() + timedelta(seconds=1)) == {
        "owner",
        "orphan",
    }
    assert found(Task.started_at > datetime(2000, 1, 1).astimezone()) == set()
    assert found(Task.created_at == ready.created_at) == {"ready"}
    assert found(Task.submitted_at <= named["urgent"].submitted_at) >= {"ready", "urgent"}
    assert found(Task.ended_at == named["owner"].ended_at) >= {"owner"}
    # Task options: numbers, durations, strings and the generic map.
    assert found(Task.options.priority == 8) == {"urgent"}
    assert found(Task.options.priority < 8) == everything - {"urgent"}
    assert found(Task.options.max_retries >= 3) == {"urgent"}
    assert found(Task.options.max_duration <= timedelta(seconds=5)) == {"urgent"}
    assert found(Task.options.max_duration > timedelta(seconds=5)) == everything - {"urgent"}
    assert found(Task.options.partition_id == "other") == {"urgent"}
    assert found(Task.options.application_name == "app") == {"urgent"}
    assert found(Task.options["k"] == "base") == everything - {"urgent"}
    assert found(Task.options["k"].startswith("spec")) == {"urgent"}
    assert found(Task.options["k"] != "base") == {"urgent"}
    # Disjunctive combinations, and a negated conjunction.
    assert found((Task.status == TaskStatus.PENDING) | (Task.status == TaskStatus.ERROR)) == {
        "waiting",
        "orphan",
    }
    assert found(
        ((Task.options.priority == 1) & (Task.status == TaskStatus.SUBMITTED))
        | (Task.options.priority == 8)
    ) == {"ready", "urgent"}
    assert found(~((Task.status == TaskStatus.SUBMITTED) & (Task.options.priority == 1))) == (
        everything - {"ready"}
    )


def test_task_sort_and_paging(tasks: ArmoniKTasks, task_set: tuple[str, dict[str, Task]]) -> None:
    session_id, named = task_set
    scope = Task.session_id == session_id
    by_id = sorted(t.id for t in named.values())
    for detailed in (True, False):
        assert [t.id for t in tasks.list_tasks(scope, detailed=detailed)[1]] == by_id
        descending = tasks.list_tasks(scope, sort_direction=Direction.DESC, detailed=detailed)
        assert [t.id for t in descending[1]] == by_id[::-1]
    by_created = [t.id for t in sorted(named.values(), key=lambda t: (t.created_at, t.id))]
    assert [t.id for t in tasks.list_tasks(scope, sort_field=Task.created_at)[1]] == by_created
    # Priority then id: "urgent" (8) last ascending, first descending.
    ascending = tasks.list_tasks(scope, sort_field=Task.options.priority)[1]
    assert ascending[-1].id == named["urgent"].id
    descending = tasks.list_tasks(
        scope, sort_field=Task.options.priority, sort_direction=Direction.DESC
    )[1]
    assert descending[0].id == named["urgent"].id
    # Sorting on a generic option key.
    by_k = tasks.list_tasks(scope, sort_field=Task.options["k"], sort_direction=Direction.DESC)
    assert by_k[1][0].id == named["urgent"].id  # "special" > "base"

    pages = [tasks.list_tasks(scope, page=p, page_size=2)[1] for p in range(4)]
    assert [t.id for page in pages for t in page] == by_id
    assert [len(page) for page in pages] == [2, 2, 1, 0]
    assert tasks.list_tasks(scope, page_size=0) == (5, [])
    assert tasks.list_tasks(scope, page=9, page_size=2) == (5, [])


# -- results ------------------------------------------------------------------------------------


def test_result_filters_sort_and_paging(
    sessions: ArmoniKSessions, results: ArmoniKResults, tasks: ArmoniKTasks
) -> None:
    session_id = sessions.create_session(TaskOptions(timedelta(seconds=9), 1, 1))
    sizes = {"small": b"x", "medium": b"x" * 100, "large": b"x" * 10_000}
    done = results.create_results(sizes, session_id)
    time.sleep(0.01)
    fresh = results.create_results_metadata(["fresh-one", "fresh-two"], session_id)
    task = submit_one(results, tasks, session_id)  # a "payload" and an "out0" more
    scope = Result.session_id == session_id
    name_of = {r.result_id: r.name for r in [*done.values(), *fresh.values()]}
    name_of[task.payload_id], name_of[task.output_ids[0]] = "payload", "out0"

    def found(condition: Filter, **kwargs: object) -> list[str]:
        total, listed = results.list_results(scope & condition, **kwargs)  # type: ignore[arg-type]
        assert total == len(listed)
        return [name_of[r.result_id] for r in listed]

    def names(condition: Filter) -> set[str]:
        return set(found(condition))

    assert names(Result.name == "small") == {"small"}
    assert names(Result.name.startswith("fresh")) == {"fresh-one", "fresh-two"}
    assert names(Result.name.endswith("two")) == {"fresh-two"}
    assert names(Result.name.contains("ediu")) == {"medium"}
    assert names(~Result.name.contains("e")) == {"small", "payload", "out0"}
    assert names(Result.status == ResultStatus.CREATED) == {"fresh-one", "fresh-two", "out0"}
    assert names(Result.status != ResultStatus.CREATED) == {
        "small",
        "medium",
        "large",
        "payload",
    }
    assert names(Result.size > 1) == {"medium", "large", "payload"}
    assert names(Result.size <= 100) == set(name_of.values()) - {"large"}
    assert names(Result.owner_task_id == task.task_id) == {"out0"}
    assert names(Result.result_id == task.payload_id) == {"payload"}
    assert names(Result.created_by == "") == set(name_of.values())
    cut = midpoint(done["large"].created_at, fresh["fresh-one"].created_at)
    assert names(Result.created_at < cut) == {"small", "medium", "large"}
    fresh_two = results.get_result(fresh["fresh-two"].result_id)
    assert names(Result.created_at >= fresh_two.created_at) >= {"fresh-two", "payload", "out0"}
    assert names(Result.created_at == fresh_two.created_at) >= {"fresh-two"}
    assert names(Result.completed_at > cut - timedelta(hours=1)) == {
        "small",
        "medium",
        "large",
        "payload",
    }
    assert names((Result.size > 50) & (Result.size < 5000) | (Result.name == "small")) == {
        "small",
        "medium",
    }

    completed = (Result.status == ResultStatus.COMPLETED) & (Result.name != "payload")
    assert found(completed, sort_field=Result.size) == ["small", "medium", "large"]
    assert found(completed, sort_field=Result.size, sort_direction=Direction.DESC) == [
        "large",
        "medium",
        "small",
    ]
    assert found(completed, sort_field=Result.name) == ["large", "medium", "small"]
    assert results.list_results(scope, page_size=0) == (7, [])
    pages = [
        results.list_results(scope, page=p, page_size=3, sort_field=Result.name) for p in range(3)
    ]
    assert [total for total, _ in pages] == [7, 7, 7]
    assert [name_of[r.result_id] for _, page in pages for r in page] == sorted(name_of.values())


# -- partitions and applications ---------------------------------------------------------------


def test_partitions(partitions: ArmoniKPartitions) -> None:
    total, listed = partitions.list_partitions()
    assert total == 4
    # The client sorts on priority by default.
    assert [p.id for p in listed] == ["default", "other", "big", "gpu"]
    gpu = partitions.get_partition("gpu")
    assert (gpu.priority, gpu.pod_reserved, gpu.pod_max) == (5, 1, 4)
    assert gpu.parent_partition_ids == ["default"]

    def ids(where: Filter | None = None, **kwargs: object) -> list[str]:
        total, found = partitions.list_partitions(where, **kwargs)  # type: ignore[arg-type]
        assert total == len(found)
        return [p.id for p in found]

    assert ids(Partition.id == "gpu") == ["gpu"]
    assert ids(Partition.id.startswith("g") | Partition.id.endswith("ig")) == ["big", "gpu"]
    assert ids(Partition.priority >= 3) == ["big", "gpu"]
    assert ids(Partition.pod_max > 5) == ["other", "big"]
    assert ids(Partition.pod_reserved == 1) == ["gpu"]
    assert ids(Partition.parent_partition_ids.contains("gpu")) == ["big"]
    assert ids(~Partition.parent_partition_ids.contains("default")) == ["default", "other", "big"]
    assert ids(sort_field=Partition.id, sort_direction=Direction.DESC) == [
        "other",
        "gpu",
        "default",
        "big",
    ]
    assert ids(sort_field=Partition.pod_max) == ["default", "gpu", "other", "big"]
    assert partitions.list_partitions(page_size=0) == (4, [])
    second_page = partitions.list_partitions(page=1, page_size=3, sort_field=Partition.id)
    assert (second_page[0], [p.id for p in second_page[1]]) == (4, ["other"])


def test_applications(
    sessions: ArmoniKSessions,
    results: ArmoniKResults,
    tasks: ArmoniKTasks,
    applications_stub: ApplicationsStub,
) -> None:
    prefix = f"app-{uuid.uuid4().hex[:8]}"
    session_id = sessions.create_session(TaskOptions(timedelta(seconds=9), 1, 1))
    payload = results.create_results({"p": b"p"}, session_id)["p"].result_id
    apps = [
        (f"{prefix}-a", "1.0", "ns", "svc"),
        (f"{prefix}-a", "2.0", "ns", "svc"),
        (f"{prefix}-b", "1.0", "other", "svc"),
        (f"{prefix}-a", "1.0", "ns", "svc"),  # a duplicate: listed once
    ]
    outputs = results.create_results_metadata([f"o{i}" for i in range(len(apps))], session_id)
    tasks.submit_tasks(
        session_id,
        [
            TaskDefinition(
                payload_id=payload,
                expected_output_ids=[outputs[f"o{i}"].result_id],
                options=TaskOptions(
                    timedelta(seconds=9),
                    1,
                    1,
                    application_name=name,
                    application_version=version,
                    application_namespace=namespace,
                    application_service=service,
                ),
            )
            for i, (name, version, namespace, service) in enumerate(apps)
        ],
    )
    fields = applications_fields_pb2
    name_field = fields.ApplicationField(
        application_field=fields.ApplicationRawField(field=fields.APPLICATION_RAW_ENUM_FIELD_NAME)
    )
    version_field = fields.ApplicationField(
        application_field=fields.ApplicationRawField(
            field=fields.APPLICATION_RAW_ENUM_FIELD_VERSION
        )
    )

    def listing(
        value: str, operator: int, direction: int = 1, page: int = 0, page_size: int = 10
    ) -> tuple[int, list[tuple[str, str, str, str]]]:
        condition = applications_filters_pb2.FilterField(
            field=name_field,
            filter_string=filters_common_pb2.FilterString(value=value, operator=operator),
        )
        reply = applications_stub.ListApplications(
            applications_common_pb2.ListApplicationsRequest(
                page=page,
                page_size=page_size,
                filters=applications_filters_pb2.Filters(
                    **{"or": [applications_filters_pb2.FiltersAnd(**{"and": [condition]})]}
                ),
                sort=applications_common_pb2.ListApplicationsRequest.Sort(
                    fields=[name_field, version_field], direction=direction
                ),
            )
        )
        return reply.total, [
            (a.name, a.version, a.namespace, a.service) for a in reply.applications
        ]

    starts = filters_common_pb2.FILTER_STRING_OPERATOR_STARTS_WITH
    unique = sorted(set(apps))
    assert listing(prefix, starts) == (3, unique)
    assert listing(prefix, starts, direction=2) == (3, unique[::-1])
    assert listing(f"{prefix}-b", filters_common_pb2.FILTER_STRING_OPERATOR_EQUAL) == (
        1,
        [unique[2]],
    )
    assert listing(prefix, starts, page=1, page_size=2) == (3, unique[2:])
    assert listing(prefix, starts, page_size=0) == (3, [])
