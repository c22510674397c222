"""Every line the daemon writes is JSON: its own events, broker libraries' logging, warnings and
a fatal error, in a real child process."""

from __future__ import annotations

import io
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import anyio
import orjson

from bulksend.log import configure_logging, register_secret
from tests.conftest import PROJECT, SECRET
from tests.test_daemon import write_config


def json_lines(text: bytes) -> list[dict[str, Any]]:
    """Every non-empty line parsed as a JSON object (fails on the first line that is not)."""
    out = []
    for line in text.splitlines():
        if line.strip():
            parsed = orjson.loads(line)
            assert isinstance(parsed, dict), line
            out.append(parsed)
    return out


async def test_library_logs_and_fatal_error_are_json_lines(tmp_path: Path) -> None:
    """A daemon whose RabbitMQ source cannot be reached exits 1, and everything it wrote — aiormq's
    own error log and the fatal error — is one JSON object per line, without the secret key."""
    config = write_config(
        tmp_path,
        api_url="http://127.0.0.1:9",
        sources=[
            {
                "kind": "rabbitmq",
                # Nothing listens on port 1: aiormq logs the refused connection itself.
                "url": "amqp://guest:guest@127.0.0.1:1/",
                "queue": "test.logging.jobs",
                "connect_timeout_s": 1,
            }
        ],
    )
    env = dict(os.environ, SCW_SECRET_KEY=SECRET, SCW_DEFAULT_PROJECT_ID=PROJECT)
    with anyio.fail_after(60):
        done = await anyio.run_process(
            [sys.executable, "-m", "bulksend.cli", "serve", "--config", str(config), "--log-format", "json"],
            env=env,
            check=False,
        )
    assert done.returncode == 1
    assert SECRET.encode() not in done.stdout + done.stderr
    lines = json_lines(done.stdout) + json_lines(done.stderr)
    assert any(line.get("logger", "").startswith("aiormq") for line in lines), lines
    [failed] = [line for line in lines if line["event"] == "daemon.failed"]
    assert failed["level"] == "error"
    assert "cannot connect to RabbitMQ" in failed["error"]
    assert failed["exit_code"] == 1
    assert all("timestamp" in line and "level" in line for line in lines)


def test_stdlib_logging_and_warnings_render_as_json() -> None:
    """Standard-library records (with % arguments and tracebacks) and Python warnings come out as
    JSON lines with their logger name, and registered secrets are masked in them too."""
    stream = io.StringIO()
    assert configure_logging("json", "info", stream=stream) == "json"
    register_secret("stdlib-secret-value-77")
    logging.getLogger("aio_pika.robust_connection").warning("reconnecting to %s", "stdlib-secret-value-77")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("asyncio").exception("Task exception was never retrieved")
    logging.getLogger("nats.aio.client").info("below the library threshold: not shown")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("an old API", DeprecationWarning, stacklevel=1)
    finally:
        logging.captureWarnings(False)
    lines = json_lines(stream.getvalue().encode())
    by_logger = {line["logger"]: line for line in lines}
    assert set(by_logger) == {"aio_pika.robust_connection", "asyncio", "py.warnings"}
    assert by_logger["aio_pika.robust_connection"]["event"] == "reconnecting to ****"
    assert by_logger["aio_pika.robust_connection"]["level"] == "warning"
    assert "RuntimeError: boom" in by_logger["asyncio"]["exception"]
    assert "an old API" in by_logger["py.warnings"]["event"]
