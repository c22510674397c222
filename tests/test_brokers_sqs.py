"""SQS (Scaleway Queues) job source and result publisher, against moto's server on loopback.

What only this broker does; the contract all sources keep is in test_broker_contract.py.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bulksend.brokers import publisher_from_config, source_from_config
from bulksend.brokers.base import BrokerError, Delivery
from bulksend.brokers.sqs import (
    HEADER_ORIGINAL_MESSAGE_ID,
    HEADER_ORIGINAL_QUEUE,
    HEADER_REASON,
    HEADER_RECEIVE_COUNT,
    SqsDelivery,
    SqsResultPublisher,
    SqsSettings,
    SqsSource,
    SqsSourceConfig,
    queue_url,
    release_backoff,
    sqs_client,
)
from bulksend.daemon.config import load_daemon_config
from bulksend.errors import ConfigError
from tests.brokers import SqsHarness, harness_fixture, receive_exactly
from tests.moto import MOTO_ACCESS_KEY, MOTO_REGION, MOTO_SECRET_KEY
from tests.waiting import wait_until


async def test_client_reaches_moto_with_settings(moto_endpoint: str) -> None:
    """sqs_client signs with the configured keys against the configured endpoint: a queue created
    through it is found again by name."""
    settings = SqsSettings(
        url=moto_endpoint, region=MOTO_REGION, access_key=MOTO_ACCESS_KEY, secret_key=MOTO_SECRET_KEY
    )
    async with sqs_client(settings) as client:
        created = (await client.create_queue(QueueName="smoke-client"))["QueueUrl"]
        assert await queue_url(client, "smoke-client") == created
        assert await queue_url(client, created) == created


def test_settings_read_credentials_from_the_named_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys come from the variables access_key_env / secret_key_env name; none set is a ConfigError
    naming them; the secret never shows in the settings' repr."""
    settings = SqsSettings.from_mapping({"kind": "sqs", "access_key_env": "Q_AK", "secret_key_env": "Q_SK"})
    monkeypatch.delenv("Q_AK", raising=False)
    monkeypatch.delenv("Q_SK", raising=False)
    with pytest.raises(ConfigError, match=r"Q_AK.*Q_SK"):
        settings.credentials()
    monkeypatch.setenv("Q_AK", "SCWAK")
    monkeypatch.setenv("Q_SK", "sk-very-secret")
    creds = settings.credentials()
    assert creds.access_key == "SCWAK"
    assert creds.secret_key.reveal() == "sk-very-secret"
    assert "sk-very-secret" not in repr(creds)
    inline = SqsSettings.from_mapping({"kind": "sqs", "secret_key": "inline-secret", "access_key": "x"})
    assert "inline-secret" not in repr(inline)
    assert inline.url == "https://sqs.mnq.fr-par.scaleway.com"
    assert inline.region == "fr-par"
    with pytest.raises(ConfigError, match="credentials"):
        SqsSettings.from_mapping({"kind": "sqs", "url": "https://ak:sk@sqs.example.com"})


harness = harness_fixture(SqsHarness)


async def queue_counts(harness: SqsHarness, name: str) -> tuple[int, int]:
    """(visible, in flight) messages of the test's queue ``name``, as SQS counts them."""
    attributes = (
        await harness.admin.get_queue_attributes(
            QueueUrl=await harness.queue_url(name),
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )
    )["Attributes"]
    return (
        int(attributes["ApproximateNumberOfMessages"]),
        int(attributes["ApproximateNumberOfMessagesNotVisible"]),
    )


async def test_receive_takes_batches_of_ten_up_to_what_was_asked(harness: SqsHarness) -> None:
    """With 30 jobs waiting, receive(25) takes 25 in batches of at most 10; 5 stay visible."""
    source = await harness.make_source()
    await harness.publish_jobs(30)
    got = await source.receive(25, timeout_s=5)
    assert len(got) == 25
    assert len({d.message_id for d in got}) == 25
    assert not any(d.redelivered for d in got)
    assert await queue_counts(harness, harness.names["queue"]) == (5, 25)
    assert source.in_flight == 25


