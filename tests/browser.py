"""A real browser for tests of pages the project serves: Debian's Chromium, driven by Playwright.

Playwright's own browser builds are never installed (``playwright install`` downloads them); the
tests drive the system's ``/usr/bin/chromium`` (``apt-get install chromium``, as .ci/run does).
Screenshots and other artifacts go to ``test-artifacts/`` at the top of the tree (git-ignored).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import pytest
from playwright.async_api import Browser, async_playwright

CHROMIUM: Final = Path("/usr/bin/chromium")
CHROMIUM_ARGS: Final = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
ARTIFACTS: Final = Path(__file__).resolve().parent.parent / "test-artifacts"
"""Where browser tests save screenshots (git-ignored)."""


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """A headless Chromium, closed at the end of the block.

    Without ``/usr/bin/chromium`` the test is skipped on a developer's machine and fails in CI
    (``CI`` set), where .ci/run installs it: a missing browser must not pass unnoticed there.
    """
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: apt-get install -y chromium"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=list(CHROMIUM_ARGS))
        try:
            yield browser
        finally:
            await browser.close()


def artifact(name: str) -> Path:
    """A path for an artifact named ``name`` in ``test-artifacts/`` (created if needed)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS / name
