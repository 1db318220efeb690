"""The acceptance checks' own policy (shared/acceptance/policies) answers as they expect."""

from __future__ import annotations

from bot.policy.embedded import EmbeddedEngine, load_policies
from tests.conftest import unavailable
from tests.policy.conftest import BASE_INPUT, SMOKE_POLICIES

RUN = {**BASE_INPUT["run"], "requested_by": "smoke-carl"}


async def test_smoke_policy() -> None:
    if not SMOKE_POLICIES.is_dir():
        unavailable(f"the acceptance checks' policies are not at {SMOKE_POLICIES} (../shared/acceptance)")
    load_policies(SMOKE_POLICIES)
    async with EmbeddedEngine(SMOKE_POLICIES) as engine:
        high = await engine.decide({**BASE_INPUT, "run": RUN})
        low = await engine.decide({**BASE_INPUT, "run": RUN, "step": {**BASE_INPUT["step"], "impact": "low"}})
        dana = await engine.approver({**BASE_INPUT, "run": RUN, "user": {"id": "smoke-dana", "groups": []}})
        requester = await engine.approver(
            {**BASE_INPUT, "run": {**RUN, "requested_by": "smoke-dana"}, "user": {"id": "smoke-dana", "groups": []}}
        )
        outsider = await engine.approver({**BASE_INPUT, "run": RUN, "user": {"id": "mallory", "groups": []}})
        start = await engine.start({"playbook": BASE_INPUT["playbook"], "user": {"id": "smoke-carl", "groups": []}})

    assert (high.allow, high.require_approval, high.min_approvals) == (True, True, 1)
    assert (high.approver_groups, high.approval_timeout) == (["smoke-approvers"], "10m")
    assert (low.allow, low.require_approval) == (True, False)
    assert (dana.allow, dana.failure) == (True, None)
    assert (requester.allow, requester.reasons) == (False, ["not in smoke-approvers"])
    assert outsider.allow is False
    assert start.allow is True