async def test_open_creates_queues_with_a_redrive_policy_or_uses_urls(harness: SqsHarness) -> None:
    """Missing queues are refused with create_queues off; created on open otherwise, the job queue
    with a redrive policy to the dead-letter queue; queues named by URL are used as they are."""
    with pytest.raises(BrokerError, match="cannot open the queues"):
        await harness.make_source(create_queues=False)
    await harness.make_source(max_receive_count=3)
    job_url = await harness.queue_url(harness.names["queue"])
    dlq_url = await harness.queue_url(harness.names["dead_letter_queue"])
    attributes = (
        await harness.admin.get_queue_attributes(QueueUrl=job_url, AttributeNames=["RedrivePolicy"])
    )["Attributes"]
    policy = orjson.loads(attributes["RedrivePolicy"])
    assert int(policy["maxReceiveCount"]) == 3
    assert policy["deadLetterTargetArn"].endswith(f":{harness.names['dead_letter_queue']}")
    by_url = await harness.make_source(queue=job_url, dead_letter_queue=dlq_url, create_queues=False)
    assert (by_url.queue_url, by_url.dead_letter_url) == (job_url, dlq_url)


async def test_heartbeat_keeps_a_slow_admission_from_being_redelivered(harness: SqsHarness) -> None:
    """A job held past its visibility timeout is not handed to another consumer while the heartbeat
    extends it; the same timeout without a heartbeat lets a job go to that consumer."""
    slow = await harness.make_source(visibility_timeout_s=2)
    other = await harness.make_source(visibility_timeout_s=2)
    # The control: received without a heartbeat (1 s visibility), the job comes back to `other`.
    await harness.publish_jobs(1)
    [unguarded] = await harness.receive_raw(harness.names["queue"], visibility_s=1)
    [back] = await receive_exactly(other, 1)
    assert (back.message_id, back.redelivered) == (unguarded["MessageId"], True)
    await back.ack()
    await harness.publish_jobs(1)
    [held] = await receive_exactly(slow, 1)
    seen: list[Delivery] = []

    async def poll() -> None:
        while True:
            seen.extend(await other.receive(10, timeout_s=1))

    async with anyio.create_task_group() as tg:
        tg.start_soon(poll)
        # Four rounds of extension: at least 4 × 2/3 s, longer than the 2 s timeout.
        await wait_until(lambda: slow.extensions >= 4, what="four visibility extensions")
        tg.cancel_scope.cancel()
    assert seen == []
    await held.ack()
    await slow.close()  # sends the delete
    assert await queue_counts(harness, harness.names["queue"]) == (0, 0)


async def test_redrive_moves_a_job_received_too_often_to_the_dead_letter_queue(harness: SqsHarness) -> None:
    """A job received max_receive_count times without being acked goes, by SQS's redrive policy,
    to the dead-letter queue, and is not received again (released at once: no backoff)."""
    source = await harness.make_source(max_receive_count=2, release_backoff_s=0)
    await harness.publish_jobs(1)
    for attempt in range(2):
        [delivery] = await receive_exactly(source, 1)
        assert delivery.redelivered is (attempt > 0)
        await delivery.release()
    assert await source.receive(1, timeout_s=1) == []
    [moved] = await harness.receive_raw(harness.names["dead_letter_queue"])
    assert orjson.loads(moved["Body"]) == {"n": 0}
    assert await queue_counts(harness, harness.names["queue"]) == (0, 0)


async def test_release_hides_the_job_for_a_backoff_growing_with_its_receive_count(
    harness: SqsHarness,
) -> None:
    """Each release hides the job for release_backoff_s doubled per receive, up to
    release_backoff_max_s, less at most a quarter of jitter: right after it the job is not
    receivable. Once it is visible again (here: made so at once), it comes back with its receive
    count grown, and the next release hides it longer."""
    source = await harness.make_source(release_backoff_s=60, release_backoff_max_s=150)
    url = await harness.queue_url(harness.names["queue"])
    await harness.publish_jobs(1)
    for count, nominal in enumerate([60, 120, 150, 150], start=1):
        [delivery] = await receive_exactly(source, 1)
        assert isinstance(delivery, SqsDelivery)
        assert delivery.message["Attributes"]["ApproximateReceiveCount"] == str(count)
        assert delivery.redelivered is (count > 1)
        await delivery.release()
        assert delivery.hidden_for_s is not None
        assert nominal * 3 / 4 <= delivery.hidden_for_s <= nominal
        assert await source.receive(1, timeout_s=0) == []
        assert await queue_counts(harness, harness.names["queue"]) == (0, 1)
        # What the backoff's end would do, without waiting for it.
        await harness.admin.change_message_visibility(
            QueueUrl=url, ReceiptHandle=delivery.receipt_handle, VisibilityTimeout=0
        )
    assert await harness.receive_raw(harness.names["dead_letter_queue"], wait_s=0) == []


