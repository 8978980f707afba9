"""ArmoniK's own Admin GUI (aneoconsulting/ArmoniK.Admin.GUI, built by its npm build) in
headless Chromium against `pyarmonik local --official-gui DIR`: its sessions, tasks, results and
partitions pages, which talk gRPC-Web to the HTTP port, show what pyarmonik holds. Screenshots
go to test-artifacts/official-gui/.

The build comes from PYARMONIK_OFFICIAL_GUI_DIR (`bash scripts/official-gui.sh SRC_DIR` makes
one from a checkout of the GUI's repository); without it the test is skipped."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from armonik.client import ArmoniKResults, ArmoniKSessions, ArmoniKTasks
from armonik.common import Result, Task, TaskStatus

from tests.helpers import LocalProcess
from tests.observability.test_cli_inspect import submit
from tests.observability.test_gui_browser import (
    OPTIONS,
    chromium_page,
    gui_cluster,
    wait_for,
)

with contextlib.suppress(ImportError):  # a dev dependency: chromium_page tells
    from playwright.sync_api import BrowserContext, Page, Route, expect

GUI_DIR = os.environ.get("PYARMONIK_OFFICIAL_GUI_DIR", "")
pytestmark = pytest.mark.skipif(
    not GUI_DIR,
    reason="PYARMONIK_OFFICIAL_GUI_DIR is not set: it names a build of ArmoniK's Admin GUI "
    "(its dist/admin/browser), made by `bash scripts/official-gui.sh SRC_DIR` from a checkout "
    "of aneoconsulting/ArmoniK.Admin.GUI; CI machines have no copy of the GUI's source",
)
SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "official-gui"
WAIT = 30_000  # ms: the GUI's first page compiles a few MB of JavaScript on a busy machine
# ArmoniK's GUI loads its fonts from Google at run time, unreachable here. The icon font comes
# from Debian's fonts-material-design-icons-iconfont when installed (icons drawn instead of
# their names in the screenshots); every other font request gets an empty style sheet.
ICON_FONT = Path(
    "/usr/share/fonts/truetype/material-design-icons-iconfont/MaterialIcons-Regular.ttf"
)
ICON_CSS = """
@font-face { font-family: 'Material Icons'; font-style: normal; font-weight: 400;
             src: local('Material Icons'), local('MaterialIcons-Regular'); }
.material-icons { font-family: 'Material Icons'; font-weight: normal; font-style: normal;
  font-size: 24px; line-height: 1; letter-spacing: normal; text-transform: none;
  display: inline-block; white-space: nowrap; direction: ltr; font-feature-settings: 'liga'; }
