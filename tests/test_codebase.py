"""Rules about the source tree itself, checked like any other behaviour."""

from __future__ import annotations

import ast
from pathlib import Path

import bulksend

PACKAGE = Path(bulksend.__file__).parent
MAX_MODULE_DOCSTRING_LINES = 30
# errors.py draws the whole error tree, which tests/test_errors.py pins to the real classes.
DRAWN_IN_FULL = {"bulksend/errors.py"}


def test_module_docstrings_stay_short() -> None:
    """No bulksend module docstring runs past 30 lines, but the drawn error tree.

    A module docstring says what the module is for and why it works as it does (invariants,
    ordering, crash windows). Configuration tables belong in docs/, benchmark figures in
    benchmarks/README.md: kept in a docstring, they grow and go stale.
    """
    too_long = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")), clean=False)
        if str(path.relative_to(PACKAGE.parent)) in DRAWN_IN_FULL:
            continue
        if docstring is not None and len(docstring.splitlines()) > MAX_MODULE_DOCSTRING_LINES:
            too_long[str(path.relative_to(PACKAGE.parent))] = len(docstring.splitlines())
    assert too_long == {}
