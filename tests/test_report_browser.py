"""The HTML report as a person sees it: Chromium opens the file offline and shows the right numbers.

Driven by Playwright with Debian's Chromium (/usr/bin/chromium; `.ci/run` installs it). A missing
browser fails the test, with the command that installs it: a report nobody looked at is not tested.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from playwright.sync_api import Browser, Page, Route, sync_playwright

from bulksend.reporting.files import timeline_path, write_report
from bulksend.reporting.html import ReportMeta
from bulksend.reporting.timeline import RunInfo, Sample, write_timeline
from tests.browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS
from tests.test_report_aggregate import T0, known_lines


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run installs it)")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), args=list(CHROMIUM_ARGS))
        yield launched
        launched.close()


def flow_samples() -> list[Sample]:
    """One run of 60 s: the limit found at 80/s after 429s, the breaker open once at 30 s."""
    samples = []
    for i in range(61):
        samples.append(
            Sample(
                t=T0 + i,
                run=0,
                submitted=min(8, i),
                final=min(7, i // 2),
                failed=min(4, i // 4),
                throttled=min(5, i // 3),
                trips=1 if i >= 30 else 0,
                limit_per_s=100.0 if i < 10 else 80.0,
                measured_per_s=60.0 + i % 7,
                in_flight=2,
                circuit="open" if 30 <= i < 33 else "closed",
            )
        )
    return samples


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report of the twelve known rows, with a recorded run of 60 s beside them."""
    folder = tmp_path_factory.mktemp("report")
    # Written as `bulksend send` writes JSONL (not through its async writer: Playwright's sync
    # API runs an event loop in this thread).
    outcomes = folder / "known.jsonl"
    outcomes.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in known_lines()))
    run = RunInfo(
        "spring-notice", "Shop <shop@example.com>", str(folder / "people.csv"), "ab" * 32, T0, T0 + 70
    )
    write_timeline(timeline_path(outcomes), [run], flow_samples())
    html = folder / "known.report.html"
    write_report(outcomes, html, meta=ReportMeta())
    return html


@pytest.fixture
def page(browser: Browser, report: Path) -> Iterator[tuple[Page, list[str]]]:
    """The report opened in a fresh page; every request the page makes is recorded, and any
    that is not the report file itself is refused."""
    context = browser.new_context(viewport={"width": 1100, "height": 900}, java_script_enabled=True)
    requests: list[str] = []

    def only_the_report(route: Route) -> None:
        if route.request.url == report.as_uri():
            route.continue_()
        else:
            route.abort()

    context.route("**/*", only_the_report)
    opened = context.new_page()
    opened.on("request", lambda r: requests.append(r.url))
    opened.on("requestfailed", lambda r: requests.append(f"failed {r.url}"))
    opened.goto(report.as_uri())
    yield opened, requests
    context.close()


def text(page: Page, selector: str) -> str:
    return page.inner_text(selector).strip()


