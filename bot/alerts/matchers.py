"""Alertmanager label matchers: parsed and applied the way Alertmanager (>= 0.27, default mode) does.

Alertmanager's default "fallback" mode runs two parsers: the UTF-8 one (`matcher/parse`: quoted
or bare tokens, Go string escapes in quotes) and the classic one (`pkg/labels`: a Prometheus
label name, tolerant OpenMetrics-escaped value). Where the classic parser accepts the input its
result wins (it also wins when both accept and disagree); otherwise the UTF-8 result; otherwise
the input is an error. We mirror that so a trigger copied from an Alertmanager route behaves the
same. A trigger line may hold several comma-separated matchers inside optional `{}`, as a
`matchers:` line in Alertmanager's config may.

Regexes are anchored (`^(?:re)$`) and evaluated by RE2 itself, as Alertmanager's Go `regexp`
evaluates them (see `bot.alerts.regex`). A label the alert does not carry reads as "".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Literal, Mapping

from bot.alerts.regex import AnchoredRegex, RegexError, compile_anchored

Op = Literal["=", "!=", "=~", "!~"]
OPERATORS: tuple[Op, ...] = ("=", "!=", "=~", "!~")


class MatcherError(ValueError):
    """A matcher that does not parse: the message names the text and the problem."""

    def __init__(self, text: str, problem: str) -> None:
        self.text = text
        self.problem = problem
        super().__init__(f"matcher {text!r}: {problem}")


@dataclass(frozen=True)
class Matcher:
    name: str
    op: Op
    value: str
    regex: AnchoredRegex | None = field(default=None, compare=False, repr=False)

    def matches_value(self, value: str) -> bool:
        if self.op == "=":
            return value == self.value
        if self.op == "!=":
            return value != self.value
        assert self.regex is not None
        found = self.regex.matches(value)
        return found if self.op == "=~" else not found

    def matches(self, labels: Mapping[str, str]) -> bool:
        return self.matches_value(labels.get(self.name, ""))

    def __str__(self) -> str:
        """Alertmanager's canonical form: `name="value"` (name quoted when it needs to be)."""
        name = _go_quote(self.name) if any(_reserved(ch) for ch in self.name) or not self.name else self.name
        value = self.value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
        return f'{name}{self.op}"{value}"'


def new_matcher(name: str, op: str, value: str, *, text: str | None = None) -> Matcher:
    """A checked Matcher; the regex is compiled once here. Raises MatcherError."""
    shown = text if text is not None else f"{name}{op}{value}"
    if op not in OPERATORS:
        raise MatcherError(shown, f"unknown operator {op!r}; use one of =, !=, =~, !~")
    if not name:
        raise MatcherError(shown, "empty label name")
    regex = None
    if op in ("=~", "!~"):
        try:
            regex = compile_anchored(value)
        except RegexError as exc:
            raise MatcherError(shown, f"bad regex {value!r}: {exc}") from None
    return Matcher(name, op, value, regex)  # type: ignore[arg-type]


def parse_matchers(text: str) -> list[Matcher]:
    """Every matcher in one line (`a="x", b=~"y|z"`, braces optional); [] for "" or "{}"."""
    if not isinstance(text, str):
        raise MatcherError(repr(text), "a matcher must be a string")
    try:
        return _classic_matchers(text)
    except MatcherError as classic:
        classic_error = classic
    try:
        return _utf8_matchers(text)
    except MatcherError as utf8:
        # Both refused it: a bad regex is the real problem wherever it shows; otherwise the UTF-8
        # parser's message says where the syntax broke, the classic one only that it did.
        if utf8.problem.startswith("bad regex") or not classic_error.problem.startswith("bad regex"):
            raise utf8 from None
        raise classic_error from None


def parse_matcher(text: str) -> Matcher:
    """Exactly one matcher (braces allowed); raises MatcherError."""
    found = parse_matchers(text)
    if len(found) != 1:
        raise MatcherError(text, "no matcher" if not found else f"expected one matcher, found {len(found)}")
    return found[0]


