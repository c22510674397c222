"""Redis Streams job source and result publisher, against the local Redis (127.0.0.1:6379).

What only this broker does; the contract all sources keep is in test_broker_contract.py.
"""

from __future__ import annotations

import os
from typing import Any

import orjson
import pytest

from bulksend.brokers import publisher_from_config, source_from_config
from bulksend.brokers.base import JobSource
from bulksend.brokers.redis_streams import RedisResultPublisher, RedisStreamSource
from bulksend.errors import ConfigError
from tests.brokers import RedisHarness, harness_fixture, xadd_jobs

harness = harness_fixture(RedisHarness)


async def group_info(client: Any, stream: str) -> dict[str, Any]:
    [group] = await client.xinfo_groups(stream)
    return dict(group)


async def test_receive_never_returns_more_than_asked(harness: RedisHarness) -> None:
    """With 100 jobs waiting, receive(3) takes exactly 3 from the stream; the other 97 stay undelivered."""
    source = await harness.make_source()
    ids = await xadd_jobs(harness.admin, harness.names["stream"], 100)
    got = await source.receive(3, timeout_s=1)
    assert [d.message_id for d in got] == ids[:3]
    assert (await group_info(harness.admin, harness.names["stream"]))["pending"] == 3
    assert await source.lag() == 97
    for d in got:
        await d.ack()
    rest = await source.receive(1000, timeout_s=1)
    assert [d.message_id for d in rest] == ids[3:]
    assert not any(d.redelivered for d in got + rest)


async def test_acked_job_is_deleted_and_not_redelivered(harness: RedisHarness) -> None:
    """An acked job leaves the pending list and the stream, so even an eager claimer never sees it."""
    source = await harness.make_source(claim_idle_s=0)
    await xadd_jobs(harness.admin, harness.names["stream"], 2)
    got = await source.receive(10, timeout_s=1)
    for d in got:
        await d.ack()
    assert (await group_info(harness.admin, harness.names["stream"]))["pending"] == 0
    assert await harness.admin.xlen(harness.names["stream"]) == 0
    other = await harness.make_source(consumer="other", claim_idle_s=0)
    assert await other.receive(10, timeout_s=0.2) == []


async def test_ack_keeps_the_entry_when_delete_on_ack_is_off(harness: RedisHarness) -> None:
    """With delete_on_ack off, an ack only XACKs: the entry stays in the stream for other groups."""
    source = await harness.make_source(delete_on_ack=False)
    await xadd_jobs(harness.admin, harness.names["stream"], 1)
    [delivery] = await source.receive(1, timeout_s=1)
    await delivery.ack()
    assert (await group_info(harness.admin, harness.names["stream"]))["pending"] == 0
    assert await harness.admin.xlen(harness.names["stream"]) == 1


async def test_job_of_a_dead_consumer_is_claimed_by_another(harness: RedisHarness) -> None:
    """A job left pending by a consumer that went away is claimed by another one, marked redelivered."""
    first = await harness.make_source(consumer="first")
    [entry_id] = await xadd_jobs(harness.admin, harness.names["stream"], 1)
    [lost] = await first.receive(1, timeout_s=1)
    assert lost.redelivered is False
    await first.close()  # gone without acking; it keeps its pending entry, so it stays in the group
    consumers = {
        c["name"]: c["pending"]
        for c in await harness.admin.xinfo_consumers(harness.names["stream"], "bulksend")
    }
    assert consumers == {b"first": 1}
    # claim_idle_s=0: every pending entry counts as abandoned, so no waiting is needed here.
    second = await harness.make_source(consumer="second", claim_idle_s=0)
    [again] = await second.receive(5, timeout_s=1)
    assert again.redelivered is True
    assert again.message_id == entry_id
    assert again.body == lost.body
    await again.ack()
    assert (await group_info(harness.admin, harness.names["stream"]))["pending"] == 0


async def test_unclaimed_pending_job_waits_for_claim_idle(harness: RedisHarness) -> None:
    """A job pending on a live consumer is not taken by another whose claim_idle_s has not passed."""
    first = await harness.make_source(consumer="first")
    await xadd_jobs(harness.admin, harness.names["stream"], 1)
    assert len(await first.receive(1, timeout_s=1)) == 1
    second = await harness.make_source(consumer="second", claim_idle_s=3600)
    assert await second.receive(5, timeout_s=0.1) == []


