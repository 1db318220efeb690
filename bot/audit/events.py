"""What an audit event is, and how its link in the hash chain is computed.

The hash is defined here, apart from the store, so anyone holding an export can recompute the
chain: sha256 over `canonical_json` of the fields, where `ts` is the UTC text `format_ts` gives
and `details` enters as its canonical JSON text (so a changed byte is caught even if the JSON
would still parse to the same value).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field, field_serializer, field_validator
from pydantic_core import to_jsonable_python

from bot.playbook.data import without_surrogates

GENESIS_HASH = "0" * 64


class EventKind(StrEnum):
    """Every kind DESIGN.md lists. `details` keys export.py knows how to summarise are noted."""

    alert_received = "alert_received"  # alertname, status, fingerprint, labels
    alert_outcome = "alert_outcome"  # outcome, playbook, reason, fingerprint
    slack_command = "slack_command"  # command, text, channel, trigger_id
    run_started = "run_started"  # playbook, playbook_hash, trigger, requested_by, params
    step_started = "step_started"  # action, attempt, args
    step_succeeded = "step_succeeded"  # action, attempts
    step_failed = "step_failed"  # action, attempts, error, state (failed|denied|rejected|cancelled)
    step_skipped = "step_skipped"  # reason
    step_output = "step_output"  # action, attempt, size, sha256, output: a large output, kept out of the run's state
    policy_decision = "policy_decision"  # allow, require_approval, min_approvals, approver_groups, reasons
    approval_requested = "approval_requested"  # min_approvals, approver_groups, deadline, args
    approval_vote = "approval_vote"  # vote (approve|reject), user, reason, accepted, message
    approval_timeout = "approval_timeout"  # stage (escalated|rejected)
    compensation_started = "compensation_started"  # action (step_id = the step being undone)
    compensation_succeeded = "compensation_succeeded"  # action
    compensation_failed = "compensation_failed"  # action, error
    compensation_settled = "compensation_settled"  # action, by (the later step whose success dropped this undo)
    run_finished = "run_finished"  # state, error, not_undone, escalated_to, cancelled_by
    cancel_requested = "cancel_requested"  # accepted, by, verified, reason, reasons (of a refusal)
    access_refused = "access_refused"  # operation, reason, rule: a front door refused an actor


def canonical_json(value: Any) -> str:
    """Key-sorted, compact JSON: the same value always gives the same bytes, hence the same hash."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def format_ts(ts: datetime) -> str:
    """The one text form of a timestamp (stored, hashed, exported): microseconds, UTC, `Z`."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_ts(text: str) -> datetime:
    """The timestamp `format_ts` wrote (UTC, `Z`)."""
    return datetime.fromisoformat(text).astimezone(UTC)


def chain_hash(
    *,
    seq: int,
    event_id: str,
    ts: str,
    run_id: str | None,
    step_id: str | None,
    kind: str,
    actor: str,
    details: str,
    prev_hash: str,
) -> str:
    """sha256 hex of one link; `ts` and `details` are the stored texts, not parsed values."""
    preimage = canonical_json(
        {
            "seq": seq,
            "event_id": event_id,
            "ts": ts,
            "run_id": run_id,
            "step_id": step_id,
            "kind": kind,
            "actor": actor,
            "details": details,
            "prev_hash": prev_hash,
        }
    )
    return hashlib.sha256(preimage.encode("utf-8")).hexdigest()


class AuditEvent(BaseModel):
    """One thing that happened. `event_id` is chosen by the caller and deterministic
    ("<run_id>:<step_id>:step_started:<attempt>"): it is the idempotency key, so a retried
    activity or a replayed webhook appends nothing new."""

    event_id: str = Field(min_length=1)
    ts: datetime
    run_id: str | None = None
    step_id: str | None = None
    kind: EventKind
    actor: str = Field(min_length=1)  # a user id, "system", "alertmanager", ...
    details: dict[str, Any] = Field(default_factory=dict)

    @field_validator("ts")
    @classmethod
    def _utc(cls, ts: datetime) -> datetime:
        # A naive time is ambiguous in a postmortem (local? UTC?): refuse it rather than guess.
        if ts.tzinfo is None or ts.utcoffset() is None:
            raise ValueError("ts must be timezone-aware (UTC); got a naive datetime")
        try:
            return ts.astimezone(UTC)
        except OverflowError:  # (year 1 east of UTC, year 9999 west): pydantic passes this one through
            raise ValueError(f"ts {ts.isoformat()} has no UTC time in range") from None

    @field_validator("details", mode="before")
    @classmethod
    def _plain_json(cls, value: Any) -> Any:
        """Normalise to plain JSON now, so what is hashed on write is what is read back. A lone
        surrogate (a JSON `\\ud800` in a response body or a request) becomes U+FFFD: no UTF-8 text
        can hold it, and the write it reached failed with every event of its group commit (the
        refusals and alerts of other callers with it)."""
        try:
            try:
                text = canonical_json(to_jsonable_python(value))
            except UnicodeEncodeError:  # (one in a key: pydantic's conversion refuses it)
                text = canonical_json(to_jsonable_python(without_surrogates(value)))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"details must be JSON-serialisable: {exc}") from None
        return json.loads(without_surrogates(text))

    @field_serializer("ts", when_used="json")
    def _ts_text(self, ts: datetime) -> str:
        return format_ts(ts)

    def details_json(self) -> str:
        return canonical_json(self.details)

    def link(self, seq: int, prev_hash: str) -> dict[str, Any]:
        """The stored text of each hashed field, in column order: what the chain covers."""
        return dict(
            seq=seq,
            event_id=self.event_id,
            ts=format_ts(self.ts),
            run_id=self.run_id,
            step_id=self.step_id,
            kind=self.kind.value,
            actor=self.actor,
            details=self.details_json(),
            prev_hash=prev_hash,
        )


# An id field's UTF-8 bytes at most: PostgreSQL's btree index rows (event_id, and run_id with seq)
# stop at 2704 bytes, and a longer id failed the whole transaction it rode in.
ID_BYTES_MAX = 2048
ID_FIELDS = ("event_id", "run_id", "step_id", "actor")


class UnstorableEvent(ValueError):
    """An event no store can hold: a NUL in an id field (PostgreSQL's text refuses it, SQLite's
    takes it) or an id past ID_BYTES_MAX. Refused before any write, alike on both stores, and only
    for its own caller: never a batch (group commit) it would have failed with it."""


def holds_control(text: str) -> bool:
    """Whether `text` holds a control character (Unicode category Cc: C0, DEL and C1). No alert
    key or principal does; one that does was made up by whoever sent it."""
    return any(ord(c) < 32 or 127 <= ord(c) < 160 for c in text)


def _unstorable(value: str) -> str | None:
    """Why no store can hold `value` as an id field, or None."""
    if "\x00" in value:
        return "holds a NUL character"
    if len(value.encode("utf-8", "surrogatepass")) > ID_BYTES_MAX:
        return f"is over {ID_BYTES_MAX} bytes"
    return None


def storable_id(value: str) -> str:
    """A hostile id (a forged button's run id, a refused caller's key) as a record can hold it:
    as given when it can be stored, else its start with NULs replaced, its length and digest."""
    if _unstorable(value) is None:
        return value
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{value[:200].replace(chr(0), chr(0xFFFD))}... ({len(value)} characters, sha256 {digest})"


def check_storable(events: Sequence[AuditEvent]) -> None:
    """UnstorableEvent naming the first event and field no store can hold."""
    for event in events:
        for name in ID_FIELDS:
            value = getattr(event, name)
            if value is not None and (why := _unstorable(value)):
                raise UnstorableEvent(f"audit event {event.event_id[:80]!r}: its {name} {why}")


class StoredEvent(AuditEvent):
    """An event as the store holds it: its place in the log and its link in the chain."""

    seq: int
    prev_hash: str
    hash: str

    def expected_hash(self) -> str:
        """Recompute this event's hash from its fields, e.g. to check an export."""
        return chain_hash(**self.link(self.seq, self.prev_hash))
