"""The admin GUI in headless Chromium (Debian's chromium, driven by Playwright's Python API)
against `pyarmonik local` running the official test worker: it lists a running session,
filters its tasks by status, shows a failed task's error and retry chain, lists the agents,
and cancels the session. Screenshots go to test-artifacts/gui/."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from armonik.client import ArmoniKSessions, ArmoniKTasks
from armonik.common import SessionStatus, Task, TaskOptions, TaskStatus

from tests.helpers import LocalProcess, free_port, local_cluster
from tests.observability.test_cli_inspect import submit

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "gui"
OPTIONS = TaskOptions(max_duration=timedelta(seconds=120), priority=1, max_retries=1)

try:
    from playwright.sync_api import BrowserContext, Page, expect, sync_playwright
except ImportError:  # pragma: no cover - playwright is a dev dependency
    sync_playwright = None


def _require_browser() -> None:
    missing = []
    if sync_playwright is None:
        missing.append("the playwright package")
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    if missing:
        reason = f"missing {', '.join(missing)}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI=true requires it")
        pytest.skip(reason)


def wait_for(check: Any, timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.2)
    raise TimeoutError("condition not met")


@contextmanager
def gui_cluster(folder: Path, *args: str, agents: int = 2) -> Iterator[tuple[LocalProcess, int]]:
    """`pyarmonik local` (with these options) and its HTTP port, for the browser."""
    _require_browser()
    http_port = free_port()
    with local_cluster(folder, "--http-port", str(http_port), *args, agents=agents) as running:
        yield running, http_port


@contextmanager
def chromium_page(
    profile: Path, shots: Path, prepare: Callable[[BrowserContext], None] | None = None
) -> Iterator[Page]:
    """A page of Chromium on a fresh profile (`prepare` sets up its context first); screenshots
    go to `shots`. On leaving, no script error may have happened in the page."""
    _require_browser()
    assert sync_playwright is not None
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(profile),  # a fresh --user-data-dir
            executable_path=str(CHROMIUM),
            args=ARGS,
            headless=True,
            viewport={"width": 1400, "height": 900},
        )
        if prepare is not None:
            prepare(browser)
        opened = browser.new_page()
        errors: list[str] = []
        opened.on("pageerror", lambda error: errors.append(str(error)))
        yield opened
        browser.close()
        assert not errors, errors


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalProcess, int]]:
    with gui_cluster(tmp_path_factory.mktemp("gui")) as running:
        yield running


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    with chromium_page(tmp_path_factory.mktemp("chromium-profile"), SHOTS) as opened:
        opened.on("dialog", lambda dialog: dialog.accept())  # confirm() of destructive actions
        yield opened


def test_gui_in_chromium(cluster: tuple[LocalProcess, int], page: Page) -> None:
    local, http_port = cluster
    base = f"http://127.0.0.1:{http_port}"
    with grpc.insecure_channel(local.endpoint) as channel:
        session_id = ArmoniKSessions(channel).create_session(OPTIONS)
        # Two sleeps first: while one agent sleeps the other takes tasks, so that both agents
        # have run some and the agents page finds them both.
        orders: list[dict[str, Any]] = [{"kind": "sleep", "seconds": 1}] * 2
        orders += [{"kind": "value", "value": i} for i in range(6)]
        orders += [{"kind": "crash"}, {"kind": "error", "message": "refused: bad input"}]
        ids = submit(channel, session_id, orders)
        crashed, refused = ids[8], ids[9]
        crashed_final = f"{crashed}###1"  # max_retries=1: RETRIED, then this one ends in ERROR
        tasks = ArmoniKTasks(channel)

        def counts() -> dict[TaskStatus, int]:
            return dict(tasks.count_tasks_by_status(Task.session_id == session_id))

        wait_for(
            lambda: counts().get(TaskStatus.ERROR) == 2 and counts().get(TaskStatus.COMPLETED) == 8
        )
        submit(channel, session_id, [{"kind": "sleep", "seconds": 60}])  # running when cancelled

        # Sessions: the running session is listed.
        page.goto(f"{base}/sessions")
        row = page.locator(f'tr[data-session="{session_id}"]')
        expect(row.locator(".badge")).to_have_text("RUNNING")
        page.screenshot(path=SHOTS / "sessions.png", full_page=True)
        page.goto(base + "/")
        expect(page.locator(f'tr[data-session="{session_id}"]')).to_be_visible()
        expect(page.locator(".chart rect.ok").first).to_be_attached()
        page.screenshot(path=SHOTS / "dashboard.png", full_page=True)

        # Tasks of the session, filtered by status.
        page.goto(f"{base}/tasks?session={session_id}")
        expect(page.locator("#tasks-table tbody tr")).to_have_count(12)
        page.select_option("#status", "ERROR")
        rows = page.locator("#tasks-table tbody tr")
        expect(rows).to_have_count(2)
        expect(rows.locator(".badge")).to_have_text(["ERROR", "ERROR"])
        assert "status=ERROR" in page.url
        page.screenshot(path=SHOTS / "tasks-error.png", full_page=True)

        # The failed task: its error and its retry chain.
        page.locator(f'tr[data-task="{crashed_final}"] a').click()
        expect(page.locator("h1")).to_contain_text(crashed_final)
        expect(page.locator("#error")).to_contain_text("Worker")
        chain = page.locator("#attempts li")
        expect(chain).to_have_count(2)
        expect(chain.locator(".badge")).to_have_text(["RETRIED", "ERROR"])
        expect(chain.nth(0)).to_contain_text(crashed)
        expect(page.locator("#timeline span").first).to_be_attached()
        page.screenshot(path=SHOTS / "task-failed.png", full_page=True)
        page.goto(f"{base}/tasks/{refused}")
        expect(page.locator("#error")).to_have_text("refused: bad input")

        # Agents: both, alive, found through their tasks.
        page.goto(f"{base}/agents")
        expect(page.locator("#agents-table tbody tr")).to_have_count(2)
        expect(page.locator("#agents-table .badge")).to_have_text(["OK", "OK"])
        page.screenshot(path=SHOTS / "agents.png", full_page=True)

        # Cancel the session from the page; the live refresh shows it.
        page.goto(f"{base}/sessions")
        page.locator(f'tr[data-session="{session_id}"] button[data-action="cancel"]').click()
        expect(row.locator(".badge")).to_have_text("CANCELLED", timeout=10_000)
        expect(row.locator('button[data-action="purge"]')).to_be_enabled()
        page.screenshot(path=SHOTS / "session-cancelled.png", full_page=True)
        assert ArmoniKSessions(channel).get_session(session_id).status == SessionStatus.CANCELLED
        wait_for(lambda: counts().get(TaskStatus.CANCELLED) == 1)
    (SHOTS / "session.json").write_text(json.dumps({"session_id": session_id, "tasks": ids}))
