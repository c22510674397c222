"""The sandbox's sending domains and blocklists, rendered as TEM renders them.

Domains are not registered by hand: the sandbox accepts any sender unless ``allowed_from_domains``
is set, so it also knows any domain it is asked about (by a send's sender, or by the ``name``
filter of ``GET /domains``) and registers it then, in the sandbox's project. With
``allowed_from_domains``, only those domains exist. A domain's id is derived from its name
(:func:`~bulksend.sandbox.webhooks.domain_id_of`, as webhooks name it), so it stays the same across
restarts. Every domain shows the status, reputation and DNS checks of the
configuration, so a "bad domain" is scripted with three settings.

Blocklist entries are scripted (:meth:`DomainBook.block`: every domain, or one) or created through
``POST /blocklists`` (custom, per domain). An entry is listed until its ``ends_at``; while it is
active, an email to its address from a domain it covers fails as ``blocklisted``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from .config import DNS_RECORDS, SandboxConfig
from .state import format_timestamp
from .webhooks import domain_id_of

__all__ = ["BLOCKLIST_TYPES", "BlockEntry", "DomainBook", "SandboxDomain", "reputation_status"]

BLOCKLIST_TYPES: Final = ("unknown_type", "mailbox_full", "mailbox_not_found")
_DKIM_KEY: Final = "v=DKIM1; h=sha256; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAsandbox"


def reputation_status(score: int) -> str:
    """TEM's word for a reputation score."""
    if score >= 80:
        return "excellent"
    if score >= 70:
        return "good"
    if score >= 50:
        return "average"
    return "bad"


@dataclass(frozen=True, slots=True)
class SandboxDomain:
    """A registered domain."""

    id: str
    name: str
    project_id: str
    created_at: float


@dataclass(frozen=True, slots=True)
class BlockEntry:
    """One blocklist entry; ``domain_id`` None: scripted for every domain."""

    id: str
    domain_id: str | None
    email: str
    type: str
    reason: str
    custom: bool
    created_at: float
    ends_at: float | None

    def active(self, now: float) -> bool:
        return self.ends_at is None or self.ends_at > now

    def covers(self, domain_id: str) -> bool:
        return self.domain_id is None or self.domain_id == domain_id

    def render(self, domain_id: str) -> dict[str, Any]:
        created = format_timestamp(self.created_at)
        return {
            "id": self.id,
            "domain_id": domain_id,
            "created_at": created,
            "updated_at": created,
            "ends_at": None if self.ends_at is None else format_timestamp(self.ends_at),
            "email": self.email,
            "type": self.type,
            "reason": self.reason,
            "custom": self.custom,
        }


