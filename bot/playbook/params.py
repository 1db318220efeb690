"""Playbook params: parse `-p k=v`, coerce to the declared types, check enum/pattern, apply defaults.

CLI, Slack and alert triggers all deliver params as text (or rendered templates); they go through
`coerce_params` before a run starts, so a typo fails at the door instead of half-way through.
Array and object params come as native JSON (API, a whole-expression trigger template, a YAML
default) or as text: JSON (`["a","b"]`), or for an array of scalars also `a,b`. Either way they
are bounded by the model's PARAM_MAX_* caps before anything walks them.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from typing import Any, Iterable, Mapping, Sequence

from bot.playbook import patterns
from bot.playbook.data import json_depth
from bot.playbook.outputs import json_size
from bot.playbook.model import (
    PARAM_MAX_BYTES,
    PARAM_MAX_DEPTH,
    PARAM_MAX_ITEMS,
    PARAM_MAX_KEYS,
    PARAM_MAX_NODES,
    PARAMS_MAX_BYTES,
    SCALAR_TYPES,
    ParamSpec,
    Playbook,
)

_INTEGER = re.compile(r"^[+-]?[0-9]+$")
_TRUE = frozenset({"true", "yes", "1"})
_FALSE = frozenset({"false", "no", "0"})


class ParamError(ValueError):
    """Params a run cannot start with; every problem at once, so one retry fixes them all."""

    def __init__(self, problems: Sequence[tuple[str | None, str]]) -> None:
        if not problems:
            raise ValueError("ParamError needs at least one problem")
        self.problems: tuple[tuple[str | None, str], ...] = tuple(problems)
        self.param: str | None = self.problems[0][0]
        super().__init__("; ".join(message for _, message in self.problems))


def parse_assignments(items: Iterable[str]) -> dict[str, str]:
    """`-p key=value` items as a dict (split at the first `=`); values stay text for `coerce_params`."""
    out: dict[str, str] = {}
    problems: list[tuple[str | None, str]] = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            problems.append((None, f"-p expects key=value, got {item!r}"))
        elif key in out:
            problems.append((key, f"param {key!r} is given twice (-p {key}={out[key]} and -p {item})"))
        else:
            out[key] = value
    if problems:
        raise ParamError(problems)
    return out


def coerce_value(name: str, spec: ParamSpec, value: Any) -> Any:
    """One value as the run will see it, or ValueError naming the param; load-time checks reuse it."""
    if spec.type in ("array", "object"):
        if isinstance(value, str):
            value = _parse_text(name, spec, value)
        coerced = _Walk().value(name, spec, value, 1)
        size = json_size(coerced)
        if size > PARAM_MAX_BYTES:
            raise ValueError(f"param {name!r}: {size} bytes of JSON, more than the {PARAM_MAX_BYTES} an "
                             f"{spec.type} param may hold")
        return coerced
    return _scalar(name, spec, value)


def _scalar(name: str, spec: ParamSpec, value: Any) -> Any:
    coerced = _coerce_type(name, spec.type, value)
    if isinstance(coerced, str) and len(coerced) > PARAM_MAX_BYTES // 4 and len(coerced.encode()) > PARAM_MAX_BYTES:
        raise ValueError(f"param {name!r}: {len(coerced.encode())} bytes, more than the {PARAM_MAX_BYTES} a param may hold")
    if spec.enum is not None:
        allowed = []
        for option in spec.enum:
            try:
                allowed.append(_coerce_type(name, spec.type, option))
            except ValueError:
                continue  # reported at load time by the checks
        if coerced not in allowed:
            shown = ", ".join(str(option) for option in spec.enum)
            raise ValueError(f"param {name!r}: {_shown(value)} is not one of: {shown}")
    if spec.pattern is not None and isinstance(coerced, str) and not patterns.found(spec.pattern, coerced):
        # Searched for as written (JSON Schema), by RE2: anchor it with ^...$ to match whole.
        raise ValueError(f"param {name!r}: {_shown(coerced)} does not match {spec.pattern}")
    return coerced


class _Walk:
    """Types a native array/object value against its spec, counting what it visits so a hostile
    value (deep, wide or huge) is refused before it costs much."""

    def __init__(self) -> None:
        self.nodes = 0

    def visit(self, name: str) -> None:
        self.nodes += 1
        if self.nodes > PARAM_MAX_NODES:
            raise ValueError(f"param {name!r}: more than {PARAM_MAX_NODES} values in one param")

    def value(self, name: str, spec: ParamSpec, value: Any, depth: int) -> Any:
        self.visit(name)
        if spec.type == "array":
            return self.array(name, spec, value, depth)
        if spec.type == "object":
            return self.object(name, spec, value, depth)
        return _scalar(name, spec, value)

    def array(self, name: str, spec: ParamSpec, value: Any, depth: int) -> list[Any]:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"param {name!r}: expected an array, got {_shown(value)}")
        cap = min(PARAM_MAX_ITEMS, spec.max_items if spec.max_items is not None else PARAM_MAX_ITEMS)
        if len(value) > cap:
            which = "max_items" if cap == spec.max_items else "the limit for any array"
            raise ValueError(f"param {name!r}: {len(value)} items, more than {cap} ({which})")
        if spec.min_items is not None and len(value) < spec.min_items:
            raise ValueError(f"param {name!r}: {len(value)} items, fewer than min_items ({spec.min_items})")
        assert spec.items is not None  # the model requires items for an array
        return [self.value(f"{name}[{i}]", spec.items, item, depth + 1) for i, item in enumerate(value)]

    def object(self, name: str, spec: ParamSpec, value: Any, depth: int) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise ValueError(f"param {name!r}: expected an object, got {_shown(value)}")
        if len(value) > PARAM_MAX_KEYS:
            raise ValueError(f"param {name!r}: {len(value)} keys, more than the {PARAM_MAX_KEYS} an object may have")
        declared = spec.properties or {}
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"param {name!r}: key {_shown(key)} is not a string")
            if key not in declared:
                if not spec.additional_properties:
                    listed = f"declared: {', '.join(declared)}" if declared else "it declares no properties"
                    raise ValueError(f"param {name!r}: unknown property {_shown(key)}{_close(key, declared)} "
                                     f"({listed}; additional_properties is false)")
                out[key] = self.json(f"{name}.{key}", item, depth + 1)
        for key, prop in declared.items():
            item = value.get(key)
            if item is None:
                if prop.is_required:
                    raise ValueError(f"param {name!r}: missing required property {key!r}" + _described(prop))
                item = prop.default
                if item is None:
                    out[key] = None
                    continue
            out[key] = self.value(f"{name}.{key}", prop, item, depth + 1)
        return {key: out[key] for key in [*declared, *(k for k in out if k not in declared)]}

    def json(self, name: str, value: Any, depth: int) -> Any:
        """An additional property's value: any JSON, within the same caps."""
        self.visit(name)
        if isinstance(value, (list, tuple, dict)) and depth > PARAM_MAX_DEPTH:
            raise ValueError(f"param {name!r}: nested more than {PARAM_MAX_DEPTH} arrays/objects deep")
        if isinstance(value, (list, tuple)):
            if len(value) > PARAM_MAX_ITEMS:
                raise ValueError(f"param {name!r}: {len(value)} items, more than {PARAM_MAX_ITEMS}")
            return [self.json(f"{name}[{i}]", item, depth + 1) for i, item in enumerate(value)]
        if isinstance(value, dict):
            if len(value) > PARAM_MAX_KEYS:
                raise ValueError(f"param {name!r}: {len(value)} keys, more than {PARAM_MAX_KEYS}")
            if not all(isinstance(key, str) for key in value):
                raise ValueError(f"param {name!r}: object keys must be strings")
            return {key: self.json(f"{name}.{key}", item, depth + 1) for key, item in value.items()}
        if value is None or isinstance(value, (str, bool, int)):
            return value
        if isinstance(value, float) and math.isfinite(value):
            return value
        raise ValueError(f"param {name!r}: {_shown(value)} is not a JSON value")


