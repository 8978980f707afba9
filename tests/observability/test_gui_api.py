"""The admin GUI's JSON API and pages, served by the control plane's HTTP server; tasks are
run by an agent played in-process (tests/observability/support.py), so every outcome is
chosen: completed with children, error, crash retried then ERROR, still queued."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from armonik.client import ArmoniKResults, ArmoniKSessions, ArmoniKTasks
from armonik.common import TaskDefinition, TaskOptions

from pyarmonik.domain.filters import Condition, Kind, Op
from pyarmonik.domain.options import TaskOptions as DomainOptions
from pyarmonik.domain.records import Session, Task
from pyarmonik.domain.statuses import TaskStatus
from pyarmonik.storage.database import Database
from pyarmonik.storage.database.postgres import PostgresDatabase
from pyarmonik.storage.database.sqlite import SqliteDatabase
from tests.backends.conftest import postgres_schema
from tests.helpers import BackgroundControlPlane, control_plane, free_port
from tests.observability.support import run_task

OPTIONS = TaskOptions(max_duration=timedelta(seconds=60), priority=1, max_retries=1)
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


class Http:
    """JSON calls to the control plane's HTTP server."""

    def __init__(self, port: int):
        self.base = f"http://127.0.0.1:{port}"

    def request(
        self, path: str, method: str = "GET", headers: dict[str, str] | None = None
    ) -> tuple[int, bytes, str]:
        request = urllib.request.Request(self.base + path, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read(), response.headers["Content-Type"] or ""
        except urllib.error.HTTPError as error:
            return error.code, error.read(), error.headers["Content-Type"] or ""

    def get(self, path: str, **params: Any) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        status, body, _ = self.request(path + query)
        assert status == 200, body
        return json.loads(body)

    def error(self, path: str, method: str = "GET", action: bool = True) -> tuple[int, str]:
        headers = {"X-Requested-With": "pyarmonik"} if action else {}
        status, body, _ = self.request(path, method, headers)
        return status, json.loads(body)["error"]

    def action(self, session_id: str, action: str) -> dict[str, Any]:
        status, body, _ = self.request(
            f"/api/sessions/{session_id}/{action}", "POST", {"X-Requested-With": "pyarmonik"}
        )
        assert status == 200, body
        return dict(json.loads(body)["session"])


def submit(channel: grpc.Channel, session_id: str, count: int) -> list[str]:
    results = ArmoniKResults(channel)
    outputs = results.create_results_metadata([f"out-{i}" for i in range(count)], session_id)
    payloads = results.create_results({f"in-{i}": b"payload" for i in range(count)}, session_id)
    submitted = ArmoniKTasks(channel).submit_tasks(
        session_id,
        [
            TaskDefinition(
                payload_id=payloads[f"in-{i}"].result_id,
                expected_output_ids=[outputs[f"out-{i}"].result_id],
            )
            for i in range(count)
        ],
    )
    return [t.id for t in submitted]


@dataclass
class Scenario:
    plane: BackgroundControlPlane
    http: Http
    channel: grpc.Channel
    main: str = ""  # ok + 2 children, ok, error, crash twice, queued
    other: str = ""  # one queued task
    tasks: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    port = free_port()
    with (
        control_plane(Path(tmp_path_factory.mktemp("gui")), http_port=port) as plane,
        grpc.insecure_channel(plane.endpoint) as channel,
    ):
        backends = plane.plane.backends  # type: ignore[union-attr]
        sessions = ArmoniKSessions(channel)
        main, other = sessions.create_session(OPTIONS), sessions.create_session(OPTIONS)
        tasks = submit(channel, main, 5)
        submit(channel, other, 1)
        plane.call(run_task(backends, tasks[0], "ok", children=2))
        plane.call(run_task(backends, tasks[1], "ok"))
        plane.call(run_task(backends, tasks[2], "error"))
        plane.call(run_task(backends, tasks[3], "crash"))
        plane.call(run_task(backends, f"{tasks[3]}###1", "crash"))
        yield Scenario(plane, Http(port), channel, main, other, tasks)


def test_pages_and_static_files(scenario: Scenario) -> None:
    http = scenario.http
    for page in ("/", "/sessions", "/tasks", "/results", "/partitions", "/agents"):
        status, body, kind = http.request(page)
        assert status == 200 and kind.startswith("text/html") and b"/static/app.js" in body
    status, _, kind = http.request("/tasks/" + urllib.parse.quote(f"{scenario.tasks[3]}###1"))
    assert status == 200 and kind.startswith("text/html")
    for name, kind_prefix in (("app.js", "text/javascript"), ("style.css", "text/css")):
        status, body, kind = http.request(f"/static/{name}")
        assert status == 200 and kind.startswith(kind_prefix) and body
    assert http.request("/static/secret.py")[0] == 404
    assert http.request("/favicon.ico")[0] == 204


def test_dashboard(scenario: Scenario) -> None:
    board = scenario.http.get("/api/dashboard")
    # main: 2 completed + 2 children submitted, 1 error, 1 retried + 1 error, 1 submitted;
    # other: 1 submitted.
    expected_main = {"COMPLETED": 2, "ERROR": 2, "RETRIED": 1, "SUBMITTED": 3}
    sessions = {s["session_id"]: s for s in board["sessions"]}
    assert sessions[scenario.main]["counts"] == expected_main
    assert sessions[scenario.other]["counts"] == {"SUBMITTED": 1}
    assert board["totals"] == {"COMPLETED": 2, "ERROR": 2, "RETRIED": 1, "SUBMITTED": 4}
    assert board["session_total"] == 2
    (default,) = [p for p in board["partitions"] if p["partition_id"] == "default"]
    assert default["counts"] == board["totals"]
    buckets = board["throughput"]["buckets"]
    assert sum(b["completed"] for b in buckets) == 2
    assert sum(b["failed"] for b in buckets) == 3  # error, retried, error
    only_other = scenario.http.get("/api/dashboard", session=scenario.other)
    assert sum(b["completed"] + b["failed"] for b in only_other["throughput"]["buckets"]) == 0


def test_sessions_filtered_sorted_paged(scenario: Scenario) -> None:
    http = scenario.http
    listed = http.get("/api/sessions", status="running", sort="created_at", desc="0")
    assert [s["session_id"] for s in listed["items"]] == [scenario.main, scenario.other]
    assert listed["items"][0]["counts"]["COMPLETED"] == 2
    found = http.get("/api/sessions", q=scenario.other[:13])
    assert [s["session_id"] for s in found["items"]] == [scenario.other]
    second = http.get("/api/sessions", size=1, page=1, sort="created_at", desc="0")
    assert second["total"] == 2 and [s["session_id"] for s in second["items"]] == [scenario.other]
    assert http.error("/api/sessions?status=SLEEPING") == (400, "unknown status SLEEPING")
    assert http.error("/api/sessions?sort=secret")[0] == 400


def test_tasks_filtered_sorted_paged(scenario: Scenario) -> None:
    http, main, tasks = scenario.http, scenario.main, scenario.tasks
    failed = http.get("/api/tasks", session=main, status="ERROR", sort="created_at", desc="0")
    assert [t["task_id"] for t in failed["items"]] == [tasks[2], f"{tasks[3]}###1"]
    assert failed["counts"] == {"COMPLETED": 2, "ERROR": 2, "RETRIED": 1, "SUBMITTED": 3}
    both = http.get("/api/tasks", session=main, status="ERROR,RETRIED")
    assert both["total"] == 3
    page = http.get("/api/tasks", session=main, size=2, page=1, sort="created_at", desc="0")
    everything = http.get("/api/tasks", session=main, sort="created_at", desc="0")
    assert page["total"] == everything["total"] == 8
    assert page["items"] == everything["items"][2:4]
    assert [t["task_id"] for t in http.get("/api/tasks", q=tasks[1][4:20])["items"]] == [tasks[1]]
    assert http.get("/api/tasks", error="payload says")["items"][0]["task_id"] == tasks[2]
    children = http.get("/api/tasks", created_by=tasks[0])
    assert children["total"] == 2 and {c["status"] for c in children["items"]} == {"SUBMITTED"}
    by_owner = http.get("/api/tasks", owner="127.0.0.1:1", status="COMPLETED")
    assert by_owner["total"] == 2
    assert http.error("/api/tasks?size=abc") == (400, "size must be an integer")


def test_task_page_data(scenario: Scenario) -> None:
    http, tasks = scenario.http, scenario.tasks
    crashed = http.get("/api/tasks/" + urllib.parse.quote(f"{tasks[3]}###1"))
    assert crashed["task"]["status"] == "ERROR" and "crashed" in crashed["task"]["error"]
    assert [(a["task_id"], a["status"]) for a in crashed["attempts"]] == [
        (tasks[3], "RETRIED"),
        (f"{tasks[3]}###1", "ERROR"),
    ]
    assert crashed["children"]["total"] == 0  # its retry is no child
    for stamp in ("created_at", "submitted_at", "received_at", "started_at", "ended_at"):
        assert crashed["task"][stamp] is not None
    parent = http.get(f"/api/tasks/{tasks[0]}")
    assert parent["children"]["total"] == 2
    child_id = parent["children"]["items"][0]["task_id"]
    child = http.get(f"/api/tasks/{child_id}")
    assert [p["task_id"] for p in child["parents"]] == [tasks[0]]
    assert child["task"]["created_by"] == tasks[0]
    roles = {r["role"]: r for r in parent["results"]}
    assert roles["output"]["status"] == "COMPLETED" and roles["payload"]["status"] == "COMPLETED"
    status, body, _ = http.request(f"/api/results/{roles['output']['result_id']}/data")
    assert (status, body) == (200, b"42")
    assert http.error("/api/tasks/nope") == (404, "Task nope not found")


def test_results_list_and_download(scenario: Scenario) -> None:
    http = scenario.http
    outputs = http.get("/api/results", session=scenario.main, q="out-", sort="name", desc="0")
    assert [r["name"] for r in outputs["items"]] == [f"out-{i}" for i in range(5)]
    assert "opaque_id" not in outputs["items"][0]
    aborted = http.get("/api/results", session=scenario.main, status="ABORTED")
    assert aborted["total"] == 2  # outputs of the error and of the crashed task
    payload = http.get("/api/results", session=scenario.main, q="in-0")["items"][0]
    status, body, kind = http.request(f"/api/results/{payload['result_id']}/data")
    assert (status, body, kind) == (200, b"payload", "application/octet-stream")
    waiting = http.get("/api/results", session=scenario.other, q="out-0")["items"][0]
    assert http.error(f"/api/results/{waiting['result_id']}/data")[0] == 404


def test_partitions_and_agents(scenario: Scenario) -> None:
    partitions = scenario.http.get("/api/partitions")
    assert [p["partition_id"] for p in partitions["items"]] == ["default", "other"]
    assert partitions["items"][1]["counts"] == {}
    # The in-process agent's id names no live HTTP endpoint: found, and unreachable.
    agents = scenario.http.get("/api/agents")["items"]
    assert [(a["owner_id"], a["state"], a["hostname"]) for a in agents] == [
        ("127.0.0.1:1", "unreachable", "test-host")
    ]


def test_session_actions(scenario: Scenario) -> None:
    http = scenario.http
    session_id = ArmoniKSessions(scenario.channel).create_session(OPTIONS)
    assert http.error(f"/api/sessions/{session_id}/pause", "POST", action=False)[0] == 403
    assert http.action(session_id, "pause")["status"] == "PAUSED"
    assert http.action(session_id, "resume")["status"] == "RUNNING"
    assert http.action(session_id, "close")["status"] == "CLOSED"
    status, message = http.error(f"/api/sessions/{session_id}/pause", "POST")
    assert status == 409 and "CLOSED" in message
    assert http.action(session_id, "purge")["status"] == "PURGED"
    assert http.action(session_id, "delete")["status"] == "DELETED"
    assert http.error(f"/api/sessions/{session_id}/explode", "POST")[0] == 404
    assert http.error("/api/sessions/nope/cancel", "POST") == (404, "Session nope not found")
    assert ArmoniKSessions(scenario.channel).list_sessions()[0] == 2


# -- the repository query behind the throughput chart, on both databases ----------------------


@pytest.fixture(params=["sqlite", "postgres"])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "sqlite":
        db: Database = SqliteDatabase(tmp_path / "db.sqlite")
        await db.start()
        yield db
        await db.close()
        return
    async with postgres_schema() as url:
        db = PostgresDatabase(url, max_size=2)
        await db.start()
        yield db
        await db.close()


async def test_tasks_ended_by_interval(database: Database) -> None:
    options = DomainOptions(partition_id="default")
    ended = [
        (100.0, TaskStatus.COMPLETED),
        (104.9, TaskStatus.ERROR),
        (105.0, TaskStatus.COMPLETED),
    ]
    tasks = [
        Task(f"t{i}", "s", "p", options, status=status, created_at=90.0, ended_at=stamp)
        for i, (stamp, status) in enumerate(ended)
    ]
    tasks += [
        Task("early", "s", "p", options, status=TaskStatus.COMPLETED, ended_at=99.0),
        Task("running", "s", "p", options, status=TaskStatus.PROCESSING),
        Task("elsewhere", "x", "p", options, status=TaskStatus.COMPLETED, ended_at=101.0),
    ]
    async with database.write() as repository:
        await repository.insert([Session("s"), Session("x")])
        await repository.insert(tasks)
    in_s = ((Condition("session_id", Kind.STRING, Op.EQ, "s"),),)
    async with database.read() as repository:
        rows = await repository.count_tasks_ended_by_interval(in_s, 100.0, 5.0)
    completed, error = int(TaskStatus.COMPLETED), int(TaskStatus.ERROR)
    assert sorted(rows) == sorted([(0, completed, 1), (0, error, 1), (1, completed, 1)])


# -- 100,000 tasks in a session ---------------------------------------------------------------


def test_tasks_page_with_100k_tasks(tmp_path: Path) -> None:
    """Bulk-inserted through the Repository; the API answers the right page and total.
    Timings are written to test-artifacts/gui-100k-timings.json (never asserted)."""
    count, port = 100_000, free_port()
    with control_plane(tmp_path, http_port=port) as plane:
        backends = plane.plane.backends  # type: ignore[union-attr]
        session = Session("big-session", partition_ids=["default"], created_at=1000.0)
        statuses = [TaskStatus.COMPLETED] * 8 + [TaskStatus.ERROR, TaskStatus.PROCESSING]
        options = DomainOptions(partition_id="default", priority=1)
        tasks = [
            Task(
                task_id=f"task-{i:06d}",
                session_id=session.session_id,
                payload_id=f"payload-{i:06d}",
                options=options,
                status=statuses[i % 10],
                initial_task_id=f"task-{i:06d}",
                owner_pod_id=f"10.0.0.{i % 7}:1080",
                created_at=1000.0 + i * 0.01,
                ended_at=None if i % 10 == 9 else 1000.5 + i * 0.01,
                error="boom" if i % 10 == 8 else "",
            )
            for i in range(count)
        ]

        async def insert() -> float:
            start = time.perf_counter()
            async with backends.database.write() as repository:
                await repository.insert([session])
                await repository.insert(tasks)
            return time.perf_counter() - start

        timings: dict[str, Any] = {"insert_100k_s": plane.call(insert())}
        http = Http(port)

        def timed(name: str, path: str, **params: Any) -> Any:
            samples = []
            for _ in range(3):
                start = time.perf_counter()
                answer = http.get(path, **params)
                samples.append(time.perf_counter() - start)
            timings[name] = {"median_ms": round(sorted(samples)[1] * 1000, 1), "query": params}
            return answer

        ids = [t.task_id for t in tasks]
        newest = timed("tasks_first_page", "/api/tasks", session="big-session", size=50)
        assert newest["total"] == count
        assert [t["task_id"] for t in newest["items"]] == ids[::-1][:50]
        middle = timed("tasks_page_1000", "/api/tasks", session="big-session", size=50, page=1000)
        assert [t["task_id"] for t in middle["items"]] == ids[::-1][50_000:50_050]
        last = timed("tasks_last_page", "/api/tasks", session="big-session", size=50, page=1999)
        assert [t["task_id"] for t in last["items"]] == ids[::-1][99_950:]
        errors = timed("tasks_status_error", "/api/tasks", session="big-session", status="ERROR")
        assert errors["total"] == count // 10
        assert errors["counts"] == {"COMPLETED": 80_000, "ERROR": 10_000, "PROCESSING": 10_000}
        assert [t["task_id"] for t in errors["items"][:2]] == ["task-099998", "task-099988"]
        by_id = timed(
            "tasks_by_id_asc_page_3",
            "/api/tasks",
            session="big-session",
            sort="task_id",
            desc=0,
            page=3,
        )
        assert [t["task_id"] for t in by_id["items"]] == ids[150:200]
        by_end = timed("tasks_by_ended_at", "/api/tasks", session="big-session", sort="ended_at")
        assert by_end["items"][0]["task_id"] == "task-099998"
        found = timed("tasks_id_contains", "/api/tasks", session="big-session", q="-04242")
        assert [t["task_id"] for t in found["items"]] == [
            f"task-04242{i}" for i in range(9, -1, -1)
        ]
        detail = timed("task_page", "/api/tasks/task-050000")
        assert detail["task"]["task_id"] == "task-050000"
        board = timed("dashboard", "/api/dashboard")
        assert sum(board["totals"].values()) == count
        sessions = timed("sessions", "/api/sessions")
        assert sessions["items"][0]["counts"]["COMPLETED"] == 80_000
        timed("agents", "/api/agents")
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "gui-100k-timings.json").write_text(json.dumps(timings, indent=2))
    print(json.dumps(timings, indent=2))