def test_every_section_shows_the_numbers_of_the_known_file(page: tuple[Page, list[str]]) -> None:
    """Header, outcomes, over time, why not sent, domains and timing show the known file's numbers."""
    p, _ = page
    assert text(p, "h1") == "Campaign spring-notice — bulksend report"
    assert text(p, "dd[data-key=sender]") == "Shop <shop@example.com>"
    assert text(p, "dd[data-key=sha256]") == "ab" * 32
    assert text(p, "dd[data-key=start]") == "2026-03-01 12:00:00 UTC"
    assert text(p, "dd[data-key=duration]") == "1 min 10 s"
    cards = {
        key: (
            text(p, f"#bs-headline .bs-card[data-key={key}] .bs-value"),
            text(p, f"#bs-headline .bs-card[data-key={key}] .bs-share"),
        )
        for key in ("recipients", "sent", "failed", "canceled", "rejected", "skipped", "unknown", "retried")
    }
    assert cards == {
        "recipients": ("12", "100 %"),
        "sent": ("3", "25.0 %"),
        "failed": ("4", "33.3 %"),
        "canceled": ("1", "8.3 %"),
        "rejected": ("2", "16.7 %"),
        "skipped": ("1", "8.3 %"),
        "unknown": ("1", "8.3 %"),
        "retried": ("2", "16.7 %"),
    }
    assert p.locator("#bs-emails-over-time .bs-series").count() == 3
    assert p.locator("#bs-rate .bs-series").count() == 3
    assert "5 answers were 429 (throttled); the circuit breaker opened 1 time." in text(
        p, "#bs-throttle-note"
    )
    assert p.locator("#bs-throttling .bs-marker").count() == 1
    assert text(p, "#bs-not-sent-summary") == (
        "9 of 12 recipients were not sent: failed 4, canceled 1, rejected 2, skipped 1, unknown 1."
    )
    first_answer = p.locator("#bs-failures-by-answer tbody tr").first
    assert first_answer.locator("td").nth(0).inner_text() == "2"
    assert first_answer.locator("td").nth(2).inner_text() == "550 5.1.1 <address>: user unknown"
    assert "row 4" in first_answer.locator("td").nth(3).inner_text()
    assert "550 5.1.1 <b@other.org>: user unknown" in first_answer.locator("td").nth(3).inner_text()
    flags = p.locator("#bs-failures-by-flag tbody tr")
    assert [flags.nth(i).get_attribute("data-kind") for i in range(flags.count())] == [
        "hard_bounce",
        "blocklisted",
        "mailbox_full",
    ]
    rejection = p.locator("#bs-rejections tbody tr").first
    assert rejection.locator("td").nth(0).inner_text() == "2"
    assert "is not an email address" in rejection.locator("td").nth(2).inner_text()
    domains = p.locator("#bs-domain-table tbody tr")
    assert [c.strip() for c in domains.first.locator("td").all_inner_texts()] == [
        "example.com",
        "8",
        "66.7 %",
        "25.0 %",
        "37.5 %",
        "0.0 %",
        "4.0 s",
    ]
    assert domains.count() == 4
    percentiles = {
        key: text(p, f"#bs-percentiles .bs-card[data-key={key}] .bs-value")
        for key in ("p50", "p90", "p99", "max")
    }
    assert percentiles == {"p50": "12 s", "p90": "1 min 00 s", "p99": "1 min 00 s", "max": "1 min 00 s"}
    try_bins = p.locator("#bs-try-count .bs-bin")
    assert [try_bins.nth(i).get_attribute("data-label") for i in range(try_bins.count())] == [
        "0",
        "1",
        "2",
        "3",
    ]


def test_the_page_loads_nothing_runs_no_script_and_links_its_files(
    page: tuple[Page, list[str]], report: Path
) -> None:
    """The only request is the report itself; it has no script; its links reach the files beside it."""
    p, requests = page
    assert requests == [report.as_uri()]
    assert p.evaluate("document.scripts.length") == 0
    for link, name in (("#bs-outcomes-link", "known.jsonl"), ("#bs-resend-link", "known.resend.csv")):
        href = p.get_attribute(link, "href")
        assert href == name
        assert (report.parent / href).is_file()
    for section in (
        "bs-header",
        "bs-headline",
        "bs-over-time",
        "bs-why-not-sent",
        "bs-domains",
        "bs-timing",
        "bs-files",
    ):
        assert p.locator(f"#{section}").is_visible()


def test_a_screenshot_of_the_report_is_saved(page: tuple[Page, list[str]]) -> None:
    """A full-page screenshot is kept in test-artifacts/ (ignored by git) to look at after a run."""
    p, _ = page
    ARTIFACTS.mkdir(exist_ok=True)
    target = ARTIFACTS / "report.png"
    p.screenshot(path=str(target), full_page=True)
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert target.stat().st_size > 10_000
