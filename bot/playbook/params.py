"""Playbook params: parse `-p k=v`, coerce to the declared types, check enum/pattern, apply defaults.

CLI, Slack and alert triggers all deliver params as text (or rendered templates); they go through
`coerce_params` before a run starts, so a typo fails at the door instead of half-way through.
"""

from __future__ import annotations

import difflib
import math
import re
from typing import Any, Iterable, Mapping, Sequence

from bot.playbook.model import ParamSpec, Playbook

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
    coerced = _coerce_type(name, spec.type, value)
    if spec.enum is not None:
        allowed = []
        for option in spec.enum:
            try:
                allowed.append(_coerce_type(name, spec.type, option))
            except ValueError:
                continue  # reported at load time by the checks
        if coerced not in allowed:
            shown = ", ".join(str(option) for option in spec.enum)
            raise ValueError(f"param {name!r}: {value!r} is not one of: {shown}")
    if spec.pattern is not None and isinstance(coerced, str) and not re.search(spec.pattern, coerced):
        # re.search with the pattern as written: JSON Schema semantics, anchor it with ^...$ to match whole.
        raise ValueError(f"param {name!r}: {coerced!r} does not match {spec.pattern}")
    return coerced


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
    return out


def unknown_param_message(key: str, declared: Mapping[str, ParamSpec]) -> str:
    """`unknown param 'x'` with a close match and the declared names: the fix is usually a typo."""
    message = f"unknown param {key!r}"
    close = difflib.get_close_matches(key, list(declared), n=1)
    if close:
        message += f"; did you mean {close[0]!r}?"
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
        raise ValueError(f"param {name!r}: expected a string, got {value!r}")
    if kind == "integer":
        if isinstance(value, bool):
            raise ValueError(f"param {name!r}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and _INTEGER.match(value.strip()):
            return int(value.strip())
        raise ValueError(f"param {name!r}: expected an integer, got {value!r}")
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
            raise ValueError(f"param {name!r}: expected a number, got {value!r}")
        return number
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower() if isinstance(value, (str, int)) else None
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError(f"param {name!r}: expected a boolean (true/false, yes/no, 1/0), got {value!r}")
    raise ValueError(f"param {name!r}: unknown type {kind!r}")
