"""The console in a real browser: Debian's Chromium, driven by the playwright package with
`executable_path` (a browser download is impossible here, so `playwright install` is never run).

Skipped only when Chromium or playwright is missing and RELAY_REQUIRE_BROWSER is unset;
RELAY_REQUIRE_BROWSER=1 (set by .ci/run) turns a missing browser into a failure, as
RELAY_REQUIRE_POSTGRES does for PostgreSQL. The relay runs on a SQLite file only.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.support.relay import RunningRelay

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page, ViewportSize

CHROMIUM = os.environ.get("RELAY_CHROMIUM", "/usr/bin/chromium")
REQUIRE_BROWSER = os.environ.get("RELAY_REQUIRE_BROWSER") == "1"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
VIEWPORT: ViewportSize = {"width": 1280, "height": 860}
STEP_MS = 10_000  # how long an expectation on the page may take (the overview refreshes every 3 s)


def browser_missing() -> str | None:
    """None when the tests can run, else why not."""
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed (pip install -e '.[dev]')"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    return None


@pytest.fixture
def db_url(sqlite_template: Path, tmp_path: Path) -> str:
    """The browser tests need SQLite only: one fresh migrated file (not the SQLite/PostgreSQL pair)."""
    path = tmp_path / "relay.db"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    reason = browser_missing()
    if reason is not None:
        if REQUIRE_BROWSER:
            pytest.fail(f"RELAY_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=CHROMIUM)
        try:
            yield launched
        finally:
            await launched.close()


@dataclass
class Console:
    """One browser tab on the relay's console, recording what a person could not see: every request
    it makes, every dialog, every uncaught error and Content-Security-Policy violation."""

    page: Page
    origin: str
    requests: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    async def open(self, hash_route: str = "#/") -> None:
        await self.page.goto(f"{self.origin}/ui/{hash_route}")

    async def go(self, hash_route: str) -> None:
        """Navigate inside the console (a hash change, no page load)."""
        await self.page.evaluate("(h) => { location.hash = h; }", hash_route)

    async def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"console-{name}.png"
        await self.page.screenshot(path=str(path), full_page=True)
        return path

    def foreign_requests(self) -> list[str]:
        return [url for url in self.requests if not url.startswith(f"{self.origin}/")]


ConsoleFactory = Callable[..., contextlib.AbstractAsyncContextManager[Console]]


@pytest.fixture
def console(browser: Browser) -> ConsoleFactory:
    """console(relay, token=None) → a fresh browser context (its own session storage) on the relay's
    /ui/; on leaving, it checks that nothing left for another host, no dialog opened, and the page
    raised no error and broke no CSP rule."""

    @contextlib.asynccontextmanager
    async def open_console(r: RunningRelay, **context: Any) -> AsyncIterator[Console]:
        ctx = await browser.new_context(viewport=VIEWPORT, timezone_id="UTC", locale="en-GB", **context)
        ctx.set_default_timeout(STEP_MS)
        page = await ctx.new_page()
        c = Console(page, r.base_url)
        page.on("request", lambda request: c.requests.append(request.url))

        async def dismiss(dialog: Any) -> None:
            c.dialogs.append(f"{dialog.type}: {dialog.message}")
            await dialog.dismiss()

        page.on("dialog", dismiss)
        page.on("pageerror", lambda exc: c.errors.append(f"uncaught: {exc}"))
        page.on(
            "console",
            lambda msg: (
                c.errors.append(f"console: {msg.text}")
                if msg.type == "error" and "Failed to load resource" not in msg.text
                else None
            ),
        )
        try:
            yield c
        finally:
            await ctx.close()
        assert c.requests, "the page made no request at all"
        assert not c.foreign_requests(), f"requests left for another host: {c.foreign_requests()}"
        assert not c.dialogs, f"dialogs opened: {c.dialogs}"
        assert not c.errors, f"the page logged errors: {c.errors}"

    return open_console
