"""The send-job format: parse_job, its reasons, the JSON Schema in docs/, and the in-memory source."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bulksend.brokers import publisher_from_config, source_from_config
from bulksend.brokers.base import (
    BrokerError,
    Delivery,
    JobSource,
    ResultPublisher,
    clean_reason,
    encode_outcome,
    redact_url,
)
from bulksend.brokers.memory import MemoryQueue, MemoryResultPublisher, MemorySource
from bulksend.errors import BulksendError, ConfigError
from bulksend.jobs.format import MAX_JOB_BYTES, MAX_VARIABLE_DEPTH, JobError, SendJob, parse_job
from bulksend.tem.models import format_rfc3339
from tests.strategies import deep_nesting, extreme_times, json_values, odd_text, to_wire

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "docs" / "job.schema.json"

VALID: dict[str, Any] = {
    "version": 1,
    "template": "welcome",
    "idempotency_key": "order-1234-welcome",
    "recipient": {"email": "a@example.com", "name": "Ann"},
    "variables": {"first_name": "Ann", "plan": "pro", "items": [1, 2]},
    "send_before": "2026-12-31T00:00:00Z",
    "results": True,
}


def job(**changes: Any) -> bytes:
    """VALID with top-level changes (a value of ... removes the key)."""
    doc = {**VALID, **changes}
    return orjson.dumps({k: v for k, v in doc.items() if v is not ...})


def _nested_list(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


def recipient(**changes: Any) -> bytes:
    rec = {**VALID["recipient"], **changes}
    return job(recipient={k: v for k, v in rec.items() if v is not ...})


def test_valid_job_parses_into_send_job() -> None:
    """A complete version-1 job becomes a SendJob with every field, send_before in UTC."""
    parsed = parse_job(job())
    assert parsed == SendJob(
        version=1,
        template="welcome",
        idempotency_key="order-1234-welcome",
        email="a@example.com",
        name="Ann",
        variables={"first_name": "Ann", "plan": "pro", "items": [1, 2]},
        send_before=datetime(2026, 12, 31, tzinfo=UTC),
        want_result=True,
    )
    assert parse_job(orjson.dumps(parsed.to_dict())) == parsed


def test_minimal_job_uses_defaults() -> None:
    """Optional fields may be left out or null; both mean "not given"."""
    minimal = {"version": 1, "template": "t", "idempotency_key": "k", "recipient": {"email": "b@example.com"}}
    parsed = parse_job(orjson.dumps(minimal))
    assert (parsed.name, parsed.variables, parsed.send_before, parsed.want_result) == (None, {}, None, None)
    nulls = {**minimal, "variables": None, "send_before": None, "results": None}
    nulls["recipient"] = {"email": "b@example.com", "name": None}
    assert parse_job(orjson.dumps(nulls)) == parsed
    assert parsed.to_dict() == minimal


def test_send_before_offsets_are_normalised_to_utc() -> None:
    """An RFC 3339 time with an offset (and lower-case t/z, or fractions) becomes the same instant in UTC."""
    assert parse_job(job(send_before="2026-06-01T12:00:00+02:00")).send_before == datetime(
        2026, 6, 1, 10, tzinfo=UTC
    )
    assert parse_job(job(send_before="2026-06-01t10:00:00.5z")).send_before == datetime(
        2026, 6, 1, 10, 0, 0, 500000, tzinfo=UTC
    )


@pytest.mark.parametrize(
    ("body", "kind", "field", "reason"),
    [
        (b"", "not_json", None, "empty message: expected a JSON job object"),
        (b"{oops", "not_json", None, "not JSON: "),
        (b"\xff\xfe", "not_json", None, "not JSON: "),
        (b"[1, 2]", "not_object", None, "a job must be a JSON object, got an array"),
        (b'"hello"', "not_object", None, "a job must be a JSON object, got a string"),
        (
            job(version=...),
            "missing_field",
            "version",
            "missing field 'version' (this bulksend reads version 1)",
        ),
        (job(version=2), "version", "version", "unsupported version 2 (this bulksend reads version 1)"),
        (job(version="1"), "version", "version", "version must be the number 1, got a string"),
        (job(version=True), "version", "version", "version must be the number 1, got a boolean"),
        (job(template=...), "missing_field", "template", "missing field 'template'"),
        (job(template=""), "invalid_field", "template", "template must be 1..200 characters (it has 0)"),
        (job(template=7), "invalid_field", "template", "template must be a string, got a number"),
        (job(idempotency_key=...), "missing_field", "idempotency_key", "missing field 'idempotency_key'"),
        (
            job(idempotency_key="k" * 201),
            "invalid_field",
            "idempotency_key",
            "idempotency_key must be 1..200 characters (it has 201)",
        ),
        (job(recipient=...), "missing_field", "recipient", "missing field 'recipient'"),
        (job(recipient="a@example.com"), "invalid_field", "recipient", "recipient must be an object like"),
        (recipient(email=...), "missing_field", "recipient.email", "missing field 'recipient.email'"),
        (
            recipient(email=None),
            "invalid_field",
            "recipient.email",
            "recipient.email must be a string, got null",
        ),
        (recipient(email=""), "invalid_field", "recipient.email", "recipient.email is empty"),
        (recipient(name=5), "invalid_field", "recipient.name", "recipient.name must be a string or null"),
        (
            recipient(mail="x@example.com"),
            "unknown_field",
            "recipient.mail",
            "unknown field 'recipient.mail' (did you mean 'recipient.email'?)",
        ),
        (
            job(variables=[1]),
            "invalid_field",
            "variables",
            "variables must be an object of template variables",
        ),
        (job(send_before=1767225600), "invalid_field", "send_before", "send_before must be an RFC 3339 time"),
        (
            job(send_before="2026-12-31"),
            "invalid_field",
            "send_before",
            "is not an RFC 3339 time with an offset",
        ),
        (
            job(send_before="2026-12-31T00:00:00"),
            "invalid_field",
            "send_before",
            "is not an RFC 3339 time with an offset",
        ),
        (job(send_before="2026-02-30T00:00:00Z"), "invalid_field", "send_before", "is not a real time"),
        (
            job(send_before="9999-12-31T23:59:59-14:00"),
            "invalid_field",
            "send_before",
            "is out of range: in UTC it falls outside years 1 to 9999",
        ),
        (
            job(send_before="0001-01-01T00:00:00+14:00"),
            "invalid_field",
            "send_before",
            "is out of range: in UTC it falls outside years 1 to 9999",
        ),
        (
            job(idempotency_key="order-1\x00"),
            "invalid_field",
            "idempotency_key",
            "idempotency_key contains the control character U+0000 at position 8",
        ),
        (
            job(template="wel\ncome"),
            "invalid_field",
            "template",
            "template contains the control character U+000A",
        ),
        (
            recipient(name="Ann\x0bLee"),
            "invalid_field",
            "recipient.name",
            "recipient.name contains a vertical tab U+000B at position 4; remove it",
        ),
        (
            job(variables={"a": {"b": ["ok", "G\x00"]}}),
            "invalid_field",
            "variables",
            "variables.a.b[1] contains a NUL character (U+0000), which cannot be stored",
        ),
        (
            job(variables={"k\x00": 1}),
            "invalid_field",
            "variables",
            "variables has a key with a NUL character (U+0000)",
        ),
        (
            job(variables={"a": _nested_list(MAX_VARIABLE_DEPTH)}),
            "invalid_field",
            "variables",
            f"variables are nested more than {MAX_VARIABLE_DEPTH} levels deep",
        ),
        (job(results="yes"), "invalid_field", "results", "results must be true, false or null, got a string"),
        (
            job(send_befor="2026-12-31T00:00:00Z"),
            "unknown_field",
            "send_befor",
            "unknown field 'send_befor' (did you mean 'send_before'?); version 1 allows: version, template,",
        ),
    ],
)
def test_invalid_job_gives_a_precise_reason(body: bytes, kind: str, field: str | None, reason: str) -> None:
    """Each invalid shape is refused with a JobError whose reason holds the expected sentence."""
    with pytest.raises(JobError) as info:
        parse_job(body)
    err = info.value
    assert reason in err.reason, err.reason
    assert str(err) == err.reason
    assert (err.kind, err.field) == (kind, field)
    assert isinstance(err, BulksendError)


def test_variables_at_the_depth_limit_and_tab_in_names_are_accepted() -> None:
    """Variables nested exactly MAX_VARIABLE_DEPTH levels, and a TAB in a name, are fine."""
    parsed = parse_job(
        job(
            variables={"a": _nested_list(MAX_VARIABLE_DEPTH - 2)},
            recipient={"email": "a@b.c", "name": "A\tB"},
        )
    )
    assert parsed.name == "A\tB"
    assert orjson.dumps(parsed.to_dict())


# -- generated junk: parse_job refuses with a JobError, never anything else --------------------

_JOB_FIELDS = st.sampled_from(
    ["version", "template", "idempotency_key", "recipient", "variables", "send_before", "results"]
)


def _parses_or_refuses(body: bytes) -> None:
    """parse_job either returns a job that can be written back and sent, or raises JobError."""
    try:
        parsed = parse_job(body)
    except JobError:
        return
    # What the daemon does with an accepted job must work too: encode it, format its deadline.
    assert parse_job(orjson.dumps(parsed.to_dict())) == parsed
    orjson.dumps({"vars": parsed.variables})
    if parsed.send_before is not None:
        format_rfc3339(parsed.send_before)


@settings(max_examples=300, deadline=None)
@given(st.one_of(json_values, deep_nesting))
def test_any_json_is_parsed_or_refused(value: Any) -> None:
    """Random JSON (huge numbers, odd unicode, deep nesting) gives a job or a JobError, nothing else."""
    _parses_or_refuses(to_wire(value))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes_are_parsed_or_refused(body: bytes) -> None:
    """Arbitrary bytes give a JobError (or, by chance, a job), nothing else."""
    _parses_or_refuses(body)


@settings(max_examples=500, deadline=None)
@given(
    st.dictionaries(_JOB_FIELDS, st.one_of(json_values, deep_nesting), max_size=3),
    st.one_of(extreme_times, odd_text),
    st.one_of(odd_text, json_values),
    st.one_of(deep_nesting, json_values),
)
@example({}, "9999-12-31T23:59:59-14:00", "Ann", {})
@example({}, "0001-01-01T00:00:00+14:00", "Ann", {})
@example({}, "2026-12-31T00:00:00Z", "G\x00", {"v": [[[[1]]]]})
def test_valid_job_with_hostile_fields_is_parsed_or_refused(
    changes: dict[str, Any], send_before: str, name: Any, variables: Any
) -> None:
    """A valid job with fields replaced by junk, extreme times, odd names or deep variables is parsed
    into a usable job or refused with a JobError; no other exception escapes."""
    _parses_or_refuses(to_wire({**VALID, **changes}))
    _parses_or_refuses(job(send_before=send_before))
    _parses_or_refuses(to_wire({**VALID, "recipient": {"email": "a@example.com", "name": name}}))
    _parses_or_refuses(to_wire({**VALID, "variables": {"v": variables}}))


def test_version_is_checked_before_unknown_fields() -> None:
    """A job from a newer producer reports its version, not the new fields this version does not know."""
    with pytest.raises(JobError, match=r"^unsupported version 2 "):
        parse_job(job(version=2, priority="high"))


def test_oversized_body_is_refused_before_parsing() -> None:
    """A body over MAX_JOB_BYTES is refused with its size, whatever it contains."""
    with pytest.raises(JobError, match="at most 1,048,576 bytes") as info:
        parse_job(b" " * (MAX_JOB_BYTES + 1))
    assert info.value.kind == "too_large"


# -- the JSON Schema in docs/ says the same as parse_job ---------------------------------------

_JSON_TYPES: dict[str, Any] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "integer": lambda v: (
        (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer())
    ),
}
_ANNOTATIONS = {"$schema", "$id", "title", "description", "format"}


def schema_errors(schema: dict[str, Any], value: Any, path: str = "") -> list[str]:
    """A tiny JSON Schema (2020-12) checker for exactly the keywords docs/job.schema.json uses.

    It fails loudly on any other keyword, so the schema cannot grow a rule this test ignores.
    """
    errors: list[str] = []
    for keyword in schema:
        if keyword in _ANNOTATIONS:
            continue
        rule = schema[keyword]
        if keyword == "type":
            types = [rule] if isinstance(rule, str) else rule
            if not any(_JSON_TYPES[t](value) for t in types):
                return [f"{path or '/'}: not {types}"]  # the other keywords assume the type
        elif keyword == "const":
            if not (value == rule and type(value) is not bool):
                errors.append(f"{path}: not {rule!r}")
        elif keyword == "required":
            errors += [f"{path}/{k}: required" for k in rule if isinstance(value, dict) and k not in value]
        elif keyword == "additionalProperties":
            assert rule is False
            if isinstance(value, dict):
                errors += [f"{path}/{k}: not allowed" for k in value if k not in schema.get("properties", {})]
        elif keyword == "properties":
            if isinstance(value, dict):
                for k, sub in rule.items():
                    if k in value:
                        errors += schema_errors(sub, value[k], f"{path}/{k}")
        elif keyword == "minLength":
            if isinstance(value, str) and len(value) < rule:
                errors.append(f"{path}: shorter than {rule}")
        elif keyword == "maxLength":
            if isinstance(value, str) and len(value) > rule:
                errors.append(f"{path}: longer than {rule}")
        elif keyword == "pattern":
            # ECMA-262 "$" without the multiline flag matches only at the very end.
            if isinstance(value, str) and not re.search(re.sub(r"\$$", r"\\Z", rule), value):
                errors.append(f"{path}: does not match {rule}")
        else:
            raise AssertionError(f"schema keyword {keyword!r} is not understood by this test's checker")
    return errors


SCHEMA_CASES: list[Any] = [
    VALID,
    {"version": 1, "template": "t", "idempotency_key": "k", "recipient": {"email": "x"}},
    {**VALID, "variables": None, "send_before": None, "results": None},
    {**VALID, "version": 1.0},
    {**VALID, "send_before": "2026-01-01T00:00:00.123-05:30"},
    {**VALID, "version": 2},
    {**VALID, "version": True},
    {**VALID, "extra": 1},
    {**VALID, "template": ""},
    {**VALID, "template": "t" * 201},
    {**VALID, "idempotency_key": 12},
    {**VALID, "recipient": {"name": "x"}},
    {**VALID, "recipient": {"email": "", "name": "x"}},
    {**VALID, "recipient": {"email": "x", "nickname": "x"}},
    {**VALID, "recipient": ["x"]},
    {**VALID, "variables": "x"},
    {**VALID, "send_before": "2026-01-01 00:00:00Z"},
    {**VALID, "send_before": "2026-01-01T00:00:00Z\n"},
    {**VALID, "send_before": "tomorrow"},
    {**VALID, "results": 1},
    {**VALID, "idempotency_key": "order-1\u0000"},
    {**VALID, "template": "wel\u2028come"},
    {**VALID, "recipient": {"email": "a@example.com", "name": "Ann\u000bLee"}},
    {**VALID, "recipient": {"email": "a@example.com", "name": "Ann\u0085"}},
    {**VALID, "recipient": {"email": "a@example.com", "name": "Ann\tLee"}},
    [VALID],
    "job",
]


@pytest.mark.parametrize("doc", SCHEMA_CASES, ids=range(len(SCHEMA_CASES)))
def test_json_schema_agrees_with_parse_job(doc: Any) -> None:
    """docs/job.schema.json accepts exactly the documents parse_job accepts (for these examples)."""
    schema = orjson.loads(SCHEMA_PATH.read_bytes())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    schema_ok = not schema_errors(schema, doc)
    try:
        parse_job(orjson.dumps(doc))
        parser_ok = True
    except JobError:
        parser_ok = False
    assert schema_ok == parser_ok, schema_errors(schema, doc)


def test_json_schema_lists_the_fields_parse_job_knows() -> None:
    """The schema's properties and required fields are the ones parse_job knows and requires."""
    schema = orjson.loads(SCHEMA_PATH.read_bytes())
    assert set(schema["properties"]) == set(VALID)
    assert set(schema["properties"]["recipient"]["properties"]) == {"email", "name"}
    for field in schema["required"]:
        with pytest.raises(JobError, match=f"missing field '{field}'"):
            parse_job(job(**{field: ...}))


