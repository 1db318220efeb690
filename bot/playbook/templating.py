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
import string
from functools import lru_cache
from typing import Any, Callable, Iterator, Collection

from jinja2 import StrictUndefined, TemplateSyntaxError, Undefined, filters, nodes
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

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


# What a template may make of the values it reads (a target's answer, a param, red team). An int of
# more than 4,300 digits is encoded but read back by no JSON reader here (Python's, pydantic's): a
# child's input or end holding one failed its workflow task on every replay. A power or a repeat
# past these is refused before it is computed: `"=" * width` with a width a target chose would
# allocate it (the worker dies, and again on each replay of the run).
INT_MAX_DIGITS = 4300
_INT_BOUND = 10**INT_MAX_DIGITS
REPEAT_MAX = 1_000_000  # characters or items `*` may make


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

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """`str.format` and `format_map` as the sandbox runs them, a width past REPEAT_MAX refused
        first (`'{:>{}}'.format(x, width)` allocated the width: review of the repeat bound)."""
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        text, mapping = value.__self__, value.__name__ == "format_map"

        def bounded(*args: Any, **kwargs: Any) -> str:
            _bounded_format(text, args, args[0] if mapping and args and isinstance(args[0], dict) else kwargs)
            return wrapped(*args, **kwargs)

        return bounded


_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
_NUMBER = re.compile(r"\d+")


def _too_wide(digits: str) -> bool:
    return len(digits) > 7 or int(digits) > REPEAT_MAX


def _large_int_among(values: Any) -> bool:
    return any(type(v) is int and abs(v) > REPEAT_MAX for v in values)


def _bounded_percent(text: str, args: Any) -> None:
    """`text % args` would pad to a width (or a precision) past REPEAT_MAX: written in the text, or
    taken from the args by `*`."""
    values = args if isinstance(args, tuple) else (args,)
    for match in _PERCENT_SPEC.finditer(text):
        for part in match.groups():
            if part is not None and (_large_int_among(values) if part == "*" else _too_wide(part)):
                raise TemplateError(f"a % format pads to more than {REPEAT_MAX:,} characters")


def _bounded_format(text: str, args: Any, kwargs: Any) -> None:
    """The same for `str.format`: a width written in a field's spec, or one a nested field gives."""
    try:
        fields = list(string.Formatter().parse(text))
    except ValueError:
        return  # (str.format refuses it itself)
    for _, _, spec, _ in fields:
        if not spec:
            continue
        nested = "{" in spec and _large_int_among([*args, *(kwargs.values() if isinstance(kwargs, dict) else ())])
        if nested or any(_too_wide(n) for n in _NUMBER.findall(spec)):
            raise TemplateError(f"a format pads to more than {REPEAT_MAX:,} characters")


def _bounded_width(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    """A filter whose second argument is a width or a count it makes that much of (`center`,
    `indent`, `batch`, `slice`): past REPEAT_MAX, refused before it is made."""

    def bounded(value: Any, width: Any = None, *args: Any, **kwargs: Any) -> Any:
        if type(width) is int and abs(width) > REPEAT_MAX:
            raise TemplateError(f"{name}({_shown(width)}) makes more than {REPEAT_MAX:,}")
        return original(value, *(() if width is None else (width,)), *args, **kwargs)

    return bounded


def _bounded_format_filter(original: Callable[..., Any]) -> Callable[..., Any]:
    def bounded(value: Any, *args: Any, **kwargs: Any) -> Any:
        _bounded_percent(str(value), kwargs or args)
        return original(value, *args, **kwargs)

    return bounded


def _bounded_power(base: Any, exponent: Any) -> None:
    if type(base) is int and type(exponent) is int and abs(base) > 1 and exponent > 0:
        if exponent * math.log10(abs(base)) > INT_MAX_DIGITS:
            raise TemplateError(f"{_shown(base)} ** {_shown(exponent)} has more than {INT_MAX_DIGITS} digits")


def _bounded_repeat(left: Any, right: Any) -> None:
    sequence, count = (left, right) if isinstance(left, (str, list, tuple)) else (right, left)
    if isinstance(count, int) and len(sequence) * count > REPEAT_MAX:
        raise TemplateError(f"repeating {len(sequence)} {'characters' if isinstance(sequence, str) else 'items'} "
                            f"{_shown(count)} times makes more than {REPEAT_MAX:,}")


def _shown(number: int) -> str:
    """A number as an error may quote it: its digits, or how many there are."""
    return str(number) if abs(number) < 10**30 else f"a {len(str(number)) if abs(number) < _INT_BOUND else 'huge'}-digit number"


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
    # (sync_do_slice: the registered `slice` is an async variant, which reads its environment off
    # the context it is passed; these wrappers pass none, and nothing here renders async)
    for name, original in (("center", filters.do_center), ("indent", filters.do_indent), ("batch", filters.do_batch),
                           ("slice", filters.sync_do_slice)):
        env.filters[name] = _bounded_width(name, original)
    env.filters["format"] = _bounded_format_filter(filters.do_format)
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
    template = env.from_string(source)
    return template.render


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
    if isinstance(value, int):  # (bool too) what JSON readers take back: see INT_MAX_DIGITS
        return -_INT_BOUND < value < _INT_BOUND
    if value is None or isinstance(value, str):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_json(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json(v) for k, v in value.items())
    return False


def _has_huge_int(value: Any) -> bool:
    if isinstance(value, int):
        return not -_INT_BOUND < value < _INT_BOUND
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    return any(_has_huge_int(item) for item in items)


def truthy(value: Any) -> bool:
    """How a rendered `when:` reads: 'false', 'no', '0' and '' are false, as YAML authors expect."""
    if isinstance(value, str):
        return value.strip().lower() not in ("", "false", "no", "0", "none", "null", "off")
    return bool(value)


def check_syntax(source: str) -> None:
    try:
        ENV.parse(source)
    except TemplateSyntaxError as exc:
        raise TemplateError(f"template {source!r} has a syntax error (line {exc.lineno}): {exc.message}") from exc


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
