"""Alertmanager's regex matchers, evaluated by RE2 itself (google-re2).

Alertmanager compiles an `=~`/`!~` value with Go's `regexp` as `^(?:value)$` (plain string
concatenation) and runs it on label values. Go's `regexp` is RE2: the same syntax and a
linear-time matcher, so neither a playbook's pattern nor a hostile label value can drive a match
into catastrophic backtracking, as Python's `re` could. Where C++ RE2 and Go differ, Go
(Alertmanager) wins:

- `\\C` (any byte) is C++ RE2 only; Go refuses it, and so do we.

Known differences, all refusals (neither side ever matches differently):

- RE2's 8 MiB program budget refuses a few huge patterns Go accepts, e.g. `\\pL{1000}`.
- Go refuses capture groups nested more than ~1000 deep; RE2 accepts them.
- `(?<name>...)` needs Go >= 1.22 (the builds of Alertmanager >= 0.27); accepted here.
"""

from __future__ import annotations

import re2

# Defaults kept on purpose: UTF-8 (Go's strings), leftmost-first (Go's regexp, not longest_match),
# never_nl off (a label value may hold newlines; `.` skips them unless `(?s)`, as in Go), Perl
# classes and `\b` as in Go, `^`/`$` at the ends of the text unless `(?m)`.
_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # a bad pattern is our caller's error to report, not stderr noise
_OPTIONS.never_capture = True  # only match/no-match is needed: RE2 may use its DFA throughout


class RegexError(ValueError):
    """A pattern Alertmanager would refuse; the message is RE2's, e.g. "missing ): ..."."""


class AnchoredRegex:
    """One compiled matcher regex, anchored as Alertmanager anchors it."""

    __slots__ = ("pattern", "_compiled")

    def __init__(self, pattern: str, compiled: re2._Regexp) -> None:
        self.pattern = pattern
        self._compiled = compiled

    def matches(self, value: str) -> bool:
        """Whether Alertmanager's `regexp.MatchString` on `^(?:pattern)$` would say yes."""
        try:
            data = value.encode("utf-8")  # as bytes: RE2's own form, no offset mapping back to str
        except UnicodeEncodeError:  # lone surrogates: Go's JSON decoding would have made them U+FFFD
            data = _replace_surrogates(value).encode("utf-8")
        return self._compiled.search(data) is not None

    def __repr__(self) -> str:
        return f"AnchoredRegex({self.pattern!r})"


def compile_anchored(pattern: str) -> AnchoredRegex:
    """`^(?:pattern)$` compiled by RE2; raises RegexError naming the problem."""
    return AnchoredRegex(pattern, _compile("^(?:" + _text(pattern) + ")$", pattern))


def check_standalone(pattern: str) -> None:
    """Raise RegexError unless `pattern` also compiles on its own, unanchored.

    Alertmanager's silence API checks a regex matcher that way before it anchors it, so
    `a)|(b`, a fine route matcher (`^(?:a)|(b)$`), is a refused silence.
    """
    _compile(_text(pattern), pattern)


def _text(pattern: object) -> str:
    if not isinstance(pattern, str):
        raise RegexError(f"a regex must be a string, not {type(pattern).__name__}")
    return pattern


def _compile(source: str, pattern: str) -> re2._Regexp:
    if _has_any_byte(pattern):
        raise RegexError("invalid escape sequence: \\C (Alertmanager's Go regexp has no any-byte class)")
    try:
        return re2.compile(source, _OPTIONS)
    except re2.error as exc:
        raise RegexError(_message(exc, source, pattern)) from None
    except UnicodeEncodeError:
        raise RegexError("pattern is not valid Unicode text (it holds a lone surrogate)") from None


def _has_any_byte(pattern: str) -> bool:
    """A `\\C` escape outside `\\Q...\\E` (inside `[...]` RE2 refuses it by itself)."""
    i, n = 0, len(pattern)
    while i < n - 1:
        if pattern[i] != "\\":
            i += 1
        elif pattern[i + 1] == "C":
            return True
        elif pattern[i + 1] == "Q":
            end = pattern.find("\\E", i + 2)
            i = n if end < 0 else end + 2
        else:
            i += 2
    return False


def _message(exc: re2.error, source: str, pattern: str) -> str:
    """RE2's "problem: fragment", the fragment quoted (it may hold newlines), as the author wrote it."""
    detail = exc.args[0] if exc.args else b"invalid pattern"
    text = detail.decode("utf-8", "replace") if isinstance(detail, bytes) else str(detail)
    problem, _, fragment = text.partition(": ")
    if fragment == source:
        fragment = pattern
    elif source != pattern and fragment.endswith(")$") and source.endswith(fragment):
        fragment = fragment[:-2]  # RE2 quotes the rest of the text: drop our anchoring
    return f"{problem}: {fragment!r}" if fragment else problem


def _replace_surrogates(value: str) -> str:
    return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