def matches(matchers: Iterable[Matcher], labels: Mapping[str, str]) -> bool:
    """True when every matcher matches (an empty list matches everything, as in Alertmanager)."""
    return all(m.matches(labels) for m in matchers)


# -- classic parser (pkg/labels) ---------------------------------------------------------------

_GO_SPACE = "\t\n\f\r "  # RE2's \s
_CLASSIC = re.compile(
    rf"[{_GO_SPACE}]*([a-zA-Z_:][a-zA-Z0-9_:]*)[{_GO_SPACE}]*(=~|=|!=|!~)[{_GO_SPACE}]*(.*?)[{_GO_SPACE}]*",
    re.S,
)


def _classic_matchers(text: str) -> list[Matcher]:
    body = text.removeprefix("{").removesuffix("}")
    parts: list[str] = []
    token: list[str] = []
    inside_quotes = escaped = False
    for ch in body:
        if ch == "," and not inside_quotes:
            parts.append("".join(token))
            token = []
            continue
        if ch == '"':
            if not escaped:
                inside_quotes = not inside_quotes
            else:
                escaped = False
        elif ch == "\\":
            escaped = not escaped
        else:
            escaped = False
        token.append(ch)
    last = "".join(token).strip()
    if last:
        parts.append(last)
    return [_classic_matcher(part, text) for part in parts]


def _classic_matcher(part: str, text: str) -> Matcher:
    found = _CLASSIC.fullmatch(part)
    if not found:
        raise MatcherError(text, f"bad matcher format: {part!r}")
    name, op, raw = found.groups()
    expect_trailing_quote = raw.startswith('"')
    if expect_trailing_quote:
        raw = raw[1:]
    value: list[str] = []
    escaped = False
    last = len(raw) - 1
    for i, ch in enumerate(raw):
        if escaped:
            escaped = False
            value.append({"n": "\n", '"': '"', "\\": "\\"}.get(ch, "\\" + ch))
            continue
        if ch == "\\":
            if i < last:
                escaped = True
            else:
                value.append("\\")
        elif ch == '"':
            if not expect_trailing_quote or i < last:
                raise MatcherError(text, "unescaped double quote in value")
            expect_trailing_quote = False
        else:
            value.append(ch)
    if expect_trailing_quote:
        raise MatcherError(text, "unterminated quoted value")
    return new_matcher(name, op, "".join(value), text=text)


# -- UTF-8 parser (matcher/parse) --------------------------------------------------------------

_RESERVED = frozenset("{}!=~,\\\"'`")


def _reserved(ch: str) -> bool:
    return ch.isspace() or ch in _RESERVED


@dataclass(frozen=True)
class _Token:
    kind: str  # "{", "}", ",", an operator, "quoted", "bare"
    value: str
    start: int


