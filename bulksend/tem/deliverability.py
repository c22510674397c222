"""Typed models of TEM's deliverability endpoints: blocklists, domains and their DNS checks, and the
project's consumption.

Parsed as tolerantly as the email models (:mod:`bulksend.tem.models`): missing keys are empty or
zero, and an enum value this version does not know maps to the enum's ``unknown`` member.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Final

from bulksend.tem.models import _int, _opt_time, _TolerantEnum

__all__ = [
    "RECORD_KINDS",
    "Blocklist",
    "BlocklistOrderBy",
    "BlocklistType",
    "DnsRecord",
    "Domain",
    "DomainReputation",
    "DomainStatus",
    "DomainVerification",
    "ListBlocklistsPage",
    "ListDomainsPage",
    "ProjectConsumption",
    "RecordCheck",
    "RecordStatus",
    "ReputationStatus",
]

RECORD_KINDS: Final = ("spf", "dkim", "mx", "dmarc")
"""The DNS records TEM checks for a domain, in the order they are reported."""


class BlocklistType(_TolerantEnum):
    """Why TEM blocks an address."""

    UNKNOWN_TYPE = "unknown_type"
    MAILBOX_FULL = "mailbox_full"
    MAILBOX_NOT_FOUND = "mailbox_not_found"


class BlocklistOrderBy(_TolerantEnum):
    """Sort orders of ``GET /blocklists``."""

    CREATED_AT_DESC = "created_at_desc"
    CREATED_AT_ASC = "created_at_asc"
    ENDS_AT_DESC = "ends_at_desc"
    ENDS_AT_ASC = "ends_at_asc"


class DomainStatus(_TolerantEnum):
    """Status of a sending domain. Only ``checked`` domains may send."""

    UNKNOWN = "unknown"
    CHECKED = "checked"
    UNCHECKED = "unchecked"
    INVALID = "invalid"
    LOCKED = "locked"
    REVOKED = "revoked"
    PENDING = "pending"
    AUTOCONFIGURING = "autoconfiguring"


class ReputationStatus(_TolerantEnum):
    """TEM's word for a reputation score."""

    UNKNOWN_STATUS = "unknown_status"
    EXCELLENT = "excellent"
    GOOD = "good"
    AVERAGE = "average"
    BAD = "bad"


class RecordStatus(_TolerantEnum):
    """Outcome of TEM's check of one DNS record."""

    UNKNOWN_RECORD_STATUS = "unknown_record_status"
    VALID = "valid"
    INVALID = "invalid"
    NOT_FOUND = "not_found"


def _str(data: Mapping[str, Any], key: str) -> str:
    return str(data.get(key) or "")


def _object(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key)
    return value if isinstance(value, Mapping) else {}


@dataclass(frozen=True, slots=True)
class Blocklist:
    """One blocked address of a domain. ``ends_at`` None: blocked until deleted."""

    id: str
    domain_id: str = ""
    email: str = ""
    type: BlocklistType = BlocklistType.UNKNOWN_TYPE
    reason: str = ""
    custom: bool = False
    created_at: datetime | None = None
    updated_at: datetime | None = None
    ends_at: datetime | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Blocklist:
        return cls(
            id=_str(data, "id"),
            domain_id=_str(data, "domain_id"),
            email=_str(data, "email"),
            type=BlocklistType.parse(data.get("type")),
            reason=_str(data, "reason"),
            custom=data.get("custom") is True,
            created_at=_opt_time(data, "created_at"),
            updated_at=_opt_time(data, "updated_at"),
            ends_at=_opt_time(data, "ends_at"),
        )


@dataclass(frozen=True, slots=True)
class ListBlocklistsPage:
    """One page of ``GET /blocklists``."""

    total_count: int
    blocklists: tuple[Blocklist, ...]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ListBlocklistsPage:
        items = data.get("blocklists") or ()
        return cls(
            total_count=_int(data.get("total_count")),
            blocklists=tuple(Blocklist.from_json(b) for b in items if isinstance(b, Mapping)),
        )


@dataclass(frozen=True, slots=True)
class DomainReputation:
    """A checked domain's reputation: ``score`` from 0 (bad) to 100 (excellent)."""

    status: ReputationStatus = ReputationStatus.UNKNOWN_STATUS
    score: int = 0
    scored_at: datetime | None = None
    previous_score: int | None = None
    previous_scored_at: datetime | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DomainReputation:
        previous = data.get("previous_score")
        return cls(
            status=ReputationStatus.parse(data.get("status")),
            score=_int(data.get("score")),
            scored_at=_opt_time(data, "scored_at"),
            previous_score=None if previous is None else _int(previous),
            previous_scored_at=_opt_time(data, "previous_scored_at"),
        )