@given(
    counts=st.tuples(st.integers(1, 2000), st.integers(1, 2000)).map(sorted),
    base_s=st.floats(0, 43200),
    max_s=st.integers(1, 43200),
    jitter=st.floats(0, 1),
)
def test_release_backoff_is_monotone_and_bounded(
    counts: list[int], base_s: float, max_s: int, jitter: float
) -> None:
    """The backoff never shrinks as the receive count grows, never exceeds the cap nor the doubled
    base, loses at most a quarter to jitter, and is 0 only for a base of 0."""
    fewer, more = counts
    backoff = release_backoff(fewer, base_s, max_s, jitter)
    assert backoff <= release_backoff(more, base_s, max_s, jitter)
    nominal = min(base_s * 2.0 ** min(fewer - 1, 1000), max_s)
    assert nominal * 3 / 4 <= backoff <= math.ceil(nominal)
    assert backoff <= max_s
    assert (backoff == 0) is (base_s == 0)


def test_default_backoffs_outlast_minutes_of_outage_before_the_redrive() -> None:
    """With the defaults (1 s doubling to at most 300 s, a redrive after 10 receives) the tenth
    receive of a job given back at every receive comes 384 to 511 s after its first: the sum of
    the first nine backoffs, at most and at least jitter."""
    config = SqsSourceConfig()
    receives = config.max_receive_count
    sums = [
        sum(
            release_backoff(n, config.release_backoff_s, config.release_backoff_max_s, jitter)
            for n in range(1, receives)
        )
        for jitter in (1.0, 0.0)
    ]
    assert sums == [384, 511]
    assert release_backoff(receives, config.release_backoff_s, config.release_backoff_max_s) == 300


async def test_dead_letter_carries_reason_and_attributes_and_removes_original(harness: SqsHarness) -> None:
    """dead_letter sends the body with the reason and origin as attributes, keeping as many of the
    producer's attributes as fit SQS's 10, and the original is deleted."""
    source = await harness.make_source()
    url = await harness.queue_url(harness.names["queue"])
    theirs: dict[str, Any] = {f"a{i}": {"DataType": "String", "StringValue": f"v{i}"} for i in range(9)}
    theirs["blob"] = {"DataType": "Binary", "BinaryValue": b"\x00\xff"}
    await harness.admin.send_message(QueueUrl=url, MessageBody="{oops", MessageAttributes=theirs)
    [delivery] = await receive_exactly(source, 1)
    await delivery.dead_letter("not JSON: unexpected end of data")
    [dead] = await harness.receive_raw(harness.names["dead_letter_queue"])
    assert dead["Body"] == "{oops"
    attributes = {k: v.get("StringValue") for k, v in dead["MessageAttributes"].items()}
    assert attributes[HEADER_REASON] == "not JSON: unexpected end of data"
    assert attributes[HEADER_ORIGINAL_QUEUE] == url
    assert attributes[HEADER_ORIGINAL_MESSAGE_ID] == delivery.message_id
    assert attributes[HEADER_RECEIVE_COUNT] == "1"
    assert len(attributes) == 10
    await source.close()
    assert await queue_counts(harness, harness.names["queue"]) == (0, 0)


async def test_batch_delete_drops_a_refused_receipt_and_deletes_the_rest(harness: SqsHarness) -> None:
    """Acks go out together in one DeleteMessageBatch at the next receive; the entry SQS refuses
    (its message was purged, so its receipt handle is unknown) is recorded and dropped, and the
    rest of the batch is deleted."""
    source = await harness.make_source()
    url = await harness.queue_url(harness.names["queue"])
    await harness.publish_jobs(1)
    [purged] = await receive_exactly(source, 1)
    await harness.admin.purge_queue(QueueUrl=url)
    await harness.publish_jobs(3)
    rest = await receive_exactly(source, 3)
    for delivery in [purged, *rest]:
        await delivery.ack()
    assert source.pending_deletes == 4
    assert await queue_counts(harness, harness.names["queue"]) == (0, 3)
    assert await source.receive(10, timeout_s=0) == []
    assert source.pending_deletes == 0
    assert [f.code for f in source.delete_failures] == ["ReceiptHandleIsInvalid"]
    assert await queue_counts(harness, harness.names["queue"]) == (0, 0)


