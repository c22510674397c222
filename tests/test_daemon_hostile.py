"""No queue message can stop the daemon: whatever one message does, it is dead-lettered and the
intake goes on; a store outage is not the message's fault, so it is given back instead.

The first tests run the daemon in-process on a memory source; the last one throws generated junk
at a running daemon through a real broker (Redis Streams, and SQS on moto).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import anyio
import orjson
import pytest
import structlog
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bulksend.brokers.base import Delivery, clean_reason
from bulksend.brokers.memory import MemorySource
from bulksend.campaign.render import Rejection, RenderedEmail, Renderer
from bulksend.daemon.config import load_daemon_config
from bulksend.daemon.service import Daemon
from bulksend.jobs.format import JobError, parse_job
from bulksend.jobs.intake import JobIntake, JobTemplate, compile_template, job_campaign_id, job_row
from bulksend.metrics import Metrics
from bulksend.pipeline.dispatch import SendItem
from bulksend.sandbox import Sandbox, SandboxConfig
from bulksend.store.base import AdmitResult, NewRecipient, RecipientRow, RowState
from bulksend.store.memory import MemoryStore
from tests.conftest import PROJECT, SECRET, settings_for
from tests.strategies import deep_nesting, extreme_times, json_values, odd_text, to_wire
from tests.test_daemon import (
    WELCOME,
    DaemonWatch,
    ObservedStore,
    RecordingDelivery,
    RecordingSource,
    check_sandbox_once,
    job,
    make_daemon,
    running,
    write_config,
)
from tests.test_daemon_brokers import BROKERS, Broker


@pytest.fixture(autouse=True)
def _plain_logging() -> None:
    """Log through structlog's defaults (a CLI test may have pointed it at a closed stream)."""
    structlog.reset_defaults()


OUT_OF_RANGE = ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"]


