"""Policy input reaches the embedded engine's policy exactly as it was recorded, or is refused.

rego-cpp takes strings as C strings, so a NUL inside one cut it short: the policy decided on
"staging" while the audit recorded "staging\\u0000production" (the OPA backend, in Go, sees the
whole string), and a quote or newline was kept unescaped (an answer echoing it was unreadable).
Such inputs now go to rego-cpp as JSON text. An input larger than the pipe's frame limit killed
the policy child, so one oversized input denied every other decision while the engine restarted;
it is now a deny of that one input (invalid_input), and the child is not disturbed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio

from bot.policy import wire
from bot.policy.embedded import EmbeddedEngine
from bot.policy.models import Failure
from tests.policy.conftest import POLICIES
from tests.policy.oracle import HIGH, NOW, PLAYBOOK, RUN

# A verified alert says which environment the step runs in (a trusted source).
STAGING = {
    "playbook": PLAYBOOK,
    "step": HIGH,
    "run": {**RUN, "trigger": "alertmanager"},
    "params": {"service": "api", "environment": "staging"},
    "alert": {"labels": {"alertname": "ServiceDown", "environment": "staging"}},
    "approvals": [],
    "now": NOW,
    "provenance": {"params": {"service": "alert", "environment": "alert"}, "alert": {"source": "alertmanager", "verified": True}},
}


@pytest_asyncio.fixture
async def embedded_engine() -> AsyncIterator[EmbeddedEngine]:
    async with EmbeddedEngine(POLICIES, timeout=10.0) as engine:
        await engine.load()
        yield engine


def with_environment(value: str) -> dict[str, Any]:
    return {
        **STAGING,
        "params": {**STAGING["params"], "environment": value},
        "alert": {"labels": {**STAGING["alert"]["labels"], "environment": value}},
    }


async def test_a_nul_in_a_string_does_not_cut_the_value_the_policy_sees(embedded_engine: EmbeddedEngine) -> None:
    staging = await embedded_engine.decide(STAGING)
    smuggled = await embedded_engine.decide(with_environment("staging\x00production"))
    unknown = await embedded_engine.decide(with_environment("staging-production"))
    in_a_key = await embedded_engine.decide({**STAGING, "step": {**HIGH, "with": {"a\x00b": 1}}})

    assert staging.allow and not staging.require_approval  # outside production: no approval
    # An environment the policy does not know is production (fail safe), as OPA would decide.
    assert smuggled.allow and smuggled.require_approval and smuggled.failure is None
    assert smuggled.reasons == unknown.reasons == ["high impact step in production needs 1 approval(s) from sre-oncall"]
    assert in_a_key.allow and not in_a_key.require_approval and in_a_key.failure is None


async def test_quotes_and_control_characters_reach_the_policy_as_written(embedded_engine: EmbeddedEngine) -> None:
    requester = 'cli:a"b\\c\nd\x01'
    unverified = {
        **STAGING,
        "params": {"service": "api", "environment": "production"},
        "run": {**RUN, "requested_by": requester, "requester": {"principal": requester, "verified": False}},
    }

    decision = await embedded_engine.decide(unverified)

    assert (decision.allow, decision.failure) == (False, None)
    assert decision.reasons[0].startswith(f"high impact step in production: the run's requester {requester} is unverified")


async def test_an_input_over_the_frame_limit_is_refused_without_killing_the_child(
    embedded_engine: EmbeddedEngine,
) -> None:
    pid = embedded_engine.pid
    huge = {**STAGING, "step": {**HIGH, "with": {"body": "x" * (wire.MAX_FRAME + 1)}}}

    refused = await embedded_engine.decide(huge)
    after = await embedded_engine.decide(STAGING)

    assert (refused.allow, refused.failure) == (False, Failure.INVALID_INPUT)
    assert refused.reasons[0].startswith("policy input is too large for the embedded engine: ")
    assert after.allow and after.failure is None
    assert embedded_engine.pid == pid
