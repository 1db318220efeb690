"""OPA server backend: every way the server can fail is a deny with the reason recorded."""

from __future__ import annotations

import time

import pytest
from structlog.testing import capture_logs

from bot.policy.models import Failure
from bot.policy.opa import OpaEngine
from tests.policy.conftest import BASE_INPUT
from tests.policy.fake_opa import FakeOpa


async def test_queries_the_decision_rule_and_keeps_opas_decision_id(opa: FakeOpa, opa_engine: OpaEngine) -> None:
    decision = await opa_engine.decide(BASE_INPUT)

    assert decision.allow and decision.require_approval
    [request] = opa.requests
    assert request["path"] == "playbook/authz/decision"
    assert decision.decision_id == request["decision_id"]


async def test_mints_a_decision_id_when_opa_sends_none(opa: FakeOpa, opa_engine: OpaEngine) -> None:
    opa.decision_logs = False

    first = await opa_engine.decide(BASE_INPUT)
    second = await opa_engine.decide(BASE_INPUT)

    assert first.decision_id and second.decision_id and first.decision_id != second.decision_id


async def test_policy_hash_comes_from_bundle_revisions(opa: FakeOpa, opa_engine: OpaEngine) -> None:
    opa.revision = "rev-42"

    decision = await opa_engine.decide(BASE_INPUT)

    assert decision.policy_hash == "playbook@rev-42"
    assert opa_engine.policy_hash == "playbook@rev-42"
    assert opa_engine.verdict_hash is None  # (the last answer's revision, maybe stale: no front door verdicts)


async def test_a_bundle_without_a_revision_names_no_version(opa: FakeOpa, opa_engine: OpaEngine) -> None:
    """Review (stop 43): an empty revision read as `playbook@`, the same across every rollout."""
    opa.revision = ""
    assert (await opa_engine.decide(BASE_INPUT)).policy_hash is None


async def test_sends_the_bearer_token(opa: FakeOpa) -> None:
    opa.token = "s3cret"
    async with OpaEngine(opa.url, token="s3cret", timeout=2.0) as engine:
        decision = await engine.decide(BASE_INPUT)

    assert decision.failure is None and decision.allow
    assert opa.requests[-1]["authorization"] == "Bearer s3cret"


async def test_rejected_token_denies(opa: FakeOpa) -> None:
    opa.token = "s3cret"
    async with OpaEngine(opa.url, token="wrong", timeout=2.0) as engine:
        decision = await engine.decide(BASE_INPUT)

    assert not decision.allow
    assert decision.failure is Failure.HTTP_ERROR
    assert decision.reasons == [f"OPA at {opa.url} answered data.playbook.authz.decision with HTTP 401 Unauthorized"]


async def test_unreachable_opa_denies(closed_port: int) -> None:
    url = f"http://127.0.0.1:{closed_port}"
    async with OpaEngine(url, timeout=2.0) as engine:
        with capture_logs() as logs:
            decision = await engine.decide(BASE_INPUT)
        ready = await engine.ready()

    assert not decision.allow
    assert decision.failure is Failure.UNREACHABLE
    assert decision.reasons[0].startswith(f"OPA unreachable at {url}: Cannot connect to host 127.0.0.1:{closed_port}")
    assert decision.input_digest  # provenance is recorded even for a failure
    assert {"event": "policy.fail_closed", "log_level": "error"}.items() <= logs[-1].items()
    assert ready is False


async def test_slow_opa_denies_at_the_timeout(opa: FakeOpa) -> None:
    opa.delay = 2.0
    async with OpaEngine(opa.url, timeout=0.3) as engine:
        started = time.monotonic()
        decision = await engine.decide(BASE_INPUT)
        elapsed = time.monotonic() - started

    assert not decision.allow
    assert decision.failure is Failure.TIMEOUT
    assert decision.reasons == [f"OPA at {opa.url} did not answer within 0.3s"]
    assert elapsed < 1.0


async def test_server_error_denies(opa: FakeOpa) -> None:
    opa.fault = "500"
    async with OpaEngine(opa.url, timeout=2.0, retries=0) as engine:
        decision = await engine.decide(BASE_INPUT)

    assert (decision.allow, decision.failure) == (False, Failure.HTTP_ERROR)
    assert decision.reasons == [
        f"OPA at {opa.url} answered data.playbook.authz.decision with HTTP 500 Internal Server Error"
    ]


async def test_server_error_is_retried_once_then_denies(opa: FakeOpa, opa_engine: OpaEngine) -> None:
    opa.fault = "500"

    decision = await opa_engine.decide(BASE_INPUT)

    assert decision.failure is Failure.HTTP_ERROR
    assert len(opa.requests) == 2


async def test_undefined_result_denies(opa: FakeOpa, opa_engine: OpaEngine) -> None:
    opa.fault = "undefined"

    decision = await opa_engine.decide(BASE_INPUT)

    assert (decision.allow, decision.failure) == (False, Failure.UNDEFINED)
    assert decision.reasons == [
        f"policy undefined: data.playbook.authz.decision has no value on OPA at {opa.url} (is the policy loaded?)"
    ]
    assert decision.decision_id == opa.requests[-1]["decision_id"]


@pytest.mark.parametrize("rule", ["decision", "approver", "start", "cancel"])
async def test_malformed_result_denies(opa: FakeOpa, opa_engine: OpaEngine, rule: str) -> None:
    opa.fault = "malformed"  # {"allow": "yes", "reasons": "all good"}

    answer = await getattr(opa_engine, "decide" if rule == "decision" else rule)({**BASE_INPUT, "user": {"id": "bob"}})

    assert (answer.allow, answer.failure) == (False, Failure.MALFORMED)
    assert answer.reasons == [
        f"policy result malformed: data.playbook.authz.{rule}: allow: Input should be a valid boolean; "
        "reasons: Input should be a valid list"
    ]


async def test_body_that_is_not_json_denies(opa: FakeOpa, opa_engine: OpaEngine) -> None:
    opa.fault = "not_json"

    decision = await opa_engine.decide(BASE_INPUT)

    assert (decision.allow, decision.failure) == (False, Failure.MALFORMED)
    assert "non-JSON body" in decision.reasons[0]


async def test_input_that_is_not_json_denies_without_a_request(opa: FakeOpa, opa_engine: OpaEngine) -> None:
    decision = await opa_engine.decide({**BASE_INPUT, "now": object()})

    assert (decision.allow, decision.failure) == (False, Failure.INVALID_INPUT)
    assert opa.requests == []


async def test_ready_when_opa_answers_health(opa: FakeOpa, opa_engine: OpaEngine) -> None:
    assert await opa_engine.ready() is True


async def test_behind_the_deployments_authorization_health_is_open_and_decisions_need_the_token(
    opa: FakeOpa,
) -> None:
    opa.token = "s3cret"
    async with OpaEngine(opa.url, timeout=2.0) as tokenless, OpaEngine(opa.url, token="s3cret", timeout=2.0) as bot:
        ready = await tokenless.ready()
        refused = await tokenless.start({k: v for k, v in BASE_INPUT.items() if k != "step"})
        decided = await bot.decide(BASE_INPUT)

    assert ready is True
    assert (refused.allow, refused.failure) == (False, Failure.HTTP_ERROR)
    assert refused.reasons == [f"OPA at {opa.url} answered data.playbook.authz.start with HTTP 401 Unauthorized"]
    assert (decided.allow, decided.require_approval, decided.failure) == (True, True, None)


def test_url_must_be_http() -> None:
    with pytest.raises(ValueError, match="OPA URL must be"):
        OpaEngine("opa:8181")