async def test_out_of_range_send_before_is_dead_lettered_and_the_daemon_goes_on(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """A job whose send_before overflows in UTC is dead-lettered with the reason; the jobs around it
    are sent and the daemon keeps running (it used to exit, and again at every restart)."""
    daemon, source, results = make_daemon(tmp_path, sandbox)
    assert isinstance(source, RecordingSource)
    tag = uuid.uuid4().hex[:8]
    bad = [
        job(f"{tag}-bad-{i}", f"bad{i}.{tag}@example.com", send_before=v) for i, v in enumerate(OUT_OF_RANGE)
    ]
    good = {f"{tag}-good-{i}" for i in range(2)}
    source.publish(job(f"{tag}-good-0", f"good0.{tag}@example.com"))
    for body in bad:
        source.publish(body)
    source.publish(job(f"{tag}-good-1", f"good1.{tag}@example.com"))
    with anyio.fail_after(20):
        async with running(daemon):
            await source.wait_settled(4)
            await results.wait_for_keys(good)
            assert all((await daemon.health()).values())
    dead = source.queue.dead_letters
    assert [d.body for d in dead] == bad
    assert all("is out of range: in UTC it falls outside years 1 to 9999" in d.reason for d in dead)


class BrittleStore(ObservedStore):
    """A real SQLite store with a bug that one kind of row trips (a TypeError on a poison address)."""

    async def admit(self, campaign_id: str, rows: Sequence[NewRecipient]) -> list[AdmitResult]:
        if any(r.email.startswith("poison") for r in rows):
            raise TypeError("unsupported row (simulated store bug)")
        return await super().admit(campaign_id, rows)


async def test_message_whose_admission_raises_is_dead_lettered_alone(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """A message whose admission raises an unexpected error is dead-lettered with that error; the
    other messages of its batch are admitted, acknowledged and sent, and the daemon goes on."""
    store = BrittleStore(tmp_path / "state" / "bulksend.db")
    daemon, source, results = make_daemon(tmp_path, sandbox, store=store, daemon={"job_batch": 10})
    assert isinstance(source, RecordingSource)
    tag = uuid.uuid4().hex[:8]
    good = {f"{tag}-{i}" for i in range(4)}
    poison = job(f"{tag}-poison", f"poison.{tag}@example.com")
    bodies = [job(f"{tag}-{i}", f"user{i}.{tag}@example.com") for i in range(4)]
    for body in [*bodies[:2], poison, *bodies[2:]]:
        source.publish(body)
    with anyio.fail_after(20):
        async with running(daemon):
            await source.wait_settled(5)
            await results.wait_for_keys(good)
    assert source.batch_sizes[0] == 5  # the poison came in one batch with the good jobs
    assert [d.body for d in source.queue.dead_letters] == [poison]
    reason = source.queue.dead_letters[0].reason
    assert "could not be stored (TypeError: unsupported row (simulated store bug))" in reason
    assert len(source.queue.acked) == 4
    labels = {"source": source.name, "reason_kind": "internal"}
    assert daemon.metrics.registry.get_sample_value("bulksend_dead_letters_total", labels) == 1


class FlakyStore(ObservedStore):
    """A real SQLite store whose disk fails (an OSError, unwrapped) for its first admissions."""

    def __init__(self, path: Path, failures: int) -> None:
        super().__init__(path)
        self.failures = failures

    async def admit(self, campaign_id: str, rows: Sequence[NewRecipient]) -> list[AdmitResult]:
        if self.failures > 0:
            self.failures -= 1
            raise OSError(28, "No space left on device (simulated)")
        return await super().admit(campaign_id, rows)


async def test_store_outage_gives_messages_back_instead_of_dead_lettering_them(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """A store that is down is not the messages' fault: they are released, come back, and are sent
    once the store works again; none is dead-lettered and the daemon does not stop."""
    store = FlakyStore(tmp_path / "state" / "bulksend.db", failures=2)
    daemon, source, results = make_daemon(tmp_path, sandbox, store=store)
    assert isinstance(source, RecordingSource)
    tag = uuid.uuid4().hex[:8]
    keys = {f"{tag}-{i}" for i in range(3)}
    for key in sorted(keys):
        source.publish(job(key, f"{key}@example.com"))
    with anyio.fail_after(20):
        async with running(daemon):
            await results.wait_for_keys(keys)
    assert source.queue.dead_letters == []
    assert "released" in [d.settled for d in source.deliveries]
    assert len(source.queue.acked) == 3


class ExplodingRenderer(Renderer):
    """A real renderer that raises (instead of returning a Rejection) for one recipient name: it
    stands for any bug a message could trip between parsing and admission."""

    def render(
        self, email: str, name: str, variables: Mapping[str, Any], **kwargs: Any
    ) -> RenderedEmail | Rejection:
        if name == "boom":
            raise RuntimeError("exploded on this message")
        return super().render(email, name, variables, **kwargs)


async def test_unexpected_error_on_one_message_dead_letters_it_and_the_intake_goes_on(tmp_path: Path) -> None:
    """An exception no check foresaw, raised while handling one message, dead-letters that message
    (kind "internal", with the error) and the intake admits the next one."""
    empty = tmp_path / "none.jsonl"
    empty.touch()
    base = compile_template(
        "welcome",
        WELCOME,
        base_dir=tmp_path,
        empty_recipients=empty,
        project_id=PROJECT,
        sending={},
        tracking={},
        outcomes=tmp_path / "jobs.welcome.jsonl",
        source="test",
    )
    template = JobTemplate(
        base.name, base.campaign, ExplodingRenderer(base.campaign, project_id=PROJECT), base.spec
    )
    source = MemorySource()
    await source.open()
    metrics = Metrics(process_metrics=False)
    send, receive = anyio.create_memory_object_stream[SendItem](10)
    async with MemoryStore() as store, receive:

        async def ensure(t: JobTemplate) -> None:
            if await store.get_campaign(t.campaign.id) is None:
                await store.create_campaign(t.campaign.id, {"kind": "jobs"})

        intake = JobIntake(
            source=source,
            store=store,
            templates={"welcome": template},
            dispatch=send,
            metrics=metrics,
            batch=10,
            receive_timeout_s=0.01,
            is_queued=lambda _: False,
            on_queued=lambda _: None,
            ensure_campaign=ensure,
        )
        boom = orjson.dumps(
            {
                "version": 1,
                "template": "welcome",
                "idempotency_key": "k-boom",
                "recipient": {"email": "boom@example.com", "name": "boom"},
                "variables": {"first_name": "B"},
            }
        )
        source.publish(boom)
        source.publish(job("k-ok", "ok@example.com"))
        async with anyio.create_task_group() as tg:
            tg.start_soon(intake.run)
            with anyio.fail_after(10):
                item = await receive.receive()  # the good job, queued for sending after the bad one
            intake.stop_scope.cancel()
    assert item.email == "ok@example.com"
    dead = source.queue.dead_letters
    assert [d.body for d in dead] == [boom]
    assert "could not be handled (RuntimeError: exploded on this message)" in dead[0].reason
    assert len(source.queue.acked) == 1


async def test_stored_job_that_cannot_be_rebuilt_is_rejected_and_the_daemon_starts(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """A pending job row whose stored variables cannot be used (a list, not an object) is rejected
    with the reason at start, instead of stopping this and every later start of the daemon."""
    store = ObservedStore(tmp_path / "state" / "bulksend.db")
    await store.open()
    cid = job_campaign_id("welcome")
    await store.create_campaign(cid, {"kind": "jobs", "template": "welcome"})
    payload = {"vars": [1, 2], "idempotency_key": "old-1", "template": "welcome", "want_result": None}
    new = NewRecipient(job_row("old-1"), "old@example.com", "", "old-1", RowState.PENDING, payload=payload)
    [admitted] = await store.admit(cid, [new])
    await store.close()
    daemon, source, _ = make_daemon(tmp_path, sandbox, store=store)
    source.publish(job("new-1", "new@example.com"))

    async def rejected() -> bool:
        row = await store.get_row(admitted.id)
        return row is not None and row.state is RowState.REJECTED

    with anyio.fail_after(20):
        async with running(daemon):
            await store.wait_until(rejected)
            assert isinstance(source, RecordingSource)
            await source.wait_settled(1)
            assert all((await daemon.health()).values())
    row = await _row(store, admitted.id)
    assert "the stored job could not be rebuilt: TypeError" in row.reason
    assert source.queue.acked  # the intake ran too


async def _row(store: ObservedStore, row_id: int) -> RecipientRow:
    await store.open()
    try:
        row = await store.get_row(row_id)
    finally:
        await store.close()
    assert row is not None
    return row


# -- a running daemon on Redis Streams, fed generated junk ----------------------------------------

VALID_JOB: dict[str, Any] = {
    "version": 1,
    "template": "welcome",
    "idempotency_key": "junk-valid",
    "recipient": {"email": "valid@example.com", "name": "Val"},
    "variables": {"first_name": "Val"},
}
_FIELDS = st.sampled_from(["version", "template", "idempotency_key", "recipient", "variables", "send_before"])

junk_bodies = st.one_of(
    st.binary(max_size=40),
    st.builds(to_wire, json_values),
    st.builds(to_wire, deep_nesting),
    st.builds(
        lambda changes: to_wire({**VALID_JOB, **changes}),
        st.dictionaries(_FIELDS, st.one_of(json_values, deep_nesting), min_size=1, max_size=2),
    ),
    st.builds(lambda when: to_wire({**VALID_JOB, "send_before": when}), extreme_times),
    st.builds(
        lambda name: to_wire({**VALID_JOB, "recipient": {"email": "v@example.com", "name": name}}), odd_text
    ),
    st.builds(lambda email: to_wire({**VALID_JOB, "recipient": {"email": email}}), odd_text),
    st.builds(
        lambda v: to_wire({**VALID_JOB, "variables": {"first_name": v}}), st.one_of(json_values, deep_nesting)
    ),
)
"""Messages that are not jobs, or jobs with one field made hostile."""


class LiveDaemon:
    """A daemon on a broker's source, with the sandbox, served from a background event loop."""

    def __init__(self, portal: BlockingPortal, daemon: Daemon, broker: Broker, watch: DaemonWatch) -> None:
        self.portal = portal
        self.daemon = daemon
        self.broker = broker
        self.watch = watch
        self.dead_seen = 0

    def publish(self, bodies: Sequence[bytes]) -> None:
        self.portal.call(self.broker.publish, bodies)

    def wait_handled(self, n: int) -> None:
        """Block until the daemon has handled (acked or dead-lettered) ``n`` messages in all."""
        self.portal.call(lambda: self.watch.wait(jobs=n, timeout_s=30))

    def new_dead_letters(self) -> list[tuple[bytes, str]]:
        """Dead letters written since the previous call, as (body, reason)."""
        entries = self.portal.call(self.broker.dead_letters, 1_000_000)
        fresh = entries[self.dead_seen :]
        self.dead_seen = len(entries)
        return fresh

    def health(self) -> dict[str, bool]:
        return self.portal.call(self.daemon.health)


@pytest.fixture(params=["redis", "sqs"])
def live_daemon(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LiveDaemon]:
    """One daemon for every generated example: junk must not stop it, so it is never restarted."""
    with start_blocking_portal() as portal:
        sandbox = Sandbox(
            SandboxConfig(
                secret_key=SECRET, project_id=PROJECT, sending_after_s=0.0, final_after_s=0.0, seed=1
            ),
            host="127.0.0.1",
            port=0,
        )
        with portal.wrap_async_context_manager(sandbox):
            broker = BROKERS[request.param].for_test(request)
            portal.call(broker.open)
            try:
                path = write_config(tmp_path, sources=[broker.source_config()])
                daemon = Daemon(load_daemon_config(path), settings_for(sandbox))
                watch = DaemonWatch(daemon)
                run, _ = portal.start_task(daemon.run)
                yield LiveDaemon(portal, daemon, broker, watch)
                assert not run.done(), "the daemon stopped by itself"
                portal.call(daemon.request_stop)
                run.result(timeout=30)
            finally:
                portal.call(broker.close)


def _expected_reason(body: bytes) -> str | None:
    try:
        parse_job(body)
    except JobError as exc:
        return clean_reason(exc.reason)
    return None


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(junk_bodies, min_size=1, max_size=5))
@example([to_wire({**VALID_JOB, "send_before": v}) for v in OUT_OF_RANGE])
@example(
    [to_wire({**VALID_JOB, "variables": {"first_name": "x", "deep": orjson.loads(b"[" * 300 + b"]" * 300)}})]
)
@example([to_wire({**VALID_JOB, "recipient": {"email": "v@example.com", "name": "G\x00"}}), b"\xff", b"[]"])
def test_junk_never_stops_a_running_daemon_and_lands_in_the_dead_letter_stream(
    live_daemon: LiveDaemon, bodies: list[bytes]
) -> None:
    """Generated junk (random JSON, bytes, extreme dates, huge numbers, deep nesting, odd unicode)
    on Redis Streams and SQS (what SQS can carry: text): every message is handled, each one
    parse_job refuses is in the dead-letter destination with parse_job's reason, a valid job after
    it is still admitted, and the daemon stays up and healthy."""
    bodies = [body for body in bodies if live_daemon.broker.carries(body)]
    canary = to_wire({**VALID_JOB, "idempotency_key": f"canary-{uuid.uuid4().hex}"})
    before = len(live_daemon.watch.jobs)
    live_daemon.publish([*bodies, canary])
    live_daemon.wait_handled(before + len(bodies) + 1)
    handled = [result for _, result in live_daemon.watch.jobs[before:]]
    assert handled[-1] == "admitted", handled  # the canary, after all the junk
    dead = live_daemon.new_dead_letters()
    assert len(dead) == handled.count("dead_lettered")
    expected = [(body, reason) for body in bodies if (reason := _expected_reason(body)) is not None]
    dead_by_body = dict(dead)
    for body, reason in expected:
        assert dead_by_body.get(body) == reason, body[:80]
    assert all(reason for _, reason in dead)
    assert all(live_daemon.health().values())


async def test_dead_letter_reason_reaches_the_log_without_control_characters(
    tmp_path: Path, sandbox: Sandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    """A job whose unknown field name holds terminal escapes is dead-lettered, and neither the log
    line nor the dead letter's reason carries the escape sequence (no terminal injection)."""
    daemon, source, _ = make_daemon(tmp_path, sandbox)
    assert isinstance(source, RecordingSource)
    evil = orjson.dumps({**VALID_JOB, "\x1b[2J\x1b]0;owned\x07": 1})
    source.publish(evil)
    with anyio.fail_after(20):
        async with running(daemon):
            await source.wait_settled(1)
    [letter] = source.queue.dead_letters
    assert "unknown field" in letter.reason
    out = capsys.readouterr().out
    assert "job.dead_lettered" in out
    for text in (out, letter.reason):
        assert "\x1b[2J" not in text
        assert "\x1b]0;" not in text
        assert "\x07" not in text


class _UnreleasableDelivery(RecordingDelivery):
    """A delivery whose release fails with an error its broker client did not wrap."""

    def __init__(self, inner: Delivery, owner: UnreleasableSource) -> None:
        super().__init__(inner, owner)
        self._source = owner

    async def release(self) -> None:
        self._source.release_tried.set()
        raise RuntimeError("channel is closed (simulated client bug)")


class _BrittleSource(RecordingSource):
    """A real memory source whose deliveries are ``brittle`` ones: one way of settling them fails."""

    brittle: ClassVar[type[RecordingDelivery]]

    async def receive(self, max_messages: int, timeout_s: float) -> list[Delivery]:
        got = await MemorySource.receive(self, max_messages, timeout_s)
        return [self.brittle(d, self) for d in got]


class UnreleasableSource(_BrittleSource):
    """A real memory source whose deliveries cannot be released."""

    brittle = _UnreleasableDelivery

    def __init__(self) -> None:
        super().__init__()
        self.release_tried = anyio.Event()


async def test_failed_release_after_an_outage_does_not_stop_the_intake(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """When a store outage makes the intake give a batch back and the release itself fails with an
    unexpected error, the intake goes on: the next job is admitted and sent."""
    store = FlakyStore(tmp_path / "state" / "bulksend.db", failures=1)
    source = UnreleasableSource()
    daemon, _, results = make_daemon(tmp_path, sandbox, source=source, store=store)
    source.publish(job("held-1", "held@example.com"))
    with anyio.fail_after(20):
        async with running(daemon):
            await source.release_tried.wait()
            source.publish(job("next-1", "next@example.com"))
            await results.wait_for_keys({"next-1"})
            assert all((await daemon.health()).values())


class _UnackableDelivery(RecordingDelivery):
    """A delivery whose ack fails with an error its broker client did not wrap."""

    async def ack(self) -> None:
        raise RuntimeError("connection reset during ack (simulated client bug)")


class UnackableSource(_BrittleSource):
    """A real memory source whose deliveries cannot be acknowledged."""

    brittle = _UnackableDelivery


async def test_failed_ack_still_sends_the_admitted_jobs(tmp_path: Path, sandbox: Sandbox) -> None:
    """An ack that fails with an unexpected error loses nothing: the admitted jobs of the batch are
    sent and their results published, and the daemon stays healthy."""
    source = UnackableSource()
    daemon, _, results = make_daemon(tmp_path, sandbox, source=source)
    keys = {"unacked-1", "unacked-2"}
    for key in sorted(keys):
        source.publish(job(key, f"{key}@example.com"))
    with anyio.fail_after(20):
        async with running(daemon):
            await results.wait_for_keys(keys)
            assert all((await daemon.health()).values())
    check_sandbox_once(sandbox, {f"{key}@example.com" for key in keys})


class _UndeadletterableDelivery(RecordingDelivery):
    """A delivery whose dead-lettering fails with an error its broker client did not wrap."""

    async def dead_letter(self, reason: str) -> None:
        raise RuntimeError("dead-letter exchange vanished (simulated client bug)")


class UndeadletterableSource(_BrittleSource):
    """A real memory source whose deliveries cannot be dead-lettered."""

    brittle = _UndeadletterableDelivery


async def test_failed_dead_letter_does_not_hold_up_the_rest_of_the_batch(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """A bad message whose dead-lettering fails with an unexpected error is left for the broker to
    redeliver; the good job in the same batch is admitted and sent all the same."""
    source = UndeadletterableSource()
    daemon, _, results = make_daemon(tmp_path, sandbox, source=source)
    source.publish(b"not a job")
    source.publish(job("after-bad-1", "after@example.com"))
    with anyio.fail_after(20):
        async with running(daemon):
            await results.wait_for_keys({"after-bad-1"})
            assert all((await daemon.health()).values())
    assert source.queue.dead_letters == []  # never written: the broker keeps the message