"""
# The results table with its status column (what "Modify Columns" stores).
RESULT_COLUMNS = '["resultId", "name", "sessionId", "status", "createdAt"]'


def _fonts(route: Route) -> None:
    icons = "Material+Icons" in route.request.url and ICON_FONT.exists()
    route.fulfill(status=200, content_type="text/css", body=ICON_CSS if icons else "")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalProcess, int]]:
    folder = tmp_path_factory.mktemp("official-gui")
    with gui_cluster(folder, "--official-gui", GUI_DIR, agents=1) as running:
        yield running


def _offline(browser: BrowserContext) -> None:
    browser.route("https://fonts.googleapis.com/**", _fonts)
    browser.add_init_script(f"localStorage.setItem('results-columns', '{RESULT_COLUMNS}')")


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    with chromium_page(tmp_path_factory.mktemp("chromium-profile"), SHOTS, _offline) as opened:
        yield opened


def shot(page: Page, name: str) -> None:
    page.screenshot(path=SHOTS / f"{name}.png", full_page=True, timeout=60_000)


def counts_link(row: Any, status: TaskStatus) -> Any:
    """The "tasks by statuses" figure of a row for `status` (a link to those tasks)."""
    return row.locator(f'a[href*="0-root-2-0={status.value}&"]')


def test_official_gui_shows_what_pyarmonik_holds(
    cluster: tuple[LocalProcess, int], page: Page
) -> None:
    local, http_port = cluster
    base = f"http://127.0.0.1:{http_port}"
    with grpc.insecure_channel(local.endpoint) as channel:
        sessions = ArmoniKSessions(channel)
        session_id = sessions.create_session(OPTIONS, partition_ids=["default"])
        orders: list[dict[str, Any]] = [{"kind": "value", "value": i} for i in range(4)]
        orders.append({"kind": "error", "message": "refused: bad input"})
        ids = submit(channel, session_id, orders)
        completed, failed = ids[:4], ids[4]
        tasks = ArmoniKTasks(channel)

        def counts() -> dict[TaskStatus, int]:
            return dict(tasks.count_tasks_by_status(Task.session_id == session_id))

        wait_for(lambda: counts() == {TaskStatus.COMPLETED: 4, TaskStatus.ERROR: 1})
        cancelled_id = sessions.create_session(OPTIONS, partition_ids=["default"])
        sessions.cancel_session(cancelled_id)
        _, results = ArmoniKResults(channel).list_results(
            Result.session_id == session_id, page_size=100
        )
        result_ids = {r.name: r.result_id for r in results}

    # The build is served at /admin/, in English and French.
    page.goto(f"{base}/admin/")
    expect(page).to_have_url(f"{base}/admin/en/dashboard", timeout=WAIT)  # the GUI's default
    expect(page.get_by_text("Tasks by statuses")).to_be_visible(timeout=WAIT)
    page.goto(f"{base}/admin/fr/sessions")
    expect(page.locator("html")).to_have_attribute("lang", "fr")
    expect(page.locator("tr[mat-row]", has_text=session_id)).to_be_visible(timeout=WAIT)

    # Sessions: both, with their status and the running one's task counts.
    page.goto(f"{base}/admin/en/sessions")
    row = page.locator("tr[mat-row]", has_text=session_id)
    expect(row.locator("app-status-chip")).to_have_text("Running", timeout=WAIT)
    expect(counts_link(row, TaskStatus.COMPLETED)).to_have_text("4")
    expect(counts_link(row, TaskStatus.ERROR)).to_have_text("1")
    cancelled = page.locator("tr[mat-row]", has_text=cancelled_id)
    expect(cancelled.locator("app-status-chip")).to_have_text("Cancelled")
    expect(page.locator(".mat-mdc-paginator-range-label")).to_contain_text("of 2")
    shot(page, "sessions")

    # Tasks: every one with its status; the session's error figure leads to the failed one.
    page.goto(f"{base}/admin/en/tasks")
    rows = page.locator("tr[mat-row]")
    expect(rows).to_have_count(5, timeout=WAIT)
    for task_id in completed:
        expect(rows.filter(has_text=task_id).locator("app-status-chip")).to_have_text("Completed")
    expect(rows.filter(has_text=failed).locator("app-status-chip")).to_have_text("Error")
    shot(page, "tasks")
    page.goto(f"{base}/admin/en/sessions")
    counts_link(page.locator("tr[mat-row]", has_text=session_id), TaskStatus.ERROR).click()
    expect(rows).to_have_count(1, timeout=WAIT)
    expect(rows.first).to_contain_text(failed)
    shot(page, "tasks-error")

    # The failed task: its status and its error message.
    page.goto(f"{base}/admin/en/tasks/{failed}")
    expect(page.get_by_text("refused: bad input")).to_be_visible(timeout=WAIT)
    expect(page.locator("app-status-chip").first).to_have_text("Error")
    shot(page, "task-failed")

    # Results: payloads and outputs; the failed task's output is aborted.
    page.goto(f"{base}/admin/en/results")
    expect(rows).to_have_count(10, timeout=WAIT)
    for name, result_id in result_ids.items():
        status = "Aborted" if name == "out-4" else "Completed"
        row = rows.filter(has_text=result_id)
        expect(row).to_contain_text(name)
        expect(row.locator("app-status-chip")).to_have_text(status)
    shot(page, "results")

    # Partitions: the default one, with the tasks it ran.
    page.goto(f"{base}/admin/en/partitions")
    row = page.locator("tr[mat-row]", has_text="default")
    expect(counts_link(row, TaskStatus.COMPLETED)).to_have_text("4", timeout=WAIT)
    expect(counts_link(row, TaskStatus.ERROR)).to_have_text("1")
    shot(page, "partitions")
