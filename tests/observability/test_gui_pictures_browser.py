"""The GUI's pictures in headless Chromium (Playwright on Debian's chromium) against
`pyarmonik local` running the official test worker, on one session with a fan-out (subtasks,
data dependencies, output delegation), values, a crash retried then failed, and an error:
the task stream, the session graph, where the time goes, the dashboard's flow and a task's
neighbourhood; bars and nodes counted, coloured by status, clicked through to the task.
Screenshots go to test-artifacts/gui-pictures/."""

from __future__ import annotations

import contextlib
import json
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from armonik.client import ArmoniKSessions, ArmoniKTasks
from armonik.common import Task, TaskOptions, TaskStatus

from tests.helpers import LocalProcess
from tests.observability.test_cli_inspect import cli, ok, submit
from tests.observability.test_gui_browser import chromium_page, gui_cluster, wait_for

with contextlib.suppress(ImportError):  # a dev dependency: chromium_page tells
    from playwright.sync_api import Page, expect

SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "gui-pictures"
OPTIONS = TaskOptions(max_duration=timedelta(seconds=120), priority=1, max_retries=1)
# The status colours of style.css, as computed fills.
FILL = {
    "COMPLETED": "rgb(46, 158, 91)",
    "ERROR": "rgb(214, 66, 66)",
    "RETRIED": "rgb(224, 123, 37)",
}
ORDERS: list[dict[str, Any]] = [
    {"kind": "fanout", "n": 3},  # itself, 3 children and an aggregation task taking its output
    *({"kind": "value", "value": i, "sleep": 0.3} for i in range(3)),  # bars one can see
    {"kind": "crash"},  # RETRIED, then its retry ends in ERROR (max_retries=1)
    {"kind": "error", "message": "refused: bad input", "sleep": 0.2},
]
TASKS, COMPLETED, ERRORS, RETRIED = 11, 8, 2, 1


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalProcess, int]]:
    with gui_cluster(tmp_path_factory.mktemp("gui-pictures")) as running:
        yield running


@pytest.fixture(scope="module")
def session(cluster: tuple[LocalProcess, int]) -> dict[str, Any]:
    """The session, finished: its id and its tasks' ids by role."""
    local, _ = cluster
    with grpc.insecure_channel(local.endpoint) as channel:
        session_id = ArmoniKSessions(channel).create_session(OPTIONS)
        ids = submit(channel, session_id, ORDERS)
        tasks = ArmoniKTasks(channel)

        def finished() -> bool:
            counts = tasks.count_tasks_by_status(Task.session_id == session_id)
            return (counts.get(TaskStatus.COMPLETED), counts.get(TaskStatus.ERROR)) == (
                COMPLETED,
                ERRORS,
            )

        wait_for(finished)
    return {"id": session_id, "fanout": ids[0], "crashed": ids[4], "refused": ids[5]}


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    with chromium_page(tmp_path_factory.mktemp("chromium-profile"), SHOTS) as opened:
        yield opened


def fill(page: Page, selector: str) -> str:
    return str(page.locator(selector).first.evaluate("e => getComputedStyle(e).fill"))


def api(http_port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}{path}", timeout=30) as answer:
        return json.loads(answer.read())


def test_task_stream(
    cluster: tuple[LocalProcess, int], session: dict[str, Any], page: Page
) -> None:
    _, http_port = cluster
    page.goto(f"http://127.0.0.1:{http_port}/stream?session={session['id']}")
    bars = page.locator("#stream g.bar")
    expect(bars).to_have_count(TASKS)
    expect(page.locator("#stream g.bar.s-error")).to_have_count(ERRORS)
    expect(page.locator("#stream g.bar.s-retried")).to_have_count(RETRIED)
    expect(page.locator("#stream g.bar.s-completed")).to_have_count(COMPLETED)
    for status, colour in FILL.items():
        assert fill(page, f"#stream g.bar.s-{status.lower()}") == colour, status
    # Two agents, one row each; stages shaded within each bar.
    expect(page.locator("#stream text.label")).to_have_count(2)
    # A completed task's 4 stages: prefetch, wait for the worker, worker, post-processing (a
    # crashed one lacks those it never reached).
    assert page.locator("#stream g.bar.s-completed").first.locator("rect").count() == 4
    page.screenshot(path=SHOTS / "stream.png", full_page=True)
    page.locator("#data").screenshot(path=SHOTS / "stream-picture.png")
    refused = page.locator(f'#stream g.bar[data-task="{session["refused"]}"]')
    expect(refused.locator("title")).to_contain_text("ERROR")
    refused.locator("rect.stage-worker").click()  # the bar's middle may be a thin line
    expect(page.locator("h1")).to_contain_text(session["refused"])
    expect(page.locator("#error")).to_have_text("refused: bad input")


