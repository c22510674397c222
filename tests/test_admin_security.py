"""Hostile callers of a real daemon's admin API (in-process, sandbox on loopback): files outside
[admin] files_root, hostile campaign ids, racing submissions, slow and idle connections, deep
nesting, job streams, leaked paths and file modes."""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import orjson
import pytest
import structlog
from anyio.abc import SocketStream

from bulksend.daemon.config import load_daemon_config
from bulksend.daemon.service import Daemon
from bulksend.errors import ConfigError
from bulksend.sandbox import Sandbox
from tests.test_daemon import (
    DaemonWatch,
    RecordingSource,
    job,
    write_config,
)
from tests.test_daemon_admin import TOKEN, Admin, admin_daemon
from tests.waiting import wait_until

pytestmark = pytest.mark.usefixtures("_plain_logging")

BODY = 'text = "Hi {{ first_name }}"'


@pytest.fixture
def _plain_logging() -> None:
    """Log through structlog's defaults (a CLI test may have left it on a closed stream)."""
    structlog.reset_defaults()


def campaign_toml(campaign_id: str, body: str = BODY, extra: str = "") -> str:
    """A campaign submission in TOML; ``body`` and ``extra`` are lines of its [campaign] table."""
    return (
        f'[campaign]\nid = "{campaign_id}"\nfrom = "news@example.com"\nsubject = "Hello"\n{body}\n{extra}\n'
        "[tracking]\npoll_interval_s = 0.05\nsettle_s = 0.05\n"
    )


def form(
    campaign: str, csv: bytes = b"email,first_name\nann@example.com,Ann\n", filename: str = "people.csv"
) -> aiohttp.FormData:
    """The multipart body of a submission."""
    data = aiohttp.FormData()
    data.add_field("campaign", campaign)
    data.add_field("recipients", csv, filename=filename, content_type="text/csv")
    return data


@asynccontextmanager
async def guarded_daemon(
    tmp_path: Path, sandbox: Sandbox, **admin: Any
) -> AsyncIterator[tuple[Daemon, Admin, RecordingSource, DaemonWatch]]:
    """A running daemon whose [admin] table gets ``admin`` on top of a token and a free port."""
    async with admin_daemon(tmp_path / "daemon", sandbox, admin=admin) as running_daemon:
        yield running_daemon


def campaigns_dir(daemon: Daemon) -> Path:
    return daemon.config.data_dir / "campaigns"


async def connect(daemon: Daemon) -> SocketStream:
    """A raw TCP connection to the admin API."""
    assert daemon.admin_url is not None
    host, port = daemon.admin_url.removeprefix("http://").rsplit(":", 1)
    return await anyio.connect_tcp(host, int(port))


BOUNDARY = "frontier7"
PADDING = b"".join(b"not-an-address-%05d,\n" % n for n in range(4000))
"""About 100 KB of rows (rejected, never sent): aiohttp reads a multipart part only once bytes
beyond it have arrived, so the recipients must outgrow the 64 KiB campaign read for the spool to
start while the rest of an upload is held back."""


def split_upload(campaign: str, first: bytes, later: bytes) -> tuple[bytes, bytes]:
    """A submission body cut inside its recipients part: (``campaign`` and ``first``, ``later``
    and the closing boundary). Parts carry Content-Length so the server reads what has come."""
    toml = campaign.encode()
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="campaign"\r\n'
        f"Content-Length: {len(toml)}\r\n\r\n"
    ).encode()
    recipients = (
        f'\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name="recipients"; filename="people.csv"\r\n'
        f"Content-Type: text/csv\r\nContent-Length: {len(first) + len(later)}\r\n\r\n"
    ).encode()
    return head + toml + recipients + first, later + f"\r\n--{BOUNDARY}--\r\n".encode()


async def read_until_closed(stream: SocketStream, timeout_s: float = 10) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = bytearray()
    with anyio.fail_after(timeout_s):
        while True:
            try:
                received += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
                return bytes(received)


# -- item 1: the admin API reads only files under files_root --------------------------------------


