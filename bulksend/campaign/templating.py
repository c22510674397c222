"""The Jinja2 environment campaign templates run in: sandboxed, and bounded in size, loops and time.

A template is code from whoever wrote the campaign or registered the job template, and it runs
once per recipient inside the sender. :class:`BoundedEnvironment` keeps one render from taking
the process down: every output buffer stops past ``max_part_chars`` characters, every loop
iteration counts against ``max_loop_iterations`` per email, and every iteration, call, filter
and operator checks a deadline of ``max_render_s`` seconds. Operations whose result can be far
larger than their inputs (``*``, ``**``, ``+``, ``%``, ``~``, ``str.format``, padding and joining
filters and methods, ``lipsum``) are checked *before* they run, so nothing large is ever built.

The limits of the render in progress live in a context variable (:func:`start_render`), so one
environment serves every recipient and thread. A limit that is hit raises
:class:`jinja2.exceptions.SecurityError`; the renderer turns it into a per-row rejection.
"""

from __future__ import annotations

import functools
import re
import string
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass
from itertools import islice
from typing import Any, Final

from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.filters import make_attrgetter
from jinja2.nodes import EvalContext
from jinja2.runtime import Context, LoopContext, markup_join, str_join
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace, generate_lorem_ipsum, pass_eval_context
from jinja2.visitor import NodeTransformer

__all__ = ["BoundedEnvironment", "RenderBudget", "RenderLimits", "check_output", "end_render", "start_render"]

# A Python int this wide is already far beyond anything an email prints (str() refuses ints over
# 4,300 digits); the cap keeps `**` and `*` from spending minutes on one huge number.
_MAX_INT_BITS: Final = 1 << 16
_LOOP_FILTER: Final = "bulksend_counted_loop"
_CONCAT_FILTER: Final = "bulksend_bounded_concat"


@dataclass(frozen=True)
class RenderLimits:
    """How much work one email's templates may do (the campaign file's ``[render]`` table)."""

    max_part_chars: int = 2_000_000
    """Characters in one rendered part or buffer (TEM refuses emails over 2 MB anyway)."""
    max_loop_iterations: int = 100_000
    """Loop iterations for one email, all loops and parts together."""
    max_render_s: float = 1.0
    """Wall-clock seconds for one email's templates."""


class RenderBudget:
    """What the render in progress has left: iterations and time."""

    __slots__ = ("deadline", "iterations_left", "limits", "max_chars")

    def __init__(self, limits: RenderLimits, *, timed: bool = True) -> None:
        self.limits = limits
        self.max_chars = limits.max_part_chars
        self.iterations_left = limits.max_loop_iterations if timed else _NO_END
        self.deadline = time.monotonic() + limits.max_render_s if timed else float("inf")

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise SecurityError(
                f"it took longer than {self.limits.max_render_s:g} s for one email; simplify it "
                f"(or raise [render] max_render_s)"
            )

    def iterate(self) -> None:
        """Count one loop iteration (the clock is read every 64)."""
        self.iterations_left -= 1
        if self.iterations_left & 63 == 0 or self.iterations_left < 0:
            self.check_iterations()

    def check_iterations(self) -> None:
        if self.iterations_left < 0:
            raise SecurityError(
                f"it needs more than {self.limits.max_loop_iterations:,} loop iterations for one email; "
                f"loop over fewer items (or raise [render] max_loop_iterations)"
            )
        self.check_time()

    def too_large(self, what: str) -> SecurityError:
        return SecurityError(
            f"{what} would make more than {self.max_chars:,} characters; make it smaller "
            f"(or raise [render] max_part_chars)"
        )

    def check_size(self, size: int, what: str) -> None:
        if size > self.max_chars:
            raise self.too_large(what)

    def check_weight(self, value: Any, what: str) -> None:
        self.check_size(_weight(value, self), what)


_NO_END: Final = 1 << 62
# Outside a recipient's render (compiling, constant folding) sizes are still bounded; compile
# time folding never loops, so it needs no clock.
_UNTIMED: Final = RenderBudget(RenderLimits(), timed=False)
_current: ContextVar[RenderBudget | None] = ContextVar("bulksend_render_budget", default=None)