class DomainBook:
    """Domains and blocklist entries of one sandbox (one event loop owns it, like the email store)."""

    def __init__(self) -> None:
        self._domains: dict[str, SandboxDomain] = {}
        self._entries: list[BlockEntry] = []
        # domain id → (valid until, blocked addresses): a send must not walk every entry.
        self._blocked: dict[str, tuple[float, frozenset[str]]] = {}

    # -- domains ----------------------------------------------------------------------------------

    def lookup(self, name: str, config: SandboxConfig, now: float) -> SandboxDomain | None:
        """The domain called ``name``, registered now if the sandbox accepts it as a sender."""
        key = name.strip().lower()
        allowed = config.allowed_from_domains
        if not key or (allowed is not None and key not in {d.lower() for d in allowed}):
            return None
        domain = self._domains.get(key)
        if domain is not None:
            return domain
        domain = SandboxDomain(domain_id_of(key), key, config.project_id, now)
        self._domains[key] = domain
        return domain

    def by_id(self, domain_id: str, config: SandboxConfig) -> SandboxDomain | None:
        """The known domain of this id (one no longer allowed is not known)."""
        key = domain_id.lower()
        found = next((d for d in self._domains.values() if d.id == key), None)
        return found if found is not None and self.lookup(found.name, config, 0.0) is not None else None

    def domains(self, config: SandboxConfig, now: float) -> list[SandboxDomain]:
        """Every domain the sandbox knows now (``allowed_from_domains`` included), oldest first."""
        for name in config.allowed_from_domains or ():
            self.lookup(name, config, now)
        known = [d for d in self._domains.values() if self.lookup(d.name, config, now) is not None]
        return sorted(known, key=lambda d: (d.created_at, d.name))

    def render_domain(self, domain: SandboxDomain, config: SandboxConfig) -> dict[str, Any]:
        """``Domain`` as TEM answers it, with the configuration's status and reputation."""
        created = format_timestamp(domain.created_at)
        checked = config.domain_status == "checked"
        records = _records(domain)
        out: dict[str, Any] = {
            "id": domain.id,
            "organization_id": domain.project_id,
            "project_id": domain.project_id,
            "name": domain.name,
            "status": config.domain_status,
            "created_at": created,
            "next_check_at": created,
            "last_valid_at": created if checked else None,
            "revoked_at": created if config.domain_status == "revoked" else None,
            "last_error": None,
            "spf_config": records["spf"]["value"],
            "dkim_config": _DKIM_KEY,
            "records": records,
            "autoconfig": False,
            "region": "fr-par",
        }
        if config.domain_reputation is not None and checked:
            score = config.domain_reputation
            out["reputation"] = {
                "status": reputation_status(score),
                "score": score,
                "scored_at": created,
                "previous_score": score,
                "previous_scored_at": created,
            }
        return out

    def render_verification(self, domain: SandboxDomain, config: SandboxConfig) -> dict[str, Any]:
        """``DomainLastStatus``: each record valid, or not found when ``failing_records`` names it."""
        records = _records(domain)
        out: dict[str, Any] = {"domain_id": domain.id, "domain_name": domain.name}
        for kind in DNS_RECORDS:
            record = records[kind]
            host = f"{record['name']}.{domain.name}" if record["name"] else domain.name
            if kind in config.failing_records:
                out[f"{kind}_record"] = {
                    "status": "not_found",
                    "last_valid_at": None,
                    "error": f"no {kind.upper()} record found at {host}; expected {record['value']!r}",
                }
            else:
                valid_at = format_timestamp(domain.created_at)
                out[f"{kind}_record"] = {"status": "valid", "last_valid_at": valid_at, "error": None}
        out["autoconfig_state"] = {"enabled": False, "autoconfigurable": False, "reason": "unknown_reason"}
        return out

    # -- blocklists -------------------------------------------------------------------------------

    def block(
        self,
        emails: Iterable[str],
        *,
        type: str,
        now: float,
        domain_id: str | None = None,
        reason: str = "",
        custom: bool = False,
        ends_at: float | None = None,
    ) -> list[BlockEntry]:
        """Add one entry per address (lower-cased); returns them."""
        added = [
            BlockEntry(str(uuid.uuid4()), domain_id, e.strip().lower(), type, reason, custom, now, ends_at)
            for e in emails
        ]
        self._entries.extend(added)
        self._blocked.clear()
        return added

    def entries(self, domain_id: str, now: float) -> list[BlockEntry]:
        """The active entries covering ``domain_id``, oldest first."""
        return [e for e in self._entries if e.covers(domain_id) and e.active(now)]

    def blocked(self, domain_id: str, now: float) -> frozenset[str]:
        """Addresses an email from ``domain_id`` may not go to now."""
        if not self._entries:
            return frozenset()
        cached = self._blocked.get(domain_id)
        if cached is not None and now < cached[0]:
            return cached[1]
        active = self.entries(domain_id, now)
        # The set holds until the first of its entries ends.
        until = min((e.ends_at for e in active if e.ends_at is not None), default=float("inf"))
        blocked = frozenset(e.email for e in active)
        self._blocked[domain_id] = (until, blocked)
        return blocked

    def custom_count(self, domain_ids: set[str], now: float) -> int:
        """Active custom entries of these domains."""
        return sum(1 for e in self._entries if e.custom and e.domain_id in domain_ids and e.active(now))


def _records(domain: SandboxDomain) -> dict[str, dict[str, str]]:
    return {
        "spf": {"name": "", "value": "v=spf1 include:_spf.tem.scaleway.com -all"},
        "dkim": {"name": f"{domain.project_id}._domainkey", "value": _DKIM_KEY},
        "mx": {"name": "", "value": "10 blackhole.tem.scaleway.com."},
        "dmarc": {"name": "_dmarc", "value": "v=DMARC1; p=none"},
    }