async def test_release_leaves_the_job_for_a_later_claim(harness: RedisHarness) -> None:
    """A released job stays pending and is handed out again by the next claim, marked redelivered."""
    source = await harness.make_source(claim_idle_s=0)
    [entry_id] = await xadd_jobs(harness.admin, harness.names["stream"], 1)
    [delivery] = await source.receive(1, timeout_s=1)
    await delivery.release()
    assert delivery.settled == "released"
    assert source.in_flight == 0
    assert (await group_info(harness.admin, harness.names["stream"]))["pending"] == 1
    [again] = await source.receive(1, timeout_s=1)
    assert again.redelivered is True
    assert again.message_id == entry_id


async def test_own_unsettled_job_is_not_handed_out_twice(harness: RedisHarness) -> None:
    """A claim that picks up this process's own unsettled job does not hand it out a second time."""
    source = await harness.make_source(claim_idle_s=0)
    await xadd_jobs(harness.admin, harness.names["stream"], 1)
    assert len(await source.receive(1, timeout_s=1)) == 1
    assert await source.receive(1, timeout_s=0.1) == []
    assert source.in_flight == 1


async def test_dead_letter_records_reason_and_removes_original(harness: RedisHarness) -> None:
    """dead_letter adds {body, reason, source_id} to the DLQ stream and acks and deletes the original."""
    source = await harness.make_source(consumer="c1")
    entry_id = (await harness.admin.xadd(harness.names["stream"], {"body": b"[1, 2]"})).decode()
    [delivery] = await source.receive(1, timeout_s=1)
    await delivery.dead_letter("a job must be a JSON object, got an array")
    [(_, fields)] = await harness.admin.xrange(harness.names["dead_letter_stream"])
    assert fields[b"body"] == b"[1, 2]"
    assert fields[b"reason"] == b"a job must be a JSON object, got an array"
    assert fields[b"source_id"] == entry_id.encode()
    assert fields[b"source_stream"] == harness.names["stream"].encode()
    assert fields[b"consumer"] == b"c1"
    assert await harness.admin.xlen(harness.names["stream"]) == 0
    assert (await group_info(harness.admin, harness.names["stream"]))["pending"] == 0


async def test_entry_without_body_field_arrives_empty(harness: RedisHarness) -> None:
    """An entry lacking the body field is delivered with an empty body (which parse_job refuses)."""
    source = await harness.make_source()
    await harness.admin.xadd(harness.names["stream"], {"payload": b"{}"})
    [delivery] = await source.receive(1, timeout_s=1)
    assert delivery.body == b""


async def test_healthy_lag_and_consumer_cleanup(harness: RedisHarness) -> None:
    """healthy() follows the connection, lag() counts undelivered jobs, and a clean close leaves the group."""
    source = await harness.make_source(consumer="tidy")
    assert isinstance(source, JobSource)
    assert await source.healthy() is True
    assert await source.lag() == 0
    await xadd_jobs(harness.admin, harness.names["stream"], 6)
    assert await source.lag() == 6
    for d in await source.receive(2, timeout_s=1):
        await d.ack()
    assert await source.lag() == 4
    await source.close()
    assert await source.healthy() is False
    assert await source.lag() is None
    assert await harness.admin.xinfo_consumers(harness.names["stream"], "bulksend") == []


async def test_open_accepts_an_existing_group(harness: RedisHarness) -> None:
    """Opening twice on the same stream and group reuses the group (BUSYGROUP is not an error)."""
    await harness.make_source(consumer="a")
    second = await harness.make_source(consumer="b")
    assert await second.healthy()


