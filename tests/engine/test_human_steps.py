"""Human steps (format v1.1): core.approve waits for votes, core.confirm for an answer.

Policy answers come from fake `policy.decide` / `policy.approver` activities (as in
test_approvals.py); the workflow, its updates and the saga are the real ones.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from temporalio import activity
from temporalio.client import WorkflowUpdateFailedError

from bot.engine.state import ConfirmRequest, VoteRequest
from bot.engine.workflow import PlaybookRun
from bot.policy.activities import PolicyRequest
from bot.policy.models import Decision, Verdict
from tests.engine.support import Recorder, playbook, run_input, start, wait_for_state, worker

APPROVERS = {"cli:dana", "cli:erin", "cli:frank"}

APPROVE_PB = """
name: gated-by-a-step
owner: sre
steps:
  - id: prepare
    action: t.ok
    compensate: {action: t.ok}
  - id: ok-to-go
    action: core.approve
    with: {message: "Restart checkout in production?", approvers: [sre-leads]}
  - id: restart
    action: t.ok
"""

CONFIRM_PB = """
name: pick
owner: sre
steps:
  - id: prepare
    action: t.ok
    compensate: {action: t.ok}
  - id: pick
    action: core.confirm
    with: {message: "Which mitigation?", choices: [restart, scale]}
  - id: restart
    when: "{{ steps.pick.output.choice == 'restart' }}"
    action: t.ok
  - id: scale
    when: "{{ steps.pick.output.choice == 'scale' }}"
    action: t.ok
    with: {chosen_by: "{{ steps.pick.output.by }}"}
"""

INPUT_PB = """
name: replicas
owner: sre
steps:
  - id: how_many
    action: core.confirm
    with: {message: "How many replicas?", input: {type: integer, pattern: "^[1-9][0-9]?$"}}
  - id: scale
    action: t.ok
    with: {replicas: "{{ steps.how_many.output.value }}"}
