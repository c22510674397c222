"""Tests of bounded rendering: size, loop and time limits of campaign and job templates."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jinja2 import StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

from bulksend.campaign.load import RenderLimits, campaign_from_dict, load_campaign, new_template_environment
from bulksend.campaign.render import Rejection, RenderedEmail, Renderer
from bulksend.campaign.templating import end_render, start_render
from bulksend.errors import CampaignError
from bulksend.jobs.intake import compile_template
from bulksend.sandbox import Sandbox, SandboxConfig, sandbox_in_thread
from tests.conftest import PROJECT as PROJECT_ID
from tests.conftest import SECRET
from tests.test_daemon import WELCOME, RecordingSource, job, make_daemon, running

PROJECT = "11111111-2222-3333-4444-555555555555"


def renderer(tmp_path: Path, text: str, **render: Any) -> Renderer:
    """A renderer for a campaign whose text body is ``text`` (``render`` fills the [render] table)."""
    (tmp_path / "recipients.csv").write_text("email\n")
    data: dict[str, Any] = {
        "campaign": {
            "id": "limits",
            "from": {"email": "news@example.com"},
            "subject": "Hello {{ name }}",
            "text": text,
            "recipients": "recipients.csv",
        }
    }
    if render:
        data["render"] = render
    return Renderer(campaign_from_dict(data, base_dir=tmp_path, source="test"), project_id=PROJECT)


def render(r: Renderer, **variables: Any) -> RenderedEmail | Rejection:
    return r.render("ann@example.com", "Ann", variables, correlation="limits/1")


def reason(result: RenderedEmail | Rejection) -> str:
    assert isinstance(result, Rejection), "rendered, but it should have been refused"
    return result.reason


NESTED_LOOPS = "{% for i in range(2000) %}{% for j in range(2000) %}{% endfor %}{% endfor %}{{ name }}"


def test_loop_iterations_are_capped_per_email(tmp_path: Path) -> None:
    """Nested loops past max_loop_iterations reject the row, naming the setting."""
    why = reason(render(renderer(tmp_path, NESTED_LOOPS)))
    assert "the text template" in why
    assert "100,000 loop iterations" in why
    assert "[render] max_loop_iterations" in why


def test_iterations_of_every_part_count_together(tmp_path: Path) -> None:
    """The iteration budget is per email: two loops that each fit may not fit together."""
    loop = "{% for i in range(600) %}{% endfor %}{{ name }}"
    r = renderer(tmp_path, loop + loop, max_loop_iterations=1000)
    assert "1,000 loop iterations" in reason(render(r))
    assert isinstance(render(renderer(tmp_path, loop, max_loop_iterations=1000)), RenderedEmail)


def test_range_larger_than_the_budget_is_refused_before_looping(tmp_path: Path) -> None:
    """range() longer than the whole iteration budget is refused by itself, with its length."""
    r = renderer(tmp_path, "{{ range(5000)|list|length }}{{ name }}", max_loop_iterations=100)
    why = reason(render(r))
    assert "range() of 5,000 items" in why


def test_time_budget_turns_into_a_rejection(tmp_path: Path) -> None:
    """A render still running at max_render_s stops there and becomes a rejection naming the setting."""
    text = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}{{ name }}"
    r = renderer(tmp_path, text, max_loop_iterations=10_000_000, max_render_s=0.05)
    why = reason(render(r))
    assert "longer than 0.05 s" in why
    assert "[render] max_render_s" in why


def test_output_past_the_part_cap_is_refused(tmp_path: Path) -> None:
    """A loop that writes past max_part_chars is stopped, at the root or inside a block or a macro."""
    writes = "{% for i in range(1000) %}0123456789{% endfor %}"
    for text in (
        writes + "{{ name }}",
        "{% set b %}" + writes + "{% endset %}{{ name }}",
        "{% macro m() %}" + writes + "{% endmacro %}{% set x = m() %}{{ name }}",
    ):
        why = reason(render(renderer(tmp_path, text, max_part_chars=5000)))
        assert "more than 5,000 characters" in why, text
        assert "[render] max_part_chars" in why


# Each of these would build far more than the cap from a small template; each must be refused
# before it is built (the message says "would make").
AMPLIFIERS = {
    "repeat": "{{ name * 3000000 }}",
    "repeat list": "{% set s = name * 1000000 %}{{ [s] * 10 }}",
    "center filter": "{{ name|center(3000000) }}",
    "str.ljust": "{{ name.ljust(3000000) }}",
    "str.format width": "{{ '{:>3000000}'.format(name) }}",
    "percent width": "{{ '%3000000s' % name }}",
    "format filter": "{{ '%3000000s'|format(name) }}",
    "replace filter": "{{ (name * 2000)|replace('', name * 1000) }}",
    "str.replace": "{{ (name * 2000).replace('', name * 1000) }}",
    "indent filter": "{{ ('\n' * 100000 ~ name)|indent(100) }}",
    "join filter": "{{ range(2000)|map('string')|map('replace', '1', name * 1000)|join }}",
    "concat doubling": (
        "{% set ns = namespace(s=name) %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"
    ),
    "list doubling": (
        "{% set ns = namespace(l=[name]) %}{% for i in range(40) %}{% set ns.l = [ns.l, ns.l] %}{% endfor %}"
    ),
    "macro recursion": (
        "{% macro f(s, n) %}{% if n %}{{ f(s ~ s, n - 1) }}{% endif %}{% endmacro %}{{ f(name, 40) }}"
    ),
    "dict of refs": "{{ dict.fromkeys(range(50000), name * 100) }}",
    "lipsum": "{{ lipsum(100000) }}{{ name }}",
}


@pytest.mark.parametrize("text", list(AMPLIFIERS.values()), ids=list(AMPLIFIERS))
def test_operations_that_amplify_are_refused_before_they_build(tmp_path: Path, text: str) -> None:
    """Repetition, padding, formatting, replacing, joining and doubling past the cap are refused."""
    # A generous time budget: on a loaded machine the default could fire first, and this test is
    # about the size check refusing before anything is built, not about the clock.
    r = renderer(tmp_path, text, max_render_s=10)
    why = reason(render(r))
    assert "would make more than 2,000,000 characters" in why


def test_huge_numbers_are_refused(tmp_path: Path) -> None:
    """A power or a repeated squaring that would make an enormous number is refused, not computed."""
    for text in (
        "{{ 7 ** (name|length * 10000000) }}",
        "{% set ns = namespace(x=3) %}{% for i in range(40) %}{% set ns.x = ns.x * ns.x %}{% endfor %}"
        "{{ name }}",
    ):
        assert "too large to print" in reason(render(renderer(tmp_path, text))), text


def test_template_exhausting_limits_without_recipient_data_is_refused_up_front(tmp_path: Path) -> None:
    """A template that exhausts a limit before using any variable fails at compile time, not per row."""
    text = "{% for i in range(2000) %}{% for j in range(2000) %}{% endfor %}{% endfor %}Hello"
    with pytest.raises(CampaignError, match=r"fails for every recipient.*max_loop_iterations"):
        renderer(tmp_path, text)


def test_daemon_template_exhausting_limits_is_refused_at_registration(tmp_path: Path) -> None:
    """A job template that exhausts a limit on its own is refused when the daemon registers it."""
    (tmp_path / "empty.jsonl").write_text("")
    spec = {**WELCOME, "text": "{{ 'x' * 3000000 }}"}
    with pytest.raises(CampaignError, match="max_part_chars"):
        compile_template(
            "heavy",
            spec,
            base_dir=tmp_path,
            empty_recipients=tmp_path / "empty.jsonl",
            project_id=PROJECT,
            sending={},
            tracking={},
            outcomes=tmp_path / "out.jsonl",
            source="test",
        )


async def test_daemon_dead_letters_an_exhausting_job_and_sends_the_next(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """A job whose template runs past a limit is dead-lettered with the reason; the next job is sent."""
    heavy = {**WELCOME, "text": NESTED_LOOPS.replace("name", "first_name")}
    daemon, source, results = make_daemon(tmp_path, sandbox, templates={"welcome": WELCOME, "heavy": heavy})
    assert isinstance(source, RecordingSource)
    source.publish(job("heavy-1", "ann@example.com", template="heavy"))
    source.publish(job("light-1", "bob@example.com"))
    with anyio.fail_after(20):
        async with running(daemon):
            await results.wait_for_keys({"light-1"})
            await source.wait_settled(2)
    [letter] = source.queue.dead_letters
    assert orjson.loads(letter.body)["idempotency_key"] == "heavy-1"
    assert "max_loop_iterations" in letter.reason


def test_render_limits_come_from_the_campaign_file(tmp_path: Path) -> None:
    """[render] sets the limits; the defaults apply without it; bad values are refused with the fix."""
    (tmp_path / "r.csv").write_text("email\n")
    base = '[campaign]\nid = "c"\nfrom = "a@example.com"\nsubject = "s"\ntext = "t"\nrecipients = "r.csv"\n'
    path = tmp_path / "c.toml"
    path.write_text(base)
    assert load_campaign(path).render == RenderLimits()
    path.write_text(base + "[render]\nmax_part_chars = 1000\nmax_loop_iterations = 10\nmax_render_s = 0.5\n")
    assert load_campaign(path).render == RenderLimits(1000, 10, 0.5)
    for bad, message in (
        ("max_render_s = 0", "render.max_render_s must be greater than 0"),
        ("max_part_chars = 'big'", "render.max_part_chars must be a whole number"),
        ("max_loops = 3", "unknown key 'max_loops'"),
        ("max_render_s = 3600", "render.max_render_s must be at most 10"),
        ("max_part_chars = 100000000", "render.max_part_chars must be at most 2097152"),
        ("max_loop_iterations = 100000000000", "render.max_loop_iterations must be at most 10000000"),
    ):
        path.write_text(base + f"[render]\n{bad}\n")
        with pytest.raises(CampaignError, match=message):
            load_campaign(path)


ORDINARY = [
    "Hi {{ name|title }}, {% if plan %}plan {{ plan|upper }}{% else %}free{% endif %}.",
    "{% for item in items %}{{ loop.index }}. {{ item }}{{ ', ' if not loop.last }}{% endfor %}",
    "{% for i in range(3) %}{{ loop.cycle('a', 'b') }}{{ loop.length }}{% else %}none{% endfor %}",
    "{% for k, v in data|dictsort %}{{ k }}={{ v }};{% endfor %}",
    "{{ items|join(', ') }} {{ items|map('upper')|join }} {{ items|length }} {{ [1, 2]|sum }}",
    "{{ name ~ ' <' ~ plan ~ '>' }} {{ '%s-%05d' % (name, 42) }} {{ '{:>8}|{:,}'.format(name, 1234567) }}",
    "{% set ns = namespace(total=0) %}{% for i in items %}{% set ns.total = ns.total + 1 %}{% endfor %}"
    "{{ ns.total }}",
    "{% macro b(x) %}<b>{{ x }}</b>{% endmacro %}{{ b(name) }} {% filter upper %}{{ plan }}{% endfilter %}",
    "{{ name|center(11) }}|{{ name.ljust(6) }}|{{ (name * 3)|replace('n', 'N') }}|{{ data|tojson }}",
    "{% for x in tree recursive %}[{{ x.n }}{% if x.c %}{{ loop(x.c) }}{% endif %}]{% endfor %}",
    "{{ items }} {{ data }} {{ items|batch(2)|list }} {{ items|first }} {{ 2 ** 10 }} {{ 'ab' * 3 }}",
]


@pytest.mark.parametrize("html", [False, True])
@pytest.mark.parametrize("source", ORDINARY)
def test_ordinary_templates_render_exactly_as_in_the_plain_sandbox(source: str, html: bool) -> None:
    """Within the limits, the bounded environment renders what Jinja's own sandbox renders."""
    plain = ImmutableSandboxedEnvironment(
        undefined=StrictUndefined, autoescape=html, keep_trailing_newline=True
    )
    variables = {
        "name": "ann <&>",
        "plan": "pro",
        "items": ["a", "b", "c"],
        "data": {"x": 1, "y": [2, 3]},
        "tree": [{"n": 1, "c": [{"n": 2, "c": []}]}, {"n": 3, "c": []}],
    }
    token = start_render(RenderLimits())
    try:
        bounded = new_template_environment(html=html).from_string(source).render(variables)
    finally:
        end_render(token)
    assert bounded == plain.from_string(source).render(variables)


