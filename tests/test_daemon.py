"""The daemon in-process: a memory job source, memory results, a real SQLite store and the sandbox.

The helpers at the top (config writer, job set, running daemon, collecting publisher) are shared
with the broker, process and admin tests of the daemon.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
import structlog

from bulksend.brokers.base import BaseDelivery, Delivery
from bulksend.brokers.memory import MemoryQueue, MemoryResultPublisher, MemorySource
from bulksend.daemon.config import DaemonConfig, load_daemon_config
from bulksend.daemon.service import Daemon
from bulksend.errors import ConfigError, StoreError
from bulksend.jobs.intake import job_campaign_id, job_row
from bulksend.sandbox import Sandbox
from bulksend.secret import Secret
from bulksend.sinks.outcomes import OUTCOME_FIELDS
from bulksend.store.base import AdmitResult, NewRecipient
from bulksend.store.sqlite import SqliteStore
from bulksend.tem.config import TemSettings
from bulksend.testing import toml_table
from tests.conftest import PROJECT, settings_for

# -- shared helpers ------------------------------------------------------------------------------

WELCOME: dict[str, Any] = {
    "from": {"email": "news@example.com", "name": "Example News"},
    "subject": "Welcome, {{ first_name }}",
    "text": "Hi {{ first_name }}, your {{ plan | default('free') }} account is ready.",
}
"""The template every test job names (``welcome``); ``first_name`` is required."""

RESULT_FIELDS = frozenset(OUTCOME_FIELDS) | {"idempotency_key"}
"""What every published result carries at least: the outcome-file fields and the job's key."""


