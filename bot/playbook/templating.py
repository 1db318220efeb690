"""Sandboxed Jinja2 over `params`, `alert`, `run` and `steps.<id>.output`.

Rendering is pure and deterministic, so the workflow renders step arguments itself (policy and
approvers see exactly what will run). Secrets never render: `{{ secret("X") }}` becomes a marker
made of private-use code points that only the activity resolves, so values stay out of history,
logs and audit. Data cannot spell a marker: every string that enters a template context from
data goes through `inert()`, and a render whose markers are not exactly the ones its own
`secret()` calls made is an error. What humans and policy see is `display()`: `${secret:X}`.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from typing import Any, Callable, Iterator, Collection

from jinja2 import StrictUndefined, TemplateSyntaxError, Undefined, filters, nodes, pass_environment, pass_eval_context
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedFormatter

from bot.playbook import data

SECRET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
SECRET_REF = re.compile(r"\$\{secret:([A-Za-z_][A-Za-z0-9_]*)\}")  # display text only: it resolves nothing
MARK_OPEN, MARK_CLOSE = "\ue000", "\ue001"  # private use: reserved for markers, never in data or playbooks
MARKER_CHARS = MARK_OPEN + MARK_CLOSE
MARKER = re.compile(MARK_OPEN + r"(\d+):([A-Za-z_][A-Za-z0-9_]*)" + MARK_CLOSE)
INERT = "\ufffd"  # what a reserved code point in data becomes
_WHOLE_EXPR = re.compile(r"^\s*\{\{(?P<expr>.*?)\}\}\s*$", re.S)


class TemplateError(ValueError):
    """A template that cannot render: names the template so the author can find it."""


_SCALARS = frozenset({int, float, bool, type(None)})


def inert(value: Any) -> Any:
    """Data as templates may see it: the marker code points (in values and keys) become U+FFFD, so
    no param, alert field, run field or step output can ever spell a secret reference."""
    kind = type(value)  # JSON's own types first: isinstance costs a call through the sandbox's wrapper
    if kind is dict:
        return {inert(key): inert(item) for key, item in value.items()}
    if kind in _SCALARS:
        return value
    if isinstance(value, str):
        if MARK_OPEN in value or MARK_CLOSE in value:
            return value.replace(MARK_OPEN, INERT).replace(MARK_CLOSE, INERT)
        return value
    if isinstance(value, dict):
        return {inert(key): inert(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [inert(item) for item in value]
    return value


def display(value: Any) -> Any:
    """The rendered value as people and policy see it: each marker shown as `${secret:NAME}`."""
    if isinstance(value, str):
        return MARKER.sub(lambda m: "${secret:" + m.group(2) + "}", value) if MARK_OPEN in value else value
    if isinstance(value, dict):
        return {key: display(item) for key, item in value.items()}
    if isinstance(value, list):
        return [display(item) for item in value]
    return value


def secret_names(value: Any) -> list[str]:
    """The secret names the markers in a rendered value refer to, in order."""
    if isinstance(value, str):
        return [m.group(2) for m in MARKER.finditer(value)]
    if isinstance(value, dict):
        return [name for item in value.values() for name in secret_names(item)]
    if isinstance(value, list):
        return [name for item in value for name in secret_names(item)]
    return []


class _Secrets:
    """`secret()` for one render: issues a numbered marker per call and remembers each, so the
    result can be checked against exactly what this render's own calls made."""

    # Underscored state: the sandbox hides it from templates, which see only the call.
    def __init__(self, allowed: Collection[str] | None) -> None:
        self._allowed = allowed
        self._issued: dict[str, str] = {}  # marker -> name

    def __call__(self, name: Any) -> str:
        if self._allowed is None:
            raise TemplateError("secret() is only allowed in a step's or a compensation's with:")
        if not isinstance(name, str) or not SECRET_NAME.match(name):
            raise TemplateError(f"secret() takes a name like 'DEPLOY_TOKEN', not {name!r}")
        if name not in self._allowed:
            raise TemplateError(f"secret {name!r} is not declared in the playbook's secrets: list")
        marker = f"{MARK_OPEN}{len(self._issued)}:{name}{MARK_CLOSE}"
        self._issued[marker] = name
        return marker

    def _check(self, result: Any) -> None:
        """Each marker in the result is one this render issued, exactly once; nothing else is."""
        seen: dict[str, int] = {}
        for text, is_key in _texts(result):
            if not (MARK_OPEN in text or MARK_CLOSE in text):
                continue
            if is_key:
                raise TemplateError("a secret() reference cannot be a mapping key; use it as a value")
            for match in MARKER.finditer(text):
                if match.group(0) not in self._issued:
                    raise TemplateError(
                        "the result holds a secret reference this template's own secret() calls did not make"
                    )
                seen[match.group(0)] = seen.get(match.group(0), 0) + 1
            rest = MARKER.sub("", text)
            if MARK_OPEN in rest or MARK_CLOSE in rest:
                raise TemplateError(
                    "a secret() reference was cut or altered (filters, slicing and string operations cannot "
                    "see a secret): put {{ secret(\"NAME\") }} in the text as it is"
                )
        for marker, name in self._issued.items():
            count = seen.get(marker, 0)
            if count != 1:
                why = "was changed or dropped by the template" if count == 0 else f"appears {count} times"
                raise TemplateError(
                    f"secret({name!r}) {why}: a secret is only placed in text as it is, once per secret() call"
                )


