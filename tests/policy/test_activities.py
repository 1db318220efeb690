"""The policy activities: the engine's answer, retried by Temporal only while it is unavailable."""

from __future__ import annotations

import dataclasses

import pytest
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from bot.identity.principals import Actor
from bot.identity.proofs import Keyring, ProofError, vote_content
from bot.policy.activities import Claim, PolicyActivities, PolicyRequest, verified_actor
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


def test_the_worker_checks_a_proof_against_the_execution_its_claim_names() -> None:
    """A claim names the run's first execution run id (workflow code fills it): a vote proof for
    another execution, or for none, does not verify; a claim from before the field asks for none."""
    keyring = Keyring(b"unit-test-envelope-key-0123456789abcdef")
    bob = Actor("slack:U0BOB", "bob", ("sre",), "slack")
    content = vote_content("risky", "approve", "")
    claim = Claim(purpose="vote", run_id="r", principal=bob.principal, content=content, execution="exec-2")
    for_this = keyring.sign("vote", "r", bob, content, execution="exec-2")
    assert verified_actor(keyring, claim, for_this) == bob
    with pytest.raises(ProofError, match="another execution of run 'r'"):
        verified_actor(keyring, claim, keyring.sign("vote", "r", bob, content, execution="exec-1"))
    with pytest.raises(ProofError, match="bound to no execution"):
        verified_actor(keyring, claim, keyring.sign("vote", "r", bob, content))
    from_before = claim.model_copy(update={"execution": None})
    assert verified_actor(keyring, from_before, keyring.sign("vote", "r", bob, content)) == bob
