"""Dispatch: one recipient's email from ``pending`` to ``submitted``, exactly once.

Order of one attempt, and why:

1. take a slot from the shared limiter (every POST costs quota);
2. write ``sending`` durably (shielded) — *before* the POST, so a crash after TEM created the email
   leaves a row that will be reconciled instead of blindly re-sent;
3. POST;
4. record the answer (shielded, so a cancellation that lands right after TEM answered cannot lose
   the email id):

   * 200 → ``submitted`` with the email id;
   * 429 / never connected / a gateway 502-503 without TEM's JSON body → the email surely does not
     exist: back to ``pending`` and retry (tenacity, jittered backoff, a token of the retry budget;
     on a 429 the limiter slows down for everyone);
   * other 5xx / timeout / dropped connection → *ambiguous*: the row stays ``sending`` and goes to
     the reconciler, which looks the email up before anything is sent again;
   * other 4xx → ``rejected`` with TEM's message, except account-level refusals (401, 403), which
     stop the campaign: every other email would be refused too.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import anyio
import structlog

from bulksend.errors import (
    AccountRefusedError,
    AuthenticationError,
    PermissionsDeniedError,
    QuotaExceededError,
    RateLimitedError,
    StoreError,
    TemApiError,
    TemError,
    TemPermanentError,
)
from bulksend.pipeline.context import SendContext
from bulksend.pipeline.flow import report_failure, spend_retry
from bulksend.pipeline.retry import Signal, is_safe_to_resend, retry_after_of, retrying, signal_of
from bulksend.store.base import LeaseLostError
from bulksend.tem.client import SentEmail
from bulksend.tem.models import Email

__all__ = [
    "AccountRefusedError",
    "Dispatcher",
    "OutcomeSink",
    "SendItem",
    "account_refusal",
    "record_submitted",
]

log = structlog.get_logger("bulksend.dispatch")


@dataclass(frozen=True, slots=True)
class SendItem:
    """A rendered email ready to POST, tied to its outbox row."""

    row_id: int
    row: int
    email: str
    subject: str
    body: bytes
    correlation: str
    campaign_id: str = ""
    mail_from: str = ""
    """Sender address, for reconciliation lookups (campaigns of one process may differ)."""
    lease_token: int | None = None
    """Fencing token of this worker's lease on the row (scale-out); None in single-process mode."""
    lane: str = ""
    """The engine lane that sends it (a job stream's name); empty or unknown: the default lane."""


class OutcomeSink(Protocol):
    """Where the engine reports what becomes of the rows it sends."""

    def on_submitted(self, item: SendItem, email_id: str) -> None:
        """TEM accepted the item's email (it is ``submitted``): follow it to its final status."""
        ...

    async def on_found(self, email: Email, row_id: int) -> None:
        """Reconciliation found the row's email at TEM, already final: record its status."""
        ...

    async def on_outcome(self, campaign_id: str, rows: Sequence[tuple[int, str]]) -> None:
        """Rows reached a terminal state without tracking (e.g. ``rejected`` by TEM)."""
        ...


def utcnow() -> datetime:
    return datetime.now(UTC)


class _NotPending(Exception):
    """Internal: the row is no longer ``pending`` (another task or process owns it): skip it."""


class _Retryable(Exception):
    """Internal: the attempt surely created nothing and may be retried."""

    def __init__(self, cause: TemError) -> None:
        super().__init__(str(cause))
        self.cause = cause


