"""Settings and counters of the sandbox: :class:`SandboxConfig` and :class:`SandboxStats`."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["DEFAULT_PROJECT_ID", "DEFAULT_SECRET_KEY", "SandboxConfig", "SandboxStats"]

DEFAULT_SECRET_KEY = "sandbox-secret"
"""Not a real key: the sandbox only ever compares it with ``X-Auth-Token``."""
DEFAULT_PROJECT_ID = "11111111-2222-4333-8444-555555555555"

MAX_DURATION_S = 365 * 24 * 3600.0
"""Longest lifecycle time a setting may hold (a year of sandbox clock)."""
MAX_LATENCY_MS = 600_000.0
"""Longest added latency per request (10 minutes: longer than any client waits)."""

_DURATIONS = ("sending_after_s", "final_after_s", "soft_bounce_retry_s", "hold_s")
_LATENCIES = ("latency_ms", "latency_jitter_ms")
_PROBABILITIES = ("fault_5xx_before_p", "fault_5xx_after_p", "fault_drop_p")

DOMAIN_STATUSES = ("checked", "unchecked", "invalid", "locked", "revoked", "pending", "autoconfiguring")
"""What ``domain_status`` may be: TEM's domain statuses (but ``unknown``)."""
DNS_RECORDS = ("spf", "dkim", "mx", "dmarc")
"""The records TEM verifies, and what ``failing_records`` may name."""
OFFERS = ("essential", "scale")
MAX_COUNT = 2**31 - 1
"""Largest count a consumption figure may hold (TEM's int32)."""

UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def check_uuid(value: object, name: str, help_message: str, errors: list[tuple[str, str]]) -> None:
    """Note ``(name, help_message)`` in ``errors`` unless ``value`` is a UUID."""
    if not isinstance(value, str) or not UUID_RE.match(value):
        errors.append((name, help_message))


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    """How the sandbox behaves. Change it live with ``Sandbox.update(**changes)``.

    Times are in seconds of the sandbox clock (at most a year), latencies in milliseconds (at most
    10 minutes); probabilities are in [0, 1] and the three fault probabilities together must not
    exceed 1. Every value is type-checked: a wrong one raises ``ValueError`` and changes nothing.
    Lifecycle timings are captured per email when it is created, so a live change affects new
    emails only.
    """

    secret_key: str = field(default=DEFAULT_SECRET_KEY, repr=False)
    """The ``X-Auth-Token`` every TEM request must carry (never shown in a repr)."""
    project_id: str = DEFAULT_PROJECT_ID
    """Project used when a send omits ``project_id``."""
    sending_after_s: float = 0.0
    """Time an email stays ``new`` before ``sending``."""
    final_after_s: float = 0.0
    """Time in ``sending`` before each delivery attempt completes."""
    soft_bounce_retry_s: float = 0.0
    """Extra wait before each retry after a soft bounce or greylisting."""
    hold_s: float = 3600.0
    """How long ``hold…`` recipients stay ``new`` (so cancel can be exercised)."""
    rate_limit_per_s: float | None = None
    """Token bucket on every TEM API request; ``None`` disables it."""
    rate_limit_burst: float | None = None
    """Bucket size; ``None`` means ``max(1, rate_limit_per_s / 10)``."""
    fault_5xx_before_p: float = 0.0
    """Probability of a 5xx answered before the request takes effect (no email created)."""
    fault_5xx_after_p: float = 0.0
    """Probability of a 5xx answered after the request took effect (email created)."""
    fault_drop_p: float = 0.0
    """Probability of closing the connection without an answer; a fair coin decides whether the
    request took effect first."""
    latency_ms: float = 0.0
    """Added latency per TEM request."""
    latency_jitter_ms: float = 0.0
    """Uniform extra latency in [0, latency_jitter_ms) per TEM request."""
    allowed_from_domains: tuple[str, ...] | None = None
    """When set, a sender outside these domains gets 400 "Invalid email from address"."""
    seed: int | None = None
    """Seed of the fault and jitter generator, for reproducible runs."""
    webhook_sns_url: str | None = None
    """Publish webhook events to their webhook's ``sns_arn`` through the SNS API at this URL."""
    webhook_http_url: str | None = None
    """Or POST them, signed like SNS, to this URL (one HTTP subscription of every topic)."""
    webhook_signing_key: str | None = field(default=None, repr=False)
    """PEM file of the RSA key signing HTTP deliveries (default: a key made at start)."""
    webhook_cert_url: str | None = None
    """The ``SigningCertURL`` of that key's certificate (default: the sandbox serves its own)."""
    webhook_signature_version: int = 2
    """``SignatureVersion`` of HTTP deliveries: 1 (SHA1withRSA) or 2 (SHA256withRSA)."""
    domain_status: str = "checked"
    """Status of every sending domain; only ``checked`` ones may send (others get 400 "Invalid email
    from address")."""
    domain_reputation: int | None = 90
    """Reputation score (0..100) of every domain; None: not scored yet (no ``reputation`` object)."""
    failing_records: tuple[str, ...] = ()
    """DNS records (``spf``, ``dkim``, ``mx``, ``dmarc``) the domain verification reports missing."""
    monthly_emails_base: int = 0
    """Emails the project had sent this month before the sandbox's own (project consumption)."""
    offer: str = "essential"
    """The project's plan: custom blocklists (``POST /blocklists``) need ``scale``."""

    def __post_init__(self) -> None:
        # Types first: values may come from JSON (PATCH /_sandbox/config), and a wrong type
        # would only fail later, inside a request.
        self._check_types()
        problems: list[str] = []
        if not UUID_RE.match(self.project_id):
            problems.append(f"project_id must be a UUID, got {self.project_id!r}")
        for name in _DURATIONS:
            if not 0 <= getattr(self, name) <= MAX_DURATION_S:
                problems.append(f"{name} must be within 0..{MAX_DURATION_S:.0f} s")
        for name in _LATENCIES:
            if not 0 <= getattr(self, name) <= MAX_LATENCY_MS:
                problems.append(f"{name} must be within 0..{MAX_LATENCY_MS:.0f} ms")
        for name in _PROBABILITIES:
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                problems.append(f"{name} must be within [0, 1]")
        if sum(float(getattr(self, n)) for n in _PROBABILITIES) > 1.0 + 1e-9:
            problems.append("the fault probabilities must add up to at most 1")
        if self.rate_limit_per_s is not None and self.rate_limit_per_s <= 0:
            problems.append("rate_limit_per_s must be > 0 (or None to disable)")
        if self.rate_limit_burst is not None and self.rate_limit_burst < 1:
            problems.append("rate_limit_burst must be >= 1")
        if self.allowed_from_domains is not None and not isinstance(self.allowed_from_domains, tuple):
            # A list would make the dataclass unhashable and invite accidental mutation.
            object.__setattr__(self, "allowed_from_domains", tuple(self.allowed_from_domains))
        if not isinstance(self.failing_records, tuple):
            object.__setattr__(self, "failing_records", tuple(self.failing_records))
        problems += self._deliverability_problems()
        if problems:
            raise ValueError("invalid sandbox configuration: " + "; ".join(problems))

    def _deliverability_problems(self) -> list[str]:
        problems: list[str] = []
        if self.domain_status not in DOMAIN_STATUSES:
            problems.append(f"domain_status must be one of {', '.join(DOMAIN_STATUSES)}")
        if self.domain_reputation is not None and not 0 <= self.domain_reputation <= 100:
            problems.append("domain_reputation must be within 0..100 (or None: not scored yet)")
        if unknown := sorted(set(self.failing_records) - set(DNS_RECORDS)):
            problems.append(
                f"failing_records may only name {', '.join(DNS_RECORDS)}: not {', '.join(unknown)}"
            )
        if not 0 <= self.monthly_emails_base <= MAX_COUNT:
            problems.append(f"monthly_emails_base must be within 0..{MAX_COUNT}")
        if self.offer not in OFFERS:
            problems.append(f"offer must be one of {', '.join(OFFERS)}")
        return problems

    def _check_types(self) -> None:
        problems: list[str] = []
        for name in ("secret_key", "project_id"):
            if not isinstance(getattr(self, name), str):
                problems.append(f"{name} must be a string")
        numbers = (*_DURATIONS, *_LATENCIES, *_PROBABILITIES, "rate_limit_per_s", "rate_limit_burst")
        for name in numbers:
            value = getattr(self, name)
            if value is None and name.startswith("rate_limit"):
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                problems.append(f"{name} must be a finite number")
        domains = self.allowed_from_domains
        if domains is not None and (
            not isinstance(domains, list | tuple) or not all(isinstance(d, str) for d in domains)
        ):
            problems.append("allowed_from_domains must be a list of domain names")
        for name in ("seed", "domain_reputation", "monthly_emails_base"):
            value = getattr(self, name)
            if value is None and name != "monthly_emails_base":
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                problems.append(f"{name} must be a whole number")
        for name in ("domain_status", "offer"):
            if not isinstance(getattr(self, name), str):
                problems.append(f"{name} must be a string")
        records = self.failing_records
        if not isinstance(records, list | tuple) or not all(isinstance(r, str) for r in records):
            problems.append("failing_records must be a list of record names")
        for name in ("webhook_sns_url", "webhook_http_url", "webhook_signing_key", "webhook_cert_url"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                problems.append(f"{name} must be a string")
        if self.webhook_signature_version not in (1, 2) or isinstance(self.webhook_signature_version, bool):
            problems.append("webhook_signature_version must be 1 or 2")
        if problems:
            raise ValueError("invalid sandbox configuration: " + "; ".join(problems))

    @property
    def burst(self) -> float:
        """The effective token-bucket size (only meaningful when rate limiting is on)."""
        if self.rate_limit_burst is not None:
            return float(self.rate_limit_burst)
        return max(1.0, (self.rate_limit_per_s or 0.0) / 10.0)

    def to_public_json(self) -> dict[str, Any]:
        """The settings as JSON-able data, with the secret key masked."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["secret_key"] = "***"
        if self.allowed_from_domains is not None:
            out["allowed_from_domains"] = list(self.allowed_from_domains)
        out["failing_records"] = list(self.failing_records)
        return out

    @classmethod
    def field_names(cls) -> frozenset[str]:
        """Names accepted by ``Sandbox.update`` and ``PATCH /_sandbox/config``."""
        return frozenset(f.name for f in fields(cls))


@dataclass(slots=True)
class SandboxStats:
    """What the sandbox saw; also served as JSON by ``GET /_sandbox/stats``."""

    accepted_by_recipient: dict[str, int] = field(default_factory=dict)
    """Lower-cased recipient address → number of emails created for it."""
    requests: dict[str, int] = field(default_factory=dict)
    """TEM requests by kind: send, get, list, cancel, statistics, other."""
    rate_limited: int = 0
    """429 answers served."""
    faults: dict[str, int] = field(default_factory=dict)
    """Injected faults: 5xx_before, 5xx_after, drop_created, drop_not_created."""
    emails_total: int = 0
    """Emails created (one per recipient)."""
    outage_answers: int = 0
    """Requests answered by a timed outage (``POST /_sandbox/outage``)."""

    def to_json(self) -> dict[str, Any]:
        """The stats as JSON-able data."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SandboxStats:
        """Rebuild from the inspection endpoint's JSON."""
        return cls(
            accepted_by_recipient={
                str(k): int(v) for k, v in (data.get("accepted_by_recipient") or {}).items()
            },
            requests={str(k): int(v) for k, v in (data.get("requests") or {}).items()},
            rate_limited=int(data.get("rate_limited") or 0),
            faults={str(k): int(v) for k, v in (data.get("faults") or {}).items()},
            emails_total=int(data.get("emails_total") or 0),
            outage_answers=int(data.get("outage_answers") or 0),
        )
