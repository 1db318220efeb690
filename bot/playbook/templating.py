"""Sandboxed Jinja2 over `params`, `alert`, `run` and `steps.<id>.output`.

Rendering is pure and deterministic, so the workflow renders step arguments itself (policy and
approvers see exactly what will run). Secrets never render: `{{ secret("X") }}` becomes a
reference that only the activity resolves, so values stay out of history, logs and audit.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Callable

from jinja2 import StrictUndefined, TemplateSyntaxError, Undefined, nodes
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

SECRET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SECRET_REF = re.compile(r"\$\{secret:([A-Za-z_][A-Za-z0-9_]*)\}")
_WHOLE_EXPR = re.compile(r"^\s*\{\{(?P<expr>.*?)\}\}\s*$", re.S)


class TemplateError(ValueError):
    """A template that cannot render: names the template so the author can find it."""


def secret_ref(name: str) -> str:
    if not isinstance(name, str) or not SECRET_NAME.match(name):
        raise TemplateError(f"secret() takes a name like 'DEPLOY_TOKEN', not {name!r}")
    return "${secret:" + name + "}"


def _env() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
    env.globals["secret"] = secret_ref
    # Rendering happens inside the workflow: nothing random may reach it (replays must agree).
    for name in ("lipsum", "cycler", "joiner"):
        env.globals.pop(name, None)
    env.filters.pop("random", None)
    return env


ENV = _env()


def is_template(value: str) -> bool:
    return "{{" in value or "{%" in value


@lru_cache(maxsize=2048)
def _compile(source: str) -> Callable[[dict[str, Any]], Any]:
    """Compile once per source; a whole `{{ expr }}` keeps its native type (a dict stays a dict)."""
    whole = _WHOLE_EXPR.match(source)
    if whole and "{{" not in whole.group("expr") and "}}" not in whole.group("expr"):
        expression = ENV.compile_expression(whole.group("expr"), undefined_to_none=False)
        return lambda ctx: expression(**ctx)
    template = ENV.from_string(source)
    return template.render


def render(value: Any, context: dict[str, Any]) -> Any:
    """Render every string in a nested value; non-template strings pass through untouched."""
    if isinstance(value, str):
        if not is_template(value):
            return value
        try:
            result = _compile(value)(context)
        except TemplateSyntaxError as exc:
            raise TemplateError(f"template {value!r} has a syntax error: {exc.message}") from exc
        except (UndefinedError, SecurityError, TemplateError) as exc:
            raise TemplateError(f"template {value!r}: {exc}") from exc
        except Exception as exc:  # a template can raise anything (1/0, bad filter args)
            raise TemplateError(f"template {value!r} failed: {type(exc).__name__}: {exc}") from exc
        if isinstance(result, Undefined):
            try:
                str(result)
            except (UndefinedError, SecurityError) as exc:
                raise TemplateError(f"template {value!r}: {exc}") from exc
        if not _is_json(result):
            raise TemplateError(
                f"template {value!r} gives a {type(result).__name__}, not a JSON value (string, number, "
                "boolean, null, list or mapping)"
            )
        return result
    if isinstance(value, dict):
        return {key: render(item, context) for key, item in value.items()}
    if isinstance(value, list):
        return [render(item, context) for item in value]
    return value


def _is_json(value: Any) -> bool:
    if value is None or isinstance(value, (str, bool, int, float)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_json(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json(v) for k, v in value.items())
    return False


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


def strings_in(value: Any) -> list[str]:
    """Every template string inside a nested value."""
    if isinstance(value, str):
        return [value] if is_template(value) else []
    if isinstance(value, dict):
        return [s for item in value.values() for s in strings_in(item)]
    if isinstance(value, list):
        return [s for item in value for s in strings_in(item)]
    return []
