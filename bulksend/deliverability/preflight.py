"""Checks before sending: the sender's domain at TEM, and the project's monthly quota.

TEM sends only from a *checked* domain, locks a domain whose reputation score falls under 50,
and alerts at 70 % of the monthly quota. :func:`check_domain` refuses what TEM would refuse anyway
(an unchecked, revoked or locked domain: every email would come back 400) and a reputation under
:data:`REFUSE_UNDER` (unless forced), saying what to do; it warns under :data:`WARN_UNDER` and
for every failing SPF, DKIM, MX or DMARC check. :func:`check_quota` warns when a campaign would take
the month's emails past :data:`QUOTA_WARN_SHARE` of the quota.

A check that cannot be made (a key that may not read domains, TEM unreachable) is a warning, never
a refusal: the checks guard a sender's reputation, they must not stop a campaign on their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

import anyio
import structlog

from bulksend.errors import (
    AccountRefusedError,
    AuthenticationError,
    DomainRefused,
    TemError,
    TemPermanentError,
)
from bulksend.pipeline.dispatch import account_refusal
from bulksend.tem.client import TemClient
from bulksend.tem.deliverability import Domain, DomainStatus, RecordCheck

__all__ = [
    "CHECK_TIMEOUT_S",
    "DEFAULT_MONTHLY_QUOTA",
    "QUOTA_WARN_SHARE",
    "REFUSE_UNDER",
    "WARN_UNDER",
    "DomainCheck",
    "DomainRefused",
    "check_domain",
    "check_quota",
]

log = structlog.get_logger("bulksend.deliverability")

WARN_UNDER: Final = 70
"""A reputation score under this is worth a warning."""
REFUSE_UNDER: Final = 50
"""Under this score TEM locks the domain: a campaign is refused unless forced."""
DEFAULT_MONTHLY_QUOTA: Final = 10_000
"""TEM's default monthly quota (emails; each recipient counts as one)."""
CHECK_TIMEOUT_S: Final = 10.0
"""Longest wait for TEM's answers about the domain."""
QUOTA_WARN_SHARE: Final = 0.7
"""TEM alerts at 70 % of the monthly quota; so does bulksend, before the campaign."""

_CONSOLE: Final = "the Scaleway console (Transactional Email → Domains)"
_FIX_RECORDS: Final = (
    f"publish the domain's SPF, DKIM, MX and DMARC records in its DNS zone (their values are in "
    f"{_CONSOLE}), then run the domain's check there; sending works once its status is checked"
)
_FIXES: Final = {
    DomainStatus.UNCHECKED: _FIX_RECORDS,
    DomainStatus.INVALID: _FIX_RECORDS,
    DomainStatus.PENDING: "wait for TEM's check to finish (a few minutes), then send again",
    DomainStatus.AUTOCONFIGURING: "wait for TEM to finish configuring the DNS zone, then send again",
    DomainStatus.REVOKED: (
        f"the domain was deleted from TEM: add it again in {_CONSOLE}, publish its records and wait "
        "for it to be checked, or send from another checked domain"
    ),
    DomainStatus.LOCKED: (
        "TEM locked the domain (a reputation under 50, or abuse): stop sending, remove the addresses "
        "that bounce or complain, and ask Scaleway's support to unlock it"
    ),
}


@dataclass
class DomainCheck:
    """What :func:`check_domain` found: the domain (None when it could not be read) and warnings."""

    name: str
    domain: Domain | None = None
    warnings: list[str] = field(default_factory=list)


def _failing_text(failing: list[tuple[str, RecordCheck]]) -> str:
    return "; ".join(
        f"{kind.upper()} {check.status.value}" + (f" ({check.error})" if check.error else "")
        for kind, check in failing
    )


async def _read_domain(
    tem: TemClient, name: str, result: DomainCheck
) -> tuple[Domain | None, list[tuple[str, RecordCheck]]] | None:
    """The domain called ``name`` and its failing DNS checks; None (and a warning) when TEM could
    not say."""
    try:
        domain = await tem.find_domain(name)
    except AuthenticationError as exc:
        # A wrong key fails every call: say so once, as a send would.
        raise account_refusal(exc) or AccountRefusedError(str(exc)) from exc
    except TemError as exc:
        hint = (
            " (the key needs TransactionalEmailDomainReadOnly to read domains)"
            if isinstance(exc, TemPermanentError)
            else ""
        )
        result.warnings.append(f"could not check the sending domain {name}{hint}: {exc}")
        return None
    failing: list[tuple[str, RecordCheck]] = []
    if domain is not None:
        try:
            failing = (await tem.get_domain_verification(domain.id)).failing()
        except TemError as exc:
            result.warnings.append(f"could not read the DNS checks of {name}: {exc}")
    return domain, failing