def write_config(
    folder: Path,
    *,
    api_url: str | None = None,
    sources: Sequence[Mapping[str, Any]] = (),
    results: Mapping[str, Any] | None = None,
    daemon: Mapping[str, Any] | None = None,
    sending: Mapping[str, Any] | None = None,
    tracking: Mapping[str, Any] | None = None,
    admin: Mapping[str, Any] | None = None,
    templates: Mapping[str, Mapping[str, Any]] | None = None,
    extra: str = "",
) -> Path:
    """Write ``folder/daemon.toml`` with fast test defaults (and ``extra`` TOML); returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    body = ""
    if api_url is not None:
        body += toml_table("api", {"api_url": api_url})
    body += toml_table("store", {"url": "state/bulksend.db"})
    body += toml_table(
        "daemon",
        {"data_dir": "state", "grace_s": 5, "job_batch": 20, "receive_timeout_s": 0.05, **(daemon or {})},
    )
    body += toml_table("sending", {"rate_per_s": 5000, "concurrency": 8, "timeout_s": 5, **(sending or {})})
    body += toml_table("tracking", {"poll_interval_s": 0.05, "settle_s": 0.05, **(tracking or {})})
    body += toml_table("admin", {"listen": "127.0.0.1:0", **(admin or {})})
    if results is not None:
        body += toml_table("results", results)
    for source in sources:
        body += toml_table("sources", source, array=True)
    for name, spec in (templates if templates is not None else {"welcome": WELCOME}).items():
        body += toml_table(f"templates.{name}", spec)
    body += extra
    path = folder / "daemon.toml"
    path.write_text(body, encoding="utf-8")
    return path


def job(key: str, email: str, *, template: str = "welcome", variables: Any = None, **extra: Any) -> bytes:
    """A version-1 job body."""
    doc: dict[str, Any] = {
        "version": 1,
        "template": template,
        "idempotency_key": key,
        "recipient": {"email": email},
        "variables": {"first_name": "Ann"} if variables is None else variables,
    }
    doc.update(extra)
    return orjson.dumps(doc)


@dataclass(frozen=True)
class JobSet:
    """Valid jobs with the status each must end with, bad messages with their reasons, a duplicate."""

    valid: dict[str, tuple[str, str]]
    """idempotency key → (recipient address, expected final status)"""
    bad: list[tuple[bytes, str]]
    """(message body, a fragment its dead-letter reason must contain)"""
    duplicate_key: str
    bodies: list[bytes] = field(default_factory=list)
    """Everything to publish, in order: valid and bad interleaved, the duplicate last."""

    @property
    def addresses(self) -> set[str]:
        return {address for address, _ in self.valid.values()}


def job_set(n: int = 30) -> JobSet:
    """``n`` valid jobs (a few sandbox outcome kinds among them), five bad messages, one duplicate."""
    tag = uuid.uuid4().hex[:8]
    kinds = [("bounce", "failed"), ("softbounce", "sent"), ("spam", "failed"), ("full", "failed")]
    valid: dict[str, tuple[str, str]] = {}
    good: list[bytes] = []
    for i in range(n):
        prefix, status = kinds[i] if i < len(kinds) else ("user", "sent")
        key, address = f"{tag}-job-{i}", f"{prefix}{i}.{tag}@example.com"
        valid[key] = (address, status)
        good.append(job(key, address, variables={"first_name": f"P{i}", "plan": "pro"}))
    wrong_schema = orjson.dumps(
        {"version": 1, "templat": "welcome", "idempotency_key": f"{tag}-x", "recipient": {"email": "a@b.c"}}
    )
    bad = [
        (b"this is not JSON", "not JSON"),
        (wrong_schema, "unknown field 'templat'"),
        (job(f"{tag}-template", f"tpl.{tag}@example.com", template="nope"), "unknown template 'nope'"),
        (job(f"{tag}-address", "not-an-address"), "invalid recipient address"),
        (job(f"{tag}-var", f"var.{tag}@example.com", variables={}), "missing template variable 'first_name'"),
    ]
    half = n // 2
    bodies = good[:half] + [body for body, _ in bad] + good[half:] + [good[1]]
    return JobSet(valid, bad, f"{tag}-job-1", bodies)


def check_results(jobs: JobSet, results: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Assert every valid job has its final outcome with the expected status; returns them by key."""
    by_key: dict[str, list[Mapping[str, Any]]] = {}
    for result in results:
        by_key.setdefault(str(result["idempotency_key"]), []).append(result)
    assert set(by_key) == set(jobs.valid), set(by_key) ^ set(jobs.valid)
    for key, (address, status) in jobs.valid.items():
        for result in by_key[key]:
            assert set(result) >= RESULT_FIELDS, RESULT_FIELDS - set(result)
            assert result["email"] == address
            assert result["status"] == status, result
            assert result["email_id"]
            assert result["final_at"]
    return by_key


def check_sandbox_once(sandbox: Sandbox, addresses: set[str]) -> None:
    """Assert the sandbox got exactly one email for each address and none for anybody else."""
    counts = sandbox.stats().accepted_by_recipient
    assert set(counts) == addresses, set(counts) ^ addresses
    assert set(counts.values()) == {1}, {a: n for a, n in counts.items() if n != 1}


@asynccontextmanager
async def running(daemon: Daemon) -> AsyncIterator[Daemon]:
    """Run ``daemon`` in a task group until the block ends, then stop it gracefully."""
    async with anyio.create_task_group() as tg:
        await tg.start(daemon.run)
        try:
            yield daemon
        finally:
            daemon.request_stop()


class CollectingPublisher(MemoryResultPublisher):
    """Memory results that a test can wait for."""

    def __init__(self) -> None:
        super().__init__("results")
        self._changed = anyio.Event()

    async def publish(self, outcome: Mapping[str, Any]) -> None:
        await super().publish(outcome)
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for_keys(self, keys: set[str], timeout_s: float = 15) -> None:
        """Return once a result was published for every key in ``keys``."""
        with anyio.fail_after(timeout_s):
            while not keys <= {o.get("idempotency_key") for o in self.outcomes}:
                await self._changed.wait()