def test_config_refuses_unknown_keys_and_bad_values() -> None:
    """Unknown keys and bad values are configuration errors; the consumer name defaults per process."""
    with pytest.raises(ConfigError, match="'claim_idle'"):
        source_from_config({"kind": "redis", "claim_idle": 5})
    with pytest.raises(ConfigError, match="delete_on_ack"):
        source_from_config({"kind": "redis", "delete_on_ack": "yes"})
    with pytest.raises(ConfigError, match="kind"):
        source_from_config({"kind": "kafka"})
    with pytest.raises(ConfigError, match="forget_consumer_s"):
        source_from_config({"kind": "redis", "forget_consumer_s": -1})
    source = source_from_config({"kind": "redis", "url": "redis://:hunter2@127.0.0.1:6379/0"})
    assert isinstance(source, RedisStreamSource)
    assert source.config.forget_consumer_s == 600
    assert isinstance(source, RedisStreamSource)
    assert "hunter2" not in repr(source)
    assert "hunter2" not in repr(source.config)
    assert source.config.consumer.endswith(f"-{os.getpid()}")


async def test_result_publisher_adds_to_a_trimmed_stream(harness: RedisHarness) -> None:
    """Outcomes are XADDed as JSON to the results stream."""
    stream = harness.results_stream
    publisher = publisher_from_config({**harness.results_config(), "maxlen": 1000})
    assert isinstance(publisher, RedisResultPublisher)
    async with publisher:
        assert await publisher.healthy()
        await publisher.publish(
            {"idempotency_key": "k-3", "status": "rejected", "reason": "no such template"}
        )
    assert not await publisher.healthy()
    [(_, fields)] = await harness.admin.xrange(stream)
    assert orjson.loads(fields[b"body"]) == {
        "idempotency_key": "k-3",
        "status": "rejected",
        "reason": "no such template",
    }


async def consumers_of(admin: Any, stream: str) -> dict[str, int]:
    """The group's consumers with their pending counts."""
    return {c["name"].decode(): int(c["pending"]) for c in await admin.xinfo_consumers(stream, "bulksend")}


async def test_dead_consumer_is_deleted_once_its_jobs_are_claimed(harness: RedisHarness) -> None:
    """A consumer that died holding jobs (never closed) loses them to a claim and is then deleted
    from the group, so the group lists only live consumers."""
    stream = harness.names["stream"]
    await harness.make_source(consumer="live-before")  # creates the group
    ids = await xadd_jobs(harness.admin, stream, 2)
    # A process killed with -9: it read two jobs and never acked nor closed.
    await harness.admin.xreadgroup("bulksend", "dead", {stream: ">"}, count=2)
    assert (await consumers_of(harness.admin, stream))["dead"] == 2
    survivor = await harness.make_source(consumer="survivor", claim_idle_s=0, forget_consumer_s=0)
    got = await survivor.receive(5, timeout_s=0.1)
    assert sorted(d.message_id for d in got) == ids
    consumers = await consumers_of(harness.admin, stream)
    assert "dead" not in consumers
    assert consumers["survivor"] == 2
    assert "dead" in survivor.forgotten
    for delivery in got:
        await delivery.ack()


async def test_consumer_with_pending_jobs_or_recently_seen_is_kept(harness: RedisHarness) -> None:
    """A consumer still holding jobs is never deleted (that would drop its jobs), nor is one seen
    more recently than forget_consumer_s."""
    stream = harness.names["stream"]
    await harness.make_source(consumer="first")
    [_, done] = await xadd_jobs(harness.admin, stream, 2)
    await harness.admin.xreadgroup("bulksend", "holder", {stream: ">"}, count=1)
    await harness.admin.xreadgroup("bulksend", "recent", {stream: ">"}, count=1)
    await harness.admin.xack(stream, "bulksend", done)  # it holds nothing now
    patient = await harness.make_source(consumer="patient", forget_consumer_s=3600)
    assert await patient.receive(5, timeout_s=0.05) == []
    assert await consumers_of(harness.admin, stream) == {"holder": 1, "recent": 0}
    assert patient.forgotten == []
    keeper = await harness.make_source(consumer="keeper", claim_idle_s=3600, forget_consumer_s=0)
    assert await keeper.receive(5, timeout_s=0.05) == []
    assert await consumers_of(harness.admin, stream) == {"holder": 1}  # idle >= 0 s, holding nothing
    assert keeper.forgotten == ["recent"]
