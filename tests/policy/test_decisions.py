"""The shipped policy's answers, through both backends (embedded and OPA REST) alike."""

from __future__ import annotations

from typing import Any

import pytest

from bot.policy.engine import PolicyEngine
from bot.policy.models import input_digest
from tests.policy.conftest import BASE_INPUT, make_input

LOW_STEP = {"id": "note", "action": "core.log", "impact": "low", "with": {"message": "hi"}}
SHELL_STEP = {"id": "kill", "action": "shell.run", "impact": "high", "with": {"argv": ["true"]}}
RUNS = {"allow": True, "require_approval": False, "min_approvals": 0, "approver_groups": []}
NEEDS_OWNER = {
    "allow": True,
    "require_approval": True,
    "min_approvals": 1,
    "approver_groups": ["sre-oncall"],
    "approval_timeout": "15m",
}

DECISIONS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("low impact runs", make_input(step=LOW_STEP), {**RUNS, "reasons": ["low impact step"]}),
    (
        "high impact in staging runs",
        make_input(params={"environment": "staging"}),
        {**RUNS, "reasons": ["high impact step outside production (staging)"]},
    ),
    (
        "environment from an authenticated alert's label",
        make_input(
            params={},
            alert={"labels": {"environment": "staging", "severity": "page"}},
            provenance={"params": {}, "alert": {"source": "alertmanager", "verified": True}},
        ),
        RUNS,
    ),
    (
        "a requester's staging does not lift production approvals",
        make_input(params={"environment": "staging"}, provenance={"params": {"environment": "requester"}, "alert": None}),
        {**NEEDS_OWNER, "reasons": ["high impact step in production needs 1 approval(s) from sre-oncall"]},
    ),
    (
        "high impact in production needs one owner approval",
        make_input(),
        {**NEEDS_OWNER, "reasons": ["high impact step in production needs 1 approval(s) from sre-oncall"]},
    ),
    ("no environment is production", make_input(params={}), NEEDS_OWNER),
    ("unknown environment is production", make_input(params={"environment": "prd"}), NEEDS_OWNER),
    ("shell.run in production needs two", make_input(step=SHELL_STEP), {**NEEDS_OWNER, "min_approvals": 2}),
    ("shell.run in staging runs", make_input(step=SHELL_STEP, params={"environment": "staging"}), RUNS),
    (
        "missing step",
        make_input(step=...),
        {"allow": False, "require_approval": False, "reasons": ["missing input.step"]},
    ),
    ("missing now", make_input(now=...), {"allow": False, "reasons": ["missing input.now"]}),
    (
        "invalid now",
        make_input(now="tomorrow"),
        {"allow": False, "reasons": ["invalid input.now: expected an RFC3339 timestamp"]},
    ),
    (
        "missing owner",
        make_input(playbook={"name": "restart-service"}),
        {"allow": False, "reasons": ["missing input.playbook.owner"]},
    ),
    (
        "empty input",
        {},
        {
            "allow": False,
            "reasons": ["missing input.now", "missing input.playbook", "missing input.run", "missing input.step"],
        },
    ),
]


@pytest.mark.parametrize(("name", "policy_input", "expected"), DECISIONS, ids=[case[0] for case in DECISIONS])
async def test_decision_table(engine: PolicyEngine, name: str, policy_input: dict, expected: dict) -> None:
    decision = await engine.decide(policy_input)

    assert decision.failure is None, decision.reasons
    assert decision.model_dump(include=set(expected)) == expected
    assert decision.engine == engine.name
    assert decision.input_digest == input_digest(policy_input)
    assert decision.decision_id


MEMBER = {"id": "slack:U0BOB", "name": "Bob", "groups": ["sre-oncall"], "verified": True}

APPROVERS: list[tuple[str, dict[str, Any], bool, str]] = [
    ("owner group member", MEMBER, True, "slack:U0BOB is in approver group sre-oncall"),
    ("requester", {**MEMBER, "id": "alice"}, False, "alice requested this run and cannot approve it"),
    (
        "outsider",
        {"id": "slack:U0CAROL", "name": "Carol", "groups": ["marketing"], "verified": True},
        False,
        "slack:U0CAROL is not in an approver group (sre-oncall)",
    ),
    (
        "API user without a group mapping",
        {"id": "api:dave", "name": "dave", "groups": [], "verified": True},
        False,
        "api:dave is not in an approver group (sre-oncall)",
    ),
    (
        "unverified principal in production",
        {"id": "cli:dave", "name": "dave", "groups": ["sre-oncall"], "verified": False},
        False,
        "cli:dave is unverified (it reached Temporal directly): in production only a verified principal may approve; "
        "use Slack or the API",
    ),
    ("user without an id", {"name": "nobody", "groups": ["sre-oncall"]}, False, "missing input.user.id"),
]


@pytest.mark.parametrize(("name", "user", "allow", "reason"), APPROVERS, ids=[case[0] for case in APPROVERS])
async def test_approver_table(engine: PolicyEngine, name: str, user: dict, allow: bool, reason: str) -> None:
    verdict = await engine.approver({**BASE_INPUT, "user": user})

    assert verdict.failure is None
    assert (verdict.allow, verdict.reasons) == (allow, [reason])
    assert verdict.person == user.get("id")  # no people mapping: a principal is its own person


async def test_start_allows_unrestricted_playbooks(engine: PolicyEngine) -> None:
    start_input = {k: v for k, v in BASE_INPUT.items() if k != "step"} | {"user": MEMBER}

    verdict = await engine.start(start_input)

    assert (verdict.allow, verdict.reasons, verdict.failure, verdict.person) == (True, [], None, "slack:U0BOB")


CANCELS: list[tuple[str, dict[str, Any], bool, str]] = [
    ("requester", {"id": "alice", "groups": [], "verified": True}, True, "alice requested this run"),
    ("owner group member", MEMBER, True, "slack:U0BOB is in the owner group sre-oncall"),
    (
        "outsider",
        {"id": "slack:U0CAROL", "groups": ["marketing"], "verified": True},
        False,
        "slack:U0CAROL may not cancel runs of restart-service: only its requester or members of sre-oncall may",
    ),
    (
        "unverified requester in production",
        {"id": "alice", "groups": [], "verified": False},
        False,
        "alice is unverified (it reached Temporal directly): in production only a verified principal may cancel; "
        "use Slack or the API",
    ),
]


@pytest.mark.parametrize(("name", "user", "allow", "reason"), CANCELS, ids=[case[0] for case in CANCELS])
async def test_cancel_table(engine: PolicyEngine, name: str, user: dict, allow: bool, reason: str) -> None:
    cancel_input = {k: v for k, v in BASE_INPUT.items() if k != "step"} | {"user": user}

    verdict = await engine.cancel(cancel_input)

    assert verdict.failure is None
    assert (verdict.allow, verdict.reasons) == (allow, [reason])


async def test_start_without_user_is_denied(engine: PolicyEngine) -> None:
    verdict = await engine.start({"playbook": {"name": "restart-service"}})

    assert (verdict.allow, verdict.reasons) == (False, ["missing input.user"])
