"""The dashboard's server side: the static page at /ui/ and the JSON endpoints it reads.

Over a real aiohttp server on loopback: :class:`MemoryControl` for the page and the headers, a
real daemon against the sandbox for ``/v1/overview``. The page in a browser is
tests/test_dashboard_browser.py.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest

from bulksend.daemon.admin import MemoryControl, Submission
from bulksend.daemon.admin.dashboard import CONTENT_SECURITY_POLICY
from bulksend.daemon.admin.reports import CampaignReport, CampaignReports
from bulksend.sandbox import Sandbox
from bulksend.testing import FakeClock
from tests.test_admin_api import AUTH, Client, jsonl, submit, toml
from tests.test_admin_api import client as client
from tests.test_admin_api import control as control
from tests.test_admin_api import make_client as make_client
from tests.test_admin_api import metrics as metrics
from tests.test_daemon import job
from tests.test_daemon_admin import admin_daemon
from tests.waiting import wait_until

UI_FILES = {
    "/ui/": "text/html",
    "/ui/dashboard.js": "text/javascript",
    "/ui/dashboard.css": "text/css",
    "/ui/report.css": "text/css",
    "/ui/favicon.svg": "image/svg+xml",
}


def assert_strict(headers: Any) -> None:
    """The headers every answer of the admin API carries for a browser."""
    assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["X-Frame-Options"] == "DENY"


async def test_the_page_is_open_strict_and_holds_no_data(client: Client) -> None:
    """Every file of the page answers without a token, with its type and the strict headers, and
    none holds a campaign's data: the page reads it from the API with the token."""
    await submit(client, toml("secret-campaign"), b"email\nann@example.com\n", filename="people.csv")
    for path, content_type in UI_FILES.items():
        resp = await client.get(path)
        assert resp.status == 200, path
        assert resp.content_type == content_type, path
        assert_strict(resp.headers)
        body = await resp.text()
        assert "secret-campaign" not in body
        assert "ann@example.com" not in body
    assert CONTENT_SECURITY_POLICY.startswith("default-src 'self'; script-src 'self';")


async def test_the_page_has_no_inline_script_nor_style_nor_outside_host(client: Client) -> None:
    """Scripts and styles come from files of the daemon itself: nothing the CSP would block,
    and no address of another host."""
    html = await (await client.get("/ui/")).text()
    scripts = re.findall(r"<script\b[^>]*>(.*?)</script>", html, re.S)
    assert scripts == [""]  # one script, loaded by src
    assert re.search(r"<script\b[^>]*\bsrc=\"dashboard\.js\"", html)
    assert "<style" not in html
    assert not re.search(r"\bstyle=", html)
    assert not re.search(r"\bon[a-z]+=", html)  # no inline event handler
    for path in UI_FILES:
        addresses = set(re.findall(r"\w+://[^\s\"')]*", await (await client.get(path)).text()))
        assert addresses <= {"http://www.w3.org/2000/svg"}, path  # the SVG namespace: no request


async def test_ui_paths(client: Client) -> None:
    """/ui redirects to /ui/; a name that is not a file of the page is 404, whatever it holds."""
    resp = await client.get("/ui", allow_redirects=False)
    assert (resp.status, resp.headers["Location"]) == (308, "/ui/")
    for name in ("nothing.js", "..%2F..%2Fapi.py", "index.html%00.js", "__init__.py"):
        resp = await client.get(f"/ui/{name}")
        assert resp.status == 404, name
        assert "error" in await resp.json()
    assert (await client.get("/ui/index.html")).status == 200


async def test_overview_needs_the_token_and_says_what_a_memory_control_has(client: Client) -> None:
    """/v1/overview is authenticated like the rest (with the strict headers on the 401 too); a
    control without a limiter answers without flow figures, sources or job streams."""
    refused = await client.get("/v1/overview")
    assert refused.status == 401
    assert_strict(refused.headers)
    resp = await client.get("/v1/overview", headers=AUTH)
    assert resp.status == 200
    assert_strict(resp.headers)
    assert await resp.json() == {
        "flow": None,
        "in_flight": 0,
        "tracker_backlog": 0,
        "sources": [],
        "job_streams": [],
    }


async def test_overview_of_a_daemon(tmp_path: Path, sandbox: Sandbox) -> None:
    """A daemon's overview states its limiter (configured rate, closed breaker, full retry
    budget), its source with a queue lag once the broker has been asked, and each job stream's
    rows by state: a job sent shows as done and sent."""
    async with admin_daemon(tmp_path, sandbox) as (_, admin, source, watch):
        source.publish(job("order-1", "ann@example.com"))
        await watch.wait(outcomes=1)
        seen: list[dict[str, Any]] = []

        async def counted() -> bool:
            status, body = await admin.call("GET", "/v1/overview")
            assert status == 200, body
            seen.append(body)
            return bool(body["job_streams"][0]["done"] == 1 and body["sources"][0]["queue_lag"] is not None)

        await wait_until(counted, what="the gauges' refresh reads the job stream's counts", poll_s=0.1)
    overview = seen[-1]
    flow = overview["flow"]
    assert flow["rate_per_s"] == 5000.0
    assert flow["circuit"] == "closed"
    assert flow["retry_tokens"] == flow["retry_tokens_max"] > 0
    assert overview["sources"] == [{"source": source.name, "queue_lag": 0}]
    (stream,) = overview["job_streams"]
    assert (stream["template"], stream["campaign"]) == ("welcome", "jobs.welcome")
    assert stream["counts"]["status:sent"] == 1
    assert stream["counts"]["pending"] == 0


# -- the campaign report -------------------------------------------------------------------------
HOSTILE = "<script>alert(1)</script>"