def _parse_text(name: str, spec: ParamSpec, text: str) -> Any:
    """An array/object given as text (CLI, Slack, an alert label): JSON, or `a,b` for an array of scalars."""
    size = len(text.encode())
    if size > PARAM_MAX_BYTES:
        raise ValueError(f"param {name!r}: {size} bytes, more than the {PARAM_MAX_BYTES} an {spec.type} param may hold")
    stripped = text.strip()
    opener = "[" if spec.type == "array" else "{"
    example = '["a","b"]' if spec.type == "array" else '{"key":"value"}'
    listable = spec.type == "array" and spec.items is not None and spec.items.type in SCALAR_TYPES
    if stripped.startswith(opener) or not listable:
        if not stripped.startswith(opener):
            form = f"JSON like {example}" + (" or a comma-separated list like a,b" if listable else "")
            raise ValueError(f"param {name!r}: expected an {spec.type} as {form}, got {_shown(text)}")
        if json_depth(stripped) > PARAM_MAX_DEPTH:
            raise ValueError(f"param {name!r}: nested more than {PARAM_MAX_DEPTH} arrays/objects deep")
        try:
            return json.loads(stripped)
        except ValueError as exc:
            raise ValueError(
                f"param {name!r}: not valid JSON ({exc}); expected JSON like {example} (quote the whole value so "
                f"the shell or Slack keeps its double quotes: {name}='{example}'"
                + (", or write a,b)" if listable else ")")
            ) from None
    if not stripped:
        return []
    return [part.strip() for part in stripped.split(",")]