def start_render(limits: RenderLimits) -> Token[RenderBudget | None]:
    """Give the renders that follow (in this context) a fresh budget; pass the token to end_render."""
    return _current.set(RenderBudget(limits))


def end_render(token: Token[RenderBudget | None]) -> None:
    _current.reset(token)


def _budget() -> RenderBudget:
    return _current.get() or _UNTIMED


def _weight(value: Any, b: RenderBudget) -> int:
    """About how many characters ``str(value)`` makes, counted only up to just past the cap.

    Containers are walked as trees, so a list holding the same big list twice counts it twice
    (as its text would); the walk stops as soon as the cap is passed, so it is cheap even for
    a structure whose text would be astronomically long.
    """
    if isinstance(value, str):
        return len(value)
    if isinstance(value, int):
        return value.bit_length() // 3 + 2
    if value is None or isinstance(value, float):
        return 24
    limit = b.max_chars
    total = 0
    stack = [value]
    steps = 0
    while stack:
        v = stack.pop()
        steps += 1
        if steps & 1023 == 0:
            b.check_time()
        if isinstance(v, str):
            total += len(v) + 2
        elif isinstance(v, int):
            total += v.bit_length() // 3 + 2
        elif isinstance(v, Mapping):
            total += 2 + 4 * len(v)
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list | tuple | set | frozenset):
            total += 2 + 2 * len(v)
            stack.extend(v)
        elif isinstance(v, Namespace):
            total += 12
            stack.append(object.__getattribute__(v, "_Namespace__attrs"))
        else:
            total += 64
        if total > limit:
            break
    return total


def _ticking(iterable: Iterable[Any], b: RenderBudget) -> Iterator[Any]:
    # RenderBudget.iterate, inlined: this runs once per loop iteration of every template. The
    # clock is read every 64 iterations; a loop body that does more than cheap work calls
    # filters, methods or operators, which read it themselves.
    for item in iterable:
        b.iterations_left -= 1
        if b.iterations_left & 63 == 0 or b.iterations_left < 0:
            b.check_iterations()
        yield item


def check_output(value: Any) -> Any:
    """The environment's ``finalize``: refuse to print a container whose text is too long.

    Returns ``value`` unchanged, so what is printed is exactly what Jinja prints without it.
    """
    if type(value) is not str and not isinstance(value, str | int | float) and value is not None:
        _budget().check_weight(value, "printing this value")
    return value


# -- checks of the operations that can make much more than they are given ----------------------

_PERCENT_SPEC_RE: Final = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(?:\*|\d*)(?:\.(?:\*|\d*))?[hlL]?[a-zA-Z%]")
_DIGITS_RE: Final = re.compile(r"\d+")


def _numbers_in(spec: str) -> int:
    return sum(int(d) for d in _DIGITS_RE.findall(spec))


def _largest(values: Iterable[Any], b: RenderBudget) -> int:
    return max((_weight(v, b) for v in values), default=0)


def _check_ints(values: Iterable[Any], b: RenderBudget, what: str) -> None:
    for v in values:
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) > b.max_chars:
            raise b.too_large(what)


def _check_percent(fmt: str, args: Any, b: RenderBudget) -> None:
    """``fmt % args``: widths and precisions, plus every field printing the largest argument."""
    specs = _PERCENT_SPEC_RE.findall(fmt)
    if isinstance(args, Mapping):
        values = list(args.values())
    else:
        values = list(args) if isinstance(args, tuple) else [args]
    _check_ints(values, b, "this % format")
    size = len(fmt) + sum(_numbers_in(s) for s in specs) + len(specs) * _largest(values, b)
    b.check_size(size, "this % format")


def _check_str_format(fmt: str, args: tuple[Any, ...], kwargs: Mapping[str, Any], b: RenderBudget) -> None:
    """``fmt.format(...)``: the same estimate as for ``%``."""
    values = [*args, *kwargs.values()]
    fields = 0
    widths = 0
    for _text, field, spec, _conversion in string.Formatter().parse(fmt):
        if field is not None:
            fields += 1
        if spec:
            widths += _numbers_in(spec)
            if "{" in spec:  # a width taken from an argument
                _check_ints(values, b, "this format")
    b.check_size(len(fmt) + widths + fields * _largest(values, b), "this format")


