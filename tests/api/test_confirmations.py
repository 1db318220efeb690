"""POST /api/v1/runs/{id}/confirmations on real HTTP with a real worker and policy: a core.confirm
step answered as a token's principal, and every refusal a 4xx naming its rule, audited."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio
from temporalio.testing import WorkflowEnvironment

from tests.api.support import ApiStack, api_stack

PICK = """
name: pick
summary: Pick a mitigation
owner: sre
steps:
  - id: pick
    action: core.confirm
    with: {message: "Restart or scale?", choices: [restart, scale]}
  - id: restart
    when: "{{ steps.pick.output.choice == 'restart' }}"
    action: core.log
    with: {message: restarting}
  - id: scale
    when: "{{ steps.pick.output.choice == 'scale' }}"
    action: core.log
    with: {message: "scaling, as {{ steps.pick.output.by }} picked"}
"""

COUNT = """
name: count
summary: Ask for a number
owner: sre
steps:
  - id: how_many
    action: core.confirm
    with: {message: "How many?", input: {type: integer, pattern: "^[1-9]$"}}
"""


@pytest_asyncio.fixture
async def stack(dev_env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[ApiStack]:
    async with api_stack(dev_env.client, tmp_path, {"pick": PICK, "count": COUNT}) as s:
        yield s


def answers(stack: ApiStack, run_id: str) -> list[dict]:
    return [e.details for e in stack.audit.events()
            if e.run_id == run_id and e.kind == "approval_vote" and e.details.get("vote") == "confirm"]


async def test_an_answer_picks_the_branch_as_the_tokens_principal(stack: ApiStack) -> None:
    run_id = await stack.start("alice", "pick")
    await stack.waiting(run_id, "pick")
    response = await stack.call("POST", f"/runs/{run_id}/confirmations", "bob",
                                body={"step": "pick", "choice": "scale", "reason": "load, not a leak"})
    assert response.status_code == 200, response.text
    assert response.json()["answer"] == "scale" and response.json()["message"] == "api:bob answered 'scale'"
    final = await stack.finished(run_id)
    assert final.state == "completed"
    assert final.step("pick").output == {"choice": "scale", "by": "api:bob"}
    assert (final.step("restart").state, final.step("scale").state) == ("skipped", "succeeded")
    (vote,) = final.step("pick").approvals
    assert (vote.user, vote.person, vote.verified, vote.answer, vote.reason) == (
        "api:bob", "bob", True, "scale", "load, not a leak",
    )
    (audited,) = answers(stack, run_id)
    assert (audited["answer"], audited["accepted"], audited["verified"]) == ("scale", True, True)


async def test_refused_answers_name_their_rule_change_nothing_and_are_audited(stack: ApiStack) -> None:
    run_id = await stack.start("alice", "pick")
    await stack.waiting(run_id, "pick")
    url = f"/runs/{run_id}/confirmations"
    typo = await stack.call("POST", url, "bob", body={"step": "pick", "choice": "scael"})
    assert typo.status_code == 422 and typo.json()["rule"] == "choices"
    assert "'scael' is not one of the choices (restart, scale)" in typo.json()["error"]
    own = await stack.call("POST", url, "alice-laptop", body={"step": "pick", "choice": "scale"})
    assert own.status_code == 403 and own.json()["rule"] == "four_eyes", own.text
    outsider = await stack.call("POST", url, "mallory", body={"step": "pick", "choice": "scale"})
    assert outsider.status_code == 403 and outsider.json()["rule"] == "approver"
    both = await stack.call("POST", url, "bob", body={"step": "pick", "choice": "scale", "value": 3})
    assert both.status_code == 422 and "exactly one of choice" in both.text
    as_vote = await stack.call("POST", f"/runs/{run_id}/approvals", "bob", body={"step": "pick", "vote": "approve"})
    assert as_vote.status_code == 422 and as_vote.json()["rule"] == "step_kind"

    status = await stack.status(run_id)
    assert status is not None and status.step("pick").approvals == [] and status.step("pick").state == "waiting_approval"
    assert {e.details["rule"] for e in stack.refusals()} >= {"choices", "four_eyes", "approver", "step_kind"}
    in_run = [(d["user"], d["rule"]) for d in answers(stack, run_id)]
    assert ("api:bob", "choices") in in_run
    # The front door asks no policy (issue 17.3): the run asks the approver rule once and refuses mallory,
    # on its record too.
    assert ("api:mallory", "approver") in in_run, in_run

    reject = await stack.call("POST", f"/runs/{run_id}/approvals", "carol", body={"step": "pick", "vote": "reject"})
    assert reject.status_code == 200
    final = await stack.finished(run_id)
    assert final.step("pick").state == "rejected" and final.state in ("compensated", "cancelled")


async def test_a_value_answers_an_input_step(stack: ApiStack) -> None:
    run_id = await stack.start("alice", "count")
    await stack.waiting(run_id, "how_many")
    url = f"/runs/{run_id}/confirmations"
    wrong = await stack.call("POST", url, "bob", body={"step": "how_many", "value": 12})
    assert wrong.status_code == 422 and wrong.json()["rule"] == "input" and "^[1-9]$" in wrong.json()["error"]
    response = await stack.call("POST", url, "bob", body={"step": "how_many", "value": 3})
    assert response.status_code == 200, response.text
    final = await stack.finished(run_id)
    assert final.state == "completed" and final.step("how_many").output == {"value": 3, "by": "api:bob"}
