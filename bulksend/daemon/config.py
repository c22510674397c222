"""The daemon's configuration file (TOML), documented key by key in configs/daemon.example.toml.

Every section is optional except what the daemon cannot guess; unknown keys are refused with the
section and key named, since a typo in a daemon config should not silently fall back to a default.
"""

from __future__ import annotations

import os
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bulksend.errors import ConfigError
from bulksend.events.sns import DEFAULT_CERT_URLS, DEFAULT_SUBSCRIBE_URLS, UrlAllowlist
from bulksend.secret import Secret
from bulksend.settings import AdminSettings, SendingSettings, TrackingSettings

__all__ = ["AdminSettings", "DaemonConfig", "DeliverabilitySettings", "EventsConfig", "load_daemon_config"]

_SECTIONS = {
    "api": {"api_url", "project_id", "region", "profile"},
    "store": {"url"},
    "daemon": {"data_dir", "grace_s", "worker_id", "job_batch", "receive_timeout_s", "results_default"},
    "sending": {"rate_per_s", "concurrency", "max_attempts", "max_retry_s", "timeout_s"},
    "tracking": {"poll_interval_s", "give_up_after_s", "settle_s", "page_size", "fallback_after_s", "mode"},
    "admin": {
        "listen",
        "token",
        "metrics_public",
        "files_root",
        "idle_timeout_s",
        "read_timeout_s",
        "max_connections",
    },
    "events": {"http", "cert_urls", "subscribe_urls", "trust_chain", "cert_ca_file", "topics", "sqs"},
    "deliverability": {"blocklist_sync_s", "force", "unsubscribe_max_age_days"},
    "results": None,  # checked by the publisher factory
    "sources": None,  # a list of tables, checked by the source factory
    "templates": None,  # name -> template table, checked when compiled
}


@dataclass(frozen=True)
class DeliverabilitySettings:
    """``[deliverability]`` (docs/deliverability.md)."""

    blocklist_sync_s: float = 3600.0
    """How often TEM's blocklists are synced into the suppression list; 0: never."""
    force: bool = False
    """Send even from a domain whose reputation score is under 50."""
    unsubscribe_max_age_days: float = 0.0
    """Unsubscribe links older than this are refused; 0: they never expire."""

    @property
    def unsubscribe_max_age_s(self) -> float | None:
        return self.unsubscribe_max_age_days * 86_400.0 if self.unsubscribe_max_age_days else None


@dataclass(frozen=True)
class DaemonConfig:
    """Everything ``bulksend serve`` needs, resolved and checked."""

    path: Path
    store_url: str
    data_dir: Path
    api: dict[str, str] = field(default_factory=dict)
    grace_s: float = 30.0
    worker_id: str = ""
    job_batch: int = 100
    receive_timeout_s: float = 1.0
    results_default: bool = True
    sending: SendingSettings = field(default_factory=SendingSettings)
    tracking: TrackingSettings = field(default_factory=TrackingSettings)
    admin: AdminSettings = field(default_factory=AdminSettings)
    results: dict[str, Any] | None = None
    sources: list[dict[str, Any]] = field(default_factory=list)
    source_rates: list[float | None] = field(default_factory=list)
    """Each source's own ``rate_per_s`` (None: none), in the order of ``sources``: a ceiling inside
    the account's rate for the jobs of that stream."""
    templates: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: EventsConfig = field(default_factory=lambda: EventsConfig())
    deliverability: DeliverabilitySettings = field(default_factory=DeliverabilitySettings)

    @property
    def base_dir(self) -> Path:
        return self.path.parent


@dataclass(frozen=True)
class EventsConfig:
    """``[events]``: where TEM's webhook events arrive when ``tracking.mode = "events"``."""

    http: bool = False
    """Serve ``POST /events/sns`` on the admin server (SNS signature checked, no token)."""
    cert_urls: tuple[str, ...] = DEFAULT_CERT_URLS
    """Where signing certificates may be fetched from (URL prefix patterns, ``*`` for one label)."""
    subscribe_urls: tuple[str, ...] = DEFAULT_SUBSCRIBE_URLS
    """Which ``SubscribeURL`` a subscription confirmation may have the daemon visit."""
    trust_chain: Path | None = None
    """PEM certificates (Scaleway's per-region trust chain) a signing certificate must be issued by."""
    cert_ca_file: Path | None = None
    """CA certificates (PEM) trusted to fetch signing certificates over HTTPS; None: the system's."""
    topics: tuple[str, ...] = ()
    """Accepted ``TopicArn`` values over HTTP; empty: any."""
    sqs: dict[str, Any] | None = None
    """``[events.sqs]``: the queue subscribed to the webhook's topic (checked when the daemon starts)."""