async def test_report_draws_the_campaigns_outcomes_escaped(client: Client, control: MemoryControl) -> None:
    """The report of a finished campaign counts every row, draws its charts as SVG, and shows
    what a recipients file holds as text: markup in an address never becomes markup."""
    rows = jsonl("a@example.com", "b@example.org", f"{HOSTILE}@example.com", "not-an-address")
    await submit(client, toml("spring"), rows)
    await control.finish("spring", "sent")
    resp = await client.get("/v1/campaigns/spring/report", headers=AUTH)
    assert resp.status == 200
    assert_strict(resp.headers)
    body = await resp.json()
    assert (body["id"], body["state"], body["done"], body["total"]) == ("spring", "finished", 4, 4)
    assert body["built_at"].endswith("Z")
    assert "<svg" in body["html"]
    assert "<script" not in body["html"]
    assert body["summary"]["rows"] == 4


async def test_a_running_campaigns_report_counts_rows_not_final_as_in_progress(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """While a campaign runs, its report counts the emails TEM still holds (`hold…` stays new,
    `stuck…` sending) as in progress, none as unknown; the outcomes stream keeps the file's
    statuses (`unknown` with a reason)."""
    async with admin_daemon(tmp_path, sandbox) as (_, admin, _source, _watch):
        sent, held = ["ann@example.com", "bob@example.com"], ["hold1@example.com", "stuck2@example.com"]
        await admin.submit("live", [*sent, *held])
        running = await admin.wait_until(
            "live", lambda c: c["counts"].get("status:sent") == 2 and c["counts"]["submitted"] == 2
        )
        assert running["state"] == "running"
        status, report = await admin.call("GET", "/v1/campaigns/live/report")
        assert status == 200, report
        assert report["state"] == "running"
        statuses = report["summary"]["statuses"]
        assert (statuses["sent"], statuses["in progress"], statuses["unknown"]) == (2, 2, 0)
        assert report["summary"]["not_sent_other"]["total"] == 0
        assert 'data-key="in progress"' in report["html"]
        lines = {line["email"]: line for line in await admin.outcomes("live")}
        assert {lines[a]["status"] for a in held} == {"unknown"}
        assert all(lines[a]["reason"] for a in held)


async def test_rows_a_memory_control_has_not_sent_yet_are_in_progress(client: Client) -> None:
    """A submitted campaign nobody ran yet: its pending rows are in progress, a bad one rejected."""
    await submit(client, toml("waiting"), jsonl("a@example.com", "b@example.org", "not-an-address"))
    body = await (await client.get("/v1/campaigns/waiting/report", headers=AUTH)).json()
    statuses = body["summary"]["statuses"]
    assert (statuses["in progress"], statuses["rejected"], statuses["unknown"]) == (2, 1, 0)


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v1/campaigns/ghost/report", 404),  # unknown
        ("/v1/campaigns/jobs.welcome/report", 404),  # a job stream is not a campaign
        ("/v1/campaigns/results:jobs.welcome/report", 404),  # nor its results journal
        ("/v1/campaigns/-dash/report", 404),  # not an id a campaign can have
        (f"/v1/campaigns/{'a' * 65}/report", 404),
        ("/v1/campaigns/a%2F..%2Fb/report", 404),
    ],
)
async def test_report_of_what_is_not_a_campaign_is_404(client: Client, path: str, status: int) -> None:
    """Report ids follow the rule of every campaign route; without the token it is 401 first."""
    assert (await client.get(path)).status == 401
    resp = await client.get(path, headers=AUTH)
    assert resp.status == status
    assert "error" in await resp.json()


async def test_reports_are_built_once_for_concurrent_readers_and_kept_while_nothing_moves(
    control: MemoryControl,
) -> None:
    """Readers arriving during a build share it; the report is kept for min_age_s after the
    campaign's counts move, and however long they stand still; then it is built again."""
    clock = FakeClock()
    reports = CampaignReports(min_age_s=2.0, cost_factor=0.0, clock=clock)
    info = await control.submit_campaign(Submission(toml("spring"), jsonl("a@x.com", "b@x.com"), "r.jsonl"))
    release = anyio.Event()
    reads = 0

    async def lines() -> AsyncIterator[dict[str, Any]]:
        nonlocal reads
        reads += 1
        await release.wait()
        async for line in control.outcomes("spring"):
            yield line

    got: list[CampaignReport] = []

    async def read() -> None:
        got.append(await reports.report(info, lines))

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(read)
        await anyio.wait_all_tasks_blocked()  # one build under way, two readers waiting for it
        release.set()
    assert (reports.builds, reads, len({id(r) for r in got})) == (1, 1, 1)

    await control.finish("spring", "sent")
    finished = await control.get_campaign("spring")
    assert finished is not None
    assert await reports.report(finished, lines) is got[0]  # moved, but built under 2 s ago
    clock.advance(2.0)
    rebuilt = await reports.report(finished, lines)
    assert (reports.builds, rebuilt.summary["statuses"]["sent"]) == (2, 2)
    clock.advance(3600.0)
    assert await reports.report(finished, lines) is rebuilt  # nothing moved since: kept


async def test_reports_kept_are_bounded(control: MemoryControl) -> None:
    """Past max_entries, the report read longest ago is dropped, and built again when asked."""
    reports = CampaignReports(max_entries=2, clock=FakeClock())
    infos = [
        await control.submit_campaign(Submission(toml(name), jsonl("a@x.com"), "r.jsonl"))
        for name in ("one", "two", "three")
    ]
    for info in [*infos, infos[2], infos[1], infos[0]]:
        await reports.report(info, partial(control.outcomes, info.id))
    assert reports.builds == 4  # "one" was dropped for "three", then asked again
