"""Checks of a campaign against its recipient file, before anything is rendered or sent.

The templates' variables are found in their syntax trees (``jinja2.meta``) and compared with what
the recipient file can give: a CSV header's columns, or the keys of the first
:data:`JSONL_SAMPLE_ROWS` rows of a JSONL file. A variable no row can provide would reject every
recipient one by one; it refuses the campaign instead, naming the variable, its templates and
the columns found.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice
from typing import Final

from jinja2 import meta, nodes

from bulksend.campaign.load import new_template_environment
from bulksend.campaign.model import Campaign
from bulksend.campaign.recipients import (
    CSV_SUFFIXES,
    RecipientInput,
    check_recipients,
    csv_header,
    iter_recipients,
)
from bulksend.errors import CampaignError

__all__ = [
    "JSONL_SAMPLE_ROWS",
    "RecipientFields",
    "check_template_variables",
    "recipient_fields",
    "required_variables",
]

JSONL_SAMPLE_ROWS: Final = 100
"""Rows of a JSONL file whose keys are taken as what the file provides."""

PROVIDED: Final = frozenset({"email", "name", "campaign"})
"""Variables the renderer gives every template, whatever the recipient file holds."""

_GUARD_FILTERS: Final = frozenset({"default", "d"})
_GUARD_TESTS: Final = frozenset({"defined", "undefined"})
_MAX_COLUMNS_SHOWN: Final = 20


def _template_sources(campaign: Campaign) -> list[tuple[str, str, bool]]:
    """``(what, source, html)`` of every template of the campaign."""
    parts = [
        ("subject", campaign.subject, False),
        ("text", campaign.text, False),
        ("html", campaign.html, True),
    ]
    parts += [(f"header {key}", source, False) for key, source in campaign.headers]
    return [p for p in parts if p[1]]


def _guarded(ast: nodes.Template) -> set[str]:
    """Names the template itself treats as optional: under ``| default(…)`` or ``is defined``."""
    found: set[str] = set()
    for node in ast.find_all((nodes.Filter, nodes.Test)):
        guards = _GUARD_FILTERS if isinstance(node, nodes.Filter) else _GUARD_TESTS
        if node.name in guards and node.node is not None:
            inner = node.node
            found.update(n.name for n in (inner, *inner.find_all(nodes.Name)) if isinstance(n, nodes.Name))
    return found


def required_variables(campaign: Campaign) -> dict[str, tuple[str, ...]]:
    """Variable → the templates that need it, for every variable a recipient must provide.

    Left out: what the environment provides (``range``, ``lipsum``, …), what the renderer gives
    every template (``email``, ``name``, ``campaign``), and any variable a template guards with
    ``default`` or ``is defined`` anywhere (its author made it optional).
    """
    environments = {html: new_template_environment(html=html) for html in (False, True)}
    uses: dict[str, list[str]] = {}
    guarded: set[str] = set()
    for what, source, html in _template_sources(campaign):
        ast = environments[html].parse(source)
        guarded |= _guarded(ast)
        for name in sorted(meta.find_undeclared_variables(ast)):
            uses.setdefault(name, []).append(what)
    provided = PROVIDED | set(environments[False].globals)
    if campaign.unsubscribe is not None:
        provided |= {"unsubscribe_url"}
    return {name: tuple(whats) for name, whats in uses.items() if name not in provided | guarded}


@dataclass(frozen=True)
class RecipientFields:
    """What a recipient file provides to templates, and how to name it in a message."""

    shown: tuple[str, ...]
    """Columns (or keys) as the file has them, for the message."""
    variables: frozenset[str]
    """The template variables they become."""
    where: str
    """``"a column of people.csv"`` or ``"a key of any of the first 100 rows of people.jsonl"``."""
    plural: str
    """The same for several variables (``"columns of people.csv"``, …)."""
    label: str
    """``"columns"`` or ``"keys"``."""


def recipient_fields(campaign: Campaign) -> RecipientFields | None:
    """What the recipient file provides (None: a JSONL file with no readable row among the first
    :data:`JSONL_SAMPLE_ROWS`, so nothing can be told). Raises :class:`CampaignError` for a file
    that cannot be read at all (missing, no ``email`` column, …)."""
    path = campaign.recipients
    check_recipients(path)
    if path.suffix.lower() in CSV_SUFFIXES:
        _, columns = csv_header(path)
        variables = set()
        for column in columns:
            lowered = column.lower()
            if column and lowered not in ("email", "name"):
                variables.add("attachments" if lowered == "attachments" else column)
        return RecipientFields(
            tuple(c for c in columns if c),
            frozenset(variables),
            f"a column of {path.name}",
            f"columns of {path.name}",
            "columns",
        )
    reader = iter_recipients(path)
    try:
        rows = [r for r in islice(reader, JSONL_SAMPLE_ROWS) if isinstance(r, RecipientInput)]
        complete = next(reader, None) is None
    finally:
        close = getattr(reader, "close", None)  # a generator: close the file now, not at collection
        if close is not None:
            close()
    if not rows:
        return None
    keys: dict[str, None] = {"email": None}
    if any(r.name for r in rows):
        keys["name"] = None
    for r in rows:
        keys.update(dict.fromkeys(r.vars))
    scope = "any row" if complete else f"any of the first {JSONL_SAMPLE_ROWS} rows"
    return RecipientFields(
        tuple(keys),
        frozenset(keys) - {"email", "name"},
        f"a key of {scope} of {path.name}",
        f"keys of {scope} of {path.name}",
        "keys",
    )


def _listing(names: Iterable[str]) -> str:
    names = list(names)
    shown = ", ".join(names[:_MAX_COLUMNS_SHOWN])
    if len(names) > _MAX_COLUMNS_SHOWN:
        shown += f", … ({len(names):,} in all)"
    return shown or "none"


def check_template_variables(campaign: Campaign) -> None:
    """Refuse the campaign when a template needs a variable no recipient row can provide.

    Raises :class:`CampaignError` naming each such variable, the templates using it and the
    columns (keys) the file has, and how to fix it.
    """
    fields = recipient_fields(campaign)
    if fields is None:
        return
    missing = {
        name: whats for name, whats in required_variables(campaign).items() if name not in fields.variables
    }
    if not missing:
        return
    described = [f"{name!r} ({', '.join(whats)})" for name, whats in missing.items()]
    first = next(iter(missing))
    if len(missing) == 1:
        head = f"template variable {described[0]} is not {fields.where}"
        fix = f"add a {first!r} {fields.label[:-1]}, or make it optional in the template"
    else:
        listed = ", ".join(described[:-1]) + f" and {described[-1]}"
        head = f"template variables {listed} are not {fields.plural}"
        fix = f"add the {fields.label}, or make them optional in the templates"
    raise CampaignError(
        f"{head}; {fields.label}: {_listing(fields.shown)}. To fix it, {fix}: "
        f"{{{{ {first} | default('') }}}} or {{% if {first} is defined %}}…{{% endif %}}"
    )
