"""Reading raw policy answers: the documented shape, or a deny that says what was wrong."""

from __future__ import annotations

from typing import Any

import pytest

from bot.policy.models import Decision, Failure, Provenance, Verdict, canonical_json, input_digest

RULE = "data.playbook.authz.decision"
PROVENANCE = Provenance(decision_id="d-1", policy_hash="p-1", input_digest="i-1", engine="test")


def test_full_decision_is_read_with_its_provenance() -> None:
    raw = {
        "allow": True,
        "require_approval": True,
        "min_approvals": 2,
        "approver_groups": ["sre"],
        "approval_timeout": "1h30m",
        "reasons": ["why"],
        "extra": "ignored",
    }

    decision = Decision.from_result(raw, RULE, PROVENANCE)

    assert decision.model_dump() == {
        "allow": True,
        "require_approval": True,
        "min_approvals": 2,
        "approver_groups": ["sre"],
        "approval_timeout": "1h30m",
        "reasons": ["why"],
        "person": None,
        "failure": None,
        "decision_id": "d-1",
        "policy_hash": "p-1",
        "input_digest": "i-1",
        "engine": "test",
    }
    assert decision.needs_approval


@pytest.mark.parametrize("given", [0, -3])
def test_min_approvals_below_one_counts_as_one_when_approval_is_required(given: int) -> None:
    decision = Decision.from_result(
        {"allow": True, "require_approval": True, "min_approvals": given}, RULE, PROVENANCE
    )

    assert decision.min_approvals == 1


def test_allow_alone_runs_without_approval() -> None:
    decision = Decision.from_result({"allow": True}, RULE, PROVENANCE)

    assert (decision.allow, decision.needs_approval, decision.min_approvals, decision.failure) == (True, False, 0, None)


MALFORMED: list[tuple[Any, str]] = [
    ({"allow": "true"}, "allow: Input should be a valid boolean"),
    ({"allow": 1}, "allow: Input should be a valid boolean"),
    ({}, "allow: Field required"),
    ({"allow": True, "min_approvals": "2"}, "min_approvals: Input should be a valid integer"),
    ({"allow": True, "min_approvals": True}, "min_approvals: Input should be a valid integer"),
    ({"allow": True, "reasons": "ok"}, "reasons: Input should be a valid list"),
    ({"allow": True, "approval_timeout": "soon"}, "approval_timeout: String should match pattern"),
]


@pytest.mark.parametrize(("raw", "problem"), MALFORMED)
def test_wrong_shape_is_a_deny_naming_the_field(raw: Any, problem: str) -> None:
    decision = Decision.from_result(raw, RULE, PROVENANCE)

    assert (decision.allow, decision.failure) == (False, Failure.MALFORMED)
    assert decision.reasons[0].startswith(f"policy result malformed: {RULE}: {problem}")
    assert decision.decision_id == "d-1"


@pytest.mark.parametrize("raw", [True, ["allow"], "allow", None, 1])
def test_a_result_that_is_not_an_object_is_a_deny(raw: Any) -> None:
    verdict = Verdict.from_result(raw, "data.playbook.authz.approver", PROVENANCE)

    assert (verdict.allow, verdict.failure) == (False, Failure.MALFORMED)
    assert verdict.reasons == [
        f"policy result malformed: data.playbook.authz.approver is {type(raw).__name__}, expected an object"
    ]


def test_input_digest_is_stable_under_key_order() -> None:
    a = {"b": [1, {"y": 2, "x": 1}], "a": "é"}
    b = {"a": "é", "b": [1, {"x": 1, "y": 2}]}

    assert canonical_json(a) == '{"a":"é","b":[1,{"x":1,"y":2}]}'
    assert input_digest(a) == input_digest(b)
    assert input_digest(a) != input_digest({**a, "c": None})


def test_failure_kinds_are_the_words_the_audit_trail_and_logs_show() -> None:
    assert [f.value for f in Failure] == [
        "unreachable", "timeout", "http_error", "undefined", "malformed", "invalid_input", "load_error",
        "engine_crashed", "eval_error", "internal",
    ]


def test_an_answer_nobody_gave_denies_and_asks_for_nothing() -> None:
    """Fail closed even where code builds a verdict by hand: nothing said is a deny."""
    assert (Verdict().allow, Verdict().reasons, Verdict().person) == (False, [], None)
    decision = Decision()
    assert (decision.allow, decision.require_approval, decision.min_approvals, decision.approver_groups,
            decision.approval_timeout) == (False, False, 0, [], None)
    assert (PROVENANCE.model_copy(update={}).decision_id, Provenance().decision_id, Provenance().engine) == (
        "d-1", None, None)


def test_a_malformed_answer_says_each_problem_at_its_path() -> None:
    decision = Decision.from_result({"allow": "yes", "min_approvals": "two"}, RULE, PROVENANCE)
    assert decision.reasons == [
        "policy result malformed: data.playbook.authz.decision: allow: Input should be a valid boolean; "
        "min_approvals: Input should be a valid integer"
    ]
    assert Decision.from_result({}, RULE, PROVENANCE).reasons == [
        "policy result malformed: data.playbook.authz.decision: allow: Field required"
    ]


def test_canonical_json_is_sorted_compact_and_keeps_unicode() -> None:
    assert canonical_json({"b": 1, "a": ["é", None]}) == '{"a":["é",null],"b":1}'


def test_a_nested_problem_is_named_by_its_dotted_path_and_nan_is_no_json() -> None:
    decision = Decision.from_result({"allow": True, "approver_groups": ["sre", 1]}, RULE, PROVENANCE)
    assert decision.reasons == [
        "policy result malformed: data.playbook.authz.decision: approver_groups.1: Input should be a valid string"
    ]
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})
