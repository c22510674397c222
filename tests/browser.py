"""A real browser for tests of pages the project serves: Debian's Chromium, driven by Playwright.

Playwright's own browser builds are never installed (``playwright install`` downloads them); the
tests drive the system's ``/usr/bin/chromium`` (``apt-get install chromium``, as .ci/run does;
``BULKSEND_TEST_CHROMIUM`` names another).
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

CHROMIUM: Final = Path(os.environ.get("BULKSEND_TEST_CHROMIUM", "/usr/bin/chromium"))
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

    A missing browser fails the test with the command that installs it: a page nobody looked at
    is not tested.
    """
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run installs it)")
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
