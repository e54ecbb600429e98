"""What a template may do: Jinja2 in an immutable sandbox, with a budget for each render.

Choices, and why:
- `ImmutableSandboxedEnvironment`: templates cannot reach Python internals (`''.__class__` and
  friends) nor mutate the values they are given. Obviously unsafe access (`x.__class__`,
  `x['__class__']`, `x|attr('_y')`), `include` / `import` / `extends` (there is no loader) are
  refused when the template is compiled; whatever is computed at run time is refused by the sandbox.
- HTML is autoescaped (contact data cannot inject markup); subject and text are not (they are not
  HTML).
- `StrictUndefined`: a misspelt or missing variable is an error, seen at preview, rather than a
  silently blank greeting sent to a million people. Optional fields use `{{ x | default('') }}` or
  `{% if x is defined %}`. `None` values render as an empty string.
- The sandbox does not bound CPU or memory, and a dispatcher renders for every user of a service,
  so one template must not be able to stall or crash it. Each render has a budget: loop iterations,
  calls, filters and operators together at most MAX_RENDER_OPERATIONS; any intermediate string or
  list at most MAX_VALUE_CHARS; each rendered part at most MAX_RENDERED_CHARS. Operations that could
  allocate far beyond that in one step (padding, `*`, `**`, `%`-widths, replace, join, indent,
  concatenation) are checked before they run. Every operation also checks the render's deadline:
  a template of many slow steps stops on time by itself. One slow step (a filter on a megabyte) is
  not interruptible from inside; core.mail.render_worker runs renders in a process it can kill.

This module imports nothing but Jinja2 and core.errors: the render worker process imports it, and
its start-up time is part of what a killed render costs."""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

from jinja2 import (
    ChainableUndefined,
    Environment,
    StrictUndefined,
    Template,
    TemplateSyntaxError,
    Undefined,
    nodes,
    pass_eval_context,
)
from jinja2.exceptions import SecurityError
from jinja2.nodes import EvalContext
from jinja2.runtime import Context, markup_join, str_join
from jinja2.sandbox import (
    UNSAFE_ASYNC_GENERATOR_ATTRIBUTES,
    UNSAFE_COROUTINE_ATTRIBUTES,
    UNSAFE_FUNCTION_ATTRIBUTES,
    UNSAFE_GENERATOR_ATTRIBUTES,
    UNSAFE_METHOD_ATTRIBUTES,
    ImmutableSandboxedEnvironment,
)
from jinja2.visitor import NodeTransformer

from core.errors import InvalidInput

MAX_RENDER_OPERATIONS = 50_000
MAX_VALUE_CHARS = 1_000_000
MAX_RENDERED_CHARS = 2_000_000
MAX_INT_BITS = 4096
MAX_EXPONENT = 1024
MAX_FORMAT_WIDTH = 9999

_UNSAFE_NAMES = (
    {"mro"}
    | UNSAFE_FUNCTION_ATTRIBUTES
    | UNSAFE_METHOD_ATTRIBUTES
    | UNSAFE_GENERATOR_ATTRIBUTES
    | UNSAFE_COROUTINE_ATTRIBUTES
    | UNSAFE_ASYNC_GENERATOR_ATTRIBUTES
)
# A %-format or str.format spec with a wide width/precision, or one taken from the arguments.
_WIDE_PERCENT = re.compile(r"%[^a-zA-Z%]*(\d{5,}|\*)")
_WIDE_BRACE = re.compile(r"\{[^{}]*:[^{}]*(\d{5,}|\{)")
_LOOP_FILTER = "edm_loop"
_CONCAT_FILTER = "edm_concat"


class RenderError(InvalidInput):
    """A template failed to render for one contact; `field` names the part (subject/html/text)."""

    code = "render_error"


class RenderBudgetExceeded(RenderError):
    """The render went beyond a budget (operations, sizes, memory, recursion, time): a property of
    the template more than of the contact, so a template that fails so for a sample is not saved."""


class RenderTimeout(RenderBudgetExceeded):
    """The render did not finish within its wall-clock budget."""

    code = "render_timeout"


# ---------------------------------------------------------------- the per-render budget


class _OverBudget(SecurityError):
    """Raised inside a render when it spends more than its budget allows."""


class _OutOfTime(_OverBudget):
    pass


