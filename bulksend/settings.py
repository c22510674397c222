"""Account settings shared by every campaign a machine sends: where the shared store and the shared
rate limiter live, and the account's rate.

They are not campaign settings: a password in a store URL must not have to sit in a campaign file
nor on a command line (where ``ps`` shows it to every user). Each value comes from, in order of
precedence: the command-line flag, the environment, the settings file.

=====================  ==========================  ===========================
value                  environment                 settings file key
=====================  ==========================  ===========================
store URL              ``BULKSEND_STORE_URL``      ``store_url``
Redis URL (limiter)    ``BULKSEND_REDIS_URL``      ``redis_url``
limiter key prefix     ``BULKSEND_LIMITER_PREFIX`` ``limiter_prefix``
account rate           ``BULKSEND_ACCOUNT_RATE_PER_S`` ``account_rate_per_s``
=====================  ==========================  ===========================

The settings file is ``--settings FILE``, else ``$BULKSEND_SETTINGS``, else
``$XDG_CONFIG_HOME/bulksend/settings.toml`` (``~/.config/bulksend/settings.toml``) if it exists.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from bulksend.errors import ConfigError

__all__ = [
    "DEFAULT_LIMITER_PREFIX",
    "AccountSettings",
    "default_settings_path",
    "limiter_key",
    "load_account_settings",
    "redact_url",
]

DEFAULT_LIMITER_PREFIX: Final = "bulksend:rate"
_KEYS: Final = {
    "store_url": "BULKSEND_STORE_URL",
    "redis_url": "BULKSEND_REDIS_URL",
    "limiter_prefix": "BULKSEND_LIMITER_PREFIX",
    "account_rate_per_s": "BULKSEND_ACCOUNT_RATE_PER_S",
}


@dataclass(frozen=True)
class AccountSettings:
    """Where the shared state lives and how fast the account may send (see the module docstring)."""

    store_url: str | None = None
    """A SQLite path or ``postgresql://…``; None: the campaign's own SQLite file."""
    redis_url: str | None = None
    """``redis://…`` for the rate limiter shared by every process of the account; None: in-process."""
    limiter_prefix: str = DEFAULT_LIMITER_PREFIX
    """The shared limiter's key is ``<prefix>:<project_id>:<region>``."""
    account_rate_per_s: float | None = None
    """The account's budget for every API call; None: the campaign's ``rate_per_s`` is used."""
    source: Path | None = None
    """The settings file read, if any."""

    def __repr__(self) -> str:
        # URLs may carry passwords: never in a repr.
        return (
            f"AccountSettings(store_url={_masked(self.store_url)!r}, redis_url={_masked(self.redis_url)!r}, "
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
    flags: dict[str, Any] = {
        "store_url": store_url,
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
    prefix = str(chosen.get("limiter_prefix") or DEFAULT_LIMITER_PREFIX)
    if not prefix.strip() or any(c.isspace() for c in prefix):
        raise ConfigError(f"limiter_prefix must be a non-empty word without spaces, got {prefix!r}")
    return AccountSettings(
        store_url=_text(chosen.get("store_url")),
        redis_url=_text(chosen.get("redis_url")),
        limiter_prefix=prefix,
        account_rate_per_s=None if rate is None else _rate(rate),
        source=source,
    )


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _rate(value: Any) -> float:
    try:
        rate = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"account_rate_per_s must be a number, got {value!r}") from None
    if not (rate > 0 and math.isfinite(rate)):
        raise ConfigError(f"account_rate_per_s must be a positive number, got {value!r}")
    return rate


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
    for key in ("store_url", "redis_url", "limiter_prefix"):
        if key in data and not isinstance(data[key], str):
            raise ConfigError(f"settings file {str(path)!r}: {key} must be a string")
    rate = data.get("account_rate_per_s", 1)
    if isinstance(rate, bool) or not isinstance(rate, int | float):
        raise ConfigError(f"settings file {str(path)!r}: account_rate_per_s must be a number")
    return data
