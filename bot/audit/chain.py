"""Checking a chain walked in seq order, whatever store the rows come from (SQLite, PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel

from bot.audit.events import GENESIS_HASH, chain_hash

FIELDS = ("seq", "event_id", "ts", "run_id", "step_id", "kind", "actor", "details", "prev_hash", "hash")
# The first event id stored twice, as (seq, event_id): both backends' SQL reads it the same way.
FIRST_DUPLICATE_ID = (
    "SELECT seq, event_id FROM (SELECT seq, event_id, ROW_NUMBER() OVER (PARTITION BY event_id ORDER BY seq) AS n"
    " FROM audit_events) AS numbered WHERE n > 1 ORDER BY seq LIMIT 1"
)


class VerifyResult(BaseModel):
    """`checked` counts the events found intact before the first bad one (all of them when ok).
    `head_hash` is the last intact hash: publish it elsewhere to make truncation detectable."""

    ok: bool
    checked: int
    first_bad_seq: int | None = None
    reason: str | None = None
    head_hash: str = GENESIS_HASH


class ChainWalk:
    """Feed rows (tuples in FIELDS order) in seq order; `result` is the first problem, or None.
    Both stores' verify walk their rows with it, so they give the same reasons, word for word."""

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
        if not all(isinstance(fields[name], str) for name in ("event_id", "ts", "kind", "actor", "details")) or not all(
                fields[name] is None or isinstance(fields[name], str) for name in ("run_id", "step_id")):
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

    def duplicated(self, first_duplicate: tuple[Any, ...] | None) -> VerifyResult | None:
        """The row FIRST_DUPLICATE_ID found, if any: an event id stored twice."""
        if first_duplicate is None:
            return None
        seq, event_id = first_duplicate
        return self.bad(seq, f"event_id duplicated ({event_id!r} was stored before)")

    def ok(self) -> VerifyResult:
        return VerifyResult(ok=True, checked=self.checked, head_hash=self.head_hash)