class DaemonWatch:
    """Follows what a daemon counts in its metrics (outcomes, handled messages) so a test can wait."""

    def __init__(self, daemon: Daemon) -> None:
        self.outcomes: list[tuple[str, str]] = []
        """(campaign, status) of every recorded final outcome"""
        self.jobs: list[tuple[str, str]] = []
        """(source, result) of every handled message: admitted, duplicate or dead_lettered"""
        self._changed = anyio.Event()
        metrics = daemon.metrics
        observe_outcome, job = metrics.observe_outcome, metrics.job

        def observed_outcome(campaign: str, status: str, n: int = 1) -> None:
            observe_outcome(campaign, status, n)
            self.outcomes += [(campaign, status)] * n
            self._wake()

        def observed_job(source: str, result: str) -> None:
            job(source, result)
            self.jobs.append((source, result))
            self._wake()

        metrics.observe_outcome = observed_outcome  # type: ignore[method-assign]
        metrics.job = observed_job  # type: ignore[method-assign]

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def wait(self, *, outcomes: int = 0, jobs: int = 0, timeout_s: float = 15) -> None:
        """Return once at least ``outcomes`` outcomes were recorded and ``jobs`` messages handled."""
        with anyio.fail_after(timeout_s):
            while len(self.outcomes) < outcomes or len(self.jobs) < jobs:
                await self._changed.wait()


Event = tuple[str, int]
"""("admit", job row) for each row of a committed admission, ("ack", job row) when an ack starts."""


def _row_of(body: bytes) -> int:
    return job_row(str(orjson.loads(body)["idempotency_key"]))


class RecordingDelivery(BaseDelivery):
    """A delivery that logs, into ``events``, the moment the daemon asks to acknowledge it."""

    def __init__(self, inner: Delivery, owner: RecordingSource) -> None:
        super().__init__(
            body=inner.body,
            source=inner.source,
            message_id=inner.message_id,
            redelivered=inner.redelivered,
            on_settled=lambda _: owner.changed(),
        )
        self._inner = inner
        self._owner = owner

    async def _ack(self) -> None:
        self._owner.events.append(("ack", _row_of(self.body)))
        await self._inner.ack()

    async def _dead_letter(self, reason: str) -> None:
        await self._inner.dead_letter(reason)

    async def _release(self) -> None:
        await self._inner.release()