def _shown(value: Any, limit: int = 80) -> str:
    """A value in a message, cut short: an error must not echo a megabyte back."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…" + f" ({len(text)} characters)"


def _close(key: str, declared: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(key, list(declared), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def coerce_params(playbook: Playbook, raw: Mapping[str, Any]) -> dict[str, Any]:
    """Every declared param, typed and checked; None for optional ones nobody set. Raises ParamError."""
    declared = playbook.params
    problems: list[tuple[str | None, str]] = []
    for key in raw:
        if key not in declared:
            problems.append((key, unknown_param_message(key, declared)))
    out: dict[str, Any] = {}
    for name, spec in declared.items():
        value = raw.get(name)
        if value is None:
            if spec.is_required:
                problems.append((name, f"missing required param {name!r}" + _described(spec)))
                continue
            value = spec.default
            if value is None:
                out[name] = None
                continue
        try:
            out[name] = coerce_value(name, spec, value)
        except ValueError as exc:
            problems.append((name, str(exc)))
    if problems:
        raise ParamError(problems)
    if (size := json_size(out)) > PARAMS_MAX_BYTES:
        raise ParamError([(None, f"the params are {size} bytes of JSON together, more than the {PARAMS_MAX_BYTES} "
                                 "a run's may hold")])
    return out


def unknown_param_message(key: str, declared: Mapping[str, ParamSpec]) -> str:
    """`unknown param 'x'` with a close match and the declared names: the fix is usually a typo."""
    message = f"unknown param {key!r}" + _close(key, declared)
    if declared:
        return message + f" (declared: {', '.join(declared)})"
    return message + " (this playbook takes no params)"


def _described(spec: ParamSpec) -> str:
    return f" ({spec.description})" if spec.description else ""


def _coerce_type(name: str, kind: str, value: Any) -> Any:
    if kind == "string":
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"param {name!r}: expected a string, got {_shown(value)}")
    if kind == "integer":
        if isinstance(value, bool):
            raise ValueError(f"param {name!r}: expected an integer, got {_shown(value)}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and _INTEGER.match(value.strip()):
            return int(value.strip())
        raise ValueError(f"param {name!r}: expected an integer, got {_shown(value)}")
    if kind == "number":
        number: float | None = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                number = None
        if number is None or not math.isfinite(number):
            raise ValueError(f"param {name!r}: expected a number, got {_shown(value)}")
        return number
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower() if isinstance(value, (str, int)) else None
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError(f"param {name!r}: expected a boolean (true/false, yes/no, 1/0), got {_shown(value)}")
    raise ValueError(f"param {name!r}: unknown type {kind!r}")
