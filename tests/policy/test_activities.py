"""The policy activities: the engine's answer, retried by Temporal only while it is unavailable."""

from __future__ import annotations

import dataclasses

import pytest
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from bot.policy.activities import PolicyActivities, PolicyRequest
from bot.policy.embedded import EmbeddedEngine
from bot.policy.models import Decision, Failure, Provenance, Verdict
from tests.policy.conftest import BASE_INPUT


class StubEngine:
    """Answers with a fixed deny of the given kind."""

    name = "stub"
    policy_hash = None

    def __init__(self, failure: Failure) -> None:
        self.failure = failure

    async def decide(self, input: dict) -> Decision:
        return Decision.deny(f"{self.failure.value} happened", self.failure, Provenance(engine="stub"))

    async def approver(self, input: dict) -> Verdict:
        return Verdict.deny(f"{self.failure.value} happened", self.failure, Provenance(engine="stub"))

    start = approver


def env_at(attempt: int, maximum_attempts: int) -> ActivityEnvironment:
    env = ActivityEnvironment()
    retry = RetryPolicy(maximum_attempts=maximum_attempts)
    env.info = dataclasses.replace(env.info, attempt=attempt, retry_policy=retry)
    return env


async def test_activities_answer_with_the_engine(embedded_engine: EmbeddedEngine) -> None:
    activities = PolicyActivities(embedded_engine)
    env = env_at(1, 3)

    decision = await env.run(activities.decide, PolicyRequest(input=BASE_INPUT))
    verdict = await env.run(activities.approver, PolicyRequest(input={**BASE_INPUT, "user": {"id": "alice"}}))

    assert decision.allow and decision.min_approvals == 1
    assert verdict.reasons == ["alice requested this run and cannot approve it"]
    assert [fn.__temporal_activity_definition.name for fn in activities.all()] == [
        "policy.decide",
        "policy.approver",
        "policy.cancel",
        "policy.start",
    ]


async def test_unavailable_engine_is_retried_while_attempts_remain() -> None:
    activities = PolicyActivities(StubEngine(Failure.UNREACHABLE))

    with pytest.raises(ApplicationError, match="unreachable happened") as caught:
        await env_at(2, 3).run(activities.decide, PolicyRequest(input={}))
    last = await env_at(3, 3).run(activities.decide, PolicyRequest(input={}))

    assert caught.value.type == "PolicyUnavailable" and not caught.value.non_retryable
    assert (last.allow, last.failure, last.reasons) == (False, Failure.UNREACHABLE, ["unreachable happened"])


async def test_a_policy_answer_is_never_retried() -> None:
    activities = PolicyActivities(StubEngine(Failure.MALFORMED))

    verdict = await env_at(1, 3).run(activities.approver, PolicyRequest(input={}))

    assert (verdict.allow, verdict.failure) == (False, Failure.MALFORMED)
