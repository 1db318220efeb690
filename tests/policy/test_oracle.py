"""Both backends against one independent oracle: the embedded engine evaluates the real Rego, the
OPA backend asks the fake OPA, which answers from the fixtures (tests/policy/oracle.py); each
answer must be the fixture's, field for field.

A disagreement of the embedded engine with a fixture is a disagreement between the Rego and its
documented intent; one of the OPA backend is a disagreement between the client and OPA's protocol
(the fake only finds a fixture when the input arrives exactly as sent).
"""

from __future__ import annotations

from typing import Any

import pytest

from bot.policy.engine import PolicyEngine
from tests.policy.oracle import CASES, Case, digest

DECISION_FIELDS = ("allow", "require_approval", "min_approvals", "approver_groups", "approval_timeout", "reasons")
METHODS = {"decision": "decide", "approver": "approver", "start": "start", "cancel": "cancel"}


def answered(case: Case, answer: Any) -> dict[str, Any]:
    """The parts of a parsed answer the fixture spells out, in the fixture's shape."""
    if case.rule == "decision":
        return {field: getattr(answer, field) for field in DECISION_FIELDS}
    got = {"allow": answer.allow, "reasons": answer.reasons}
    if answer.person is not None:
        got["person"] = answer.person
    return got


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
async def test_both_backends_answer_as_the_fixtures_say(engines: dict[str, PolicyEngine], case: Case) -> None:
    engine = engines[case.data]

    answer = await getattr(engine, METHODS[case.rule])(case.input)

    assert answer.failure is None, answer.reasons
    assert answered(case, answer) == case.want
    assert answer.engine == engine.name
    assert answer.input_digest == digest(case.input)
    assert answer.decision_id


def test_the_table_covers_every_rule_and_scenario() -> None:
    """A table that lost a rule or a scenario would still pass; this one would not."""
    covered = {(case.data, case.rule) for case in CASES}

    assert {rule for _, rule in covered} == set(METHODS)
    assert {("org", rule) for rule in METHODS} <= covered
    assert {data for data, _ in covered} == {"shipped", "org", "broken"}
    assert len({case.id for case in CASES}) == len(CASES), "case names are unique per scenario and rule"
    assert any(not case.want["allow"] for case in CASES) and any(case.want["allow"] for case in CASES)