def test_config_refuses_unknown_keys_and_bad_values() -> None:
    """Unknown keys and bad values are configuration errors naming the key; the secret key never
    shows in a repr."""
    with pytest.raises(ConfigError, match="'visibility_timeout'"):
        source_from_config({"kind": "sqs", "visibility_timeout": 5})
    with pytest.raises(ConfigError, match="visibility_timeout_s"):
        source_from_config({"kind": "sqs", "visibility_timeout_s": 50_000})
    with pytest.raises(ConfigError, match="dead_letter_queue"):
        source_from_config({"kind": "sqs", "queue": "jobs", "dead_letter_queue": "jobs"})
    with pytest.raises(ConfigError, match="queue"):
        source_from_config({"kind": "sqs", "queue": "no spaces please"})
    with pytest.raises(ConfigError, match="FIFO"):
        source_from_config({"kind": "sqs", "queue": "jobs.fifo", "dead_letter_queue": "dlq"})
    for backoff in (
        {"release_backoff_s": -1},
        {"release_backoff_s": 301},
        {"release_backoff_max_s": 0},
        {"release_backoff_max_s": 43201},
        {"release_backoff_max_s": 2.5},
    ):
        with pytest.raises(ConfigError, match=next(iter(backoff))):
            source_from_config({"kind": "sqs", **backoff})
    source = source_from_config({"kind": "sqs", "secret_key": "hunter2-secret", "access_key": "AK"})
    assert isinstance(source, SqsSource)
    assert source.name == "sqs:bulksend-jobs"
    assert "hunter2-secret" not in repr(source)
    assert "hunter2-secret" not in repr(source.config)


async def test_result_publisher_sends_concurrent_outcomes_in_shared_batches(harness: SqsHarness) -> None:
    """Outcomes published together go out in SendMessageBatch calls of up to 10, each one once, as
    JSON; a publish to a queue that is gone raises BrokerError."""
    publisher = publisher_from_config(harness.results_config())
    assert isinstance(publisher, SqsResultPublisher)
    async with publisher:
        assert await publisher.healthy()
        async with anyio.create_task_group() as tg:
            for i in range(25):
                tg.start_soon(publisher.publish, {"idempotency_key": f"k-{i}", "status": "sent"})
        assert 3 <= publisher.batches < 25
        received: list[dict[str, Any]] = []
        while len(received) < 25:
            messages = await harness.receive_raw(harness.results_queue)
            assert messages, f"only {len(received)} of 25 outcomes arrived"
            received += [orjson.loads(m["Body"]) for m in messages]
        assert sorted(r["idempotency_key"] for r in received) == sorted(f"k-{i}" for i in range(25))
        await harness.admin.delete_queue(QueueUrl=await harness.queue_url(harness.results_queue))
        with pytest.raises(BrokerError, match="cannot publish"):
            await publisher.publish({"idempotency_key": "k-late", "status": "sent"})
    assert not await publisher.healthy()


def test_scaleway_example_config_builds_sqs_source_and_publisher() -> None:
    """configs/daemon.scaleway-queues.toml loads, and its source and results point at Scaleway
    Queues (endpoint, fr-par) with the credentials read from the variables it names."""
    example = load_daemon_config(Path(__file__).parents[1] / "configs" / "daemon.scaleway-queues.toml")
    assert example.receive_timeout_s == 20
    [source] = [source_from_config(cfg) for cfg in example.sources]
    assert example.results is not None
    publisher = publisher_from_config(example.results)
    assert isinstance(source, SqsSource)
    assert isinstance(publisher, SqsResultPublisher)
    for config in (source.config, publisher.config):
        assert (config.url, config.region) == ("https://sqs.mnq.fr-par.scaleway.com", "fr-par")
        assert (config.access_key_env, config.secret_key_env) == (
            "BULKSEND_SQS_ACCESS_KEY",
            "BULKSEND_SQS_SECRET_KEY",
        )
    assert (source.config.queue, source.config.dead_letter_queue) == ("bulksend-jobs", "bulksend-jobs-dlq")
    assert source.config.create_queues is False