def _table(data: Mapping[str, Any], name: str, path: Path) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path}: [{name}] must be a table")
    allowed = _SECTIONS[name]
    if allowed is not None:
        unknown = set(value) - allowed
        if unknown:
            raise ConfigError(
                f"{path}: unknown key(s) in [{name}]: {', '.join(sorted(unknown))} "
                f"(allowed: {', '.join(sorted(allowed))})"
            )
    return dict(value)


def _number(table: Mapping[str, Any], key: str, default: float, where: str, *, minimum: float = 0.0) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise ConfigError(f"{where}.{key} must be a number >= {minimum:g}, got {value!r}")
    return float(value)


# Every key of [sending] and [tracking] is a number; the smallest the daemon's file allows (the
# settings classes then check the rest: whole numbers, finite values, maximums).
_SENDING_MINIMUMS = {
    "rate_per_s": 0.001,
    "concurrency": 1,
    "max_attempts": 1,
    "max_retry_s": 0,
    "timeout_s": 0.001,
}
_TRACKING_MINIMUMS = {
    "poll_interval_s": 0.001,
    "give_up_after_s": 0,
    "settle_s": 0,
    "page_size": 1,
    "fallback_after_s": 0.001,
}


def _numbers(table: dict[str, Any], where: str, minimums: Mapping[str, float]) -> dict[str, Any]:
    """``table`` unchanged once every value is a number at or above its minimum."""
    for key, minimum in minimums.items():
        if key in table:
            _number(table, key, minimum, where, minimum=minimum)
    return table


def _source_rate(value: Any, index: int, path: Path) -> float | None:
    """A job stream's ``rate_per_s``: None when not set, else a number > 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < float("inf"):
        raise ConfigError(
            f"{path}: sources[{index}].rate_per_s must be a number > 0 (emails per second of this "
            f"job stream), got {value!r}; leave it out for no limit but the account's [sending] rate_per_s"
        )
    return float(value)


def _whole(table: Mapping[str, Any], key: str, default: int, where: str, *, minimum: int) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}.{key} must be a whole number >= {minimum}, got {value!r}")
    return value


def _files_root(value: Any, base: Path, path: Path) -> Path | None:
    """``admin.files_root`` resolved (symlinks too, so confinement compares real paths)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{path}: admin.files_root must be a folder path (a string), got {value!r}")
    root = (base / Path(value).expanduser()).resolve()
    if not root.is_dir():
        raise ConfigError(
            f"{path}: admin.files_root {value!r} is not a folder ({root}); create it or fix the path"
        )
    return root


def _boolean(table: Mapping[str, Any], key: str, default: bool, where: str) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}.{key} must be true or false, got {value!r}")
    return value


def _strings(table: Mapping[str, Any], key: str, default: tuple[str, ...], path: Path) -> tuple[str, ...]:
    value = table.get(key, list(default))
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{path}: events.{key} must be a list of strings, got {value!r}")
    return tuple(value)


def _events(table: Mapping[str, Any], base: Path, path: Path) -> EventsConfig:
    files: dict[str, Path | None] = {}
    for key in ("trust_chain", "cert_ca_file"):
        name = table.get(key)
        if name is not None and (not isinstance(name, str) or not (base / name).is_file()):
            raise ConfigError(f"{path}: events.{key} must name a PEM file, got {name!r}")
        files[key] = base / name if name is not None else None
    sqs = table.get("sqs")
    if sqs is not None and not isinstance(sqs, Mapping):
        raise ConfigError(f"{path}: [events.sqs] must be a table")
    config = EventsConfig(
        http=_boolean(table, "http", False, "events"),
        cert_urls=_strings(table, "cert_urls", DEFAULT_CERT_URLS, path),
        subscribe_urls=_strings(table, "subscribe_urls", DEFAULT_SUBSCRIBE_URLS, path),
        trust_chain=files["trust_chain"],
        cert_ca_file=files["cert_ca_file"],
        topics=_strings(table, "topics", (), path),
        sqs=dict(sqs) if sqs is not None else None,
    )
    for key in ("cert_urls", "subscribe_urls"):
        try:
            UrlAllowlist(getattr(config, key))
        except ValueError as exc:
            raise ConfigError(f"{path}: events.{key}: {exc}") from None
    return config


def _listen(value: Any, path: Path) -> tuple[str, int]:
    if not isinstance(value, str) or ":" not in value:
        raise ConfigError(f"{path}: admin.listen must look like '127.0.0.1:8080', got {value!r}")
    host, _, port = value.rpartition(":")
    host = host.strip("[]")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{path}: admin.listen has an invalid port: {value!r}")
    return host, int(port)