class RecordingSource(MemorySource):
    """A real :class:`MemorySource` that remembers what it handed out and what was acknowledged."""

    def __init__(self, queue: MemoryQueue | None = None, **kwargs: Any) -> None:
        super().__init__(queue or MemoryQueue("jobs"), **kwargs)
        self.events: list[Event] = []
        self.deliveries: list[RecordingDelivery] = []
        self.batch_sizes: list[int] = []
        self.on_receive: Callable[[], None] | None = None
        """Called after each receive() (to sample the daemon's state at that moment)."""
        self._changed = anyio.Event()

    def changed(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def receive(self, max_messages: int, timeout_s: float) -> list[Delivery]:
        got = [RecordingDelivery(d, self) for d in await super().receive(max_messages, timeout_s)]
        if got:
            self.batch_sizes.append(len(got))
            self.deliveries += got
        if self.on_receive is not None:
            self.on_receive()
        return list(got)

    async def wait_settled(self, n: int, timeout_s: float = 10) -> None:
        """Return once ``n`` deliveries have been settled (acked, dead-lettered or released)."""
        with anyio.fail_after(timeout_s):
            while sum(d.settled is not None for d in self.deliveries) < n:
                await self._changed.wait()


class ObservedStore(SqliteStore):
    """A real SQLite store that wakes waiters after each committed write (so tests wait on events)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._changed = anyio.Event()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_until(self, check: Callable[[], Awaitable[bool]], timeout_s: float = 20) -> None:
        """Return once ``check()`` is true, checking again after each write to the store."""
        with anyio.fail_after(timeout_s):
            while True:
                changed = self._changed  # taken first: a write during the check is not missed
                if await check():
                    return
                await changed.wait()

    # Every write of the SQLite store, row moves included, is committed through one of these two.
    async def _write(self, *args: Any, **kwargs: Any) -> Any:
        result = await super()._write(*args, **kwargs)
        self._wake()
        return result

    async def _row_write(self, *args: Any, **kwargs: Any) -> None:
        await super()._row_write(*args, **kwargs)
        self._wake()


class RecordingStore(ObservedStore):
    """Logs each admission of the job campaign once it is committed; can be told to fail."""

    def __init__(self, path: Path, events: list[Event]) -> None:
        super().__init__(path)
        self.events = events
        self.fail_admits = 0
        """Refuse this many admissions (as a store that lost its disk would) before working again."""

    async def admit(self, campaign_id: str, rows: Sequence[NewRecipient]) -> list[AdmitResult]:
        if self.fail_admits > 0:
            self.fail_admits -= 1
            raise StoreError("disk I/O error (simulated)")
        results = await super().admit(campaign_id, rows)
        if campaign_id == job_campaign_id("welcome"):
            self.events.extend(("admit", r.row) for r in rows)
        return results


def make_daemon(
    tmp_path: Path,
    sandbox: Sandbox,
    *,
    source: MemorySource | None = None,
    store: SqliteStore | None = None,
    **config: Any,
) -> tuple[Daemon, RecordingSource | MemorySource, CollectingPublisher]:
    """A daemon on one memory source and collecting results, against ``sandbox``."""
    path = write_config(tmp_path, sources=[{"kind": "memory", "name": "jobs"}], **config)
    cfg: DaemonConfig = load_daemon_config(path)
    daemon = Daemon(cfg, settings_for(sandbox), store=store)
    source = source or RecordingSource()
    publisher = CollectingPublisher()
    daemon.sources = [source]
    daemon.publisher = publisher
    return daemon, source, publisher


# -- tests ---------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _plain_logging() -> None:
    """Log through structlog's defaults (the current stdout): a test that ran a CLI command
    in-process may have left structlog writing to its captured stream, closed since."""
    structlog.reset_defaults()


async def test_jobs_end_to_end(tmp_path: Path, sandbox: Sandbox) -> None:
    """Valid jobs end with one published outcome and one email each; bad ones are dead-lettered."""
    jobs = job_set(30)
    daemon, source, results = make_daemon(tmp_path, sandbox)
    for body in jobs.bodies:
        source.publish(body)
    with anyio.fail_after(20):
        async with running(daemon):
            await results.wait_for_keys(set(jobs.valid))
            assert isinstance(source, RecordingSource)
            await source.wait_settled(len(jobs.bodies))
    by_key = check_results(jobs, results.outcomes)
    assert all(len(found) == 1 for found in by_key.values())  # the duplicate published nothing
    check_sandbox_once(sandbox, jobs.addresses)
    dead = source.queue.dead_letters
    assert [d.body for d in dead] == [body for body, _ in jobs.bad]
    for letter, (_, reason) in zip(dead, jobs.bad, strict=True):
        assert reason in letter.reason, letter.reason
    assert len(source.queue.acked) == len(jobs.valid) + 1  # the duplicate is acked too
    assert source.queue.waiting == 0
    assert source.in_flight == 0
    for result, n in (("admitted", 30), ("duplicate", 1), ("dead_lettered", 5)):
        labels = {"source": source.name, "result": result}
        assert daemon.metrics.registry.get_sample_value("bulksend_jobs_total", labels) == n, result


async def test_ack_only_after_admission_is_committed(tmp_path: Path, sandbox: Sandbox) -> None:
    """Each batch is committed to the store before any of its messages is acknowledged."""
    events: list[Event] = []
    store = RecordingStore(tmp_path / "state" / "bulksend.db", events)
    source = RecordingSource()
    source.events = events
    daemon, _, results = make_daemon(tmp_path, sandbox, source=source, store=store, daemon={"job_batch": 5})
    keys = {f"order-{i}" for i in range(10)}
    for i in range(10):
        source.publish(job(f"order-{i}", f"user{i}@example.com"))
    with anyio.fail_after(20):
        async with running(daemon):
            await results.wait_for_keys(keys)
    assert [kind for kind, _ in events] == ["admit"] * 5 + ["ack"] * 5 + ["admit"] * 5 + ["ack"] * 5
    for i, (kind, row) in enumerate(events):
        if kind == "ack":
            assert ("admit", row) in events[:i]


async def test_failed_admission_is_not_acked_and_comes_back(tmp_path: Path, sandbox: Sandbox) -> None:
    """A batch whose admission fails is not acknowledged; it is redelivered and sent once."""
    store = RecordingStore(tmp_path / "state" / "bulksend.db", [])
    store.fail_admits = 2
    daemon, source, results = make_daemon(tmp_path, sandbox, store=store)
    assert isinstance(source, RecordingSource)
    source.publish(job("order-1", "ann@example.com"))
    with anyio.fail_after(20):
        async with running(daemon):
            await results.wait_for_keys({"order-1"})
    first, *later = source.deliveries
    assert first.settled != "acked"
    assert [d.settled for d in later] == ["released", "acked"]
    assert later[-1].redelivered
    assert source.queue.acked == [first.message_id]  # the same message, acked once in the end
    check_sandbox_once(sandbox, {"ann@example.com"})
    assert [r["status"] for r in results.outcomes] == ["sent"]


async def test_intake_pulls_only_what_the_pipeline_can_take(tmp_path: Path, sandbox: Sandbox) -> None:
    """Against a slow TEM, messages taken from the queue and not yet sent stay within
    job_batch + the dispatch buffer (plus one per worker): the daemon does not pull without bound."""
    sandbox.update(latency_ms=15)
    batch, concurrency = 4, 2
    daemon, source, results = make_daemon(
        tmp_path, sandbox, daemon={"job_batch": batch}, sending={"concurrency": concurrency}
    )
    assert isinstance(source, RecordingSource)
    n = 40
    for i in range(n):
        source.publish(job(f"order-{i}", f"user{i}@example.com"))
    held: list[int] = []
    unsettled: list[int] = []

    def sample() -> None:
        # Received so far, minus what reached TEM (answered, or on the wire).
        held.append(len(source.deliveries) - daemon.stats.submitted - daemon.stats.in_flight)
        unsettled.append(source.in_flight)

    source.on_receive = sample
    with anyio.fail_after(20):
        async with running(daemon):
            await results.wait_for_keys({f"order-{i}" for i in range(n)})
    bound = batch + 2 * concurrency + concurrency  # one batch, the stream's buffer, the workers
    assert max(held) <= bound, held
    assert max(unsettled) <= batch, unsettled
    assert max(source.batch_sizes) <= batch
    assert len(source.batch_sizes) >= n // batch
    check_sandbox_once(sandbox, {f"user{i}@example.com" for i in range(n)})


async def test_job_redelivered_after_its_email_is_final_sends_nothing(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """A job republished after it was sent is acked as a duplicate: no email, no second result."""
    daemon, source, results = make_daemon(tmp_path, sandbox)
    assert isinstance(source, RecordingSource)
    body = job("order-7", "ann@example.com")
    source.publish(body)
    with anyio.fail_after(20):
        async with running(daemon):
            await results.wait_for_keys({"order-7"})
            source.publish(body)
            await source.wait_settled(2)
            counts = await daemon.store.counts(job_campaign_id("welcome"))
    assert [d.settled for d in source.deliveries] == ["acked", "acked"]
    check_sandbox_once(sandbox, {"ann@example.com"})
    assert len(results.outcomes) == 1
    assert counts.get("final") == 1
    assert sum(v for k, v in counts.items() if ":" not in k) == 1  # one row for the one job


async def test_results_follow_the_job_and_the_default(tmp_path: Path, sandbox: Sandbox) -> None:
    """`"results": false` publishes nothing; with results_default = false only `true` jobs publish."""
    daemon, source, results = make_daemon(tmp_path, sandbox, daemon={"results_default": False})
    watch = DaemonWatch(daemon)
    source.publish(job("quiet", "quiet@example.com", results=False))
    source.publish(job("default", "default@example.com"))
    source.publish(job("loud", "loud@example.com", results=True))
    with anyio.fail_after(20):
        async with running(daemon):
            await watch.wait(outcomes=3)
    assert [r["idempotency_key"] for r in results.outcomes] == ["loud"]
    check_sandbox_once(sandbox, {"quiet@example.com", "default@example.com", "loud@example.com"})


def test_example_config_loads_and_bad_values_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """configs/daemon.example.toml loads and builds its sources; a wrong value is a ConfigError
    naming the key, and the admin API listens on 127.0.0.1:8080 by default."""
    monkeypatch.delenv("BULKSEND_ADMIN_TOKEN", raising=False)
    example = load_daemon_config(Path(__file__).parents[1] / "configs" / "daemon.example.toml")
    settings = TemSettings(secret_key=Secret("not-used"), project_id=PROJECT, api_url="http://127.0.0.1:9")
    daemon = Daemon(example, settings)
    assert [s.name.split(":")[0] for s in daemon.sources] == ["nats", "rabbitmq", "redis"]
    assert daemon.publisher is not None
    assert sorted(example.templates) == ["welcome"]
    path = tmp_path / "daemon.toml"
    path.write_text("", encoding="utf-8")
    assert (load_daemon_config(path).admin.host, load_daemon_config(path).admin.port) == ("127.0.0.1", 8080)
    for text, message in (
        ('[daemon]\nresults_default = "no"\n', "daemon.results_default must be true or false"),
        ('[sending]\nrate_per_s = "fast"\n', "sending.rate_per_s must be a number"),
        ("[tracking]\npoll_interval_s = 0\n", "tracking.poll_interval_s must be a number >= 0.001"),
        ('[admin]\nlisten = "0.0.0.0"\n', "admin.listen must look like '127.0.0.1:8080'"),
        ("[daemon]\ngrace = 3\n", "unknown key(s) in [daemon]: grace"),
    ):
        path.write_text(text, encoding="utf-8")
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_daemon_config(path)


async def test_a_graceful_stop_reconciles_ambiguous_sends_before_exit(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """Stopped while many answers are lost after TEM created the email (ambiguous sends), the
    daemon looks those rows up within grace_s before it exits: none is left `sending`, and
    nobody got two emails."""
    sandbox.update(fault_5xx_after_p=0.3, seed=8)
    path = write_config(tmp_path, sources=[{"kind": "memory", "name": "jobs"}], daemon={"grace_s": 30})
    loaded = load_daemon_config(path)
    store = ObservedStore(loaded.data_dir / "bulksend.db")
    daemon = Daemon(loaded, settings_for(sandbox), store=store)
    source = RecordingSource()
    daemon.sources = [source]
    watch = DaemonWatch(daemon)
    with anyio.fail_after(60):
        async with running(daemon):
            for i in range(300):
                source.publish(job(f"order-{i}", f"user{i}@example.com"))
            await watch.wait(outcomes=20)
    counts = await _counts_after(loaded.data_dir / "bulksend.db", "jobs.welcome")
    assert sandbox.stats().faults.get("5xx_after", 0) > 0
    assert counts.get("sending", 0) == 0, counts
    assert set(sandbox.stats().accepted_by_recipient.values()) == {1}


async def _counts_after(db: Path, campaign_id: str) -> dict[str, int]:
    """Row counts of a campaign, read from the store the daemon left behind."""
    store = SqliteStore(db)
    await store.open()
    try:
        return await store.counts(campaign_id)
    finally:
        await store.close()