def _texts(value: Any) -> Any:
    """Every string in a nested value, with whether it is a mapping key."""
    if isinstance(value, str):
        yield value, False
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str):
                yield key, True
            yield from _texts(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _texts(item)


def _no_secret(name: Any) -> str:
    raise TemplateError("secret() is only allowed in a step's or a compensation's with:")


def slack_escaped(value: Any) -> Any:
    """What a `{{ }}` gives, as Slack mrkdwn shows it as written: its three control characters
    escaped, so `<!channel>` or `<https://x|y>` neither notifies nor links (bot.slack.blocks.escape
    is this). A list or mapping is escaped as the text Jinja prints it as: the strings inside it are
    data too. None, booleans and numbers hold no such character and keep their type."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    text = value if isinstance(value, str) else str(value)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# What a template may make of the values it reads (a target's answer, a param, red team), all of it
# in workflow code: an allocation of gigabytes kills the worker, and again on every replay of the run.
# An int of more than 4,300 digits is encoded but read back by no JSON reader here (Python's,
# pydantic's): a child's input or end holding one failed its workflow task on every replay. Each
# operation that makes much from little (a repeat, a power, a padding width, a join, a replace, an
# indent, a flatten) is sized before it runs, and a text template's output is counted as it is made
# (a loop): past REPEAT_MAX characters, or ITEMS_MAX list items (each walked by the checks after the
# render: a million took a second), the render is refused. `namespace` and macros, the only ways a
# template accumulates or recurses (doubling a string each time), are not offered.
INT_MAX_DIGITS = 4300
_INT_BOUND = 10**INT_MAX_DIGITS
REPEAT_MAX = 1_000_000  # characters one operation or one text template may make
ITEMS_MAX = 100_000  # list items one operation may make


class _Sandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "%"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            _bounded_power(left, right)
        elif operator == "%":
            if isinstance(left, str):
                _bounded_percent(left, right)
        elif isinstance(left, (str, list, tuple)) or isinstance(right, (str, list, tuple)):
            _bounded_repeat(left, right)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 (Jinja's signature)
        """A str method that pads, joins or replaces is sized first (`'x'.ljust(w)`, `s.join(s)`)."""
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str) and getattr(__obj, "__name__", "") in _STR_SIZES:
            if __obj.__name__ == "join" and args and not isinstance(args[0], (list, tuple, str)):
                args = (list(args[0]), *args[1:])  # sized and joined from one pass (`names | map(...)`)
            try:
                made = _STR_SIZES[__obj.__name__](owner, *args, **kwargs)
            except (TypeError, ValueError):
                made = 0  # (wrong arguments: the method itself says so)
            _within(made, f"str.{__obj.__name__}")
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """`str.format` and `format_map` through a formatter that checks each field's spec once it
        is resolved (a width written, or given by a nested field, a string among them)."""
        if super().wrap_str_format(value) is None:
            return None
        text, mapping, formatter = value.__self__, value.__name__ == "format_map", _BoundedFormatter(self)

        def bounded(*args: Any, **kwargs: Any) -> str:
            if mapping:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one argument")
                args, kwargs = (), args[0]
            return type(text)(formatter.vformat(text, args, kwargs))

        return bounded


class _BoundedFormatter(SandboxedFormatter):
    def format_field(self, value: Any, format_spec: str) -> Any:
        if any(_too_wide(n) for n in _NUMBER.findall(format_spec)):
            raise TemplateError(f"a format pads to more than {REPEAT_MAX:,} characters")
        return super().format_field(value, format_spec)


def _within(made: int, what: str) -> None:
    if made > REPEAT_MAX:
        raise TemplateError(f"{what} would make more than {REPEAT_MAX:,} characters")


def _replaced(text: str, old: Any, new: Any, count: Any = -1) -> int:
    if not isinstance(old, str) or not isinstance(new, str):
        return len(text)
    found = len(text) + 1 if old == "" else text.count(old)
    if isinstance(count, int) and count >= 0:
        found = min(found, count)
    return len(text) + found * max(len(new) - len(old), 0)


def _joined(sep: str, items: Any) -> int:
    """(`items` a list, a tuple or a str: both callers make a list of an iterator first, and join it)"""
    return sum(len(x) if isinstance(x, str) else 20 for x in items) + len(sep) * max(len(items) - 1, 0)


def _padded(text: str, width: Any, *_: Any) -> int:
    return max(len(text), width) if type(width) is int else len(text)


_STR_SIZES: dict[str, Callable[..., int]] = {
    "ljust": _padded, "rjust": _padded, "center": _padded, "zfill": _padded,
    "expandtabs": lambda text, tabsize=8: len(text) + text.count("\t") * max(tabsize if type(tabsize) is int else 8, 0),
    "join": _joined,
    "replace": _replaced,
}


def _bounded_power(base: Any, exponent: Any) -> None:
    if type(base) is int and type(exponent) is int and abs(base) > 1 and exponent > 0:
        if exponent * math.log10(abs(base)) > INT_MAX_DIGITS:
            raise TemplateError(f"{_shown(base)} ** {_shown(exponent)} has more than {INT_MAX_DIGITS} digits")


def _made(value: Any) -> tuple[int, int]:
    """(list items, characters) in a value, counted no further than past the bounds."""
    items, chars, stack = 0, 0, [value]
    while stack and items <= ITEMS_MAX and chars <= REPEAT_MAX:
        item = stack.pop()
        if isinstance(item, str):
            chars += len(item)
        elif isinstance(item, (list, tuple)):
            items += len(item)
            stack.extend(item)
        elif isinstance(item, dict):
            items += len(item)
            stack.extend(item.values())
            chars += sum(len(k) for k in item if isinstance(k, str))
    return items, chars


def _bounded_repeat(left: Any, right: Any) -> None:
    sequence, count = (left, right) if isinstance(left, (str, list, tuple)) else (right, left)
    if not isinstance(count, int) or count <= 1:
        return
    items, chars = _made(sequence)
    if items * count > ITEMS_MAX or chars * count > REPEAT_MAX:
        what = "characters" if isinstance(sequence, str) else "items"
        raise TemplateError(f"repeating {len(sequence)} {what} {_shown(count)} times makes more than "
                            f"{ITEMS_MAX:,} items or {REPEAT_MAX:,} characters")


def _readable(number: int) -> bool:
    """An int a JSON reader here takes back (see INT_MAX_DIGITS)."""
    return -_INT_BOUND < number < _INT_BOUND


def _shown(number: int) -> str:
    """A number as an error may quote it: its digits, or how many there are."""
    return str(number) if abs(number) < 10**30 else f"a {len(str(number)) if _readable(number) else 'huge'}-digit number"


_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
_NUMBER = re.compile(r"\d+")


def _too_wide(digits: str) -> bool:
    return len(digits) > 7 or int(digits) > REPEAT_MAX


def _bounded_percent(text: str, args: Any) -> None:
    """`text % args` would pad to a width (or a precision) past REPEAT_MAX: written in the text, or
    taken from the args by `*`."""
    values = args if isinstance(args, tuple) else (args,)
    for match in _PERCENT_SPEC.finditer(text):
        for part in match.groups():
            if part is None:
                continue
            if part == "*" and any(type(v) is int and abs(v) > REPEAT_MAX for v in values) or (
                    part != "*" and _too_wide(part)):
                raise TemplateError(f"a % format pads to more than {REPEAT_MAX:,} characters")


def _bounded_filters(env: ImmutableSandboxedEnvironment) -> None:
    """The filters that make much from little, each sized before it runs (Jinja's own underneath;
    `slice`'s sync variant: the registered one reads its environment off a context these pass none of)."""

    def counted(name: str, original: Callable[..., Any], limit: int = ITEMS_MAX) -> Callable[..., Any]:
        def bounded(value: Any, count: Any = None, *args: Any, **kwargs: Any) -> Any:
            if type(count) is int and abs(count) > limit:
                raise TemplateError(f"{name}({_shown(count)}) makes more than {limit:,}")
            return original(value, *(() if count is None else (count,)), *args, **kwargs)
        return bounded

    def indent(text: Any, width: Any = 4, *args: Any, **kwargs: Any) -> Any:
        pad = len(width) if isinstance(width, str) else width if type(width) is int else 0
        text = str(text)
        _within(len(text) + (text.count("\n") + 1) * max(pad, 0), "indent")
        return filters.do_indent(text, width, *args, **kwargs)

    @pass_eval_context
    def replace(eval_ctx: Any, text: Any, old: Any, new: Any, count: Any = None) -> Any:
        _within(_replaced(str(text), old, new, -1 if count is None else count), "replace")
        return filters.do_replace(eval_ctx, text, old, new, count)

    @pass_eval_context
    def join(eval_ctx: Any, value: Any, d: str = "", attribute: Any = None) -> Any:
        value = list(value)
        if attribute is None:
            _within(_joined(str(d), value), "join")
        return filters.sync_do_join(eval_ctx, value, d, attribute)

    @pass_environment
    def wordwrap(environment: Any, text: Any, width: int = 79, break_long_words: bool = True,
                 wrapstring: Any = None, break_on_hyphens: bool = True) -> Any:
        lines = len(str(text)) // max(width, 1) + 1 if type(width) is int else 1
        _within(len(str(text)) + lines * len(str(wrapstring or "\n")), "wordwrap")
        return filters.do_wordwrap(environment, text, width, break_long_words, wrapstring, break_on_hyphens)

    @pass_environment
    def sum_(environment: Any, iterable: Any, attribute: Any = None, start: Any = 0) -> Any:
        if isinstance(start, (list, tuple)):  # flattening: one pass, not a copy per item
            getter = filters.make_attrgetter(environment, attribute) if attribute is not None else None
            kind, out = type(start), list(start)
            for item in iterable:
                part = getter(item) if getter is not None else item
                if isinstance(part, Undefined):
                    part._fail_with_undefined_error()  # its own message (no such attribute)
                if type(part) is not kind:  # as Python's + says it
                    raise TemplateError(f"sum: cannot add {type(part).__name__} to a {kind.__name__}")
                out.extend(part)
                if len(out) > ITEMS_MAX:
                    raise TemplateError(f"sum makes more than {ITEMS_MAX:,} items")
            return out if kind is list else tuple(out)
        return filters.sync_do_sum(environment, iterable, attribute, start)

    def format_(value: Any, *args: Any, **kwargs: Any) -> Any:
        _bounded_percent(str(value), kwargs or args)
        return filters.do_format(value, *args, **kwargs)

    env.filters.update({
        "center": counted("center", filters.do_center, REPEAT_MAX),
        "batch": counted("batch", filters.do_batch),
        "slice": counted("slice", filters.sync_do_slice),
        "indent": indent, "replace": replace, "join": join, "wordwrap": wordwrap, "sum": sum_, "format": format_,
    })


def _env(finalize: Callable[[Any], Any] | None = None) -> ImmutableSandboxedEnvironment:
    env = _Sandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True,
                                        finalize=finalize)
    env.globals["secret"] = _no_secret  # each render passes its own
    # Rendering happens inside the workflow: nothing random may reach it (replays must agree).
    for name in ("lipsum", "cycler", "joiner"):
        env.globals.pop(name, None)
    env.filters.pop("random", None)
    # Data filters (bot/playbook/data.py). What decodes data into new strings is made inert, so no
    # JSON escape or base64 can spell a secret reference.
    env.globals.pop("namespace", None)  # (see REPEAT_MAX)
    _bounded_filters(env)
    env.filters.update({
        "tojson": data.tojson,
        "fromjson": lambda text: inert(data.fromjson(text)),
        "b64encode": data.b64encode,
        "b64decode": lambda text: inert(data.b64decode(text)),
        "sha256": data.sha256,
        "quantity": data.quantity,
    })
    return env


ENV = _env()
# Slack mrkdwn args (a `slack.post` text): what each `{{ }}` puts in is escaped, the author's own
# text stays live. Data in a message the bot posts as itself (an error quoting a response body, an
# alert label) must not notify the channel or show a link under another name.
MRKDWN_ENV = _env(finalize=slack_escaped)


def is_template(value: str) -> bool:
    return "{{" in value or "{%" in value


@lru_cache(maxsize=2048)
def _compile(source: str, mrkdwn: bool = False) -> Callable[[dict[str, Any]], Any]:
    """Compile once per source; a whole `{{ expr }}` keeps its native type (a dict stays a dict).
    `mrkdwn`: every string a `{{ }}` gives is escaped for Slack (MRKDWN_ENV)."""
    env = MRKDWN_ENV if mrkdwn else ENV
    whole = _WHOLE_EXPR.match(source)
    if whole and "{{" not in whole.group("expr") and "}}" not in whole.group("expr"):
        expression = env.compile_expression(whole.group("expr"), undefined_to_none=False)
        if mrkdwn:  # (only a JSON value: anything else is refused below, as for any other arg)
            return lambda ctx: _escaped_json(expression(**ctx))
        return lambda ctx: expression(**ctx)
    tree = env.parse(source)
    _no_macros(source, tree)
    template = env.from_string(tree)

    def counted(ctx: dict[str, Any]) -> str:
        """The text as it is made, refused past REPEAT_MAX characters (a loop over data)."""
        parts, made = [], 0
        for part in template.generate(**ctx):
            made += len(part)
            if made > REPEAT_MAX:
                raise TemplateError(f"the text is longer than {REPEAT_MAX:,} characters")
            parts.append(part)
        return "".join(parts)

    return counted


def render(value: Any, context: dict[str, Any], *, secrets: Collection[str] | None = None,
           mrkdwn: Collection[str] = ()) -> Any:
    """Render every string in a nested value; non-template strings pass through untouched.

    `secrets` are the names `secret()` may give here (the playbook's declared list); None means
    secret() is not allowed at all. The result's markers are checked against this render's calls.
    `mrkdwn`: keys of a mapping `value` whose templates put Slack-escaped text in (MRKDWN_ENV).
    """
    calls = _Secrets(secrets)
    ctx = {**context, "secret": calls}
    if mrkdwn and isinstance(value, dict):
        result = {key: _render(item, ctx, mrkdwn=key in mrkdwn) for key, item in value.items()}
    else:
        result = _render(value, ctx)
    try:
        calls._check(result)
    except TemplateError as exc:
        raise TemplateError(f"template {_sources(value)}: {exc}") from None
    return result


def _sources(value: Any) -> str:
    """The templates a failed check is about: those calling secret(), else all (a few)."""
    texts = strings_in(value)
    texts = [text for text in texts if "secret" in text] or texts
    return ", ".join(repr(text) for text in texts[:3]) + (", ..." if len(texts) > 3 else "") if texts else repr(value)


# Args that are Slack mrkdwn: what a template puts in them is escaped (MRKDWN_ENV).
MRKDWN_ARGS = {"slack.post": ("text",)}


def render_args(action: str, with_: dict[str, Any], context: dict[str, Any], *,
                secrets: Collection[str] | None) -> dict[str, Any]:
    """An action's `with:` as a run renders it, its Slack mrkdwn args escaped (MRKDWN_ARGS): the
    run itself, and what a dry run or a rehearsal shows of it and asks the policy about."""
    return render(with_, context, secrets=secrets, mrkdwn=MRKDWN_ARGS.get(action, ()))


def _render(value: Any, context: dict[str, Any], mrkdwn: bool = False) -> Any:
    if isinstance(value, str):
        if not is_template(value):
            return value
        try:
            result = _compile(value, mrkdwn)(context)
        except TemplateSyntaxError as exc:
            raise TemplateError(f"template {value!r} has a syntax error: {exc.message}") from exc
        except (UndefinedError, SecurityError, TemplateError, data.FilterError) as exc:
            raise TemplateError(f"template {value!r}: {exc}") from exc
        except Exception as exc:  # a template can raise anything (1/0, bad filter args)
            raise TemplateError(f"template {value!r} failed: {type(exc).__name__}: {exc}") from exc
        if isinstance(result, Undefined):
            try:
                str(result)
            except (UndefinedError, SecurityError) as exc:
                raise TemplateError(f"template {value!r}: {exc}") from exc
        if not _is_json(result):
            if _has_huge_int(result):
                raise TemplateError(f"template {value!r} gives a number of more than {INT_MAX_DIGITS} digits, "
                                    "more than a run can hold")
            raise TemplateError(
                f"template {value!r} gives a {type(result).__name__}, not a JSON value (string, number, "
                "boolean, null, list or mapping)"
            )
        # A lone surrogate a template made (a string literal's `\\ud800`, `"%c" % n`) reads as U+FFFD,
        # as in an action's output: no encoder takes it, and args, a policy question or the run's
        # status holding it failed the run's task on every replay (red team).
        return data.without_surrogates(result)
    if isinstance(value, dict):
        return {key: _render(item, context, mrkdwn) for key, item in value.items()}
    if isinstance(value, list):
        return [_render(item, context, mrkdwn) for item in value]
    return value


def _escaped_json(value: Any) -> Any:
    """A whole `{{ }}` in a mrkdwn arg: a JSON value escaped (slack_escaped), anything else as it
    came, for _render to refuse (a generator printed would be an object's address: not the same on
    a replay, and nothing a message should say)."""
    return slack_escaped(value) if _is_json(value) else value


def _is_json(value: Any) -> bool:
    if isinstance(value, float):  # nan and inf are not JSON (`'nan' | float`), and no record could hold them
        return math.isfinite(value)
    if isinstance(value, int):  # (bool too)
        return _readable(value)
    if value is None or isinstance(value, str):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_json(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json(v) for k, v in value.items())
    return False


def _has_huge_int(value: Any) -> bool:
    if isinstance(value, int):
        return not _readable(value)
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    return any(_has_huge_int(item) for item in items)


def truthy(value: Any) -> bool:
    """How a rendered `when:` reads: 'false', 'no', '0' and '' are false, as YAML authors expect."""
    if isinstance(value, str):
        return value.strip().lower() not in ("", "false", "no", "0", "none", "null", "off")
    return bool(value)


def check_syntax(source: str) -> None:
    try:
        tree = ENV.parse(source)
    except TemplateSyntaxError as exc:
        raise TemplateError(f"template {source!r} has a syntax error (line {exc.lineno}): {exc.message}") from exc
    _no_macros(source, tree)


def _no_macros(source: str, tree: nodes.Template) -> None:
    """Macros recurse, and a recursion can double a string each time (see REPEAT_MAX)."""
    if any(True for _ in tree.find_all((nodes.Macro, nodes.CallBlock))):
        raise TemplateError(f"template {source!r}: macros are not allowed in playbook templates")


def referenced_steps(source: str) -> set[str]:
    """Step ids a template reads through `steps.<id>` or `steps['<id>']`."""
    try:
        tree = ENV.parse(source)
    except TemplateSyntaxError as exc:
        raise TemplateError(f"template {source!r} has a syntax error (line {exc.lineno}): {exc.message}") from exc
    found: set[str] = set()
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        if isinstance(node.node, nodes.Name) and node.node.name == "steps":
            if isinstance(node, nodes.Getattr):
                found.add(node.attr)
            elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
                found.add(node.arg.value)
    return found


def texts_at(value: Any, loc: tuple[str | int, ...]) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """Every string in a nested value, template or not, with where it sits (keys and indexes)."""
    if isinstance(value, str):
        yield loc, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from texts_at(item, loc + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from texts_at(item, loc + (index,))


def strings_in(value: Any) -> list[str]:
    """Every template string inside a nested value."""
    if isinstance(value, str):
        return [value] if is_template(value) else []
    if isinstance(value, dict):
        return [s for item in value.values() for s in strings_in(item)]
    if isinstance(value, list):
        return [s for item in value for s in strings_in(item)]
    return []
