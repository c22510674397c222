"""The dashboard in a real browser (Chromium through Playwright) against a real daemon.

The daemon runs in-process against the sandbox, slowed down so that a campaign is still running
while the page is watched. Every wait is on what the page or the API shows (a DOM attribute, a
campaign's counts), never on the clock.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from playwright.async_api import Page, Request

from bulksend.sandbox import Sandbox
from tests.browser import artifact, chromium
from tests.test_daemon import job
from tests.test_daemon_admin import TOKEN, Admin, admin_daemon, sent_to

LOOPBACK = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})


async def shown_done(page: Page) -> int:
    """Recipients with their outcome, as the campaign view shows them."""
    return int(await page.get_attribute("#c-done", "data-done") or 0)


async def wait_for_done(page: Page, condition: str, n: int) -> int:
    """Wait until the campaign view's count of done recipients is ``condition`` ``n``
    (``">"``, ``"==="``); returns the count then shown."""
    await page.wait_for_function(
        f"n => Number(document.querySelector('#c-done').dataset.done) {condition} n", arg=n
    )
    return await shown_done(page)


async def refreshes(page: Page) -> int:
    """How many times the page has refreshed its figures."""
    return int(await page.evaluate("Number(document.body.dataset.refreshes || 0)"))


async def wait_for_refreshes(page: Page, n: int) -> None:
    """Wait until the page has refreshed at least ``n`` times since it loaded."""
    await page.wait_for_function("n => Number(document.body.dataset.refreshes || 0) >= n", arg=n)


async def sign_in(page: Page, token: str) -> None:
    await page.fill("#token", token)
    await page.click("#login-form button[type=submit]")


async def test_dashboard_signs_in_follows_a_campaign_and_pauses_it(tmp_path: Path, sandbox: Sandbox) -> None:
    """The page asks for the token and refuses a wrong one with a clear message; with the right
    one it lists the running campaign, whose view shows its progress moving; its Pause button
    pauses it (the API says so) and its progress then stops. Every request goes to the daemon on
    loopback, with the token in the Authorization header only (no cookie, nothing in a URL)."""
    sandbox.update(latency_ms=60)  # one request at a time: about 15 sends a second
    addresses = [f"reader{i}@example.com" for i in range(400)]
    requests: list[Request] = []
    console: list[str] = []
    async with admin_daemon(tmp_path, sandbox) as (_, admin, source, watch), chromium() as browser:
        await admin.submit("spring", addresses, concurrency=1)
        source.publish(job("order-1", "ann@example.com"))
        source.publish(job("order-2", "bob@example.com", template="welcom"))  # dead-lettered
        await watch.wait(outcomes=1, jobs=2)

        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("request", lambda request: requests.append(request))
        page.on("console", lambda message: console.append(message.text))
        await page.goto(f"{admin.url}/ui/")
        await page.wait_for_selector("#login:not([hidden])")
        await sign_in(page, "not-the-token")
        await page.wait_for_selector("#login-error:not([hidden])")
        message = await page.inner_text("#login-error")
        assert message == "The daemon refused this token: invalid admin token."
        assert await page.is_hidden("#overview")
        assert await page.evaluate("sessionStorage.length") == 0

        await sign_in(page, TOKEN)
        await page.wait_for_selector('#campaigns tr[data-campaign="spring"]')
        # The job sent before shows in its stream once the daemon's 2-second gauges have read it.
        await page.wait_for_selector('#job-streams tr[data-stream="welcome"] td.done:text-is("1")')
        await page.wait_for_selector("#dead-letters tbody tr")
        assert await page.is_hidden("#login")
        await page.screenshot(path=artifact("dashboard-overview.png"), full_page=True)  # docs/daemon.md

        await page.click('#campaigns a:text-is("spring")')
        await page.wait_for_selector("#campaign:not([hidden])")
        await page.wait_for_selector("#report svg")  # the report's charts, drawn by the daemon
        assert await page.is_visible("#report svg")
        moved = await wait_for_done(page, ">", await shown_done(page))
        await wait_for_done(page, ">", moved)  # and moves on: the view follows the campaign
        await page.screenshot(path=artifact("dashboard-campaign.png"))  # the view's top: docs/daemon.md

        await page.click("#c-pause")
        await page.wait_for_selector('#c-state:text-is("paused")')
        assert (await admin.campaign("spring"))["state"] == "paused"
        await check_progress_stopped(page, admin, sandbox, addresses)
        assert await page.is_enabled("#c-resume")
        assert await page.is_disabled("#c-pause")
        await page.screenshot(path=artifact("dashboard-paused.png"), full_page=True)
        await page.close()

    check_requests(requests)
    # The page and the report's fragment ask for nothing the Content-Security-Policy refuses.
    assert not [text for text in console if "Content Security Policy" in text], console


async def check_progress_stopped(page: Page, admin: Admin, sandbox: Sandbox, addresses: list[str]) -> None:
    """Once the paused campaign's last requests are tracked to their outcome, nothing more is
    sent and the page, refreshed twice more, shows the same figure as the API."""
    settled = await admin.wait_until(
        "spring", lambda c: c["counts"]["sending"] == 0 and c["counts"]["submitted"] == 0
    )
    sent = sent_to(sandbox, addresses)
    await wait_for_done(page, "===", settled["done"])
    await wait_for_refreshes(page, await refreshes(page) + 2)
    assert await shown_done(page) == settled["done"]
    again = await admin.campaign("spring")
    assert (again["state"], again["done"]) == ("paused", settled["done"])
    assert settled["counts"]["pending"] > 0  # stopped half-way, not finished
    assert sent_to(sandbox, addresses) == sent


def check_requests(requests: list[Request]) -> None:
    """Every request went to loopback; API calls carried the token as a bearer token only."""
    assert requests
    hosts = {urlsplit(r.url).hostname for r in requests}
    assert hosts <= LOOPBACK, hosts
    api_calls: list[dict[str, Any]] = [r.headers for r in requests if urlsplit(r.url).path.startswith("/v1/")]
    assert api_calls
    assert all(TOKEN not in r.url for r in requests)
    assert all("cookie" not in headers for headers in api_calls)
    bearer = {headers.get("authorization") for headers in api_calls}
    assert bearer == {f"Bearer {TOKEN}", "Bearer not-the-token"}
