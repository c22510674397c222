"""NATS JetStream job source and result publisher, against the local nats-server (127.0.0.1:4222).

What only this broker does; the contract all sources keep is in test_broker_contract.py.
"""

from __future__ import annotations

from urllib.parse import unquote

import nats
import nats.js.errors
import orjson
import pytest
from nats.js.api import StreamConfig

from bulksend.brokers import publisher_from_config, source_from_config
from bulksend.brokers.nats import (
    HEADER_ORIGINAL_SEQUENCE,
    HEADER_ORIGINAL_STREAM,
    HEADER_ORIGINAL_SUBJECT,
    HEADER_REASON,
    NatsResultConfig,
    NatsResultPublisher,
    NatsSource,
    NatsSourceConfig,
    subject_matches,
)
from bulksend.errors import ConfigError
from tests.brokers import NATS_URL, NatsHarness, harness_fixture

harness = harness_fixture(NatsHarness)


async def test_receive_never_returns_more_than_asked(harness: NatsHarness) -> None:
    """With 100 jobs waiting, receive(3) hands out exactly 3 and the other 97 stay on the server."""
    source = await harness.make_source()
    await harness.publish_jobs(100)
    got = await source.receive(3, timeout_s=5)
    assert [orjson.loads(d.body)["n"] for d in got] == [0, 1, 2]
    assert await source.lag() == 97
    info = await harness.admin.consumer_info(harness.names["stream"], harness.names["durable"])
    assert info.num_ack_pending == 3
    for d in got:
        await d.ack()
    rest = await source.receive(1000, timeout_s=5)
    assert len(rest) == 97
    assert not any(d.redelivered for d in got + rest)


async def test_dead_letter_carries_reason_and_removes_original(harness: NatsHarness) -> None:
    """dead_letter publishes the body with reason and origin headers to the DLQ and acks the job."""
    source = await harness.make_source()
    await harness.admin.publish(
        harness.names["subject"], b"not json", headers={"Trace-Id": "t-1", "Nats-Msg-Id": "m-1"}
    )
    [delivery] = await source.receive(1, timeout_s=5)
    await delivery.dead_letter("not JSON: unexpected character\nline 1 — 100% «bad»")
    dlq_stream = f"{harness.names['stream']}_DLQ"
    dead = await harness.admin.get_last_msg(dlq_stream, harness.names["dead_letter_subject"])
    assert dead.data == b"not json"
    headers = dead.headers or {}
    assert headers[HEADER_REASON].startswith("not JSON: unexpected character line 1 %E2%80%94 100%25 ")
    assert unquote(headers[HEADER_REASON]) == "not JSON: unexpected character line 1 — 100% «bad»"
    assert headers[HEADER_ORIGINAL_SUBJECT] == harness.names["subject"]
    assert headers[HEADER_ORIGINAL_STREAM] == harness.names["stream"]
    assert headers[HEADER_ORIGINAL_SEQUENCE] == delivery.message_id
    assert headers["Trace-Id"] == "t-1"
    assert "Nats-Msg-Id" not in headers
    assert (await harness.admin.stream_info(harness.names["stream"])).state.messages == 0
    assert await source.receive(1, timeout_s=0.2) == []


async def test_open_is_idempotent_and_updates_consumer_limits(harness: NatsHarness) -> None:
    """Opening again with the same names reuses the stream and applies a changed max_ack_pending."""
    await harness.make_source(max_ack_pending=10)
    await harness.make_source(max_ack_pending=20)
    info = await harness.admin.consumer_info(harness.names["stream"], harness.names["durable"])
    assert info.config.max_ack_pending == 20
    stream = await harness.admin.stream_info(harness.names["stream"])
    assert stream.config.subjects == [harness.names["subject"]]


async def test_subject_owned_by_another_stream_is_a_config_error(harness: NatsHarness) -> None:
    """A job subject already captured by a differently named stream is refused, naming that stream."""
    await harness.admin.add_stream(
        StreamConfig(name=harness.names["stream"], subjects=[harness.names["subject"]])
    )
    with pytest.raises(ConfigError, match=harness.names["stream"]):
        await harness.make_source(stream=f"{harness.names['stream']}X")