def _lex(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch in "{},":
            tokens.append(_Token(ch, ch, i))
            i += 1
        elif ch == "=":
            op = "=~" if text.startswith("=~", i) else "="
            tokens.append(_Token(op, op, i))
            i += len(op)
        elif ch == "!":
            if i + 1 >= n or text[i + 1] not in "=~":
                raise MatcherError(text, f"bad operator at offset {i}: '!' must be followed by '=' or '~'")
            tokens.append(_Token(text[i : i + 2], text[i : i + 2], i))
            i += 2
        elif ch == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            if j >= n:
                raise MatcherError(text, f"unterminated quoted string starting at offset {i} (missing end \")")
            tokens.append(_Token("quoted", text[i : j + 1], i))
            i = j + 1
        elif not _reserved(ch):
            j = i
            while j < n and not _reserved(text[j]):
                j += 1
            tokens.append(_Token("bare", text[i:j], i))
            i = j
        else:
            problem = "bad operator" if ch == "~" else "unexpected character"
            hint = "; quote values that contain it" if ch == "\\" else ""
            raise MatcherError(text, f"{problem} {ch!r} at offset {i}{hint}")
    return tokens


def _utf8_matchers(text: str) -> list[Matcher]:
    tokens = _lex(text)
    pos = 0

    def peek() -> _Token | None:
        return tokens[pos] if pos < len(tokens) else None

    def describe(token: _Token | None) -> str:
        return "end of input" if token is None else f"{token.value!r} at offset {token.start}"

    out: list[Matcher] = []
    has_open = bool(tokens) and tokens[0].kind == "{"
    if has_open:
        pos += 1
    while (token := peek()) is not None and token.kind != "}":
        if token.kind not in ("quoted", "bare"):
            raise MatcherError(text, f"expected a label name, got {describe(token)}")
        name = _unquote(token, text)
        pos += 1
        op = peek()
        if op is None or op.kind not in OPERATORS:
            raise MatcherError(text, f"expected an operator (=, !=, =~, !~) after {name!r}, got {describe(op)}")
        pos += 1
        value = peek()
        if value is None or value.kind not in ("quoted", "bare"):
            raise MatcherError(text, f"expected a label value after {op.value!r}, got {describe(value)}")
        pos += 1
        out.append(new_matcher(name, op.kind, _unquote(value, text), text=text))
        after = peek()
        if after is None or after.kind == "}":
            break
        if after.kind != ",":
            raise MatcherError(text, f"expected ',' or '}}' after a matcher, got {describe(after)}; quote values with spaces")
        pos += 1
    close = peek()
    if has_open:
        if close is None or close.kind != "}":
            raise MatcherError(text, "missing closing '}'")
        pos += 1
    elif close is not None:
        raise MatcherError(text, f"'}}' at offset {close.start} without an opening '{{'")
    if pos < len(tokens):
        raise MatcherError(text, f"unexpected {describe(tokens[pos])} after the end")
    return out


_SIMPLE = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\", '"': '"'}


def _unquote(token: _Token, text: str) -> str:
    """Go's strconv.Unquote for a double-quoted token, then a UTF-8 validity check."""
    if token.kind == "bare":
        return token.value
    body = token.value[1:-1]
    if "\n" in body:
        raise MatcherError(text, f"quoted string {token.value!r} contains a raw newline; write \\n")
    out = bytearray()
    i, n = 0, len(body)
    while i < n:
        ch = body[i]
        if ch != "\\":
            out += ch.encode("utf-8", "surrogatepass")
            i += 1
            continue
        esc = body[i + 1] if i + 1 < n else ""
        if esc in _SIMPLE:
            out += _SIMPLE[esc].encode()
            i += 2
        elif esc in ("x", "u", "U"):
            width = {"x": 2, "u": 4, "U": 8}[esc]
            digits = body[i + 2 : i + 2 + width]
            if len(digits) != width or not all(d in "0123456789abcdefABCDEF" for d in digits):
                raise MatcherError(text, f"invalid escape \\{esc}{digits} in {token.value!r}")
            code = int(digits, 16)
            if esc == "x":
                out.append(code)
            elif code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                raise MatcherError(text, f"invalid code point \\{esc}{digits} in {token.value!r}")
            else:
                out += chr(code).encode()
            i += 2 + width
        elif esc and esc in "01234567":
            digits = body[i + 1 : i + 4]
            if len(digits) != 3 or not all(d in "01234567" for d in digits) or int(digits, 8) > 255:
                raise MatcherError(text, f"invalid octal escape \\{digits} in {token.value!r}")
            out.append(int(digits, 8))
            i += 4
        else:
            raise MatcherError(
                text, f"invalid escape \\{esc} in {token.value!r}; write \\\\ for a backslash"
            )
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        raise MatcherError(text, f"quoted string {token.value!r} is not valid UTF-8") from None


def _go_quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
