"""Typed settings: one frozen dataclass per component, each checking itself when built.

The campaign file loader, the daemon config and the workers share these classes, so a rule (what
``rate_per_s`` may be, say) is written once: :class:`SendingSettings` and :class:`TrackingSettings`
(``[sending]``, ``[tracking]``), :class:`LimiterTuning` (both rate limiters), :class:`AdminSettings`
(the daemon's ``[admin]``) and :class:`AccountSettings`. A wrong value raises
:class:`~bulksend.errors.SettingError` naming the key and what it may be.

Account settings are shared by every campaign a machine sends. They are not campaign settings: a
password in a store URL must not sit in a campaign file nor on a command line (where ``ps`` shows
it). Each value comes from the command-line flag, else the environment, else the settings file:

=====================  ==================================  =======================
value                  environment                         settings file key
=====================  ==================================  =======================
store URL              ``BULKSEND_STORE_URL``              ``store_url``
suppression list URL   ``BULKSEND_SUPPRESSION_URL``        ``suppression_url``
Redis URL (limiter)    ``BULKSEND_REDIS_URL``              ``redis_url``
limiter key prefix     ``BULKSEND_LIMITER_PREFIX``         ``limiter_prefix``
account rate           ``BULKSEND_ACCOUNT_RATE_PER_S``     ``account_rate_per_s``
webhook events queue   ``BULKSEND_EVENTS_QUEUE``           ``events_queue``
its SQS endpoint       ``BULKSEND_EVENTS_SQS_URL``         ``events_sqs_url``
its SQS region         ``BULKSEND_EVENTS_SQS_REGION``      ``events_sqs_region``
=====================  ==================================  =======================

The events queue (``tracking.mode = "events"``) is read with the SQS credentials of
``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY``; its endpoint defaults to Scaleway Queues.

The settings file is ``--settings FILE``, else ``$BULKSEND_SETTINGS``, else
``$XDG_CONFIG_HOME/bulksend/settings.toml`` (``~/.config/bulksend/settings.toml``) if it exists.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Final, TypedDict
from urllib.parse import urlsplit, urlunsplit

from bulksend.errors import ConfigError, SettingError
from bulksend.secret import Secret
from bulksend.tem.client import MAX_PAGE_SIZE

__all__ = [
    "DEFAULT_LIMITER_PREFIX",
    "AccountSettings",
    "AdminSettings",
    "Bound",
    "GuardrailSettings",
    "LimiterTuning",
    "SendingSettings",
    "TrackingSettings",
    "TuningOptions",
    "default_settings_path",
    "limiter_key",
    "load_account_settings",
    "redact_url",
]

DEFAULT_LIMITER_PREFIX: Final = "bulksend:rate"
_KEYS: Final = {
    "store_url": "BULKSEND_STORE_URL",
    "suppression_url": "BULKSEND_SUPPRESSION_URL",
    "redis_url": "BULKSEND_REDIS_URL",
    "limiter_prefix": "BULKSEND_LIMITER_PREFIX",
    "account_rate_per_s": "BULKSEND_ACCOUNT_RATE_PER_S",
    "events_queue": "BULKSEND_EVENTS_QUEUE",
    "events_sqs_url": "BULKSEND_EVENTS_SQS_URL",
    "events_sqs_region": "BULKSEND_EVENTS_SQS_REGION",
}


@dataclass(frozen=True, slots=True)
class Bound:
    """The numbers one setting accepts. :meth:`problem` says why a value is not one of them."""

    minimum: float
    exclusive: bool = False
    """The minimum itself is refused."""
    integer: bool = False
    maximum: float | None = None
    below: bool = False
    """The maximum itself is refused."""
    optional: bool = False
    """None is accepted (a default worked out by the user of the setting)."""

    def problem(self, value: object) -> str | None:
        """``"must be …"`` (to follow the setting's name in a message), or None if ``value`` fits."""
        if value is None and self.optional:
            return None
        what = "a whole number" if self.integer else "a number"
        if isinstance(value, bool) or not isinstance(value, int if self.integer else int | float):
            return f"must be {what} (got {value!r})"
        if not math.isfinite(value):
            return f"must be finite (got {value!r})"
        if value < self.minimum or (self.exclusive and value == self.minimum):
            bound = f"greater than {self.minimum:g}" if self.exclusive else f"at least {self.minimum:g}"
            return f"must be {bound} (got {value!r})"
        top = self.maximum
        if top is not None and (value > top or (self.below and value == top)):
            limit = str(int(top)) if float(top).is_integer() else f"{top:g}"
            return f"must be {'less than' if self.below else 'at most'} {limit} (got {value!r})"
        return None


class _Checked:
    """A settings dataclass whose numeric fields are checked against ``BOUNDS`` once built."""

    SECTION: ClassVar[str] = ""
    """The TOML table the settings come from; it prefixes the key in messages."""
    BOUNDS: ClassVar[Mapping[str, Bound]] = MappingProxyType({})

    def __post_init__(self) -> None:
        for key, bound in self.BOUNDS.items():
            problem = bound.problem(getattr(self, key))
            if problem is not None:
                raise SettingError(f"{self.name_of(key)} {problem}", key=key)

    @classmethod
    def name_of(cls, key: str) -> str:
        """``key`` as a message names it: ``sending.rate_per_s``, or ``burst`` outside any table."""
        return f"{cls.SECTION}.{key}" if cls.SECTION else key


@dataclass(frozen=True)
class SendingSettings(_Checked):
    """How fast to send (``[sending]``). ``rate_per_s`` is one budget for every call that costs API quota."""

    SECTION: ClassVar[str] = "sending"
    BOUNDS: ClassVar[Mapping[str, Bound]] = MappingProxyType(
        {
            "rate_per_s": Bound(0, exclusive=True),
            "concurrency": Bound(1, integer=True),
            "max_attempts": Bound(1, integer=True),
            # The retry policy's time budget: zero would allow no attempt at all.
            "max_retry_s": Bound(0, exclusive=True),
            "timeout_s": Bound(0, exclusive=True),
        }
    )

    rate_per_s: float = 100
    concurrency: int = 64
    max_attempts: int = 6
    max_retry_s: float = 300
    timeout_s: float = 30
    rate_given: bool = field(default=False, compare=False)
    """Whether the campaign set ``rate_per_s`` itself: in the daemon, only then is it a ceiling of
    its own inside the account's rate."""

    def table(self) -> dict[str, Any]:
        """The ``[sending]`` table these settings come from (``rate_per_s`` only if it was given)."""
        return {key: getattr(self, key) for key in self.BOUNDS if key != "rate_per_s" or self.rate_given}


@dataclass(frozen=True)
class TrackingSettings(_Checked):
    """How final statuses are learned (``[tracking]``). ``settle_s``: wait after an ambiguous send
    before reconciling."""

    SECTION: ClassVar[str] = "tracking"
    BOUNDS: ClassVar[Mapping[str, Bound]] = MappingProxyType(
        {
            "poll_interval_s": Bound(0, exclusive=True),
            "give_up_after_s": Bound(0, exclusive=True),
            "page_size": Bound(1, integer=True, maximum=MAX_PAGE_SIZE),
            "settle_s": Bound(0),
            "fallback_after_s": Bound(0, exclusive=True),
        }
    )
    MODES: ClassVar[tuple[str, ...]] = ("polling", "events")

    poll_interval_s: float = 5
    give_up_after_s: float = 259200
    page_size: int = 1000
    settle_s: float = 30
    fallback_after_s: float = 300
    """With ``mode = "events"``: an email no event reported for this long is looked up by polling."""
    mode: str = "polling"
    """``polling`` (list calls learn final statuses) or ``events`` (TEM's webhook events do)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in self.MODES:
            modes = " or ".join(map(repr, self.MODES))
            raise SettingError(f"{self.name_of('mode')} must be {modes} (got {self.mode!r})", key="mode")

    def table(self) -> dict[str, Any]:
        """The ``[tracking]`` table of these settings."""
        return {key: getattr(self, key) for key in (*self.BOUNDS, "mode")}


@dataclass(frozen=True)
class GuardrailSettings(_Checked):
    """When a send pauses itself (``[guardrails]``, docs/deliverability.md): once the last
    ``window`` final emails (at least ``min_emails`` of them) hold more than ``max_bad_rate`` hard
    bounces and spam complaints. ``max_bad_rate = 1`` turns the guardrail off."""

    SECTION: ClassVar[str] = "guardrails"
    BOUNDS: ClassVar[Mapping[str, Bound]] = MappingProxyType(
        {
            "window": Bound(10, integer=True, maximum=100_000),
            "min_emails": Bound(1, integer=True, maximum=100_000),
            "max_bad_rate": Bound(0, exclusive=True, maximum=1),
        }
    )

    window: int = 200
    min_emails: int = 50
    max_bad_rate: float = 0.05
    """Under TEM's own alert line of 7 % rejected within 24 hours."""

    def __post_init__(self) -> None:
        _Checked.__post_init__(self)
        if self.min_emails > self.window:
            raise SettingError(
                f"guardrails.min_emails must be at most guardrails.window ({self.window}), "
                f"got {self.min_emails}",
                key="min_emails",
            )

    @property
    def enabled(self) -> bool:
        return self.max_bad_rate < 1


class TuningOptions(TypedDict, total=False):
    """The tuning a limiter constructor takes as keywords besides its rate (see :class:`LimiterTuning`)."""

    min_rate_per_s: float
    decrease_factor: float
    increase_per_s: float | None
    burst: float
    cooldown_s: float
    max_pause_s: float


@dataclass(frozen=True)
class LimiterTuning(_Checked):
    """How a rate limiter paces and adapts: the in-process and the Redis-shared one take the same
    tuning, so they refuse the same values.

    ``rate_per_s`` is the target (and starting) rate; ``min_rate_per_s`` the floor of decreases
    (see :attr:`floor_per_s`); on throttling the rate is multiplied by ``decrease_factor``, at most
    once per ``cooldown_s``, and grows back by ``increase_per_s`` per second of successes (None:
    ``rate_per_s / 10``); ``burst`` slots may go out back to back after an idle period; a
    ``Retry-After`` longer than ``max_pause_s`` is capped.
    """

    BOUNDS: ClassVar[Mapping[str, Bound]] = MappingProxyType(
        {
            "rate_per_s": Bound(0, exclusive=True),
            "min_rate_per_s": Bound(0, exclusive=True),
            "decrease_factor": Bound(0, exclusive=True, maximum=1, below=True),
            "increase_per_s": Bound(0, optional=True),
            "burst": Bound(1),
            "cooldown_s": Bound(0),
            "max_pause_s": Bound(0, exclusive=True),
        }
    )

    rate_per_s: float
    min_rate_per_s: float = 1.0
    decrease_factor: float = 0.5
    increase_per_s: float | None = None
    burst: float = 1.0
    cooldown_s: float = 1.0
    max_pause_s: float = 300.0

    @classmethod
    def of(cls, rate_per_s: float, options: TuningOptions) -> LimiterTuning:
        """The tuning a limiter constructor was given: its rate and its keyword options."""
        return cls(rate_per_s=rate_per_s, **options)

    @property
    def floor_per_s(self) -> float:
        """The floor actually applied: a default floor of 1/s must not make a deliberately slow
        limiter (say 0.5/s) invalid, and a floor above the target would mean nothing."""
        return float(min(self.min_rate_per_s, self.rate_per_s))

    @property
    def increase(self) -> float:
        """``increase_per_s``, or its default."""
        return float(self.rate_per_s / 10 if self.increase_per_s is None else self.increase_per_s)


@dataclass(frozen=True)
class AdminSettings(_Checked):
    """The daemon's ``[admin]`` table: where the API listens, who may call it, what it may read,
    how long it waits. Submitted campaigns may name files only under ``files_root`` (None: no files)."""

    SECTION: ClassVar[str] = "admin"
    BOUNDS: ClassVar[Mapping[str, Bound]] = MappingProxyType(
        {
            "port": Bound(0, integer=True, maximum=65535),
            "idle_timeout_s": Bound(0, exclusive=True),
            "read_timeout_s": Bound(0, exclusive=True),
            "max_connections": Bound(1, integer=True),
        }
    )

    host: str = "127.0.0.1"
    port: int = 8080
    token: Secret | None = None
    metrics_public: bool = False
    files_root: Path | None = None
    idle_timeout_s: float = 15.0
    """A connection that has not sent a whole request head this long after connecting (or after
    its previous answer) is closed."""
    read_timeout_s: float = 30.0
    """Longest wait for the next bytes of a request body (a stalled upload gets 408 and is closed)."""
    max_connections: int = 256
    """Connections served at once; more are answered 503 and closed."""


@dataclass(frozen=True)
class AccountSettings:
    """Where the shared state lives and how fast the account may send (see the module docstring)."""

    store_url: str | None = None
    """A SQLite path or ``postgresql://…``; None: the campaign's own SQLite file."""
    suppression_url: str | None = None
    """Where the suppression list lives; None: the store above if given, else the user's own
    list (``bulksend.suppression.default_suppression_path``)."""
    redis_url: str | None = None
    """``redis://…`` for the rate limiter shared by every process of the account; None: in-process."""
    limiter_prefix: str = DEFAULT_LIMITER_PREFIX
    """The shared limiter's key is ``<prefix>:<project_id>:<region>``."""
    account_rate_per_s: float | None = None
    """The account's budget for every API call; None: the campaign's ``rate_per_s`` is used."""
    source: Path | None = None
    """The settings file read, if any."""
    events_queue: str | None = None
    """Name or URL of the SQS queue TEM's webhook events arrive on (``tracking.mode = "events"``)."""
    events_sqs_url: str | None = None
    """The SQS endpoint of that queue; None: Scaleway Queues (``https://sqs.mnq.fr-par.scaleway.com``)."""
    events_sqs_region: str | None = None

    def __post_init__(self) -> None:
        prefix = self.limiter_prefix
        if not prefix.strip() or any(c.isspace() for c in prefix):
            raise SettingError(
                f"limiter_prefix must be a non-empty word without spaces, got {prefix!r}",
                key="limiter_prefix",
            )
        rate = self.account_rate_per_s
        if rate is not None and (isinstance(rate, bool) or not (rate > 0 and math.isfinite(rate))):
            raise SettingError(
                f"account_rate_per_s must be a positive number, got {rate!r}", key="account_rate_per_s"
            )

    def __repr__(self) -> str:
        # URLs may carry passwords: never in a repr.
        return (
            f"AccountSettings(store_url={_masked(self.store_url)!r}, "
            f"suppression_url={_masked(self.suppression_url)!r}, redis_url={_masked(self.redis_url)!r}, "
            f"limiter_prefix={self.limiter_prefix!r}, account_rate_per_s={self.account_rate_per_s!r}, "
            f"source={self.source!r})"
        )


def _masked(url: str | None) -> str | None:
    return None if url is None else redact_url(url)


def redact_url(url: str) -> str:
    """``url`` with any password (in the user info or a ``password=`` parameter) as ``****``."""
    if "://" not in url:
        return url  # a file path
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}:****@{hostport}" if colon else f"{user}@{hostport}"
    query = re.sub(r"(?i)(password=)[^&]*", r"\1****", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def limiter_key(prefix: str, project_id: str, region: str) -> str:
    """The shared limiter's Redis key: one per TEM account (project) and region."""
    return f"{prefix}:{project_id}:{region}"


def default_settings_path(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "bulksend" / "settings.toml"


def load_account_settings(
    *,
    settings_file: Path | None = None,
    store_url: str | None = None,
    redis_url: str | None = None,
    limiter_prefix: str | None = None,
    account_rate_per_s: float | None = None,
    env: Mapping[str, str] | None = None,
) -> AccountSettings:
    """Resolve each value: the argument (a command-line flag) > the environment > the settings file.

    Raises ``ConfigError`` for a settings file that was named but is missing, is not valid TOML,
    has unknown keys or wrong types.
    """
    env = os.environ if env is None else env
    named = settings_file or (Path(env["BULKSEND_SETTINGS"]) if env.get("BULKSEND_SETTINGS") else None)
    path = named or default_settings_path(env)
    from_file: dict[str, Any] = {}
    source: Path | None = None
    if named is not None or path.is_file():
        from_file = _read_file(path)
        source = path
    flags: dict[str, Any] = dict.fromkeys(_KEYS) | {
        "store_url": store_url,
        "suppression_url": None,
        "redis_url": redis_url,
        "limiter_prefix": limiter_prefix,
        "account_rate_per_s": account_rate_per_s,
    }
    chosen: dict[str, Any] = {}
    for key, variable in _KEYS.items():
        if flags[key] is not None:
            chosen[key] = flags[key]
        elif env.get(variable):
            chosen[key] = env[variable]
        elif key in from_file:
            chosen[key] = from_file[key]
    rate = chosen.get("account_rate_per_s")
    return AccountSettings(
        store_url=_text(chosen.get("store_url")),
        suppression_url=_text(chosen.get("suppression_url")),
        redis_url=_text(chosen.get("redis_url")),
        limiter_prefix=str(chosen.get("limiter_prefix") or DEFAULT_LIMITER_PREFIX),
        account_rate_per_s=None if rate is None else _rate(rate),
        source=source,
        events_queue=_text(chosen.get("events_queue")),
        events_sqs_url=_text(chosen.get("events_sqs_url")),
        events_sqs_region=_text(chosen.get("events_sqs_region")),
    )


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _rate(value: Any) -> float:
    """A rate from a flag, the environment (text) or the file; its range is checked by AccountSettings."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"account_rate_per_s must be a number, got {value!r}") from None


def _read_file(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"settings file {str(path)!r} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read settings file {str(path)!r}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        # The parser's message quotes no value, so no password can leak through it.
        raise ConfigError(f"settings file {str(path)!r} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - set(_KEYS))
    if unknown:
        raise ConfigError(
            f"settings file {str(path)!r}: unknown key(s) {', '.join(unknown)}; known: {', '.join(_KEYS)}"
        )
    for key in (k for k in _KEYS if k != "account_rate_per_s"):
        if key in data and not isinstance(data[key], str):
            raise ConfigError(f"settings file {str(path)!r}: {key} must be a string")
    rate = data.get("account_rate_per_s", 1)
    if isinstance(rate, bool) or not isinstance(rate, int | float):
        raise ConfigError(f"settings file {str(path)!r}: account_rate_per_s must be a number")
    return data
