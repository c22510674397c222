"""The sandbox's command-line options, for ``bulksend sandbox`` and ``python -m bulksend.sandbox``.

Declared apart from :mod:`bulksend.sandbox.cli` so that building the ``bulksend`` parser (and its
``--help``) imports neither aiohttp nor the server.
"""

from __future__ import annotations

import argparse

from .config import DEFAULT_PROJECT_ID, DEFAULT_SECRET_KEY

__all__ = ["SECRET_ENV", "configure"]

SECRET_ENV = "BULKSEND_SANDBOX_SECRET"


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the sandbox options to ``parser``."""
    net = parser.add_argument_group("server")
    net.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    net.add_argument(
        "--port", type=int, default=8025, help="TCP port, 0 for any free one (default: %(default)s)"
    )
    net.add_argument(
        "--secret-key",
        help=f"X-Auth-Token to expect (default: ${SECRET_ENV} or {DEFAULT_SECRET_KEY!r})",
    )
    net.add_argument("--project-id", default=DEFAULT_PROJECT_ID, help="project used when a send omits one")
    net.add_argument(
        "--allow-from-domain",
        action="append",
        metavar="DOMAIN",
        help="only accept senders of this domain (repeatable; default: any)",
    )

    life = parser.add_argument_group("lifecycle (seconds)")
    life.add_argument("--sending-after-s", type=float, default=0.0, help="time an email stays `new`")
    life.add_argument("--final-after-s", type=float, default=0.0, help="time in `sending` per delivery try")
    life.add_argument("--soft-bounce-retry-s", type=float, default=0.0, help="extra wait before a retry")
    life.add_argument("--hold-s", type=float, default=3600.0, help="time `hold…` recipients stay `new`")

    chaos = parser.add_argument_group("latency, limits and faults")
    chaos.add_argument("--latency-ms", type=float, default=0.0, help="added latency per request")
    chaos.add_argument("--jitter-ms", type=float, default=0.0, help="uniform extra latency per request")
    chaos.add_argument(
        "--rate-limit",
        type=float,
        metavar="PER_S",
        help="requests/s over all API calls; excess gets a bare 429",
    )
    chaos.add_argument("--rate-burst", type=float, help="token bucket size (default: rate/10, min 1)")
    for flag, what in (
        ("--fault-5xx-before", "a 5xx before the request takes effect"),
        ("--fault-5xx-after", "a 5xx after the request took effect (ambiguous send)"),
        ("--fault-drop", "closing the connection without an answer"),
    ):
        chaos.add_argument(flag, type=float, default=0.0, metavar="P", help=f"probability of {what}")
    chaos.add_argument("--seed", type=int, help="seed for reproducible faults and jitter")

    hooks = parser.add_argument_group("webhook events (after POST /webhooks, as TEM emits them)")
    hooks.add_argument("--webhook-sns-url", metavar="URL", help="publish them through this SNS API (moto…)")
    hooks.add_argument("--webhook-http-url", metavar="URL", help="or POST them, signed like SNS, to this URL")
    hooks.add_argument("--webhook-signing-key", metavar="PEM", help="RSA key signing HTTP deliveries")
    hooks.add_argument("--webhook-cert-url", metavar="URL", help="SigningCertURL of that key's certificate")

    dom = parser.add_argument_group("domains, blocklists and consumption (script a bad domain)")
    dom.add_argument(
        "--domain-status",
        default="checked",
        choices=("checked", "unchecked", "invalid", "locked", "revoked", "pending", "autoconfiguring"),
        help="status of every sending domain; only checked ones may send (default: %(default)s)",
    )
    dom.add_argument(
        "--domain-reputation",
        type=int,
        default=90,
        metavar="SCORE",
        help="reputation score 0..100 of every domain, -1 for not scored yet (default: %(default)s)",
    )
    dom.add_argument(
        "--failing-record",
        action="append",
        choices=("spf", "dkim", "mx", "dmarc"),
        help="a DNS record the domain verification reports missing (repeatable)",
    )
    dom.add_argument(
        "--blocklist",
        action="append",
        metavar="TYPE:ADDRESS",
        help="a blocklisted address, TYPE mailbox_full or mailbox_not_found (repeatable)",
    )
    dom.add_argument(
        "--monthly-emails",
        type=int,
        default=0,
        metavar="N",
        help="emails the project sent this month before the sandbox's own (project consumption)",
    )
    dom.add_argument(
        "--offer",
        default="essential",
        choices=("essential", "scale"),
        help="the project's plan; custom blocklists need scale (default: %(default)s)",
    )