def test_dry_run_reports_exhausting_rows_without_building_them(tmp_path: Path) -> None:
    """`bulksend send --dry-run` over a template that writes in a loop rejects each row and exits 0."""
    (tmp_path / "recipients.csv").write_text("email,size\na@example.com,3000\nb@example.com,1\n")
    (tmp_path / "c.toml").write_text(
        '[campaign]\nid = "dry"\nfrom = "news@example.com"\nsubject = "s"\n'
        'text = "{% for i in range(size|int) %}0123456789{% endfor %}"\nrecipients = "recipients.csv"\n'
        "[render]\nmax_part_chars = 20000\n"
    )
    env = {**os.environ, "COLUMNS": "300"}
    done = subprocess.run(
        [sys.executable, "-m", "bulksend.cli", "send", str(tmp_path / "c.toml"), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "more than 20,000 characters" in done.stdout
    assert "would send" in done.stdout


def test_sigterm_stops_a_send_while_slow_templates_render(tmp_path: Path) -> None:
    """A SIGTERM that arrives while a batch of slow (within-limit) renders runs stops the send
    gracefully (exit 130) without waiting for the rest of the batch."""
    slow = "".join(f"bob{i}@example.com,100000\n" for i in range(1000))
    (tmp_path / "people.csv").write_text("email,n\n" + slow)
    (tmp_path / "c.toml").write_text(
        '[campaign]\nid = "slow"\nfrom = "news@example.com"\nsubject = "s"\n'
        "text = \"{% for i in range(n|int) %}{{ (i ~ 'abc')|upper|replace('A', 'b') }}{% endfor %}\"\n"
        'recipients = "people.csv"\n'
    )
    config = SandboxConfig(secret_key=SECRET, project_id=PROJECT_ID)
    with sandbox_in_thread(config) as sb:
        env = {
            **os.environ,
            "SCW_SECRET_KEY": SECRET,
            "SCW_DEFAULT_PROJECT_ID": PROJECT_ID,
            "SCW_API_URL": sb.url,
            "SCW_CONFIG_PATH": "/nonexistent/config.yaml",
        }
        command = [sys.executable, "-m", "bulksend.cli", "send", str(tmp_path / "c.toml"), "--no-progress"]
        command += ["--log-format", "json", "--log-level", "info"]
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            assert proc.stderr is not None
            seen = b""
            while b"campaign.start" not in seen:  # signals are handled by the run from here on
                line = proc.stderr.readline()
                assert line, "the send ended before it started"
                seen = line
            # The first admission batch (500 rows, tens of seconds of rendering) is all that runs
            # now: a second of CPU used means the renders are well under way.
            start = _cpu_ticks(proc.pid)
            deadline = time.monotonic() + 60
            while _cpu_ticks(proc.pid) - start < os.sysconf("SC_CLK_TCK"):
                assert time.monotonic() < deadline, "the send does not render"
                time.sleep(0.01)
            proc.send_signal(signal.SIGTERM)
            # Without yielding between renders, the stop waits for the whole batch.
            _, err = proc.communicate(timeout=15)
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert b"stopping" in err


def _cpu_ticks(pid: int) -> int:
    """User and system CPU time a process has used, in clock ticks (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def test_large_numbers_as_ordinary_filter_arguments_are_fine(tmp_path: Path) -> None:
    """Only widths and counts are checked: a big default value or a big number formatted is not refused."""
    text = "{{ missing|default(12345678901) }} {{ 12345678901|filesizeformat }} {{ name|truncate(99999999) }}"
    body = orjson.loads(_rendered(render(renderer(tmp_path, text))).body)
    assert body["text"] == "12345678901 12.3 GB Ann"


def _rendered(result: RenderedEmail | Rejection) -> RenderedEmail:
    assert isinstance(result, RenderedEmail), result
    return result


# Fragments a hostile template might combine: loops, repetition, padding, joining, doubling.
_FRAGMENTS = st.sampled_from(
    [
        "{{ name * N }}",
        "{{ name|center(N) }}",
        "{{ name.ljust(N) }}",
        "{{ '%Ns' % name }}",
        "{{ '{:>N}'.format(name) }}",
        "{{ range(N)|join(name) }}",
        "{{ (name * N)|replace('A', name * N) }}",
        "{{ [name] * N }}",
        "{% for i in range(N) %}{{ name }}{% endfor %}",
        "{% for i in range(N) %}{% for j in range(N) %}.{% endfor %}{% endfor %}",
        "{% set ns = namespace(s=name) %}{% for i in range(N) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "{% macro m(s, n) %}{% if n > 0 %}{{ m(s ~ s, n - 1) }}{% endif %}{% endmacro %}{{ m(name, N) }}",
        "{{ 3 ** N }}",
        "{{ lipsum(N) }}",
    ]
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    parts=st.lists(st.tuples(_FRAGMENTS, st.integers(min_value=0, max_value=10**7)), min_size=1, max_size=4)
)
def test_any_mix_of_amplifiers_stays_within_the_limits(tmp_path: Path, parts: list[tuple[str, int]]) -> None:
    """Whatever the fragments and sizes, a render ends as an email within max_part_chars or a
    rejection of the template; it never raises."""
    text = "".join(fragment.replace("N", str(n)) for fragment, n in parts) + "{{ name }}"
    # Every mix ends with {{ name }}, so it is rendered per recipient, never refused up front.
    r = renderer(tmp_path, text, max_part_chars=20_000, max_loop_iterations=2_000, max_render_s=2)
    result = render(r)
    if isinstance(result, RenderedEmail):
        assert len(orjson.loads(result.body)["text"]) <= 20_000
    else:
        assert result.reason.startswith(("the text template", "the email is")), result.reason