def _check_binop(op: str, left: Any, right: Any, b: RenderBudget) -> None:
    sequence = (str, list, tuple)
    if op == "*":
        if isinstance(left, int) and isinstance(right, sequence):
            left, right = right, left
        if isinstance(left, sequence) and isinstance(right, int):
            b.check_size(len(left) * right, "this repetition (*)")
            if not isinstance(left, str):
                b.check_size(_weight(left, b) * right, "this repetition (*)")
        elif (
            isinstance(left, int)
            and isinstance(right, int)
            and left.bit_length() + right.bit_length() > _MAX_INT_BITS
        ):
            raise SecurityError("this multiplication makes a number too large to print; use smaller numbers")
    elif op == "**":
        if (
            isinstance(left, int)
            and isinstance(right, int)
            and right > 0
            and abs(left) > 1
            and right * left.bit_length() > _MAX_INT_BITS
        ):
            raise SecurityError("this power (**) makes a number too large to print; use smaller numbers")
    elif op == "+":
        if isinstance(left, sequence) and isinstance(right, sequence):
            b.check_size(len(left) + len(right), "this addition (+)")
    elif op == "%" and isinstance(left, str):
        _check_percent(left, right, b)


def _check_str_method(method: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any], b: RenderBudget) -> None:
    s: str = method.__self__
    name = method.__name__
    if name in ("center", "ljust", "rjust", "zfill"):
        _check_ints([*args, *kwargs.values()], b, f"str.{name}")
    elif name == "expandtabs":
        size = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(size, int):
            b.check_size(len(s) + s.count("\t") * size, "str.expandtabs")
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        b.check_size(_replaced_size(s, args[0], args[1], args[2] if len(args) > 2 else -1), "str.replace")
    elif name == "join" and args:
        items = args[0]
        if not isinstance(items, str):
            items = _materialize(items, b)
            b.check_size(sum(_weight(x, b) for x in items) + len(s) * len(items), "str.join")


def _replaced_size(s: str, old: str, new: str, count: Any) -> int:
    found = len(s) + 1 if old == "" else s.count(old)
    if isinstance(count, int) and count >= 0:
        found = min(found, count)
    return len(s) + found * max(0, len(new) - len(old))


# -- filters ---------------------------------------------------------------------------------------

# Filters that turn their value into text: a container is measured before it is printed.
_STRINGIFYING: Final = frozenset(
    {
        "capitalize",
        "center",
        "e",
        "escape",
        "forceescape",
        "format",
        "indent",
        "lower",
        "pprint",
        "replace",
        "safe",
        "string",
        "striptags",
        "title",
        "trim",
        "truncate",
        "upper",
        "urlencode",
        "urlize",
        "wordcount",
        "wordwrap",
        "xmlattr",
    }
)


