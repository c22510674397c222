"""The typed settings: each dataclass refuses what its users would refuse, in one place."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from bulksend.daemon.config import load_daemon_config
from bulksend.errors import ConfigError, SettingError
from bulksend.pipeline.flow import CubicLimiter
from bulksend.pipeline.limiter import AimdLimiter
from bulksend.pipeline.shared_limiter import RedisRateLimiter
from bulksend.settings import (
    AccountSettings,
    AdminSettings,
    LimiterTuning,
    SendingSettings,
    TrackingSettings,
    load_account_settings,
)

BAD_TUNINGS: list[dict[str, Any]] = [
    {"rate_per_s": math.inf},
    {"rate_per_s": math.nan},
    {"rate_per_s": 0},
    {"rate_per_s": "100"},
    {"rate_per_s": True},
    {"rate_per_s": 10, "min_rate_per_s": math.inf},
    {"rate_per_s": 10, "min_rate_per_s": 0},
    {"rate_per_s": 10, "decrease_factor": 1.0},
    {"rate_per_s": 10, "decrease_factor": math.nan},
    {"rate_per_s": 10, "increase_per_s": math.inf},
    {"rate_per_s": 10, "increase_per_s": -1},
    {"rate_per_s": 10, "burst": 0.5},
    {"rate_per_s": 10, "burst": math.inf},
    {"rate_per_s": 10, "cooldown_s": -1},
    {"rate_per_s": 10, "cooldown_s": math.inf},
    {"rate_per_s": 10, "max_pause_s": 0},
    {"rate_per_s": 10, "max_pause_s": math.inf},
]


@pytest.mark.parametrize("bad", BAD_TUNINGS, ids=lambda bad: ",".join(f"{k}={v!r}" for k, v in bad.items()))
def test_both_limiters_refuse_the_same_tunings(bad: dict[str, Any]) -> None:
    """The in-process and the Redis-shared limiter refuse the same tunings (an infinite rate
    among them), with the same message naming the setting, because one class checks both."""
    key = list(bad)[-1]  # the wrong value is the last one given
    with pytest.raises(SettingError, match=key) as local:
        AimdLimiter(**bad)
    with pytest.raises(SettingError, match=key) as shared:
        RedisRateLimiter(redis.asyncio.Redis(), key="k", **bad)
    with pytest.raises(SettingError, match=key) as tuning:
        LimiterTuning(**bad)
    assert str(local.value) == str(shared.value) == str(tuning.value)
    assert isinstance(local.value, ValueError)


def test_limiters_keep_their_tuning() -> None:
    """A limiter exposes the tuning it checked; the floor is clamped to a slow target."""
    limiter = CubicLimiter(0.5, burst=2)
    assert limiter.tuning.burst == 2
    assert limiter.tuning.floor_per_s == limiter.min_rate_per_s == 0.5
    shared = RedisRateLimiter(redis.asyncio.Redis(), key="k", rate_per_s=20)
    assert shared.tuning == LimiterTuning(rate_per_s=20)
    assert shared.tuning.increase == 2.0


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: SendingSettings(rate_per_s=math.inf), "sending.rate_per_s must be finite (got inf)"),
        (
            lambda: SendingSettings(concurrency=2.5),  # type: ignore[arg-type]
            "sending.concurrency must be a whole number (got 2.5)",
        ),
        (lambda: SendingSettings(timeout_s=0), "sending.timeout_s must be greater than 0 (got 0)"),
        # The retry policy refuses a zero time budget: the settings refuse it when loaded, not at run time.
        (lambda: SendingSettings(max_retry_s=0), "sending.max_retry_s must be greater than 0 (got 0)"),
        (lambda: TrackingSettings(page_size=5000), "tracking.page_size must be at most 1000 (got 5000)"),
        (lambda: TrackingSettings(settle_s=-1), "tracking.settle_s must be at least 0 (got -1)"),
    ],
)
def test_settings_check_themselves(build: Any, message: str) -> None:
    """A settings dataclass built with a wrong value raises a ConfigError naming the key and what
    it may be, whoever builds it."""
    with pytest.raises(ConfigError) as caught:
        build()
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("[sending]\nrate_per_s = inf\n", "sending.rate_per_s must be finite (got inf)"),
        ("[sending]\nconcurrency = 2.5\n", "sending.concurrency must be a whole number (got 2.5)"),
        ("[tracking]\npage_size = 5000\n", "tracking.page_size must be at most 1000 (got 5000)"),
    ],
)
def test_daemon_config_refuses_what_campaign_files_refuse(tmp_path: Path, table: str, message: str) -> None:
    """The daemon's [sending] and [tracking] are the campaign file's settings: a value a campaign
    file refuses (an infinite rate, a fractional concurrency) is refused when the config loads."""
    path = tmp_path / "daemon.toml"
    path.write_text(table, encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_daemon_config(path)


def test_daemon_config_sections_are_typed(tmp_path: Path) -> None:
    """Keys left out of [sending] and [tracking] take the settings' defaults; ``rate_given`` tells
    whether the rate was written."""
    path = tmp_path / "daemon.toml"
    path.write_text("[sending]\nconcurrency = 8\n[tracking]\nsettle_s = 2\n", encoding="utf-8")
    config = load_daemon_config(path, env={})
    assert config.sending == SendingSettings(concurrency=8)
    assert not config.sending.rate_given
    assert config.tracking == TrackingSettings(settle_s=2)
    assert config.admin == AdminSettings()


def test_account_settings_check_themselves() -> None:
    """Account settings refuse a rate that is not positive and finite, and a limiter prefix with
    spaces, whether they come from a flag, the environment or are built directly."""
    with pytest.raises(ConfigError, match="account_rate_per_s must be a positive number"):
        load_account_settings(account_rate_per_s=-1, env={"XDG_CONFIG_HOME": "/nonexistent"})
    with pytest.raises(ConfigError, match="account_rate_per_s must be a positive number, got inf"):
        load_account_settings(env={"BULKSEND_ACCOUNT_RATE_PER_S": "inf", "XDG_CONFIG_HOME": "/nonexistent"})
    with pytest.raises(ConfigError, match="limiter_prefix must be a non-empty word without spaces"):
        AccountSettings(limiter_prefix="two words")
