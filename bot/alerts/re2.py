"""Go RE2 regex syntax, as Alertmanager matchers use it, translated to Python `re`.

A matcher that matches in Alertmanager must match here too, so the constructs whose meaning
differs are rewritten and the ones Python cannot express (or RE2 refuses) are errors:

- `\\d \\w \\s \\b` are ASCII in RE2 (Unicode in Python): rewritten to ASCII classes/lookarounds.
  Inside a `[...]` set the negated forms `\\D \\W \\S` stay Unicode (documented difference).
- `$` without `(?m)` is end of text in RE2 (Python also matches before a final newline): `\\Z`.
- `(?i)` in the middle of a pattern applies to the rest of its group in RE2 (Python refuses
  global flags after the start): rewritten to scoped `(?i:...)` groups, reopened after `|`.
- `\\z` -> `\\Z`; `\\Q...\\E`, `\\x{10FFFF}` and Go octal escapes -> escaped literals;
  `[[:alpha:]]` POSIX classes -> ASCII ranges; `(?<name>...)` -> `(?P<name>...)`;
  `{,n}` and other non-repetition braces are literals, as in RE2.
- Refused as RE2 refuses them: lookarounds, backreferences, possessive/atomic groups, `\\Z`,
  `(?#...)`, conditionals, `(?U)`/`(?x)`, repeat counts over 1000.
- Refused because Python `re` has no equivalent: `\\p{...}`/`\\pL` Unicode classes, `\\C`.
- Left as is: `(?i)` case folding follows Python's Unicode folding (RE2's differs on a handful
  of characters); RE2 leftmost-first semantics equal Python's backtracking for match/no-match.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_WORD = "0-9A-Za-z_"
_ASCII_CLASSES = {
    "d": "[0-9]",
    "D": "[^0-9]",
    "w": f"[{_WORD}]",
    "W": f"[^{_WORD}]",
    "s": r"[\t\n\f\r ]",
    "S": r"[^\t\n\f\r ]",
}
_IN_SET = {"d": "0-9", "w": _WORD, "s": r"\t\n\f\r "}
_BOUNDARY = rf"(?:(?<=[{_WORD}])(?![{_WORD}])|(?<![{_WORD}])(?=[{_WORD}]))"
_NOT_BOUNDARY = rf"(?:(?<=[{_WORD}])(?=[{_WORD}])|(?<![{_WORD}])(?![{_WORD}]))"
_POSIX = {
    "alnum": "0-9A-Za-z",
    "alpha": "A-Za-z",
    "ascii": r"\x00-\x7f",
    "blank": r"\t ",
    "cntrl": r"\x00-\x1f\x7f",
    "digit": "0-9",
    "graph": r"!-~",
    "lower": "a-z",
    "print": r" -~",
    "punct": r"!-/:-@\[-`{-~",
    "space": r"\t\n\v\f\r ",
    "upper": "A-Z",
    "word": _WORD,
    "xdigit": "0-9A-Fa-f",
}
_SIMPLE_ESCAPES = frozenset("aftnrv")
_REPEAT = re.compile(r"\{(\d+)(,(\d*))?\}")
_FLAG_GROUP = re.compile(r"\(\?([a-zA-Z]*)(?:-([a-zA-Z]*))?([:)])")
_MAX_REPEAT = 1000


class RE2Error(ValueError):
    """A pattern Alertmanager would refuse, or one whose RE2 meaning Python cannot reproduce."""


@dataclass
class _Group:
    multiline: bool
    scopes: list[str] = field(default_factory=list)


def translate(pattern: str) -> str:
    """The Python `re` source that matches what `pattern` matches under RE2; raises RE2Error."""
    out: list[str] = []
    stack = [_Group(multiline=False)]
    quant: str | None = None  # None | "q" (just after a quantifier) | "lazy" (after `*?` and co.)
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        top = stack[-1]
        if c == "\\":
            text, i = _escape(pattern, i, in_set=False)
            out.append(text)
            quant = None
            continue
        if c == "[":
            text, i = _char_set(pattern, i)
            out.append(text)
            quant = None
            continue
        if c == "(":
            i = _open_group(pattern, i, stack, out)
            quant = None
            continue
        if c == ")":
            if len(stack) == 1:
                raise RE2Error(f"unexpected ) at offset {i}")
            out.append(")" * len(top.scopes) + ")")
            stack.pop()
            i += 1
            quant = None
            continue
        if c == "|":
            out.append(")" * len(top.scopes) + "|" + "".join(top.scopes))
            i += 1
            quant = None
            continue
        if c in "*+":
            if quant is not None:
                raise RE2Error(f"invalid nested repetition operator {pattern[i - 1:i + 1]!r} at offset {i}")
            out.append(c)
            quant = "q"
            i += 1
            continue
        if c == "?":
            if quant == "lazy":
                raise RE2Error(f"invalid nested repetition operator at offset {i}")
            out.append(c)
            quant = "lazy" if quant == "q" else "q"
            i += 1
            continue
        if c == "{":
            repeat = _REPEAT.match(pattern, i)
            if repeat:
                low, high = repeat.group(1), repeat.group(3)
                counts = [int(low)] + ([int(high)] if high else [])
                if any(count > _MAX_REPEAT for count in counts) or (high and int(high) < int(low)):
                    raise RE2Error(f"invalid repeat count {repeat.group(0)!r}")
                if quant is not None:
                    raise RE2Error(f"invalid nested repetition operator {repeat.group(0)!r} at offset {i}")
                out.append(repeat.group(0))
                i = repeat.end()
                quant = "q"
                continue
            out.append(r"\{")
            i += 1
            quant = None
            continue
        if c == "}":
            out.append(r"\}")
        elif c == "$":
            out.append("$" if top.multiline else r"\Z")
        else:
            out.append(c)
        quant = None
        i += 1
    if len(stack) > 1:
        raise RE2Error("missing closing )")
    out.append(")" * len(stack[0].scopes))
    return "".join(out)


def compile_anchored(pattern: str) -> re.Pattern[str]:
    """`^(?:pattern)$` as Alertmanager compiles it; raises RE2Error naming the problem."""
    source = translate(pattern)
    try:
        return re.compile(r"\A(?:" + source + r")\Z")
    except re.error as exc:
        raise RE2Error(exc.msg if exc.pos is None else f"{exc.msg} at offset {exc.pos}") from None
    except (OverflowError, RecursionError) as exc:
        raise RE2Error(f"pattern too complex: {exc}") from None


def _open_group(pattern: str, i: int, stack: list[_Group], out: list[str]) -> int:
    top = stack[-1]
    rest = pattern[i:]
    if not rest.startswith("(?"):
        stack.append(_Group(multiline=top.multiline))
        out.append("(")
        return i + 1
    if rest.startswith("(?P<"):
        stack.append(_Group(multiline=top.multiline))
        out.append("(?P<")
        return i + 4
    if rest.startswith("(?<") and not rest.startswith(("(?<=", "(?<!")):
        stack.append(_Group(multiline=top.multiline))
        out.append("(?P<")
        return i + 3
    if rest.startswith("(?:"):
        stack.append(_Group(multiline=top.multiline))
        out.append("(?:")
        return i + 3
    flags = _FLAG_GROUP.match(pattern, i)
    if flags and (flags.group(1) or flags.group(2)):
        on, off = flags.group(1), flags.group(2) or ""
        for letter in on + off:
            if letter not in "ims":
                what = "ungreedy mode (?U) has no Python equivalent" if letter == "U" else f"unknown flag {letter!r}"
                raise RE2Error(f"{what} in {flags.group(0)!r}")
        multiline = ("m" in on) or (top.multiline and "m" not in off)
        scope = "(?" + on + (f"-{off}" if off else "") + ":"
        if flags.group(3) == ":":
            stack.append(_Group(multiline=multiline))
            out.append(scope)
        else:
            # RE2: the flags hold to the end of the enclosing group; Python only allows that at the start.
            top.multiline = multiline
            top.scopes.append(scope)
            out.append(scope)
        return flags.end()
    kinds = {
        "(?=": "lookahead", "(?!": "negative lookahead", "(?<=": "lookbehind",
        "(?<!": "negative lookbehind", "(?>": "atomic group", "(?#": "comment group",
        "(?P=": "backreference", "(?P>": "recursion", "(?(": "conditional",
    }
    for prefix, kind in kinds.items():
        if rest.startswith(prefix):
            raise RE2Error(f"{kind} {prefix!r} at offset {i} is not supported by RE2 (Alertmanager's regex engine)")
    raise RE2Error(f"invalid or unsupported group syntax {rest[:4]!r} at offset {i}")


def _escape(pattern: str, i: int, *, in_set: bool) -> tuple[str, int]:
    """One escape sequence starting at pattern[i] == '\\'; returns (python text, next index)."""
    if i + 1 >= len(pattern):
        raise RE2Error("trailing backslash at end of expression")
    c = pattern[i + 1]
    end = i + 2
    if c in _ASCII_CLASSES:
        if not in_set:
            return _ASCII_CLASSES[c], end
        return (_IN_SET[c] if c in _IN_SET else "\\" + c), end
    if c in "bB" and not in_set:
        return (_BOUNDARY if c == "b" else _NOT_BOUNDARY), end
    if c == "A" and not in_set:
        return r"\A", end
    if c == "z" and not in_set:
        return r"\Z", end
    if c == "Q":
        stop = pattern.find(r"\E", end)
        literal = pattern[end:] if stop < 0 else pattern[end:stop]
        after = len(pattern) if stop < 0 else stop + 2
        return "".join(_literal(ch) for ch in literal), after
    if c == "E":
        return "", end  # a stray \E is ignored by RE2
    if c == "x":
        if end < len(pattern) and pattern[end] == "{":
            close = pattern.find("}", end)
            digits = pattern[end + 1:close] if close > 0 else ""
            if not digits or not re.fullmatch(r"[0-9A-Fa-f]+", digits) or int(digits, 16) > 0x10FFFF:
                raise RE2Error(f"invalid escape sequence {pattern[i:close + 1 if close > 0 else end + 1]!r}")
            return _literal(chr(int(digits, 16))), close + 1
        hexdigits = pattern[end:end + 2]
        if not re.fullmatch(r"[0-9A-Fa-f]{2}", hexdigits):
            raise RE2Error(f"invalid escape sequence {pattern[i:end + 2]!r}")
        return _literal(chr(int(hexdigits, 16))), end + 2
    if c in "01234567":
        # Go: \0 and \1..\7 followed by another octal digit are octal (up to 3 digits); a lone \1..\9 is a backreference.
        digits = re.match(r"[0-7]{1,3}", pattern[i + 1:]).group(0)  # type: ignore[union-attr]
        if c != "0" and len(digits) == 1:
            raise RE2Error(f"backreference {pattern[i:end]!r} is not supported by RE2")
        return _literal(chr(int(digits, 8))), i + 1 + len(digits)
    if c in "89":
        raise RE2Error(f"backreference {pattern[i:end]!r} is not supported by RE2")
    if c in "pP":
        raise RE2Error(f"Unicode class {pattern[i:end + 1]!r}... has no Python `re` equivalent; use explicit ranges")
    if c in _SIMPLE_ESCAPES:
        return "\\" + c, end
    if c.isascii() and not c.isalnum():
        return "\\" + c, end
    raise RE2Error(f"invalid escape sequence {pattern[i:end]!r}")


def _char_set(pattern: str, i: int) -> tuple[str, int]:
    out = ["["]
    j = i + 1
    if j < len(pattern) and pattern[j] == "^":
        out.append("^")
        j += 1
    if j < len(pattern) and pattern[j] == "]":
        out.append(r"\]")
        j += 1
    while j < len(pattern):
        c = pattern[j]
        if c == "]":
            out.append("]")
            return "".join(out), j + 1
        if c == "\\":
            text, j = _escape(pattern, j, in_set=True)
            out.append(text)
            continue
        if c == "[":
            posix = re.match(r"\[:(\^?)([a-z]+):\]", pattern[j:])
            if posix:
                ranges = _POSIX.get(posix.group(2))
                if ranges is None:
                    raise RE2Error(f"invalid character class range {posix.group(0)!r}")
                if posix.group(1):
                    raise RE2Error(f"negated POSIX class {posix.group(0)!r} inside a set is not supported; use [^...]")
                out.append(ranges)
                j += posix.end()
                continue
            out.append(r"\[")
        elif c in "&~|":
            out.append("\\" + c)  # Python warns on `&&`, `~~`, `||` (future set operations)
        else:
            out.append(c)
        j += 1
    raise RE2Error("missing closing ] in character class")


def _literal(ch: str) -> str:
    return re.escape(ch)