async def check_domain(
    tem: TemClient, sender: str, *, force: bool = False, timeout_s: float = CHECK_TIMEOUT_S
) -> DomainCheck:
    """Check the domain of ``sender`` at TEM; raises :class:`DomainRefused` when it must not send,
    and ``AccountRefusedError`` when TEM refuses the key. TEM not answering within ``timeout_s``
    is a warning: a slow API must not hold a start up."""
    name = sender.rpartition("@")[2].strip().lower()
    result = DomainCheck(name)
    project = tem.settings.project_id
    read = None
    with anyio.move_on_after(timeout_s) as scope:
        read = await _read_domain(tem, name, result)
    if scope.cancelled_caught:
        result.warnings.append(
            f"could not check the sending domain {name}: no answer from TEM within {timeout_s:g} s"
        )
    if read is None:
        return result
    domain, failing = read
    if domain is None:
        raise DomainRefused(
            f"{name}, the sender's domain, is not a domain of TEM project {project}: TEM would refuse "
            f"every email. Add it in {_CONSOLE} and have it checked, or send from a checked domain "
            "of this project"
        )
    result.domain = domain
    if domain.status is not DomainStatus.CHECKED:
        fix = _FIXES.get(domain.status, _FIX_RECORDS)
        records = f" Failing DNS checks: {_failing_text(failing)}." if failing else ""
        raise DomainRefused(
            f"the sending domain {name} is {domain.status.value} at TEM, so TEM would refuse every "
            f"email.{records} To fix it, {fix}"
        )
    if failing:
        result.warnings.append(
            f"{name}: failing DNS checks: {_failing_text(failing)}. Gmail and Yahoo require SPF, DKIM "
            f"and DMARC of bulk senders; fix the records in the domain's DNS zone (values in {_CONSOLE})"
        )
    reputation = domain.reputation
    if reputation is not None and reputation.score < WARN_UNDER:
        score = f"{name}: reputation score {reputation.score}/100 ({reputation.status.value})"
        advice = (
            "remove addresses that bounce or complain, send to people who expect the email, and "
            "slow down; see the domain's Email activity in the console"
        )
        if reputation.score < REFUSE_UNDER:
            if not force:
                raise DomainRefused(
                    f"{score}: under {REFUSE_UNDER}, TEM locks the domain and sending more can only make "
                    f"it worse. To fix it, {advice}. To send anyway, add --force"
                )
            result.warnings.append(f"{score}, under {REFUSE_UNDER}: sending anyway (--force)")
        else:
            result.warnings.append(
                f"{score}, under {WARN_UNDER}; TEM locks the domain under {REFUSE_UNDER}: {advice}"
            )
    log.info(
        "domain.checked",
        domain=name,
        status=domain.status.value,
        reputation=None if reputation is None else reputation.score,
        failing=[kind for kind, _ in failing],
    )
    return result


async def check_quota(tem: TemClient, emails: int, monthly_quota: int | None) -> str | None:
    """A warning when ``emails`` more this month would pass 70 % of ``monthly_quota``; else None.

    ``monthly_quota`` None or 0: no check. A consumption TEM does not give is a warning too.
    """
    if not monthly_quota or emails <= 0:
        return None
    try:
        used = (await tem.get_project_consumption()).monthly_emails_count
    except TemError as exc:
        return f"could not read the project's consumption of its monthly quota: {exc}"
    after = used + emails
    if after <= QUOTA_WARN_SHARE * monthly_quota:
        return None
    share = after / monthly_quota
    beyond = (
        "; TEM refuses the emails beyond the quota: ask Scaleway to raise it, or send part of the "
        "list next month"
        if after > monthly_quota
        else ""
    )
    return (
        f"quota: {used:,} emails sent this month + {emails:,} for this campaign = {share:.0%} of the "
        f"monthly quota ({monthly_quota:,}); TEM alerts at {QUOTA_WARN_SHARE:.0%}{beyond}"
    )
