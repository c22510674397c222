"""Schema migrations of the SQL stores: one append-only list of steps per dialect.

``MIGRATIONS[i]`` of a dialect brings its schema from version ``i`` to ``i + 1``; a released step
is never edited (add the next one), so every existing database upgrades the same way. Each store
records the steps it applied in its ``schema_version`` table and refuses a database that a newer
bulksend migrated further than it knows.
"""

from __future__ import annotations

from bulksend.errors import StoreError

__all__ = ["steps_to_apply"]


def steps_to_apply(current: int, latest: int, where: str) -> range:
    """The versions to apply to a schema at ``current``; ``StoreError`` if it is newer than ``latest``.

    ``where`` names the schema for the error (a file, a PostgreSQL schema).
    """
    if current > latest:
        raise StoreError(
            f"{where} is at v{current}, newer than this bulksend supports (v{latest}); upgrade bulksend"
        )
    return range(current + 1, latest + 1)