def test_session_graph(
    cluster: tuple[LocalProcess, int], session: dict[str, Any], page: Page
) -> None:
    _, http_port = cluster
    page.goto(f"http://127.0.0.1:{http_port}/graph?session={session['id']}")
    expect(page.locator("#graph circle.node")).to_have_count(TASKS)
    for kind, count in (("subtask", 4), ("dependency", 3), ("delegation", 1), ("retry", 1)):
        expect(page.locator(f'#graph path.edge[data-kind="{kind}"]')).to_have_count(count)
    expect(page.locator("#graph circle.s-error")).to_have_count(ERRORS)
    crashed = f'#graph circle[data-task="{session["crashed"]}"]'
    assert fill(page, crashed) == FILL["RETRIED"]
    assert fill(page, f'#graph circle[data-task="{session["fanout"]}"]') == FILL["COMPLETED"]
    page.screenshot(path=SHOTS / "graph.png", full_page=True)
    page.locator("#data").screenshot(path=SHOTS / "graph-picture.png")
    # Grouped by shape: the fan-out's 3 children are one node, so are the 3 values; the
    # edges from and to the children are one each.
    page.check("#group")
    expect(page.locator("#graph circle.node")).to_have_count(TASKS - 4)
    expect(page.locator('#graph circle.node[data-count="3"]')).to_have_count(2)
    expect(page.locator("#graph path.edge")).to_have_count(5)
    page.locator("#data").screenshot(path=SHOTS / "graph-grouped-picture.png")
    page.uncheck("#group")
    expect(page.locator("#graph circle.node")).to_have_count(TASKS)
    # Collapsed to generation 0: the fan-out's 4 subtasks are hidden.
    page.select_option("#depth", "0")
    expect(page.locator("#graph circle.node")).to_have_count(TASKS - 4)
    page.locator(crashed).click()
    expect(page.locator("h1")).to_contain_text(session["crashed"])
    expect(page.locator("#attempts li .badge")).to_have_text(["RETRIED", "ERROR"])


def test_where_the_time_goes(
    cluster: tuple[LocalProcess, int], session: dict[str, Any], page: Page
) -> None:
    local, http_port = cluster
    stats = json.loads(ok(cli("stats", session["id"], "-o", "json", endpoint=local.endpoint)))
    answer = api(http_port, f"/api/pictures/breakdown?session={session['id']}")
    # The same figures as `pyarmonik stats` (to the microsecond the API rounds times to).
    assert answer["stats"]["completed"] == stats["completed"] == COMPLETED
    assert answer["stats"]["by_status"] == stats["by_status"]
    assert answer["stats"]["throughput"] == pytest.approx(stats["throughput"], rel=1e-3)
    for key in ("latency", "processing"):
        assert answer["stats"][key] == pytest.approx(stats[key], rel=1e-3, abs=1e-5)
    page.goto(f"http://127.0.0.1:{http_port}/time?session={session['id']}")
    expect(page.locator("#stat-tasks b")).to_have_text(str(TASKS))
    expect(page.locator("#stat-completed b")).to_have_text(str(COMPLETED))
    expect(page.locator("#stat-throughput b")).to_have_text(f"{answer['stats']['throughput']:.2f}")
    expect(page.locator("#stages-mean rect")).to_have_count(5)
    expect(page.locator("#stages-table tbody tr")).to_have_count(5)
    bins = page.locator("#histogram rect.bin")
    expect(bins).to_have_count(len(answer["histogram"]["counts"]))
    assert sum(answer["histogram"]["counts"]) == COMPLETED
    page.screenshot(path=SHOTS / "time.png", full_page=True)
    page.locator("#data").screenshot(path=SHOTS / "time-picture.png")


def test_dashboard_flow(
    cluster: tuple[LocalProcess, int], session: dict[str, Any], page: Page
) -> None:
    _, http_port = cluster
    page.goto(f"http://127.0.0.1:{http_port}/")
    expect(page.locator("#flow svg.flow")).to_have_count(1)  # the one partition, default
    expect(page.locator("#flow svg.flow rect.ok").first).to_be_attached()
    expect(page.locator("#flow polyline.queue")).to_have_count(1)
    expect(page.locator("#busy-table tbody tr")).to_have_count(2)  # both agents
    flow = api(http_port, "/api/pictures/flow?session=" + session["id"])
    assert sum(sum(p["completed"]) for p in flow["partitions"]) == COMPLETED
    assert sum(sum(p["failed"]) for p in flow["partitions"]) == ERRORS + RETRIED
    page.locator("#flow").screenshot(path=SHOTS / "flow-picture.png")
    page.screenshot(path=SHOTS / "dashboard.png", full_page=True)


def test_task_neighbourhood(
    cluster: tuple[LocalProcess, int], session: dict[str, Any], page: Page
) -> None:
    _, http_port = cluster
    page.goto(f"http://127.0.0.1:{http_port}/tasks/{session['fanout']}")
    picture = page.locator("#neighbourhood")
    expect(picture.locator('circle[data-role="child"]')).to_have_count(4)
    owner = picture.locator('circle[data-role="owner"]')  # who owns its output now
    expect(owner).to_have_count(1)
    page.screenshot(path=SHOTS / "task-neighbourhood.png", full_page=True)
    picture.screenshot(path=SHOTS / "neighbourhood-picture.png")
    aggregate = owner.get_attribute("data-task")
    assert aggregate
    owner.click()
    expect(page.locator("h1")).to_contain_text(aggregate)
    expect(page.locator('#neighbourhood circle[data-role="producer"]')).to_have_count(3)
    expect(page.locator('#neighbourhood circle[data-role="parent"]')).to_have_count(1)