@dataclass(frozen=True, slots=True)
class DnsRecord:
    """A DNS record TEM asks the domain's owner to publish."""

    name: str = ""
    value: str = ""


@dataclass(frozen=True, slots=True)
class Domain:
    """A sending domain of a project.

    ``reputation`` is None until TEM has scored the domain (it must be checked and have sent
    enough emails); ``records`` maps ``spf``/``dkim``/``dmarc``/``mx`` to what to publish.
    """

    id: str
    name: str = ""
    project_id: str = ""
    organization_id: str = ""
    status: DomainStatus = DomainStatus.UNKNOWN
    created_at: datetime | None = None
    next_check_at: datetime | None = None
    last_valid_at: datetime | None = None
    revoked_at: datetime | None = None
    last_error: str = ""
    spf_config: str = ""
    dkim_config: str = ""
    reputation: DomainReputation | None = None
    records: Mapping[str, DnsRecord] | None = None
    region: str = ""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Domain:
        reputation = data.get("reputation")
        records = _object(data, "records")
        return cls(
            id=_str(data, "id"),
            name=_str(data, "name"),
            project_id=_str(data, "project_id"),
            organization_id=_str(data, "organization_id"),
            status=DomainStatus.parse(data.get("status")),
            created_at=_opt_time(data, "created_at"),
            next_check_at=_opt_time(data, "next_check_at"),
            last_valid_at=_opt_time(data, "last_valid_at"),
            revoked_at=_opt_time(data, "revoked_at"),
            last_error=_str(data, "last_error"),
            spf_config=_str(data, "spf_config"),
            dkim_config=_str(data, "dkim_config"),
            reputation=DomainReputation.from_json(reputation) if isinstance(reputation, Mapping) else None,
            records={
                kind: DnsRecord(_str(record, "name"), _str(record, "value"))
                for kind in RECORD_KINDS
                if (record := _object(records, kind))
            },
            region=_str(data, "region"),
        )


@dataclass(frozen=True, slots=True)
class ListDomainsPage:
    """One page of ``GET /domains``."""

    total_count: int
    domains: tuple[Domain, ...]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ListDomainsPage:
        items = data.get("domains") or ()
        return cls(
            total_count=_int(data.get("total_count")),
            domains=tuple(Domain.from_json(d) for d in items if isinstance(d, Mapping)),
        )


@dataclass(frozen=True, slots=True)
class RecordCheck:
    """TEM's last check of one DNS record; ``error`` says what is wrong when it is not valid."""

    status: RecordStatus = RecordStatus.UNKNOWN_RECORD_STATUS
    last_valid_at: datetime | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status is RecordStatus.VALID

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RecordCheck:
        return cls(
            status=RecordStatus.parse(data.get("status")),
            last_valid_at=_opt_time(data, "last_valid_at"),
            error=_str(data, "error"),
        )


@dataclass(frozen=True, slots=True)
class DomainVerification:
    """``GET /domains/{id}/verification``: the last check of the SPF, DKIM, MX and DMARC records."""

    domain_id: str = ""
    domain_name: str = ""
    spf: RecordCheck = RecordCheck()
    dkim: RecordCheck = RecordCheck()
    mx: RecordCheck = RecordCheck()
    dmarc: RecordCheck = RecordCheck()

    def failing(self) -> list[tuple[str, RecordCheck]]:
        """``(kind, check)`` of every record that is not valid, in :data:`RECORD_KINDS` order."""
        return [(kind, check) for kind in RECORD_KINDS if not (check := getattr(self, kind)).ok]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DomainVerification:
        return cls(
            domain_id=_str(data, "domain_id"),
            domain_name=_str(data, "domain_name"),
            **{kind: RecordCheck.from_json(_object(data, f"{kind}_record")) for kind in RECORD_KINDS},
        )


@dataclass(frozen=True, slots=True)
class ProjectConsumption:
    """``GET /project-consumption``: what a project uses, emails of the current month included."""

    project_id: str = ""
    domains_count: int = 0
    dedicated_ips_count: int = 0
    monthly_emails_count: int = 0
    webhooks_count: int = 0
    custom_blocklists_count: int = 0

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProjectConsumption:
        return cls(
            project_id=_str(data, "project_id"),
            **{f.name: _int(data.get(f.name)) for f in fields(cls) if f.name != "project_id"},
        )
