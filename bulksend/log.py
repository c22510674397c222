"""structlog configuration: console lines for people, JSON lines (orjson) for machines.

A redaction processor runs last before rendering: any registered secret that found its way into
an event value is replaced, as a second line of defence behind :class:`bulksend.secret.Secret`.

Records of the standard library's ``logging`` (broker clients such as aiormq, aio_pika, nats and
redis; asyncio; aiohttp) and ``warnings`` go through the same processors and renderer (a
``structlog.stdlib.ProcessorFormatter`` on the root logger), so in JSON mode every line is one
JSON object, with the library's logger name under ``logger``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Literal

import orjson
import structlog

__all__ = ["LogFormat", "configure_logging", "register_secret"]

LogFormat = Literal["console", "json", "auto"]

_SECRETS: set[str] = set()


def register_secret(value: str) -> None:
    """Make sure ``value`` is masked wherever it would appear in a log event."""
    if value and len(value) >= 4:
        _SECRETS.add(value)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        for secret in _SECRETS:
            if secret in value:
                value = value.replace(secret, "****")
        return value
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_scrub(v) for v in value)
    return value


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if not _SECRETS:
        return event
    for key, value in list(event.items()):
        event[key] = _scrub(value)
    return event


def _add_logger_name(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    record = event.get("_record")
    if record is not None:
        event.setdefault("logger", record.name)
    return event


def _orjson_dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=default or str).decode()


def configure_logging(
    fmt: LogFormat = "auto", level: str = "info", *, stream: Any = None
) -> Literal["console", "json"]:
    """Route structlog (and stdlib logging) to ``stream`` (stderr) as console text or JSON;
    returns the format chosen (``auto`` resolved)."""
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if getattr(stream, "isatty", lambda: False)() else "json"
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
    else:
        colors = bool(getattr(stream, "isatty", lambda: False)())
        renderer = structlog.dev.ConsoleRenderer(
            colors=colors,
            # Rich shows every frame's local variables by default: a header dict or a revealed
            # key in one would print the secret, past the redaction of the event's own values.
            exception_formatter=(
                structlog.dev.RichTracebackFormatter(show_locals=False)
                if colors
                else structlog.dev.plain_traceback
            ),
        )
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    exceptions = structlog.processors.format_exc_info if fmt == "json" else structlog.dev.set_exc_info
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            timestamper,
            exceptions,
            _redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.contextvars.merge_contextvars,
                structlog.processors.add_log_level,
                _add_logger_name,
                timestamper,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                exceptions,
                _redact,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    # Libraries' info lines (every connection, every request) would drown the daemon's own.
    root.setLevel(max(numeric, logging.WARNING))
    # Off, then on: captureWarnings(True) does nothing when already on, even if something else
    # (a test runner) has since put its own warnings.showwarning in place.
    logging.captureWarnings(False)
    logging.captureWarnings(True)
    return fmt
