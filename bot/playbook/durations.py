"""Durations as people write them in playbooks: `500ms`, `30s`, `2m`, `1h`, `1h30m`."""

from __future__ import annotations

import functools
import re
from datetime import timedelta
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
PATTERN = r"^(\d+(\.\d+)?(ms|s|m|h|d))+$"
# The longest wait or timeout a playbook may name. A duration can come from a template (a target's
# Retry-After, red team): past timedelta's range it raised OverflowError, which pydantic passes
# through, and within it `now + duration` could still run past year 9999; either, raised in workflow
# code, failed the run's task on every replay (no rollback, no end). Ten years leaves room for both.
MAX_DAYS = 3650


def parse_duration(value: object) -> timedelta:
    """Parse `1h30m`-style text; bare numbers are refused so units are never guessed."""
    if isinstance(value, timedelta):
        return value
    if not isinstance(value, str):
        raise ValueError(f"duration must be a string like '30s', '2m', '500ms', not {value!r}")
    return _parsed(value)


@functools.lru_cache(maxsize=1024)
def _parsed(value: str) -> timedelta:
    """The same few spellings are parsed in every activation of every run (timeouts, waits): once
    each is enough (a timedelta is immutable)."""
    text = value.strip()
    pos, seconds = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        seconds += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if not text or pos != len(text):
        raise ValueError(f"bad duration {value!r}: use a number and a unit (ms, s, m, h, d), e.g. '30s', '2m', '1h30m'")
    if not seconds <= MAX_DAYS * 86400.0:  # (also inf: a 400-digit number of seconds)
        raise ValueError(f"duration {value[:40]!r} is longer than {MAX_DAYS} days, the longest a playbook may wait")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The shortest exact spelling, so snapshots round-trip through JSON unchanged."""
    ms = round(value.total_seconds() * 1000)
    if ms == 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        count, ms = divmod(ms, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": "string", "pattern": PATTERN, "examples": ["500ms", "30s", "2m", "1h"]}),
]