async def test_submitted_campaign_cannot_mail_files_of_the_daemon_machine(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """Without files_root, text_file /etc/passwd, html_file ../../etc/hosts, /proc/self/environ as
    attachment and text_file /dev/zero are each refused with 400 naming files_root; nothing is
    sent and no campaign or folder is left."""
    hostile = [
        ('text_file = "/etc/passwd"', ""),
        (BODY, 'html_file = "../../../../etc/hosts"'),
        (BODY, 'attachments = ["/proc/self/environ"]'),
        (BODY, 'attachments = [{ path = "/proc/self/environ", name = "env.txt" }]'),
        ('text_file = "/dev/zero"', ""),
    ]
    async with guarded_daemon(tmp_path, sandbox) as (daemon, admin, _, _):
        for n, (body, extra) in enumerate(hostile):
            status, answer = await admin.call(
                "POST", "/v1/campaigns", data=form(campaign_toml(f"leak{n}", body, extra))
            )
            assert status == 400, (body, extra, answer)
            assert "files_root" in answer["error"], answer
        listed = await admin.call("GET", "/v1/campaigns")
        assert listed == (200, {"campaigns": []})
        assert list(campaigns_dir(daemon).iterdir()) == []
    assert sandbox.stats().accepted_by_recipient == {}


async def test_files_root_serves_its_own_files_and_nothing_beyond(tmp_path: Path, sandbox: Sandbox) -> None:
    """With files_root set, a campaign's text_file and attachment inside it are sent; a `..` path,
    an absolute path elsewhere and a symlink leading out are refused without revealing the
    daemon's folders; recipients' attachments follow the same folder."""
    root = tmp_path / "allowed"
    root.mkdir()
    (root / "body.txt").write_text("Hi {{ first_name }}, from a file.")
    (root / "leaflet.pdf").write_bytes(b"%PDF-1.4 leaflet")
    secret = tmp_path / "secret.txt"
    secret.write_text("not for mailing")
    (root / "escape.txt").symlink_to(secret)
    async with guarded_daemon(tmp_path, sandbox, files_root=str(root)) as (daemon, admin, _, _):
        ok = form(campaign_toml("filed", 'text_file = "body.txt"', 'attachments = ["leaflet.pdf"]'))
        status, created = await admin.call("POST", "/v1/campaigns", data=ok)
        assert status == 201, created
        finished = await admin.wait_until("filed", lambda c: c["state"] == "finished")
        assert finished["counts"].get("status:sent") == 1, finished
        for n, bad in enumerate(("../secret.txt", str(secret), "escape.txt")):
            status, answer = await admin.call(
                "POST", "/v1/campaigns", data=form(campaign_toml(f"out{n}", f'text_file = "{bad}"'))
            )
            assert status == 400, answer
            assert "outside the folder the daemon allows" in answer["error"]
            assert str(daemon.config.data_dir) not in answer["error"]
        rows = (
            b"email,first_name,attachments\n"
            b"ann@example.com,Ann,leaflet.pdf\n"
            b"bob@example.com,Bob,../secret.txt\n"
        )
        status, created = await admin.call("POST", "/v1/campaigns", data=form(campaign_toml("per-row"), rows))
        assert status == 201, created
        await admin.wait_until("per-row", lambda c: c["state"] == "finished")
        lines = {line["email"]: line for line in await admin.outcomes("per-row")}
    assert lines["ann@example.com"]["status"] == "sent"
    assert lines["bob@example.com"]["status"] == "rejected"
    assert "files_root" in lines["bob@example.com"]["reason"]
    assert str(tmp_path) not in lines["bob@example.com"]["reason"]


async def test_recipients_may_not_attach_the_campaigns_own_files(tmp_path: Path, sandbox: Sandbox) -> None:
    """Without files_root, a recipient row naming a file (even the uploaded recipients list beside
    it) is rejected with a reason naming files_root; the other rows are sent."""
    csv = b"email,first_name,attachments\nann@example.com,Ann,people.csv\nbob@example.com,Bob,\n"
    async with guarded_daemon(tmp_path, sandbox) as (_, admin, _, _):
        status, created = await admin.call("POST", "/v1/campaigns", data=form(campaign_toml("rows"), csv))
        assert status == 201, created
        await admin.wait_until("rows", lambda c: c["state"] == "finished")
        lines = {line["email"]: line for line in await admin.outcomes("rows")}
    assert lines["ann@example.com"]["status"] == "rejected"
    assert "files_root" in lines["ann@example.com"]["reason"]
    assert lines["bob@example.com"]["status"] == "sent"
    assert sandbox.stats().accepted_by_recipient == {"bob@example.com": 1}


# -- item 3: a refused submission deletes nothing; one id, one winner -----------------------------


async def test_refused_ids_delete_no_other_campaigns_files(tmp_path: Path, sandbox: Sandbox) -> None:
    """Ids `x/welcome`, `..`, `.hidden` and `a b` get 400 naming the id rule, and the files of
    campaign `welcome` (and the campaigns folder) are all still there afterwards."""
    async with guarded_daemon(tmp_path, sandbox) as (daemon, admin, _, _):
        status, _ = await admin.call("POST", "/v1/campaigns", data=form(campaign_toml("welcome")))
        assert status == 201
        await admin.wait_until("welcome", lambda c: c["state"] == "finished")
        folder = campaigns_dir(daemon) / "welcome"
        kept = {
            "people.csv": (folder / "people.csv").read_bytes(),
            "campaign.json": (folder / "campaign.json").read_bytes(),
        }
        for hostile in ("x/welcome", "..", ".hidden", "a b", "welcome/../welcome"):
            status, answer = await admin.call("POST", "/v1/campaigns", data=form(campaign_toml(hostile)))
            assert status == 400, (hostile, answer)
            assert "letters, digits" in answer["error"]
        assert {name: (folder / name).read_bytes() for name in kept} == kept
        assert (await admin.campaign("welcome"))["state"] == "finished"


async def test_a_leftover_folder_is_never_removed_nor_reused(tmp_path: Path, sandbox: Sandbox) -> None:
    """A campaign folder no stored campaign owns (left by a crash mid-upload) makes its id answer
    409 saying what to do, and its files stay as they were."""
    async with guarded_daemon(tmp_path, sandbox) as (daemon, admin, _, _):
        ghost = campaigns_dir(daemon) / "ghost"
        ghost.mkdir(parents=True)
        (ghost / "people.csv").write_bytes(b"email\nkeep@example.com\n")
        status, answer = await admin.call("POST", "/v1/campaigns", data=form(campaign_toml("ghost")))
        assert status == 409, answer
        assert "choose another id" in answer["error"]
        assert (ghost / "people.csv").read_bytes() == b"email\nkeep@example.com\n"
        assert (await admin.call("GET", "/v1/campaigns/ghost"))[0] == 404
        status, _ = await admin.call("POST", "/v1/campaigns", data=form(campaign_toml("ghost-2")))
        assert status == 201


async def test_concurrent_submissions_of_one_id_give_one_201_and_one_409(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """While a first submission of an id is still uploading, a second one of the same id gets 409
    and touches nothing; the first then completes with its own recipients."""
    head_part, rest = split_upload(
        campaign_toml("twin"), b"email,first_name\nann@example.com,Ann\n" + PADDING, b"bob@example.com,Bob\n"
    )
    async with guarded_daemon(tmp_path, sandbox) as (daemon, admin, _, _):
        first = await connect(daemon)
        async with first:
            await first.send(
                (
                    "POST /v1/campaigns HTTP/1.1\r\nHost: admin\r\n"
                    f"Authorization: Bearer {TOKEN}\r\nConnection: close\r\n"
                    f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
                    f"Content-Length: {len(head_part) + len(rest)}\r\n\r\n"
                ).encode()
                + head_part
            )
            spooled = campaigns_dir(daemon) / "twin" / "people.csv"
            await wait_until(spooled.exists, what=f"{spooled} on disk")
            other = b"email,first_name\nmallory@example.com,Mal\n"
            status, answer = await admin.call(
                "POST", "/v1/campaigns", data=form(campaign_toml("twin"), other)
            )
            assert status == 409, answer
            assert spooled.exists()
            await first.send(rest)
            response = await read_until_closed(first)
        assert response.startswith(b"HTTP/1.1 201"), response[:200]
        await admin.wait_until("twin", lambda c: c["state"] == "finished")
        sent = sorted(line["email"] for line in await admin.outcomes("twin") if line["status"] == "sent")
    assert sent == ["ann@example.com", "bob@example.com"]
    assert "mallory@example.com" not in sandbox.stats().accepted_by_recipient


# -- low: slow and idle connections --------------------------------------------------------------


async def test_half_open_request_is_dropped_after_idle_timeout(tmp_path: Path, sandbox: Sandbox) -> None:
    """A connection that sends half a request head is closed by the daemon once idle_timeout_s
    has passed (the close is awaited, not timed); whole requests are still served."""
    async with guarded_daemon(tmp_path, sandbox, idle_timeout_s=0.2) as (daemon, admin, _, _):
        stream = await connect(daemon)
        async with stream:
            await stream.send(b"POST /v1/campaigns HTTP/1.1\r\nHost: admin\r\nContent-Ty")
            assert await read_until_closed(stream) == b""
        assert (await admin.call("GET", "/healthz", token=None))[0] == 200


async def test_stalled_upload_gets_408_and_leaves_nothing(tmp_path: Path, sandbox: Sandbox) -> None:
    """An upload that stops sending for read_timeout_s is answered 408 and closed; its folder and
    its hold on the id are gone, so the same id can be submitted again at once."""
    partial, _ = split_upload(
        campaign_toml("slow"), b"email,first_name\nann@example.com,Ann\n" + PADDING, b"x" * 5000
    )
    async with guarded_daemon(tmp_path, sandbox, read_timeout_s=0.2) as (daemon, admin, _, _):
        stream = await connect(daemon)
        async with stream:
            await stream.send(
                (
                    f"POST /v1/campaigns HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {TOKEN}\r\n"
                    f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
                    f"Content-Length: {len(partial) + 5000}\r\n\r\n"
                ).encode()
                + partial
            )
            response = await read_until_closed(stream)
        assert response.startswith(b"HTTP/1.1 408"), response[:200]
        assert b"stalled" in response
        assert list(campaigns_dir(daemon).iterdir()) == []
        status, answer = await admin.call("POST", "/v1/campaigns", data=form(campaign_toml("slow")))
        assert status == 201, answer


async def test_connections_beyond_the_limit_get_503_and_a_freed_slot_serves_again(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """With max_connections = 2 and two idle clients connected, a third connection is answered
    503 and closed; once one idle client leaves, requests are served again."""
    async with guarded_daemon(tmp_path, sandbox, max_connections=2, idle_timeout_s=60) as (
        daemon,
        admin,
        _,
        _,
    ):
        idle = [await connect(daemon), await connect(daemon)]
        third = await connect(daemon)
        async with third:
            refused = await read_until_closed(third)
        assert refused.startswith(b"HTTP/1.1 503"), refused
        assert b"too many connections" in refused
        await idle[0].aclose()

        async def served() -> bool:
            """Whether a fresh connection is served (until the freed slot is seen: refused)."""
            probe = await connect(daemon)
            async with probe:
                await probe.send(b"GET /healthz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
                answer = await read_until_closed(probe)
            assert answer.startswith((b"HTTP/1.1 200", b"HTTP/1.1 503")), answer
            return answer.startswith(b"HTTP/1.1 200")

        await wait_until(served, what="a connection slot freed")
        await idle[1].aclose()
        assert (await admin.call("GET", "/healthz", token=None))[0] == 200


# -- low: nesting, job streams, paths, modes --------------------------------------------------------


async def test_deeply_nested_campaign_is_a_400_with_a_short_message(tmp_path: Path, sandbox: Sandbox) -> None:
    """A TOML campaign nesting arrays 5,000 deep gets a 400 naming the limit, a short answer, and
    no error logged with a traceback."""
    deep = campaign_toml("deep", extra="x = " + "[" * 5000 + "]" * 5000)
    async with guarded_daemon(tmp_path, sandbox) as (_, admin, _, _):
        with structlog.testing.capture_logs() as logs:
            status, answer = await admin.call("POST", "/v1/campaigns", data=form(deep))
    assert status == 400, answer
    assert "deep" in answer["error"]
    assert len(orjson.dumps(answer)) < 400
    assert not [e for e in logs if e.get("log_level") in ("error", "critical")]


async def test_job_streams_are_not_served_as_campaigns(tmp_path: Path, sandbox: Sandbox) -> None:
    """The campaign routes follow the list's rule: a job stream (`jobs.<template>`) and its results
    journal answer 404 on get, outcomes, pause, resume and cancel."""
    async with guarded_daemon(tmp_path, sandbox) as (_, admin, source, watch):
        source.publish(job("order-1", "ann@example.com"))
        await watch.wait(outcomes=1)
        assert (await admin.call("GET", "/v1/campaigns"))[1] == {"campaigns": []}
        for cid in ("jobs.welcome", "results:jobs.welcome"):
            for method, suffix in (
                ("GET", ""),
                ("GET", "/outcomes"),
                ("POST", "/pause"),
                ("POST", "/cancel"),
            ):
                status, answer = await admin.call(method, f"/v1/campaigns/{cid}{suffix}")
                assert status == 404, (cid, suffix, answer)


async def test_bad_recipients_error_names_the_file_relative_to_the_campaign(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """A recipients upload without an email column gets a 400 that names `noemail.csv:1`, never
    the daemon's data folder."""
    async with guarded_daemon(tmp_path, sandbox) as (daemon, admin, _, _):
        bad = form(campaign_toml("nomail"), b"mail,first_name\nann@example.com,Ann\n", filename="noemail.csv")
        status, answer = await admin.call("POST", "/v1/campaigns", data=bad)
    assert status == 400, answer
    assert answer["error"].startswith("noemail.csv:1: "), answer
    assert str(tmp_path) not in answer["error"]
    assert str(daemon.config.data_dir.name) + "/" not in answer["error"]


async def test_uploaded_recipients_are_readable_by_the_daemon_only(tmp_path: Path, sandbox: Sandbox) -> None:
    """The uploaded recipients and the stored campaign are created 0600, their folder 0700."""
    async with guarded_daemon(tmp_path, sandbox) as (daemon, admin, _, _):
        status, _ = await admin.call("POST", "/v1/campaigns", data=form(campaign_toml("private")))
        assert status == 201
        folder = campaigns_dir(daemon) / "private"
        modes = {
            p.name: stat.S_IMODE(p.stat().st_mode) for p in (folder / "people.csv", folder / "campaign.json")
        }
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert stat.S_IMODE(campaigns_dir(daemon).stat().st_mode) == 0o700
        await admin.wait_until("private", lambda c: c["state"] == "finished")
    assert modes == {"people.csv": 0o600, "campaign.json": 0o600}


def test_files_root_must_be_a_folder_apart_from_the_daemons_state(tmp_path: Path) -> None:
    """files_root is refused at start when it is missing, holds the data_dir or the config file
    (the token), or lies inside the data_dir; a separate folder is resolved and accepted."""
    (tmp_path / "files").mkdir()
    cases = {"missing": "is not a folder", ".": "overlaps", "state": "overlaps", "state/inner": "overlaps"}
    (tmp_path / "state" / "inner").mkdir(parents=True)
    for value, problem in cases.items():
        path = write_config(tmp_path, admin={"files_root": value})
        with pytest.raises(ConfigError, match=problem):
            load_daemon_config(path)
    loaded = load_daemon_config(write_config(tmp_path, admin={"files_root": "files"}))
    assert loaded.admin.files_root == (tmp_path / "files").resolve()


async def test_an_unusable_upload_name_is_stored_under_a_plain_one(tmp_path: Path, sandbox: Sandbox) -> None:
    """An upload named like the daemon's own outcomes file, or too long for the file system, is
    stored as `recipients.<suffix>`: the campaign runs and the uploaded rows stay as sent."""
    rows = b'{"email": "ann@example.com", "first_name": "Ann"}\n'
    async with guarded_daemon(tmp_path, sandbox) as (daemon, admin, _, _):
        for cid, name, stored in (
            ("clash", "outcomes.jsonl", "recipients.jsonl"),
            ("long-name", "p" * 300 + ".jsonl", "recipients.jsonl"),
        ):
            status, answer = await admin.call(
                "POST", "/v1/campaigns", data=form(campaign_toml(cid), rows, name)
            )
            assert status == 201, (name, answer)
            await admin.wait_until(cid, lambda c: c["state"] == "finished")
            assert (campaigns_dir(daemon) / cid / stored).read_bytes() == rows
