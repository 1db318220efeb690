"""The embedded engine's memory of answers it has already computed.

A rule's answer is a function of the policy (modules and data, named by the policy hash) and the
input, unless the policy reads the clock, randomness or the runtime itself: then nothing is cached
for that policy. The input's own `now` is part of the input, so a new time is a new key.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any

# Builtins whose answer is not a function of their arguments (the clock, randomness, the
# environment, certificate and token checks against the current time). Matched in the source
# with any spacing around the dots; a mention in a comment only costs the cache, never safety.
_UNSTABLE = (
    "time.now_ns",
    "rand.intn",
    "uuid.rfc4122",
    "opa.runtime",
    "io.jwt.decode_verify",
    "crypto.x509.parse_and_verify_certificates",  # and _with_options
    "http.send",
    "net.lookup_ip_addr",
)
_UNSTABLE_CALL = re.compile(
    "|".join(r"\b" + r"\s*\.\s*".join(map(re.escape, name.split("."))) for name in _UNSTABLE)
)

_SPACE = re.compile(r"\s+")

Key = tuple[str, str, str]  # policy hash, rule, sha256 of the canonical input


def unstable_builtin(modules: dict[str, str]) -> str | None:
    """'<file>: <builtin>' for the first module that calls a builtin outside its arguments' say."""
    for name, source in modules.items():
        found = _UNSTABLE_CALL.search(source)
        if found:
            return f"{name}: {_SPACE.sub('', found.group(0))}"
    return None


class DecisionCache:
    """A bounded LRU of raw rule values. Values are shared between hits: callers only read them."""

    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[Key, Any] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Key, *, count_miss: bool = True) -> tuple[bool, Any]:
        """(True, value) for a hit, (False, None) for a miss (a first look that will be followed
        by another passes count_miss=False, so a question counts as one miss)."""
        try:
            value = self._entries[key]
        except KeyError:
            self.misses += count_miss
            return False, None
        self._entries.move_to_end(key)
        self.hits += 1
        return True, value

    def put(self, key: Key, value: Any) -> None:
        if self.max_entries <= 0:
            return
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()
