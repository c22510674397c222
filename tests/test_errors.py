"""The error tree written in ``bulksend.errors``'s docstring is the real class hierarchy."""

from __future__ import annotations

import importlib
import pkgutil
import re

import bulksend
import bulksend.errors as errors
from bulksend.errors import BulksendError

# A tree line: box-drawing prefix, then a class name at a column that gives its depth.
_NODE = re.compile(r"^(?P<prefix>[ │]*(?:├── |└── )?)(?P<name>[A-Z]\w*)\b")


def _documented_tree() -> dict[str, str | None]:
    """``{class name: parent name}`` as drawn in the module docstring (the root's parent is None)."""
    doc = errors.__doc__ or ""
    block = doc.split("::\n\n", 1)[1].split("\n\n", 1)[0]
    parents: dict[str, str | None] = {}
    path: list[str] = []
    for line in block.splitlines():
        match = _NODE.match(line)
        if match is None:
            continue  # a continuation of the description above
        depth = (len(match["prefix"]) - 4) // 4
        path[depth:] = [match["name"]]
        parents[match["name"]] = path[depth - 1] if depth else None
    return parents


def _defined_errors() -> set[type[BulksendError]]:
    """Every subclass of ``BulksendError`` that some bulksend module defines."""
    for module in pkgutil.walk_packages(bulksend.__path__, "bulksend."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    found: set[type[BulksendError]] = set()
    todo = [BulksendError]
    while todo:
        cls = todo.pop()
        if cls.__module__.startswith("bulksend.") and cls not in found:
            found.add(cls)
            todo.extend(cls.__subclasses__())
    return found


def test_docstring_tree_matches_the_classes() -> None:
    """Each class drawn in the tree exists in bulksend.errors and derives directly from the class
    drawn above it; each error bulksend defines is drawn, so neither can drift from the other."""
    tree = _documented_tree()
    assert tree["BulksendError"] is None
    for name, parent in tree.items():
        cls = getattr(errors, name)
        assert name in errors.__all__, name
        if parent is not None:
            # Other bases (SettingError is also a ValueError) are not part of the drawn tree.
            bases = tuple(base for base in cls.__bases__ if issubclass(base, BulksendError))
            assert bases == (getattr(errors, parent),), f"{name} is drawn under {parent}"
    defined = {cls.__name__: cls for cls in _defined_errors()}
    assert set(defined) == set(tree), "errors defined but not drawn, or drawn but not defined"
    for name, cls in defined.items():
        assert cls.__module__ == "bulksend.errors", f"{name} lives outside the error tree's module"


def test_moved_errors_keep_their_old_import_paths() -> None:
    """Code importing an error from the module that used to define it gets the same class."""
    from bulksend.daemon.admin.control import Conflict, ControlError, NotFound
    from bulksend.jobs.format import JobError
    from bulksend.pipeline.dispatch import AccountRefusedError
    from bulksend.sources.base import BrokerError
    from bulksend.store.base import LeaseLostError
    from bulksend.tem.client import TemProtocolError

    for cls in (
        Conflict,
        ControlError,
        NotFound,
        JobError,
        AccountRefusedError,
        BrokerError,
        LeaseLostError,
        TemProtocolError,
    ):
        assert getattr(errors, cls.__name__) is cls