def _filter_precheck(name: str, b: RenderBudget, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Checks of filters whose output can be much larger than their input (``args[0]`` is the value)."""
    value = args[0] if args else None
    text = value if isinstance(value, str) else None
    if name == "indent" and text is not None:
        width = args[1] if len(args) > 1 else kwargs.get("width", 4)
        per_line = width if isinstance(width, int) else len(str(width))
        b.check_size(len(text) + (text.count("\n") + 1) * per_line, "the indent filter")
    elif name == "replace" and len(args) >= 3:
        count = args[3] if len(args) > 3 else kwargs.get("count")
        b.check_size(_replaced_size(str(value), str(args[1]), str(args[2]), count), "the replace filter")
    elif name == "format" and text is not None:
        _check_percent(text, kwargs or tuple(args[1:]), b)
    elif name == "wordwrap" and text is not None:
        width = args[1] if len(args) > 1 else kwargs.get("width", 79)
        wrap = args[3] if len(args) > 3 else kwargs.get("wrapstring")
        lines = len(text) // max(1, width if isinstance(width, int) else 1) + text.count("\n") + 1
        b.check_size(len(text) + lines * len(str(wrap or "\n")), "the wordwrap filter")
    elif name == "urlize" and text is not None:
        extra = sum(_weight(v, b) for v in (*args[1:], *kwargs.values()))
        b.check_size(3 * len(text) + (text.count(" ") + 1) * (64 + extra), "the urlize filter")
    elif name == "tojson":
        indent = args[1] if len(args) > 1 else kwargs.get("indent")
        per_item = 1 + (indent if isinstance(indent, int) else 0)
        b.check_size(_weight(value, b) * per_item, "the tojson filter")


def _materialize(value: Any, b: RenderBudget) -> list[Any]:
    """``list(value)``, watching the clock while a lazy value is drawn."""
    if isinstance(value, list | tuple):
        return list(value)
    out: list[Any] = []
    for item in value:
        out.append(item)
        if len(out) & 1023 == 0:
            b.check_time()
    return out


_PRECHECKED: Final = frozenset({"indent", "replace", "format", "wordwrap", "urlize", "tojson"})
# Filters whose whole-number arguments are widths or counts of what they make.
_SIZED_BY_ARGS: Final = frozenset({"batch", "center", "indent", "slice", "tojson", "wordwrap"})
# Filters whose output from one string alone may be far larger than that string.
_GROWING: Final = frozenset({"indent", "wordwrap", "urlize", "join", "sum", "format"})


def _guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    # Context, eval context or environment come first for filters that ask for them.
    skip = 1 if getattr(func, "jinja_pass_arg", None) is not None else 0
    stringify = name in _STRINGIFYING
    prechecked = name in _PRECHECKED
    sized_by_args = name in _SIZED_BY_ARGS
    what = f"the {name} filter"

    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        b = _current.get() or _UNTIMED
        if len(args) == skip + 1 and not kwargs and type(args[skip]) is str and name not in _GROWING:
            # The common case (`{{ name | title }}`): one string in, at most a few times as much
            # out; only the result is measured.
            result = func(*args)
            if isinstance(result, str) and len(result) > b.max_chars:
                raise b.too_large(what)
            return result
        b.check_time()
        own = args[skip:] if skip else args
        if own:
            if stringify and not isinstance(own[0], str):
                b.check_weight(own[0], what)
            if sized_by_args and (len(own) > 1 or kwargs):
                _check_ints([*own[1:], *kwargs.values()], b, what)
            if name == "join":
                args, kwargs = _prepare_join(b, args, skip, own, kwargs)
            elif name == "sum":
                args = _prepare_sum(b, args, skip, own, kwargs)
            elif prechecked:
                _filter_precheck(name, b, own, kwargs)
        result = func(*args, **kwargs)
        # Lazy results (map, select, …) are not counted as loop iterations: they yield at most as
        # many items as their bounded input, calling guarded filters (which watch the clock) for
        # each; a loop over them counts each item once.
        if isinstance(result, str | list | tuple) and len(result) > b.max_chars:
            raise b.too_large(what)
        return result

    return guarded


def _prepare_join(
    b: RenderBudget, args: tuple[Any, ...], skip: int, own: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The join filter's arguments, its items drawn and measured (attributes taken) beforehand."""
    items = _materialize(own[0], b)
    sep = own[1] if len(own) > 1 else kwargs.get("d", "")
    attribute = own[2] if len(own) > 2 else kwargs.get("attribute")
    if attribute is not None:
        getter = make_attrgetter(args[0].environment, attribute)
        items = [getter(x) for x in items]
    b.check_size(sum(_weight(x, b) for x in items) + len(str(sep)) * len(items), "the join filter")
    return (*args[:skip], items, sep), {}


def _prepare_sum(
    b: RenderBudget, args: tuple[Any, ...], skip: int, own: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Any, ...]:
    """The sum filter's arguments, its items drawn beforehand; sums of sequences are measured."""
    items = _materialize(own[0], b)
    start = own[2] if len(own) > 2 else kwargs.get("start", 0)
    if isinstance(start, list | tuple) or any(isinstance(x, list | tuple | str) for x in items):
        # Summing sequences copies the running total at every step: the cost is quadratic.
        running = cost = _weight(start, b)
        for x in items:
            running += _weight(x, b)
            cost += running
        b.check_size(running, "the sum filter")
        b.check_size(cost // 16, "the sum filter")
    return (*args[:skip], items, *own[1:])


@pass_eval_context
def _counted_loop(eval_ctx: EvalContext, iterable: Any) -> Iterator[Any]:
    """What every ``{% for %}`` iterates over: the same items, each one counted."""
    return _ticking(iterable, _budget())


@pass_eval_context
def _bounded_concat(eval_ctx: EvalContext, items: tuple[Any, ...]) -> str:
    """The ``~`` operator, measured before it joins."""
    b = _budget()
    b.check_size(sum(_weight(x, b) for x in items), "this ~ concatenation")
    return markup_join(items) if eval_ctx.autoescape else str_join(items)


def _bounded_range(*args: int) -> range:
    b = _budget()
    r = range(*args)
    if len(r) > b.limits.max_loop_iterations:
        raise SecurityError(
            f"range() of {len(r):,} items is more than the {b.limits.max_loop_iterations:,} loop iterations "
            f"one email may use; use a smaller range (or raise [render] max_loop_iterations)"
        )
    return r


def _bounded_lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    b = _budget()
    # About 10 characters a word, at most `max` words a paragraph.
    b.check_size(n * max * 10, "lipsum()")
    return generate_lorem_ipsum(n, html, min, max)


class BoundedNamespace(Namespace):
    """``namespace()``, whose attributes cannot be set to values too large to print."""

    def __setitem__(self, name: str, value: Any) -> None:
        _budget().check_weight(value, f"namespace attribute {name!r}")
        super().__setitem__(name, value)


class _CountLoopsAndJoins(NodeTransformer):
    """Route every loop through :func:`_counted_loop` and every ``~`` through :func:`_bounded_concat`."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = nodes.Filter(node.iter, _LOOP_FILTER, [], [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        items = nodes.Tuple(node.nodes, "load", lineno=node.lineno)
        return nodes.Filter(items, _CONCAT_FILTER, [], [], None, None, lineno=node.lineno)


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """An immutable sandbox whose renders are bounded by the :class:`RenderLimits` in effect."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, **options: Any) -> None:
        super().__init__(finalize=check_output, **options)
        self.globals["range"] = _bounded_range
        self.globals["lipsum"] = _bounded_lipsum
        self.globals["namespace"] = BoundedNamespace
        self.filters = {name: _guard_filter(name, f) for name, f in self.filters.items()}
        self.filters[_LOOP_FILTER] = _counted_loop
        self.filters[_CONCAT_FILTER] = _bounded_concat

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        result = _CountLoopsAndJoins().visit(tree)
        assert isinstance(result, nodes.Template)
        result.set_environment(self)
        return result

    def concat(self, parts: Iterable[str]) -> str:
        """Join a template's (or a block's) output, stopping as soon as it is too long."""
        b = _current.get() or _UNTIMED
        limit = b.max_chars
        if isinstance(parts, list):  # a block's buffer: already built, each item bounded
            if sum(map(len, parts)) > limit:
                raise b.too_large("the template's output")
            return "".join(parts)
        # A template's output, drawn a few parts at a time (each part is bounded, so a few of
        # them are too) and stopped as soon as the total is past the cap.
        it = iter(parts)
        out = list(islice(it, 32))
        total = sum(map(len, out))
        if total > limit:
            raise b.too_large("the template's output")
        if len(out) < 32:  # the whole output already (most templates)
            return "".join(out)
        while chunk := list(islice(it, 32)):
            total += sum(map(len, chunk))
            if total > limit:
                raise b.too_large("the template's output")
            out += chunk
        return "".join(out)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        b = _budget()
        b.check_time()
        _check_binop(operator, left, right, b)
        return super().call_binop(context, operator, left, right)

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        b = _budget()
        b.check_time()
        if isinstance(obj, LoopContext) and args:
            # loop(children) in a recursive for loop: those iterations count too.
            args = (_ticking(args[0], b), *args[1:])
        elif isinstance(getattr(obj, "__self__", None), str) and callable(obj):
            _check_str_method(obj, args, kwargs, b)
        result = super().call(context, obj, *args, **kwargs)
        if isinstance(result, str | list | tuple):
            b.check_size(len(result), "this call")
        return result

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt: str = value.__self__
        is_map = value.__name__ == "format_map"
        checked = wrapped

        def bounded(*args: Any, **kwargs: Any) -> str:
            b = _budget()
            if is_map and len(args) == 1 and isinstance(args[0], Mapping):
                _check_str_format(fmt, (), args[0], b)
            else:
                _check_str_format(fmt, args, kwargs, b)
            return checked(*args, **kwargs)

        return bounded
