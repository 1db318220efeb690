"""Template filters over data (`tojson`, `fromjson`, `b64encode`, `b64decode`, `sha256`, `quantity`)
and bounded JSON reading, shared with params.

Pure and deterministic (templates render inside the workflow). Everything they read may be hostile
(alert labels, step output), so what they decode is capped before it is built, and they take and
give JSON values only. Errors are FilterError; templating names the template around them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from decimal import Decimal, InvalidOperation
from typing import Any

FROMJSON_MAX_BYTES = 256 * 1024  # as much as shell.run keeps of stdout
FROMJSON_MAX_DEPTH = 32
B64DECODE_MAX_BYTES = 256 * 1024
QUANTITY_MAX = 2**63 - 1  # what a Kubernetes int64 quantity can hold

# Kubernetes resource.Quantity: <signedNumber><suffix>, suffix a binary SI (Ki..Ei), a decimal SI
# (n u m "" k M G T P E) or a decimal exponent (e3, E-2).
_QUANTITY = re.compile(
    r"^(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?:(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)|[eE](?P<exponent>[+-]?[0-9]{1,3}))?$"
)
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}


class FilterError(ValueError):
    """A filter given something it cannot take; the message says what it expected."""


def json_depth(text: str) -> int:
    """How deep brackets nest in JSON text, strings skipped: checked before a parser ever recurses."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


_SURROGATE = re.compile("[\ud800-\udfff]")  # in a str, always a lone one: no UTF-8 text holds it


def without_surrogates(value: Any) -> Any:
    """`value` with each lone surrogate in its strings and keys replaced by U+FFFD. JSON lets any
    text escape one (`\\ud800`), and nothing that encodes UTF-8 takes it: not the audit store, not
    Temporal's payload converter (an action's result it cannot send is a failed attempt, and the
    action would act again)."""
    if isinstance(value, str):
        return value if value.isascii() else _SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {without_surrogates(k): without_surrogates(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_surrogates(item) for item in value]
    return value


def value_depth(value: Any, limit: int) -> int:
    """How deeply lists and objects nest in a decoded value (a scalar is 0), without recursing;
    counted no further than one past `limit` (enough to say it is too deep)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, (list, tuple)) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        if level <= limit:
            stack.extend((child, level + 1) for child in children)
    return deepest


def loads_bounded(text: str, max_bytes: int, max_depth: int) -> Any:
    """json.loads with the size and depth checked first; NaN and Infinity are refused (not JSON)."""
    size = len(text.encode())
    if size > max_bytes:
        raise FilterError(f"{size} bytes of JSON, more than {max_bytes}")
    if json_depth(text) > max_depth:
        raise FilterError(f"JSON nested more than {max_depth} deep")
    try:
        return json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise FilterError(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None


def _no_constant(name: str) -> Any:
    raise FilterError(f"not valid JSON: {name} is not a JSON number")


def tojson(value: Any, indent: int | None = None) -> str:
    """JSON text of a value, keys sorted, non-ASCII kept (so a secret() reference inside stays whole)."""
    if indent is not None and (not isinstance(indent, int) or isinstance(indent, bool) or not 0 <= indent <= 8):
        raise FilterError("tojson: indent is a number from 0 to 8")
    try:
        return json.dumps(value, sort_keys=True, ensure_ascii=False, allow_nan=False, indent=indent,
                          separators=(",", ": ") if indent is not None else (",", ":"))
    except (TypeError, ValueError) as exc:
        raise FilterError(f"tojson: {_shown(value)} is not a JSON value ({exc})") from None


def fromjson(text: Any) -> Any:
    """A JSON value from text (a command's stdout, an alert annotation); at most FROMJSON_MAX_BYTES."""
    if not isinstance(text, str):
        raise FilterError(f"fromjson takes JSON text, not {type(text).__name__}")
    try:
        return loads_bounded(text, FROMJSON_MAX_BYTES, FROMJSON_MAX_DEPTH)
    except FilterError as exc:
        raise FilterError(f"fromjson: {exc}") from None


def b64encode(text: Any) -> str:
    """Standard base64 of the text's UTF-8 bytes."""
    if not isinstance(text, str):
        raise FilterError(f"b64encode takes text, not {type(text).__name__} (use | tojson first)")
    return base64.b64encode(text.encode()).decode("ascii")


def b64decode(text: Any) -> str:
    """UTF-8 text from standard base64 (URL-safe and unpadded input too); at most B64DECODE_MAX_BYTES."""
    if not isinstance(text, str):
        raise FilterError(f"b64decode takes base64 text, not {type(text).__name__}")
    compact = "".join(text.split())
    if len(compact) > (B64DECODE_MAX_BYTES // 3 + 1) * 4:
        raise FilterError(f"b64decode: would decode to more than {B64DECODE_MAX_BYTES} bytes")
    compact = compact.replace("-", "+").replace("_", "/")
    compact += "=" * (-len(compact) % 4)
    try:
        raw = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise FilterError(f"b64decode: {_shown(text)} is not base64") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FilterError("b64decode: the decoded bytes are not UTF-8 text (binary data cannot go in a template)") from None


def sha256(text: Any) -> str:
    """Hex sha256 of the text's UTF-8 bytes (of a mapping or list: `| tojson | sha256`)."""
    if not isinstance(text, str):
        raise FilterError(f"sha256 takes text, not {type(text).__name__} (use | tojson | sha256)")
    return hashlib.sha256(text.encode()).hexdigest()


def quantity(value: Any) -> int | float:
    """A Kubernetes quantity as a number: `10Gi` → 10737418240 (bytes), `500m` → 0.5 (CPUs), `1.5G` →
    1500000000, `1e3` → 1000. Whole results are integers."""
    if isinstance(value, bool):
        raise FilterError(f"quantity: {value!r} is not a Kubernetes quantity")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise FilterError(f"quantity: {value!r} is not a finite number")
        return value
    if not isinstance(value, str):
        raise FilterError(f"quantity takes text like 10Gi or 500m, not {type(value).__name__}")
    match = _QUANTITY.match(value.strip()) if len(value) <= 64 else None
    if match is None:
        raise FilterError(
            f"quantity: {_shown(value)} is not a Kubernetes quantity: a number with one of the suffixes "
            "Ki Mi Gi Ti Pi Ei (binary), n u m k M G T P E (decimal) or an exponent (e3), like 10Gi, 500m, 1.5G"
        )
    try:
        number = Decimal(match["number"])
    except InvalidOperation:  # the pattern admits only numbers; kept for safety
        raise FilterError(f"quantity: {_shown(value)} is not a number") from None
    suffix, exponent = match["suffix"], match["exponent"]
    if suffix in _BINARY:
        number *= _BINARY[suffix]
    elif suffix is not None:
        number = number.scaleb(_DECIMAL[suffix])
    elif exponent is not None:
        number = number.scaleb(int(exponent))
    if abs(number) > QUANTITY_MAX:
        raise FilterError(f"quantity: {_shown(value)} is larger than {QUANTITY_MAX}")
    return int(number) if number == number.to_integral_value() else float(number)


def _shown(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
