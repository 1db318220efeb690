"""Checking a chain walked in seq order, whatever store the rows come from (PostgreSQL, a copy)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from bot.audit.events import GENESIS_HASH, chain_hash
from bot.audit.store import VerifyResult

FIELDS = ("seq", "event_id", "ts", "run_id", "step_id", "kind", "actor", "details", "prev_hash", "hash")


class ChainWalk:
    """Feed rows (tuples in FIELDS order) in seq order; `result` is the first problem, or None.
    Same reasons, word for word, as the SQLite store's verify."""

    def __init__(self) -> None:
        self.checked = 0
        self.expected_seq = 1
        self.head_hash = GENESIS_HASH
        self.result: VerifyResult | None = None

    def bad(self, seq: int, reason: str) -> VerifyResult:
        self.result = VerifyResult(
            ok=False, checked=self.checked, first_bad_seq=seq, reason=f"seq {seq}: {reason}", head_hash=self.head_hash
        )
        return self.result

    def feed(self, rows: Iterable[tuple[Any, ...]]) -> VerifyResult | None:
        for row in rows:
            if self.step(row) is not None:
                return self.result
        return None

    def step(self, row: tuple[Any, ...]) -> VerifyResult | None:
        seq, event_id, ts, run_id, step_id, kind, actor, details, stored_prev, stored_hash = row
        expected = self.expected_seq
        if seq > expected:
            before = f"seq {expected - 1}" if expected > 1 else "the start"
            return self.bad(expected, f"missing (gap: {before} is followed by seq {seq}; rows were deleted)")
        if seq < expected:
            return self.bad(seq, f"out of sequence (expected seq {expected})")
        if stored_prev != self.head_hash:
            link = f"seq {seq - 1}" if seq > 1 else "the genesis hash"
            return self.bad(seq, f"prev_hash does not match {link}")
        fields = dict(
            seq=seq, event_id=event_id, ts=ts, run_id=run_id, step_id=step_id, kind=kind,
            actor=actor, details=details, prev_hash=stored_prev,
        )  # fmt: skip
        if not all(isinstance(fields[name], str) for name in ("event_id", "ts", "kind", "actor", "details")):
            return self.bad(seq, "a field has the wrong type (stored event was changed)")
        if chain_hash(**fields) != stored_hash:
            return self.bad(seq, "hash mismatch (stored event was changed)")
        self.checked, self.expected_seq, self.head_hash = self.checked + 1, expected + 1, stored_hash
        return None

    def ends(self, highest_written: int | None) -> VerifyResult | None:
        """The walk is over: rows cut off the end show up against the highest seq ever written."""
        if highest_written is not None and highest_written >= self.expected_seq:
            end = self.expected_seq - 1
            return self.bad(self.expected_seq, f"missing (the log ends at seq {end} but seq {highest_written} was written)")
        return None

    def ok(self) -> VerifyResult:
        return VerifyResult(ok=True, checked=self.checked, head_hash=self.head_hash)