class Dispatcher:
    """Sends rendered emails through the limiter, recording every step in the store."""

    def __init__(
        self,
        context: SendContext,
        *,
        on_ambiguous: Callable[[SendItem, datetime, datetime], Awaitable[None]],
        sink: OutcomeSink | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        self._ctx = context
        self._sink = sink
        self._on_ambiguous = on_ambiguous
        self._should_stop = should_stop

    async def send(self, item: SendItem) -> bool:
        """Send one email with retries. Returns False when it was left ``pending`` (retries exhausted).

        Raises :class:`AccountRefusedError` when TEM refuses the account (401/403).
        """
        try:
            try:
                # Most sends succeed at once: build the retry machinery only for one that did not.
                await self._attempt(item)
            except _Retryable as first:
                policy = self._ctx.retry
                if policy.max_attempts <= 1:
                    raise
                # The remaining attempts, after a jittered first backoff (honouring Retry-After).
                retry_after = retry_after_of(first) or 0.0
                await self._ctx.sleep(max(retry_after, random.uniform(0, policy.initial_backoff_s)))
                rest = dataclasses.replace(policy, max_attempts=policy.max_attempts - 1)
                async for attempt in retrying(
                    rest,
                    retry_on=lambda e: isinstance(e, _Retryable),
                    sleep=self._ctx.sleep,
                    # A 429 means "later", and the shared limiter is already slowing everyone
                    # down: it costs retry time, not one of the few attempts.
                    counts_as_attempt=lambda e: (
                        not (isinstance(e, _Retryable) and isinstance(e.cause, RateLimitedError))
                    ),
                ):
                    with attempt:
                        await spend_retry(self._ctx.limiter)
                        await self._attempt(item)
        except LeaseLostError:
            # Our lease expired and another worker owns the row now: it reconciles whatever this
            # attempt did (the row is `sending`), so recording nothing here keeps exactly-once.
            log.warning("email.lease_lost", row=item.row)
            return False
        except _NotPending:
            # mark_sending is a compare-and-set from `pending`: a row queued twice (a redelivered
            # job, a canceled campaign, another worker) is sent by whoever moved it first.
            log.debug("email.not_pending", row=item.row)
            return False
        except _Retryable as exc:
            log.warning(
                "email.deferred",
                row=item.row,
                reason=str(exc.cause),
                hint="left pending; rerun the same command to resume",
            )
            self._ctx.stats.deferred += 1
            return False
        return True

    async def _attempt(self, item: SendItem) -> None:
        await self._ctx.limiter.acquire("send")
        if self._should_stop is not None and self._should_stop():
            # Paused or stopping while this task waited for its slot: the row stays `pending`.
            raise _NotPending
        started_at = utcnow()
        try:
            # Not shielded: a cancellation lands either before the write is queued (nothing
            # happened) or after it (the store's writer still commits it, no POST follows, and the
            # next run reconciles the row, finds no email and sends it).
            await self._ctx.store.mark_sending(
                item.row_id, started_at=started_at, correlation=item.correlation, lease_token=item.lease_token
            )
        except StoreError as exc:
            raise _NotPending from exc
        if self._should_stop is not None and self._should_stop():
            # Paused while the row was being marked: with no await from this check to the POST,
            # a pause answered before it sends nothing more, and one answered after it finds the
            # row `sending` until its outcome is recorded.
            with anyio.CancelScope(shield=True):
                await self._ctx.store.mark_retry(
                    item.row_id, reason="stopped before the request went out", lease_token=item.lease_token
                )
            raise _NotPending
        self._ctx.stats.in_flight += 1
        try:
            emails = await self._ctx.tem.submit(item.body)
        except TemPermanentError as exc:
            await self._permanent(item, exc)
            return
        except TemError as exc:
            await self._transient(item, exc, started_at)
            return
        finally:
            self._ctx.stats.in_flight -= 1
        self._ctx.limiter.on_success()
        email = _pick(emails, item.email)
        await record_submitted(self._ctx, item, email)
        if self._sink is not None:
            self._sink.on_submitted(item, email.id)

    async def _permanent(self, item: SendItem, exc: TemPermanentError) -> None:
        # A 4xx means TEM refused the request: no email was created, so the row may leave
        # `sending` without reconciliation.
        self._ctx.limiter.on_success()
        refused = account_refusal(exc)
        if refused is not None:
            with anyio.CancelScope(shield=True):
                await self._ctx.store.mark_retry(
                    item.row_id, reason=f"account refused: {exc.message}", lease_token=item.lease_token
                )
            raise refused from exc
        reason = f"TEM refused the email ({exc.status} {exc.type or 'error'}): {exc.message}"
        fields = exc.fields
        if fields:
            reason += " — " + "; ".join(f"{k}: {v}" for k, v in fields.items())
        with anyio.CancelScope(shield=True):
            await self._ctx.store.mark_rejected(item.row_id, reason=reason, lease_token=item.lease_token)
        self._ctx.stats.rejected += 1
        log.debug("email.rejected", row=item.row, reason=reason)
        if self._sink is not None:
            await self._sink.on_outcome(item.campaign_id, [(item.row_id, "rejected")])

    async def _transient(self, item: SendItem, exc: TemError, started_at: datetime) -> None:
        signal = signal_of(exc)
        if signal is Signal.THROTTLE:
            self._ctx.limiter.on_throttle(exc.retry_after_s if isinstance(exc, TemApiError) else None)
        elif signal is Signal.FAILURE:
            # A 5xx or a transport failure never slows the rate; a run of them trips the breaker.
            report_failure(self._ctx.limiter)
        if is_safe_to_resend(exc):
            with anyio.CancelScope(shield=True):
                await self._ctx.store.mark_retry(item.row_id, reason=str(exc), lease_token=item.lease_token)
            raise _Retryable(exc) from exc
        # Ambiguous: TEM may have created the email. Never resend blindly.
        ended_at = utcnow()
        with anyio.CancelScope(shield=True):
            await self._ctx.store.mark_ambiguous(
                item.row_id, ended_at=ended_at, reason=str(exc), lease_token=item.lease_token
            )
        self._ctx.stats.ambiguous += 1
        log.debug("email.ambiguous", row=item.row, error=str(exc))
        await self._on_ambiguous(item, started_at, ended_at)


async def record_submitted(
    context: SendContext, item: SendItem, email: SentEmail | Email, *, adopted: bool = False
) -> None:
    """Record ``email`` as the one TEM holds for the item's row (``submitted``) and count it
    (``adopted``: found at TEM by reconciliation, not accepted in answer to a send of ours).

    Shielded, so that a cancellation landing right after TEM answered cannot lose the email id.
    """
    with anyio.CancelScope(shield=True):
        await context.store.mark_submitted(
            item.row_id,
            email_id=email.id,
            message_id=email.message_id,
            submitted_at=email.created_at or utcnow(),
            lease_token=item.lease_token,
        )
    context.stats.add_submitted(adopted=adopted)


def _pick(emails: list[SentEmail], address: str) -> SentEmail:
    """The email created for ``address`` (one request has one recipient, but be exact)."""
    wanted = address.strip().lower()
    for email in emails:
        if email.mail_rcpt.lower() == wanted:
            return email
    if emails:
        return emails[0]
    raise TemApiError(200, "TEM answered 200 without any email", type="protocol_error")


def account_refusal(exc: TemError) -> AccountRefusedError | None:
    """The account refusal ``exc`` is (a 401 or 403 that every other call would get too), or None."""
    if isinstance(exc, AuthenticationError | PermissionsDeniedError | QuotaExceededError):
        return AccountRefusedError(_account_hint(exc))
    return None


def _account_hint(exc: TemPermanentError) -> str:
    if isinstance(exc, AuthenticationError):
        return (
            f"TEM refused the secret key ({exc.status}: {exc.message}). "
            "Check SCW_SECRET_KEY (or the scw profile) and try again."
        )
    if isinstance(exc, QuotaExceededError):
        return (
            f"TEM says the email quota is used up ({exc.message}). Raise the quota in the Scaleway "
            "console, then rerun the same command to resume."
        )
    return (
        f"TEM denied permission ({exc.status}: {exc.message}). The key needs "
        "TransactionalEmailEmailApiCreate (send) and TransactionalEmailEmailReadOnly (tracking); "
        "check the sender domain belongs to SCW_DEFAULT_PROJECT_ID."
    )