# -- the in-memory source and publisher --------------------------------------------------------


async def test_memory_source_keeps_the_source_contract() -> None:
    """MemorySource bounds in-flight jobs, redelivers released ones and dead-letters with the reason."""
    queue = MemoryQueue("jobs")
    source = MemorySource(queue, max_in_flight=2)
    assert isinstance(source, JobSource)
    for i in range(4):
        queue.publish(orjson.dumps({"n": i}))
    async with source:
        first = await source.receive(10, timeout_s=0)
        assert [d.message_id for d in first] == ["1", "2"]
        assert isinstance(first[0], Delivery)
        assert await source.receive(10, timeout_s=0) == []
        assert await source.lag() == 2
        await first[0].ack()
        await first[0].release()  # a second settlement is ignored
        await first[1].release()
        again = await source.receive(10, timeout_s=0)
        assert [(d.message_id, d.redelivered) for d in again] == [("2", True), ("3", False)]
        await again[0].dead_letter("bad\njob")
        assert [(d.message_id, d.reason) for d in queue.dead_letters] == [("2", "bad job")]
        assert queue.acked == ["1"]
    assert await source.healthy() is False


async def test_memory_source_receive_wakes_up_on_publish() -> None:
    """A receive() waiting on an empty MemorySource returns as soon as a job is published."""
    queue = MemoryQueue()
    got: list[Delivery] = []
    async with MemorySource(queue) as source:

        async def consume() -> None:
            got.extend(await source.receive(5, timeout_s=30))

        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await anyio.wait_all_tasks_blocked()
            assert got == []
            queue.publish(b"late")
    assert [d.body for d in got] == [b"late"]


