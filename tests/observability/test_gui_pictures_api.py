"""The /api routes of the GUI's pictures (control/gui/pictures.py) on a session written
straight into the database (`pyarmonik bench gui`'s synthetic session: fan-outs with
delegation, errors, retries, timeouts, cancellations), on SQLite and PostgreSQL; their
permissions and session isolation; and their size bound on a 20,000-task session."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from pyarmonik.bench.gui import FANOUT, Synthetic, store, synthetic_session
from pyarmonik.config import Settings
from pyarmonik.control.auth import Authenticator
from pyarmonik.control.gui import PERMISSIONS, AdminGui
from pyarmonik.control.httpauth import HttpAuth
from pyarmonik.domain.statuses import TaskStatus
from pyarmonik.scheduling.auth import AuthStore
from pyarmonik.scheduling.backends import Backends
from pyarmonik.scheduling.timeline import GRAPH_NODES, STREAM_BARS, Times, session_stats
from pyarmonik.storage.database import Database
from pyarmonik.storage.database.postgres import PostgresDatabase
from pyarmonik.storage.database.sqlite import SqliteDatabase
from pyarmonik.storage.objects.files import FileStorage
from pyarmonik.storage.queue.table import TableQueue
from tests.backends.conftest import postgres_schema
from tests.observability.test_gui_auth import provision

ROUTES = ("stream", "graph", "breakdown", "flow")
SESSION = "pictures-session"


@pytest.fixture(params=["sqlite", "postgres"])
async def backends(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backends]:
    if request.param == "sqlite":
        database: Database = SqliteDatabase(tmp_path / "db.sqlite")
        opened = Backends(database, TableQueue(database), FileStorage(tmp_path / "objects"))
        await opened.start()
        yield opened
        await opened.close()
        return
    async with postgres_schema() as url:
        database = PostgresDatabase(url, max_size=2)
        opened = Backends(database, TableQueue(database), FileStorage(tmp_path / "objects"))
        await opened.start()
        yield opened
        await opened.close()


async def serve(gui: AdminGui) -> TestClient[web.Request, web.Application]:
    app = web.Application()
    gui.install(app)
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


async def get(client: TestClient[web.Request, web.Application], path: str) -> Any:
    response = await client.get(path)
    assert response.status == 200, await response.text()
    return await response.json()


async def session(backends: Backends, tasks: int = 300, user: str = "") -> Synthetic:
    made = synthetic_session(SESSION, tasks, agents=4, seed=7)
    made.session.created_by_user = user
    await store(backends, made)
    return made


async def test_pictures_of_a_session(backends: Backends) -> None:
    made = await session(backends)
    client = await serve(AdminGui(backends))
    try:
        tasks = made.tasks
        statuses = Counter(t.status.name for t in tasks)
        assert {"RETRIED", "ERROR", "COMPLETED"} <= set(statuses)

        # Stream: one bar per attempt an agent held (the cancelled ones never were).
        stream = await get(client, f"/api/pictures/stream?session={SESSION}")
        held = [t for t in tasks if t.owner_pod_id]
        assert stream["mode"] == "bars" and len(stream["bars"]) == len(held)
        assert Counter(b["status"] for b in stream["bars"]) == Counter(t.status.name for t in held)
        assert {a["agent"] for a in stream["agents"]} == {t.owner_pod_id for t in held}
        first = stream["bars"][0]
        assert first["acquired_at"] <= first["fetched_at"] <= first["ended_at"]

        # Graph: every task; edges by kind as the synthetic session made them.
        graph = await get(client, f"/api/pictures/graph?session={SESSION}")
        assert graph["mode"] == "graph" and len(graph["nodes"]) == len(tasks)
        fanouts = sum(t.task_id.endswith("-agg") for t in tasks)
        retries = sum(t.status == TaskStatus.RETRIED for t in tasks)
        kinds = Counter(e["kind"] for e in graph["edges"])
        assert fanouts > 0 and retries > 0
        assert kinds == {
            "subtask": fanouts * (FANOUT + 1),
            "dependency": fanouts * FANOUT,
            "delegation": fanouts,
            "retry": retries,
        }
        assert {n["generation"] for n in graph["nodes"]} == {0, 1}

        # Breakdown: the figures of `pyarmonik stats`.
        breakdown = await get(client, f"/api/pictures/breakdown?session={SESSION}")
        times = [
            Times(t.status.name, *(getattr(t, n) for n in Times.__dataclass_fields__ if n != "status"))
            for t in tasks
        ]  # fmt: skip
        expected = session_stats(times)
        stats = breakdown["stats"]
        assert stats["completed"] == statuses["COMPLETED"] == expected["completed"]
        # Times are stored to the microsecond: as close as that.
        assert stats["throughput"] == pytest.approx(expected["throughput"], rel=1e-5)
        assert stats["latency"] == pytest.approx(expected["latency"], abs=2e-6)
        assert sum(breakdown["histogram"]["counts"]) == statuses["COMPLETED"]
        latencies = [
            t.ended_at - t.created_at
            for t in tasks
            if t.status == TaskStatus.COMPLETED and t.ended_at and t.created_at
        ]
        assert sum(s["mean"] for s in breakdown["stages"]) == pytest.approx(
            sum(latencies) / len(latencies), abs=2e-6
        )

        # Flow over the session's span: every ended task counted once, queues empty at the end.
        flow = await get(client, f"/api/pictures/flow?session={SESSION}")
        completed = sum(sum(p["completed"]) for p in flow["partitions"])
        failed = sum(sum(p["failed"]) for p in flow["partitions"])
        assert completed == statuses["COMPLETED"]
        assert failed == len(tasks) - statuses["COMPLETED"]
        assert all(p["queued"][-1] == 0 for p in flow["partitions"])
        assert max(max(p["queued"]) for p in flow["partitions"]) > 0
        assert {a["agent"] for a in flow["agents"]} == {t.owner_pod_id for t in held}
        assert all(0 < a["busy"] <= 1 for a in flow["agents"])

        # Without a session: the latest one for the graph; the last minutes for the stream.
        assert (await get(client, "/api/pictures/graph"))["session"] == SESSION
        live = await get(client, "/api/pictures/stream?window=60")
        assert live["session"] == "" and live["mode"] == "bars"
        # An unknown session has no task (as /api/tasks?session=... answers).
        assert (await get(client, "/api/pictures/graph?session=nope"))["nodes"] == []
    finally:
        await client.close()


async def test_permissions_and_isolation(backends: Backends) -> None:
    await session(backends, tasks=60, user="alice")
    settings = Settings(
        require_authentication=True, require_authorization=True, session_isolation=True
    )
    store_ = AuthStore(backends)
    tokens = await provision(store_)
    gui = AdminGui(backends, HttpAuth(settings, Authenticator(settings, store_)))
    client = await serve(gui)

    async def call(user: str, path: str) -> tuple[int, Any]:
        response = await client.get(path, headers={"Authorization": f"Bearer {tokens[user]}"})
        return response.status, await response.json()

    try:
        for route in ROUTES:
            path = f"/api/pictures/{route}?session={SESSION}"
            status, body = await call("nobody", path)
            assert status == 403, route
            assert PERMISSIONS[f"/api/pictures/{route}"] in body["error"]
            assert (await client.get(path)).status == 401
            assert (await call("alice", path))[0] == 200, route
            # Another user's session is as unknown as a missing one.
            assert (await call("bob", path))[0] == 404, route
        # Without a session, bob sees nothing of alice's tasks.
        _, stream = await call("bob", "/api/pictures/stream?window=86400")
        assert stream["bars"] == []
        _, graph = await call("bob", "/api/pictures/graph")
        assert graph["session"] == ""
        _, mine = await call("alice", "/api/pictures/stream?window=86400")
        assert len(mine["bars"]) > 0
    finally:
        await client.close()


async def test_answers_stay_bounded_on_a_big_session(tmp_path: Path) -> None:
    """20,000 tasks: the stream and the graph switch to counts; every answer stays small."""
    database = SqliteDatabase(tmp_path / "db.sqlite")
    backends = Backends(database, TableQueue(database), FileStorage(tmp_path / "objects"))
    await backends.start()
    made = await session(backends, tasks=20_000)
    client = await serve(AdminGui(backends))
    try:
        sizes = {}
        for route in ROUTES:
            response = await client.get(f"/api/pictures/{route}?session={SESSION}")
            body = await response.read()
            assert response.status == 200
            sizes[route] = len(body)
            answer = json.loads(body)
            if route == "stream":
                assert answer["mode"] == "buckets" and answer["limit"] == STREAM_BARS
                counted = sum(sum(b["counts"].values()) for b in answer["buckets"])
                assert counted == sum(1 for t in made.tasks if t.owner_pod_id)
            if route == "graph":
                assert answer["mode"] == "summary" and answer["limit"] == GRAPH_NODES
                counted = sum(sum(g["counts"].values()) for g in answer["generations"])
                assert counted == len(made.tasks)
        # Bounded by the number of agents and buckets, not by the number of tasks.
        assert max(sizes.values()) < 100_000, sizes
    finally:
        await client.close()
        await backends.close()
