"""The admin GUI with authentication on, in headless Chromium (as test_gui_browser.py): no
token gets the login form; a `Monitoring` token sees the sessions and no action button; a
`Submitter` token cancels a session; a revoked token is sent back to the login form.
Screenshots go to test-artifacts/gui/."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from armonik.client import ArmoniKSessions
from armonik.common import SessionStatus

from pyarmonik.scheduling.auth import AuthStore
from tests.helpers import control_plane
from tests.observability.support import run_task
from tests.observability.test_gui_api import OPTIONS, submit
from tests.observability.test_gui_auth import provision, serve_http
from tests.observability.test_gui_browser import ARGS, CHROMIUM, SHOTS, _require_browser

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # pragma: no cover - playwright is a dev dependency
    sync_playwright = None


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    _require_browser()
    assert sync_playwright is not None
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=ARGS, headless=True
        )
        yield launched
        launched.close()


def _page(browser: Browser) -> tuple[Page, list[str]]:
    """A page in a fresh context (its own sessionStorage), and the script errors it meets."""
    page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
    page.on("dialog", lambda dialog: dialog.accept())  # confirm() of destructive actions
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    return page, errors


def _log_in(page: Page, base: str, token: str) -> None:
    page.goto(f"{base}/sessions")
    expect(page.locator("#login")).to_be_visible()
    page.fill("#token", token)
    page.locator("#login button[type=submit]").click()


def test_gui_login_and_permissions(browser: Browser, tmp_path: Path) -> None:
    with (
        control_plane(tmp_path) as plane,
        grpc.insecure_channel(plane.endpoint) as channel,
    ):
        assert plane.plane is not None
        store = AuthStore(plane.plane.backends)
        tokens = plane.call(provision(store))
        server = serve_http(plane, require_authentication=True, require_authorization=True)
        base = f"http://127.0.0.1:{server.port}"
        sessions = ArmoniKSessions(channel)
        session_id = sessions.create_session(OPTIONS)
        (task_id,) = submit(channel, session_id, 1)
        plane.call(run_task(plane.plane.backends, task_id, "ok", data=b"forty-two"))
        row = f'tr[data-session="{session_id}"]'
        output = 'tr[data-result] td:has-text("out-0")'
        try:
            # No token: the login form, and no data.
            page, errors = _page(browser)
            page.goto(f"{base}/sessions")
            expect(page.locator("#login")).to_be_visible()
            expect(page.locator("#token")).to_be_visible()
            expect(page.locator("#sessions-table")).to_have_count(0)
            expect(page.locator("nav a:visible")).to_have_count(0)
            page.screenshot(path=SHOTS / "login.png", full_page=True)
            # A wrong token: the login form again, saying why.
            page.fill("#token", "wrong")
            page.locator("#login button[type=submit]").click()
            expect(page.locator("#login-error")).to_contain_text("token")
            assert not errors, errors

            # Monitoring: sees the session, no action button, no download link.
            page, errors = _page(browser)
            _log_in(page, base, tokens["monitor"])
            expect(page.locator(f"{row} .badge")).to_have_text("RUNNING")
            expect(page.locator("#username")).to_have_text("monitor")
            expect(page.locator(f"{row} button")).to_have_count(0)
            expect(page.locator("#logout")).to_be_visible()
            page.screenshot(path=SHOTS / "sessions-monitoring.png", full_page=True)
            page.goto(base + "/")  # the token survives navigation (sessionStorage)
            expect(page.locator(row)).to_be_visible()
            page.goto(f"{base}/results?session={session_id}")
            expect(page.locator(output)).to_be_visible()
            expect(page.locator("#results-table a[download]")).to_have_count(0)
            page.locator("#logout").click()
            expect(page.locator("#login")).to_be_visible()
            assert not errors, errors

            # Submitter: cancels the session from the page.
            page, errors = _page(browser)
            _log_in(page, base, tokens["alice"])
            expect(page.locator("#username")).to_have_text("alice")
            # A download carries the token (fetched, then saved from memory).
            page.goto(f"{base}/results?session={session_id}&q=out-0")
            with page.expect_download() as download:
                page.locator("#results-table a[download]").click()
            assert Path(download.value.path()).read_bytes() == b"forty-two"
            page.goto(f"{base}/sessions")
            page.locator(f'{row} button[data-action="cancel"]').click()
            expect(page.locator(f"{row} .badge")).to_have_text("CANCELLED", timeout=10_000)
            page.screenshot(path=SHOTS / "session-cancelled-submitter.png", full_page=True)
            assert sessions.get_session(session_id).status == SessionStatus.CANCELLED

            # Its token revoked, the live refresh sends it back to the login form.
            plane.call(store.revoke_token("alice"))
            expect(page.locator("#login")).to_be_visible(timeout=10_000)
            assert not errors, errors
        finally:
            plane.call(server.stop())