async def test_memory_source_gives_back_unsettled_jobs_on_close() -> None:
    """Closing a MemorySource requeues what it held; the old deliveries can no longer be settled."""
    queue = MemoryQueue()
    queue.publish(b"a")
    first = MemorySource(queue)
    await first.open()
    [held] = await first.receive(1, timeout_s=0)
    await first.close()
    with pytest.raises(BrokerError):
        await held.ack()
    assert held.settled is None
    second = MemorySource(queue)
    await second.open()
    [again] = await second.receive(1, timeout_s=0)
    assert (again.body, again.redelivered) == (b"a", True)


async def test_memory_publisher_and_factories() -> None:
    """The factories build memory sources and publishers, and refuse unknown kinds and keys."""
    source = source_from_config({"kind": "memory", "name": "q", "max_in_flight": 5})
    assert source.name == "memory:q"
    with pytest.raises(ConfigError, match="'max_inflight'"):
        source_from_config({"kind": "memory", "max_inflight": 5})
    publisher = publisher_from_config({"kind": "memory"})
    assert isinstance(publisher, MemoryResultPublisher)
    assert isinstance(publisher, ResultPublisher)
    with pytest.raises(BrokerError):
        await publisher.publish({"status": "sent"})
    async with publisher:
        await publisher.publish({"status": "sent", "final_at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)})
    assert publisher.outcomes == [{"status": "sent", "final_at": "2026-01-02T03:04:05Z"}]
    with pytest.raises(ConfigError, match="kind"):
        publisher_from_config({"kind": "kafka"})
    with pytest.raises(ValueError, match="JSON"):
        encode_outcome({"x": object()})


def test_reason_and_url_helpers_keep_logs_safe() -> None:
    """Dead-letter reasons become one bounded line; URLs lose their passwords."""
    assert clean_reason("a\r\nb\tc\x00d") == "a b c d"
    assert clean_reason("") == "no reason given"
    assert len(clean_reason("x" * 5000)) == 1000
    assert redact_url("amqp://guest:pw@host:5672/vh") == "amqp://guest:****@host:5672/vh"
    assert redact_url("redis://:pw@[::1]:6379/0") == "redis://:****@[::1]:6379/0"
    assert redact_url("nats://127.0.0.1:4222") == "nats://127.0.0.1:4222"