class _Budget:
    def __init__(self, deadline: float | None) -> None:
        self.operations = 0
        self.deadline = deadline

    def spend(self, count: int = 1) -> None:
        self.operations += count
        if self.operations > MAX_RENDER_OPERATIONS:
            raise _OverBudget(f"template does more than {MAX_RENDER_OPERATIONS} operations")
        self.check_time()

    def check_time(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise _OutOfTime("out of time")


_budget: ContextVar[_Budget | None] = ContextVar("render_budget", default=None)


def _spend(count: int = 1) -> None:
    budget = _budget.get()
    if budget is not None:
        budget.spend(count)


def _size(value: Any) -> int:
    return len(value) if isinstance(value, str | list | tuple | dict) else 0


def _checked(value: Any) -> Any:
    if _size(value) > MAX_VALUE_CHARS:
        raise _OverBudget(f"a value grows beyond {MAX_VALUE_CHARS} characters or items")
    return value


def _int_bits(value: Any) -> int:
    return abs(value).bit_length() if isinstance(value, int) else 0


def _check_width(*values: Any) -> None:
    for value in values:
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_VALUE_CHARS:
            raise _OverBudget(f"width or count {value} is too large")


def _check_format(pattern: Any) -> None:
    if isinstance(pattern, str) and (_WIDE_PERCENT.search(pattern) or _WIDE_BRACE.search(pattern)):
        raise _OverBudget(f"format widths are limited to {MAX_FORMAT_WIDTH}")


def _check_replace(value: Any, old: Any, new: Any) -> None:
    if isinstance(value, str) and isinstance(old, str) and isinstance(new, str):
        count = value.count(old) if old else len(value) + 1
        if len(value) + count * (len(new) - len(old)) > MAX_VALUE_CHARS:
            raise _OverBudget(f"replace would grow beyond {MAX_VALUE_CHARS} characters")


def _check_join(separator: Any, items: Any) -> None:
    if isinstance(items, list | tuple):
        total = sum(len(str(item)) for item in items) + len(str(separator)) * len(items)
        if total > MAX_VALUE_CHARS:
            raise _OverBudget(f"join would grow beyond {MAX_VALUE_CHARS} characters")


def _check_call(name: str, subject: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Pre-checks for the str methods and filters that can allocate a lot in one step."""
    if name in ("ljust", "rjust", "center", "zfill", "expandtabs", "wordwrap", "truncate"):
        _check_width(*args, *kwargs.values())
    elif name == "indent":
        width = args[0] if args else kwargs.get("width", 4)
        lines = subject.count("\n") + 1 if isinstance(subject, str) else 1
        if isinstance(width, str):
            width = len(width)
        if isinstance(width, int) and lines * abs(width) > MAX_VALUE_CHARS:
            raise _OverBudget(f"indent would grow beyond {MAX_VALUE_CHARS} characters")
    elif name in ("format", "format_map"):
        _check_format(subject)
    elif name == "replace" and len(args) >= 2:
        _check_replace(subject, args[0], args[1])
    elif name == "join":
        # str.join(items) is called on the separator; the filter gets items first.
        if isinstance(subject, str):
            _check_join(subject, args[0] if args else ())
        else:
            _check_join(args[0] if args else kwargs.get("d", ""), subject)


def _budgeted_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    # functools.wraps copies __dict__, which carries Jinja's pass_context/pass_eval_context mark.
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _spend()
        values = [arg for arg in args if not isinstance(arg, Context | EvalContext | Environment)]
        if values:
            _check_call(name, values[0], tuple(values[1:]), kwargs)
        return _checked(function(*args, **kwargs))

    return wrapper


def _loop(iterable: Any) -> Iterator[Any]:
    for item in iterable:
        _spend()
        yield item


@pass_eval_context
def _concat(eval_context: EvalContext, parts: list[Any]) -> str:
    _check_join("", parts)
    return markup_join(parts) if eval_context.autoescape else str_join(parts)


class _CampaignEnvironment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, autoescape: bool, undefined: type[Undefined]) -> None:
        super().__init__(
            autoescape=autoescape,
            undefined=undefined,
            finalize=lambda value: "" if value is None else value,
            keep_trailing_newline=True,
            cache_size=0,
        )
        self.globals.pop("lipsum", None)  # lipsum(n) writes n paragraphs: nothing a campaign needs
        self.filters = {name: _budgeted_filter(name, f) for name, f in self.filters.items()}
        self.filters[_LOOP_FILTER] = _loop
        self.filters[_CONCAT_FILTER] = _concat

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _spend()
        if operator == "*":
            for sequence, count in ((left, right), (right, left)):
                if _size(sequence) and isinstance(count, int) and _size(sequence) * count > MAX_VALUE_CHARS:
                    raise _OverBudget(f"a value grows beyond {MAX_VALUE_CHARS} characters or items")
            if _int_bits(left) + _int_bits(right) > MAX_INT_BITS:
                raise _OverBudget("number too large")
        elif operator == "**":
            if isinstance(right, int | float) and abs(right) > MAX_EXPONENT:
                raise _OverBudget(f"exponents are limited to {MAX_EXPONENT}")
            if isinstance(right, int) and _int_bits(left) * abs(right) > MAX_INT_BITS:
                raise _OverBudget("number too large")
        elif operator == "+" and _size(left) + _size(right) > MAX_VALUE_CHARS:
            raise _OverBudget(f"a value grows beyond {MAX_VALUE_CHARS} characters or items")
        elif operator == "%":
            _check_format(left)
        return _checked(super().call_binop(context, operator, left, right))

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        _spend()
        target = getattr(obj, "__wrapped__", obj)  # the sandbox wraps str.format
        owner = getattr(target, "__self__", None)
        if isinstance(owner, str):
            _check_call(getattr(target, "__name__", ""), owner, args, kwargs)
        return _checked(super().call(context, obj, *args, **kwargs))


class _Budgeted(NodeTransformer):
    """Routes every loop's iterable and every `~` concatenation through a budgeted filter."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = nodes.Filter(node.iter, _LOOP_FILTER, [], [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        parts = nodes.List(list(node.nodes), lineno=node.lineno)
        return nodes.Filter(parts, _CONCAT_FILTER, [], [], None, None, lineno=node.lineno)


# (html?, sample?) -> environment. A sample contact lacks most attributes: for it a missing name
# renders empty (ChainableUndefined), so that the check on save reaches as far into the template
# as it can instead of stopping at the first `{{ first_name }}`.
_ENVIRONMENTS = {
    (html, sample): _CampaignEnvironment(autoescape=html, undefined=ChainableUndefined if sample else StrictUndefined)
    for html in (True, False)
    for sample in (True, False)
}


def _environment(field: str, sample: bool) -> _CampaignEnvironment:
    return _ENVIRONMENTS[(field == "html", sample)]


# ---------------------------------------------------------------- compiling


def _unsafe_name(name: Any) -> bool:
    return isinstance(name, str) and (name.startswith("_") or name in _UNSAFE_NAMES)


def _static_problem(tree: nodes.Template) -> tuple[int, str] | None:
    for node in tree.find_all(
        (nodes.Getattr, nodes.Getitem, nodes.Filter, nodes.Include, nodes.Import, nodes.FromImport)
    ):
        if isinstance(node, nodes.Include | nodes.Import | nodes.FromImport):
            return node.lineno, "templates cannot include or import other templates"
        if isinstance(node, nodes.Getattr):
            names = [node.attr]
        elif isinstance(node, nodes.Getitem):
            names = [node.arg.value] if isinstance(node.arg, nodes.Const) else []
        elif isinstance(node, nodes.Filter) and node.name == "attr":
            names = [arg.value for arg in node.args if isinstance(arg, nodes.Const)]
        else:
            names = []
        for name in names:
            if _unsafe_name(name):
                return node.lineno, f"access to {name!r} is not allowed"
    for node in tree.find_all(nodes.Extends):
        return node.lineno, "templates cannot extend other templates"
    return None


def compile_part(field: str, source: str, *, sample: bool = False) -> Template:
    """Parse, check and compile one part; raises InvalidInput naming the part and the line.
    `sample`: for a sample contact, where missing variables render empty."""
    environment = _environment(field, sample)
    try:
        tree = environment.parse(source)
        problem = _static_problem(tree)
        if problem is not None:
            line, reason = problem
            raise InvalidInput(field, f"line {line}: {reason}")
        budgeted: nodes.Template = _Budgeted().visit(tree)
        budgeted.set_environment(environment)
        return environment.from_string(budgeted)
    except TemplateSyntaxError as error:
        raise InvalidInput(field, f"syntax error on line {error.lineno}: {error.message}") from error
    except (RecursionError, MemoryError, SyntaxError) as error:
        raise InvalidInput(field, "template is nested too deeply") from error


# ---------------------------------------------------------------- rendering


def render_part(field: str, template: Template, context: dict[str, Any], deadline: float | None) -> str:
    """One part for one contact, stopping at `deadline` (time.monotonic()) at the latest between
    two operations. Raises RenderTimeout, RenderBudgetExceeded or RenderError naming the part."""
    token = _budget.set(_Budget(deadline))
    try:
        parts: list[str] = []
        length = 0
        for chunk in template.generate(context):
            length += len(chunk)
            if length > MAX_RENDERED_CHARS:
                raise RenderBudgetExceeded(field, f"rendered {field} exceeds {MAX_RENDERED_CHARS} characters")
            parts.append(chunk)
        return "".join(parts)
    except InvalidInput:
        raise
    except _OutOfTime as error:
        raise RenderTimeout(field, "rendering takes longer than the render budget") from error
    except _OverBudget as error:
        raise RenderBudgetExceeded(field, _describe(error)) from error
    except (MemoryError, RecursionError) as error:
        raise RenderBudgetExceeded(field, "template needs too much memory or recursion") from error
    except Exception as error:  # a user's template failing is a user error, never a crash
        raise RenderError(field, _describe(error)) from error
    finally:
        _budget.reset(token)


def _describe(error: Exception) -> str:
    line = _template_line(error)
    where = f"line {line}: " if line else ""
    # Budget errors keep Jinja's SecurityError name, as before they had a class of their own.
    name = "SecurityError" if isinstance(error, SecurityError) else type(error).__name__
    return f"{where}{name}: {error}"[:500]


def _template_line(error: Exception) -> int | None:
    traceback = error.__traceback__
    line = None
    while traceback is not None:
        # Jinja rewrites template frames to carry the template's own line numbers.
        if traceback.tb_frame.f_code.co_filename == "<template>":
            line = traceback.tb_lineno
        traceback = traceback.tb_next
    return line
