"""The `pattern:` of params and `core.confirm` answers, run by RE2 (google-re2).

A pattern is the playbook author's; the value it checks is the requester's: Slack text, an API
body, an alert label. Python's backtracking `re` lets one hostile value drive an innocent-looking
pattern (`^(\\w+\\s?)*$`) into minutes of CPU on the front door's event loop, where every other
command's ack waits. RE2 matches in time linear in the value. Semantics are JSON Schema's: the
pattern is searched for, unanchored (write `^...$` to match the whole value). RE2 refuses what it
cannot run in linear time (lookarounds, backreferences); such a pattern is a load-time error.
`\\d`, `\\w` and `\\s` are ASCII classes, as in JSON Schema's ECMA-262 regexes.
"""

from __future__ import annotations

from functools import lru_cache

import re2

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # a bad pattern is reported to the author, not printed to stderr
_OPTIONS.never_capture = True  # only match/no-match


class PatternError(ValueError):
    """A pattern RE2 cannot run; the message is RE2's."""


@lru_cache(maxsize=1024)
def compiled(pattern: str) -> re2._Regexp:
    try:
        return re2.compile(pattern, _OPTIONS)
    except re2.error as exc:
        raise PatternError(str(exc)) from None


def check(pattern: str) -> None:
    """Raise PatternError unless RE2 can run `pattern`."""
    compiled(pattern)


def found(pattern: str, value: str) -> bool:
    """Whether `pattern` occurs in `value` (JSON Schema's `pattern`), in linear time."""
    return compiled(pattern).search(value.encode("utf-8", "replace")) is not None