"""


def policy(decision: dict[str, Any], seen: list[dict[str, Any]] | None = None) -> list[Any]:
    @activity.defn(name="policy.decide")
    async def decide(request: PolicyRequest) -> Decision:
        return Decision(**decision)

    @activity.defn(name="policy.approver")
    async def approver(request: PolicyRequest) -> Verdict:
        if seen is not None:
            seen.append(request.input)
        user = request.input["user"]["id"]
        return Verdict(allow=user in APPROVERS, reasons=[] if user in APPROVERS else [f"{user} is not in sre"])

    return [decide, approver]


LOW = {"allow": True, "reasons": ["low impact step"]}
QUORUM = {"allow": True, "require_approval": True, "min_approvals": 2, "approver_groups": ["sre"],
          "approval_timeout": "10m"}


def vote(step: str, user: str, verdict: str = "approve", reason: str = "") -> VoteRequest:
    return VoteRequest(step_id=step, user=user, vote=verdict, reason=reason)  # type: ignore[arg-type]


def answer(step: str, user: str, text: str) -> ConfirmRequest:
    return ConfirmRequest(step_id=step, user=user, answer=text)


async def refused(handle: Any, update: Any, request: Any) -> tuple[str, dict[str, Any]]:
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await handle.execute_update(update, request)
    cause = info.value.cause
    return str(cause), (cause.details[0] if cause.details else {})


def answers_audited(rec: Recorder) -> list[dict[str, Any]]:
    return [e.details for e in rec.audit if e.kind == "approval_vote" and e.details.get("vote") == "confirm"]


async def test_core_approve_waits_for_the_policy_quorum_with_four_eyes(dev_env):
    rec = Recorder()
    async with worker(dev_env.client, rec, policy(QUORUM)) as w:
        handle = await start(dev_env.client, w, run_input(playbook(APPROVE_PB), requested_by="cli:carl"))
        status = await wait_for_state(handle, lambda s: s.state == "waiting_approval")
        step = status.step("ok-to-go")
        assert step.state == "waiting_approval" and step.decision["min_approvals"] == 2
        assert step.args == {"message": "Restart checkout in production?", "approvers": ["sre-leads"]}

        text, info = await refused(handle, PlaybookRun.vote, vote("ok-to-go", "cli:carl"))
        assert "four-eyes" in text and info["rule"] == "four_eyes"
        assert "not in sre" in (await refused(handle, PlaybookRun.vote, vote("ok-to-go", "cli:zed")))[0]
        await handle.execute_update(PlaybookRun.vote, vote("ok-to-go", "cli:dana"))
        assert "already voted" in (await refused(handle, PlaybookRun.vote, vote("ok-to-go", "cli:dana")))[0]
        assert rec.sequence() == ["prepare"], "one approval of two must not let the run go on"
        await handle.execute_update(PlaybookRun.vote, vote("ok-to-go", "cli:erin"))
        status = await handle.result()
    assert status.state == "completed"
    assert status.step("ok-to-go").output == {
        "approved_by": ["cli:dana", "cli:erin"], "message": "Restart checkout in production?",
    }
    assert rec.sequence() == ["prepare", "restart"], "core.approve runs no activity of its own"


async def test_core_approve_waits_even_when_policy_asks_for_no_approval(dev_env):
    rec = Recorder()
    async with worker(dev_env.client, rec, policy(LOW)) as w:
        handle = await start(dev_env.client, w, run_input(playbook(APPROVE_PB), requested_by="cli:carl"))
        status = await wait_for_state(handle, lambda s: s.state == "waiting_approval")
        assert status.step("ok-to-go").decision["min_approvals"] == 1
        assert rec.sequence() == ["prepare"]
        await handle.execute_update(PlaybookRun.vote, vote("ok-to-go", "cli:frank"))
        status = await handle.result()
    assert status.state == "completed" and rec.sequence() == ["prepare", "restart"]


async def test_core_approve_denied_by_policy_never_waits_and_rolls_back(dev_env):
    rec = Recorder()
    async with worker(dev_env.client, rec, policy({"allow": False, "reasons": ["change freeze"]})) as w:
        status = await (await start(dev_env.client, w, run_input(playbook(APPROVE_PB)))).result()
    assert status.state == "compensated"
    assert (status.step("ok-to-go").state, status.step("ok-to-go").error) == ("denied", "denied by policy: change freeze")
    assert rec.sequence() == ["prepare", "undo prepare"]


async def test_core_confirm_answer_picks_the_branch_and_is_the_output(dev_env):
    rec, seen = Recorder(), []
    async with worker(dev_env.client, rec, policy(LOW, seen)) as w:
        handle = await start(dev_env.client, w, run_input(playbook(CONFIRM_PB), requested_by="cli:carl"))
        status = await wait_for_state(handle, lambda s: s.state == "waiting_approval")
        assert status.step("pick").state == "waiting_approval"
        result = await handle.execute_update(PlaybookRun.confirm, answer("pick", "cli:dana", "scale"))
        assert (result.answer, result.message) == ("scale", "cli:dana answered 'scale'")
        status = await handle.result()
    assert status.state == "completed"
    assert status.step("pick").output == {"choice": "scale", "by": "cli:dana"}
    assert (status.step("restart").state, status.step("scale").state) == ("skipped", "succeeded")
    assert rec.calls[-1] == ("scale", False, {"chosen_by": "cli:dana"})
    assert rec.sequence() == ["prepare", "scale"]
    (asked,) = seen  # the approver rule decides who may answer, asked about a core.confirm step
    assert asked["step"]["action"] == "core.confirm" and asked["user"]["id"] == "cli:dana"
    (audited,) = answers_audited(rec)
    assert (audited["answer"], audited["user"], audited["accepted"]) == ("scale", "cli:dana", True)


async def test_an_answer_outside_the_choices_is_refused_audited_and_changes_nothing(dev_env):
    rec = Recorder()
    async with worker(dev_env.client, rec, policy(LOW)) as w:
        handle = await start(dev_env.client, w, run_input(playbook(CONFIRM_PB), requested_by="cli:carl"))
        await wait_for_state(handle, lambda s: s.state == "waiting_approval")
        text, info = await refused(handle, PlaybookRun.confirm, answer("pick", "cli:dana", "rm -rf"))
        assert text == ("VoteRefused: answer to step 'pick' refused by its choices: 'rm -rf' is not one of the "
                        "choices (restart, scale); nothing changed")
        assert (info["code"], info["rule"]) == ("invalid", "choices")
        status = await handle.query(PlaybookRun.status)
        assert status.step("pick").state == "waiting_approval" and status.step("pick").approvals == []
        # the refused answerer may still answer properly: nothing was counted
        await handle.execute_update(PlaybookRun.confirm, answer("pick", "cli:dana", "restart"))
        status = await handle.result()
    assert status.step("pick").output == {"choice": "restart", "by": "cli:dana"}
    assert rec.sequence() == ["prepare", "restart"]
    refusal, accepted = answers_audited(rec)
    assert (refusal["accepted"], refusal["rule"], refusal["answer"]) == (False, "choices", "rm -rf")
    assert accepted["accepted"] is True


async def test_confirm_answers_obey_four_eyes_the_approver_rule_and_the_step_kind(dev_env):
    rec = Recorder()
    async with worker(dev_env.client, rec, policy(LOW)) as w:
        handle = await start(dev_env.client, w, run_input(playbook(CONFIRM_PB), requested_by="cli:carl"))
        await wait_for_state(handle, lambda s: s.state == "waiting_approval")
        assert (await refused(handle, PlaybookRun.confirm, answer("pick", "cli:carl", "scale")))[1]["rule"] == "four_eyes"
        text, _ = await refused(handle, PlaybookRun.confirm, answer("pick", "cli:zed", "scale"))
        assert "cli:zed may not answer step 'pick': cli:zed is not in sre" in text
        text, info = await refused(handle, PlaybookRun.vote, vote("pick", "cli:dana"))
        assert info["rule"] == "step_kind" and "playbook-bot confirm RUN pick CHOICE" in text
        text, info = await refused(handle, PlaybookRun.confirm, answer("prepare", "cli:dana", "scale"))
        assert info["rule"] == "step_kind"
        status = await handle.query(PlaybookRun.status)
        assert status.step("pick").approvals == [] and status.state == "waiting_approval"
        await handle.execute_update(PlaybookRun.vote, vote("pick", "cli:erin", "reject", "neither, page the DB team"))
        status = await handle.result()
    assert status.state == "compensated"
    assert (status.step("pick").state, status.step("pick").error) == (
        "rejected", "rejected by cli:erin: neither, page the DB team",
    )
    assert status.step("restart").state == "pending" and status.step("scale").state == "pending"
    assert rec.sequence() == ["prepare", "undo prepare"]
    # the validator refuses the requester before anything enters history (as for votes); policy's refusal is audited
    assert [d["rule"] for d in answers_audited(rec)] == ["approver"]


async def test_an_input_answer_must_match_its_type_and_pattern(dev_env):
    rec = Recorder()
    async with worker(dev_env.client, rec, policy(LOW)) as w:
        handle = await start(dev_env.client, w, run_input(playbook(INPUT_PB), requested_by="cli:carl"))
        await wait_for_state(handle, lambda s: s.state == "waiting_approval")
        text, info = await refused(handle, PlaybookRun.confirm, answer("how_many", "cli:dana", "lots"))
        assert info["rule"] == "input" and "'lots' is not an integer" in text
        text, info = await refused(handle, PlaybookRun.confirm, answer("how_many", "cli:dana", "500"))
        assert info["rule"] == "input" and "does not match the pattern ^[1-9][0-9]?$" in text
        await handle.execute_update(PlaybookRun.confirm, answer("how_many", "cli:dana", "12"))
        status = await handle.result()
    assert status.step("how_many").output == {"value": 12, "by": "cli:dana"}
    assert rec.calls == [("scale", False, {"replicas": 12})]


async def test_nobody_answers_escalates_then_rejects_at_the_steps_timeout(skip_env):
    rec = Recorder()
    pb = playbook(CONFIRM_PB.replace('choices: [restart, scale]}', 'choices: [restart, scale]}\n    timeout: 5m'))
    async with worker(skip_env.client, rec, policy(LOW)) as w:
        status = await (await start(skip_env.client, w, run_input(pb, requested_by="cli:carl"))).result()
    pick = status.step("pick")
    assert status.state == "compensated"
    assert (pick.state, pick.error) == ("rejected", "approval timed out")
    assert timedelta(minutes=5) <= pick.escalated_at - pick.started_at < timedelta(minutes=6)
    assert timedelta(minutes=10) <= pick.finished_at - pick.started_at < timedelta(minutes=11)
    assert rec.sequence() == ["prepare", "undo prepare"]


async def test_core_approve_deadline_defaults_to_fifteen_minutes(skip_env):
    rec = Recorder()
    async with worker(skip_env.client, rec, policy(LOW)) as w:
        status = await (await start(skip_env.client, w, run_input(playbook(APPROVE_PB)))).result()
    step = status.step("ok-to-go")
    assert step.state == "rejected"
    assert timedelta(minutes=15) <= step.escalated_at - step.started_at < timedelta(minutes=16)