def load_daemon_config(path: Path | str, *, env: Mapping[str, str] | None = None) -> DaemonConfig:
    """Read and check a daemon config file. Raises :class:`ConfigError` naming what to fix."""
    path = Path(path)
    env = os.environ if env is None else env
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such daemon config file (see configs/daemon.example.toml)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    unknown = set(data) - set(_SECTIONS)
    if unknown:
        raise ConfigError(
            f"{path}: unknown section(s) {', '.join(sorted(unknown))} (allowed: {', '.join(_SECTIONS)})"
        )
    base = path.parent
    api = {k: str(v) for k, v in _table(data, "api", path).items()}
    store = _table(data, "store", path)
    daemon = _table(data, "daemon", path)
    admin = _table(data, "admin", path)
    data_dir = base / str(daemon.get("data_dir", "bulksend-state"))
    store_url = str(store.get("url", data_dir / "bulksend.db"))
    if "://" not in store_url and not store_url.startswith(("memory:", "sqlite:")):
        store_url = str(base / store_url)
    token_text = admin.get("token") or env.get("BULKSEND_ADMIN_TOKEN") or ""
    if not isinstance(token_text, str):
        raise ConfigError(f"{path}: admin.token must be a string")
    host, port = _listen(admin.get("listen", "127.0.0.1:8080"), path)
    files_root = _files_root(admin.get("files_root"), base, path)
    if files_root is not None:
        # Campaigns read what is under files_root: the daemon's own state (other campaigns'
        # recipients, the store) and its config (the admin token) must not be there.
        for what, inside in (("daemon.data_dir", data_dir.resolve()), ("config file", path.resolve())):
            if inside.is_relative_to(files_root) or files_root.is_relative_to(inside):
                raise ConfigError(
                    f"{path}: admin.files_root {str(files_root)!r} overlaps the {what} ({str(inside)!r}); "
                    "keep the files campaigns may read in a folder of their own"
                )
    sources = data.get("sources", [])
    if not isinstance(sources, list) or not all(isinstance(s, Mapping) for s in sources):
        raise ConfigError(f"{path}: [[sources]] must be an array of tables")
    sources = [dict(s) for s in sources]
    # `rate_per_s` is the daemon's, not the broker's: taken out before the source sees its table.
    source_rates = [_source_rate(source.pop("rate_per_s", None), i, path) for i, source in enumerate(sources)]
    templates = data.get("templates", {})
    if not isinstance(templates, Mapping) or not all(isinstance(t, Mapping) for t in templates.values()):
        raise ConfigError(f"{path}: [templates.NAME] must be tables")
    results = data.get("results")
    if results is not None and not isinstance(results, Mapping):
        raise ConfigError(f"{path}: [results] must be a table")
    sending = _numbers(_table(data, "sending", path), "sending", _SENDING_MINIMUMS)
    tracking = TrackingSettings(**_numbers(_table(data, "tracking", path), "tracking", _TRACKING_MINIMUMS))
    events = _events(_table(data, "events", path), base, path)
    if tracking.mode == "events" and not events.http and events.sqs is None:
        raise ConfigError(
            f'{path}: tracking.mode = "events" needs a way for events to arrive: an [events.sqs] queue '
            "subscribed to the webhook's topic, or [events] http = true (see docs/daemon.md)"
        )
    deliverability = _table(data, "deliverability", path)
    return DaemonConfig(
        path=path,
        store_url=store_url,
        data_dir=data_dir,
        api=api,
        grace_s=_number(daemon, "grace_s", 30.0, "daemon"),
        worker_id=str(daemon.get("worker_id") or f"{socket.gethostname()}-{os.getpid()}"),
        job_batch=int(_number(daemon, "job_batch", 100, "daemon", minimum=1)),
        receive_timeout_s=_number(daemon, "receive_timeout_s", 1.0, "daemon", minimum=0.01),
        results_default=_boolean(daemon, "results_default", True, "daemon"),
        sending=SendingSettings(**sending, rate_given="rate_per_s" in sending),
        tracking=tracking,
        events=events,
        admin=AdminSettings(
            host=host,
            port=port,
            token=Secret(token_text) if token_text else None,
            metrics_public=_boolean(admin, "metrics_public", False, "admin"),
            files_root=files_root,
            idle_timeout_s=_number(admin, "idle_timeout_s", 15.0, "admin", minimum=0.01),
            read_timeout_s=_number(admin, "read_timeout_s", 30.0, "admin", minimum=0.01),
            max_connections=int(_whole(admin, "max_connections", 256, "admin", minimum=1)),
        ),
        results=dict(results) if results is not None else None,
        sources=sources,
        source_rates=source_rates,
        templates={str(k): dict(v) for k, v in templates.items()},
        deliverability=DeliverabilitySettings(
            blocklist_sync_s=_number(deliverability, "blocklist_sync_s", 3600.0, "deliverability"),
            force=_boolean(deliverability, "force", False, "deliverability"),
            unsubscribe_max_age_days=_number(
                deliverability, "unsubscribe_max_age_days", 0.0, "deliverability"
            ),
        ),
    )
