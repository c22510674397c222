"""moto's server mode on loopback: a real SQS (and SNS) API for the tests, in its own process.

:func:`moto_server` starts ``python -m moto.server`` on a free loopback port, waits until it
answers and stops it on exit; the session-scoped fixture :func:`moto_endpoint` (registered in
``tests/conftest.py``) shares one server among all the tests of a run. moto keeps every account's
queues in that one process, so each test names its queues uniquely (see ``tests/brokers.py``).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Final

import pytest

__all__ = ["MOTO_ACCESS_KEY", "MOTO_REGION", "MOTO_SECRET_KEY", "moto_endpoint", "moto_server"]

MOTO_REGION: Final = "eu-west-3"
"""The region the tests sign for: moto knows only AWS's regions, so Paris's rather than fr-par."""
MOTO_ACCESS_KEY: Final = "SCWTESTACCESSKEY0000"
MOTO_SECRET_KEY: Final = "moto-test-secret-key-3b8f"
"""Credentials the tests sign with (moto accepts any; these show when one leaks into a message)."""

_START_PATIENCE_S: Final = 60.0
_POLL_S: Final = 0.05


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/moto-api/", timeout=2) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def moto_server(host: str = "127.0.0.1") -> Iterator[str]:
    """A moto server on a free port of ``host``: yields its endpoint URL, stops it on exit."""
    port = _free_port(host)
    url = f"http://{host}:{port}"
    with tempfile.TemporaryFile() as output:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + _START_PATIENCE_S
            # Polled: another process's readiness has no event to wait on.
            while not _answers(url):
                if proc.poll() is not None or time.monotonic() > deadline:
                    output.seek(0)
                    log = output.read().decode(errors="replace")[-2000:]
                    raise RuntimeError(f"moto server on {url} did not start (exit {proc.poll()}):\n{log}")
                time.sleep(_POLL_S)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """The endpoint URL of one moto server shared by the whole test session."""
    with moto_server() as url:
        yield url