def test_config_refuses_unknown_keys_and_dead_letter_loops() -> None:
    """Unknown keys and a dead-letter subject matched by the job subject are configuration errors."""
    with pytest.raises(ConfigError, match="'max_ack_pendng'"):
        source_from_config({"kind": "nats", "max_ack_pendng": 5})
    with pytest.raises(ConfigError, match="come back as jobs"):
        source_from_config({"kind": "nats", "subject": "jobs.>", "dead_letter_subject": "jobs.dlq"})
    with pytest.raises(ConfigError, match="ack_wait_s"):
        source_from_config({"kind": "nats", "ack_wait_s": 0})
    source = source_from_config({"kind": "nats", "url": "nats://user:hunter2@127.0.0.1:4222"})
    assert isinstance(source, NatsSource)
    assert "hunter2" not in repr(source)
    assert "hunter2" not in repr(source.config)
    assert source.config == NatsSourceConfig(url="nats://user:hunter2@127.0.0.1:4222")
    assert source.name == "nats:BULKSEND_JOBS/bulksend"


def test_subject_matching_follows_nats_wildcards() -> None:
    """subject_matches implements NATS's '*' (one token) and '>' (one or more tokens) wildcards."""
    assert subject_matches("a.b", "a.b")
    assert not subject_matches("a.b", "a.b.c")
    assert subject_matches("a.*", "a.b")
    assert not subject_matches("a.*", "a.b.c")
    assert subject_matches("a.>", "a.b.c")
    assert not subject_matches("a.>", "a")


async def test_result_publisher_uses_jetstream_when_a_stream_captures_the_subject(
    harness: NatsHarness,
) -> None:
    """Outcomes published to a subject inside a stream are stored there as JSON."""
    subject = harness.results_subject
    await harness.admin.add_stream(StreamConfig(name=harness.results_stream, subjects=[subject]))
    publisher = publisher_from_config(harness.results_config())
    assert isinstance(publisher, NatsResultPublisher)
    async with publisher:
        assert publisher.uses_jetstream
        assert await publisher.healthy()
        await publisher.publish({"idempotency_key": "k-1", "status": "sent"})
    assert not await publisher.healthy()
    stored = await harness.admin.get_last_msg(harness.results_stream, subject)
    assert orjson.loads(stored.data or b"") == {"idempotency_key": "k-1", "status": "sent"}


async def test_result_publisher_without_stream_reaches_subscribers(harness: NatsHarness) -> None:
    """Without a stream, outcomes are plain NATS messages that a live subscriber receives."""
    subject = harness.names["subject"].replace(".jobs", ".plain")
    listener = await nats.connect(NATS_URL)
    try:
        sub = await listener.subscribe(subject)
        await listener.flush()
        async with NatsResultPublisher(NatsResultConfig(url=NATS_URL, subject=subject)) as publisher:
            assert not publisher.uses_jetstream
            await publisher.publish({"status": "failed", "flags": ["hard_bounce"]})
        msg = await sub.next_msg(timeout=5)
        assert orjson.loads(msg.data) == {"status": "failed", "flags": ["hard_bounce"]}
    finally:
        await listener.close()


@pytest.mark.parametrize("status", ["503", "100", "404", "409"])
async def test_job_with_a_status_header_is_a_job_not_a_server_status(
    harness: NatsHarness, status: str
) -> None:
    """A producer's own "Status" header does not make a stored job look like JetStream's pull
    status: the job and the one after it are handed out (it used to be skipped for ever, or to
    fail the whole pull)."""
    source = await harness.make_source()
    await harness.admin.publish(
        harness.names["subject"], b'{"n": 0}', headers={"Status": status, "Description": "mine"}
    )
    await harness.admin.publish(harness.names["subject"], b'{"n": 1}')
    got = await source.receive(10, timeout_s=5)
    assert [orjson.loads(d.body)["n"] for d in got] == [0, 1]
    for d in got:
        await d.ack()
    assert await source.lag() == 0
