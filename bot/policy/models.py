"""What a policy answers, validated strictly: a malformed answer is a deny, never an exception."""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError

# Go-style durations, as OPA and the playbook format write them ("15m", "1h30m").
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"


class Failure(StrEnum):
    """Why a decision failed closed; a fixed code so callers never parse reason text."""

    UNREACHABLE = "unreachable"  # OPA could not be reached (connection refused, DNS, reset)
    TIMEOUT = "timeout"  # no answer within the configured timeout
    HTTP_ERROR = "http_error"  # OPA answered with a 4xx/5xx status
    UNDEFINED = "undefined"  # the rule has no value for this input
    MALFORMED = "malformed"  # the rule's value, or OPA's response, has the wrong shape
    INVALID_INPUT = "invalid_input"  # the input cannot be sent (not JSON)
    LOAD_ERROR = "load_error"  # the embedded policies failed to load
    ENGINE_CRASHED = "engine_crashed"  # the embedded engine process died or is restarting
    EVAL_ERROR = "eval_error"  # the engine reported an evaluation error
    INTERNAL = "internal"  # a bug on our side; logged with its traceback


class Provenance(BaseModel):
    """Where an answer came from, for the audit trail."""

    decision_id: str | None = None
    policy_hash: str | None = None
    input_digest: str | None = None
    engine: str | None = None


class Verdict(Provenance):
    """Answer of the `approver`, `start` and `cancel` rules; `person` is who the principal is
    (policy maps logins to people), when the policy says."""

    allow: bool = False
    reasons: list[str] = Field(default_factory=list)
    person: str | None = None
    failure: Failure | None = None

    @classmethod
    def deny(cls, reason: str, failure: Failure, provenance: Provenance) -> Self:
        return cls(allow=False, reasons=[reason], failure=failure, **provenance.model_dump())

    @classmethod
    def from_result(cls, raw: Any, rule: str, provenance: Provenance) -> Self:
        """Parse a rule's raw value; anything but the documented shape is a deny."""
        try:
            result = _VerdictResult.model_validate(raw)
        except ValidationError as exc:
            return cls.deny(_malformed(rule, raw, exc), Failure.MALFORMED, provenance)
        return cls(allow=result.allow, reasons=result.reasons, person=result.person or None, **provenance.model_dump())


class ActorVerdict(Verdict):
    """An `approver` or `cancel` answer together with the user it was asked about, as the worker
    verified them (principal, groups, `verified`): the run records who acted from this alone."""

    user: dict[str, Any] = Field(default_factory=dict)


class Decision(Verdict):
    """Answer of the `decision` rule for one high-impact step."""

    require_approval: bool = False
    min_approvals: int = 0
    approver_groups: list[str] = Field(default_factory=list)
    approval_timeout: str | None = None

    @property
    def needs_approval(self) -> bool:
        return self.allow and self.require_approval

    @classmethod
    def from_result(cls, raw: Any, rule: str, provenance: Provenance) -> Self:
        try:
            result = _DecisionResult.model_validate(raw)
        except ValidationError as exc:
            return cls.deny(_malformed(rule, raw, exc), Failure.MALFORMED, provenance)
        min_approvals = result.min_approvals
        if result.require_approval and min_approvals < 1:
            min_approvals = 1  # DESIGN: below 1 counts as 1
        return cls(
            allow=result.allow,
            reasons=result.reasons,
            require_approval=result.require_approval,
            min_approvals=min_approvals,
            approver_groups=result.approver_groups,
            approval_timeout=result.approval_timeout,
            **provenance.model_dump(),
        )


class _VerdictResult(BaseModel):
    # Strict: "true" or 1 for `allow` is a policy bug, and must not read as an allow.
    model_config = ConfigDict(strict=True, extra="ignore")

    allow: bool
    reasons: list[str] = Field(default_factory=list)
    person: str | None = None


class _DecisionResult(_VerdictResult):
    require_approval: bool = False
    min_approvals: int = 0
    approver_groups: list[str] = Field(default_factory=list)
    approval_timeout: str | None = Field(default=None, pattern=DURATION_PATTERN)


def _malformed(rule: str, raw: Any, exc: ValidationError) -> str:
    if not isinstance(raw, dict):
        return f"policy result malformed: {rule} is {type(raw).__name__}, expected an object"
    problems = "; ".join(
        f"{'.'.join(str(part) for part in err['loc']) or 'result'}: {err['msg']}" for err in exc.errors()
    )
    return f"policy result malformed: {rule}: {problems}"


def canonical_json(value: Any) -> str:
    """Key-sorted, compact JSON: the same input always gives the same bytes (and digest)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def input_digest(value: Any) -> str:
    """sha256 of the canonical JSON input, recorded with every decision."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()
