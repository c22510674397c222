"""The outbox store: one protocol (:mod:`bulksend.store.base`), one backend per module.

``open_store`` picks the backend from a URL or a path::

    memory:                    MemoryStore (nothing persists; tests and --dry-run)
    /var/lib/bulksend/x.db     SqliteStore on that file (a relative path is relative to the cwd)
    sqlite:///abs/path.db      SqliteStore on /abs/path.db (three slashes, then an absolute path)
    sqlite:relative.db         SqliteStore on relative.db
    …?durability=normal        SqliteStore with synchronous=NORMAL (see bulksend.store.sqlite)
    postgresql://user@host/db  PostgresStore (also postgres://); ``?schema=name`` picks the
                               PostgreSQL schema (default ``bulksend``); other query parameters
                               (``sslmode``…) go to the driver as libpq would read them

The returned store is not opened yet: ``await store.open()`` (or ``async with store:``).
"""

from __future__ import annotations

from os import PathLike, fspath
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit, urlunsplit

from bulksend.errors import ConfigError
from bulksend.store.base import (
    TRANSITIONS,
    AdmitResult,
    CampaignRecord,
    CampaignState,
    FinalUpdate,
    JournalledStore,
    LeaseLostError,
    NewRecipient,
    RecipientRow,
    RowState,
    SendRecord,
    StateLoss,
    Store,
)
from bulksend.store.memory import MemoryStore
from bulksend.store.sqlite import Durability, SqliteStore

if TYPE_CHECKING:
    from bulksend.store.postgres import PostgresStore

__all__ = [
    "TRANSITIONS",
    "AdmitResult",
    "CampaignRecord",
    "CampaignState",
    "Durability",
    "FinalUpdate",
    "JournalledStore",
    "LeaseLostError",
    "MemoryStore",
    "NewRecipient",
    "PostgresStore",
    "RecipientRow",
    "RowState",
    "SendRecord",
    "SqliteStore",
    "StateLoss",
    "Store",
    "describe_store",
    "open_store",
]


def open_store(url_or_path: str | PathLike[str], *, durability: Durability | None = None) -> Store:
    """The store named by ``url_or_path`` (see the module docstring), not yet opened.

    ``durability`` applies to SQLite and overrides a ``?durability=`` in the URL; default ``full``
    (PostgreSQL ignores it: its durability is the server's ``synchronous_commit``).
    Raises ``ConfigError`` for an unknown scheme or option.
    """
    target = fspath(url_or_path)
    if target in ("memory:", "memory://"):
        return MemoryStore()
    scheme = target.split(":", 1)[0].lower() if "://" in target or target.startswith("sqlite:") else ""
    if scheme in ("postgresql", "postgres"):
        return _postgres_store(target)
    if scheme and scheme != "sqlite":
        raise ConfigError(
            f"unknown store scheme {scheme!r}: use 'memory:', a file path or 'sqlite:///path/to/file.db'"
        )
    path, options = target, {}
    if scheme == "sqlite":
        rest = target[len("sqlite:") :]
        if rest.startswith("//"):
            rest = rest[2:]
        path, _, query = rest.partition("?")
        options = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
        unknown = sorted(set(options) - {"durability"})
        if unknown:
            raise ConfigError(
                f"unknown SQLite store option(s) {', '.join(unknown)}: only 'durability' is known"
            )
    chosen = durability or options.get("durability", "full")
    if chosen not in ("full", "normal"):
        raise ConfigError(f"store durability must be 'full' or 'normal', not {chosen!r}")
    if not path:
        raise ConfigError(f"no database file in store URL {target!r}")
    return SqliteStore(path, durability="full" if chosen == "full" else "normal")


def describe_store(store: Store) -> str:
    """What an operator needs to find ``store``: its kind and location, never a password."""
    if isinstance(store, SqliteStore):
        return f"SQLite store {store.path}"
    if isinstance(store, MemoryStore):
        return "in-memory store"
    dsn = getattr(store, "dsn", None)  # PostgresStore masks the password in ``dsn``
    schema = getattr(store, "schema", None)
    if isinstance(dsn, str):
        return f"PostgreSQL store {dsn} (schema {schema})" if schema else f"PostgreSQL store {dsn}"
    return type(store).__name__


def _postgres_store(url: str) -> PostgresStore:
    # Imported here: asyncpg is only needed by those who use PostgreSQL.
    from bulksend.store.postgres import PostgresStore

    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schemas = [v for k, v in query if k == "schema"]
    if "durability" in {k for k, _ in query}:
        raise ConfigError("the 'durability' option is for SQLite; PostgreSQL follows its synchronous_commit")
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    dsn = urlunsplit((parts.scheme, parts.netloc, parts.path, rest, parts.fragment))
    if schemas:
        return PostgresStore(dsn, schema=schemas[-1])
    return PostgresStore(dsn)


def __getattr__(name: str) -> object:
    # ``from bulksend.store import PostgresStore`` works without importing asyncpg up front.
    if name == "PostgresStore":
        from bulksend.store.postgres import PostgresStore

        return PostgresStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
