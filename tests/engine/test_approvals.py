"""The policy gate in the workflow: deny, approvals with quorum and four-eyes, reject, timeouts.

Policy answers come from fake `policy.decide` / `policy.approver` activities so each test states
the decision it needs; the real engines are tested against the same contract in tests/policy.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import pytest
from temporalio import activity
from temporalio.client import WorkflowExecutionStatus, WorkflowUpdateFailedError

from bot.engine import runs
from bot.engine.runs import RunError
from bot.engine.state import VoteRequest
from bot.engine.workflow import PlaybookRun
from bot.identity.principals import Actor
from bot.identity.proofs import Keyring
from bot.policy.activities import PolicyRequest
from bot.policy.models import Decision, Verdict
from tests.engine.support import Recorder, cancel, playbook, run_input, start, wait_for_state, worker

PB = """
name: gated
owner: sre
params: {svc: {type: string, default: api}}
steps:
  - id: prepare
    action: t.ok
    compensate: {action: t.ok}
  - id: risky
    action: t.ok
    impact: high
    with: {target: "{{ params.svc }}"}
    compensate: {action: t.ok}
  - id: after
    action: t.ok
"""

APPROVERS = {"cli:dana", "cli:erin", "cli:frank"}


def policy(decision: dict[str, Any], seen: list[dict[str, Any]] | None = None) -> list[Any]:
    @activity.defn(name="policy.decide")
    async def decide(request: PolicyRequest) -> Decision:
        if seen is not None:
            seen.append(request.input)
        return Decision(**decision)

    @activity.defn(name="policy.approver")
    async def approver(request: PolicyRequest) -> Verdict:
        user = request.input["user"]["id"]
        return Verdict(allow=user in APPROVERS, reasons=[] if user in APPROVERS else [f"{user} is not in sre"])

    return [decide, approver]


APPROVAL = {"allow": True, "require_approval": True, "min_approvals": 2, "approver_groups": ["sre"], "approval_timeout": "10m"}


def gated(requested_by: str = "cli:tester") -> Any:
    return run_input(playbook(PB), params={"svc": "api"}, requested_by=requested_by)


def vote(step: str, user: str, verdict: str = "approve", reason: str = "") -> VoteRequest:
    return VoteRequest(step_id=step, user=user, vote=verdict, reason=reason)  # type: ignore[arg-type]


async def refused(handle: Any, request: VoteRequest) -> str:
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await handle.execute_update(PlaybookRun.vote, request)
    return str(info.value.cause)


async def test_allow_runs_the_step_with_the_policy_input_of_the_contract(dev_env):
    rec, seen = Recorder(), []
    async with worker(dev_env.client, rec, policy({"allow": True, "decision_id": "d-1"}, seen)) as w:
        handle = await start(dev_env.client, w, gated("cli:carl"))
        status = await handle.result()
    assert status.state == "completed"
    assert status.step("risky").decision["decision_id"] == "d-1"
    (doc,) = seen
    assert doc["step"] == {"id": "risky", "action": "t.ok", "impact": "high", "with": {"target": "api"}}
    assert doc["playbook"]["name"] == "gated" and doc["playbook"]["owner"] == "sre"
    assert doc["playbook"]["hash"].startswith("sha256:")
    assert doc["run"]["requested_by"] == "cli:carl" and doc["run"]["trigger"] == "cli"
    assert doc["run"]["id"] == status.run_id and doc["now"].endswith("Z")
    assert doc["params"] == {"svc": "api"} and doc["alert"] is None and doc["approvals"] == []


async def test_deny_never_runs_the_step_and_rolls_back(dev_env):
    rec = Recorder()
    decision = {"allow": False, "reasons": ["change freeze until Monday"]}
    async with worker(dev_env.client, rec, policy(decision)) as w:
        status = await (await start(dev_env.client, w, gated())).result()
    assert status.state == "compensated"
    assert status.step("risky").state == "denied"
    assert status.step("risky").error == "denied by policy: change freeze until Monday"
    assert rec.sequence() == ["prepare", "undo prepare"], "a denied step never runs nor is undone"


async def test_policy_activity_failure_is_a_deny(dev_env):
    rec = Recorder()

    @activity.defn(name="policy.decide")
    async def broken(request: PolicyRequest) -> Decision:
        raise RuntimeError("engine exploded")

    async with worker(dev_env.client, rec, [broken]) as w:
        status = await (await start(dev_env.client, w, gated())).result()
    assert status.step("risky").state == "denied"
    assert "policy could not be evaluated" in status.step("risky").error
    assert "risky" not in rec.sequence()


async def test_quorum_of_two_refuses_requester_duplicate_and_outsider(dev_env):
    rec = Recorder()
    async with worker(dev_env.client, rec, policy(APPROVAL)) as w:
        handle = await start(dev_env.client, w, gated("cli:carl"))
        status = await wait_for_state(handle, lambda s: s.state == "waiting_approval")
        assert status.step("risky").state == "waiting_approval"
        assert status.step("risky").approval_deadline is not None

        assert "four-eyes" in await refused(handle, vote("risky", "cli:carl"))
        assert "not in sre" in await refused(handle, vote("risky", "cli:zed"))
        assert "no step 'nope'" in await refused(handle, vote("nope", "cli:dana"))
        assert "not waiting for approval" in await refused(handle, vote("prepare", "cli:dana"))

        first = await handle.execute_update(PlaybookRun.vote, vote("risky", "cli:dana"))
        assert (first.approvals, first.needed) == (1, 2)
        assert "already voted" in await refused(handle, vote("risky", "cli:dana"))
        assert (await handle.query(PlaybookRun.status)).state == "waiting_approval"
        assert "risky" not in rec.sequence(), "one approval of two must not run the step"

        await handle.execute_update(PlaybookRun.vote, vote("risky", "cli:erin"))
        status = await handle.result()
    assert status.state == "completed"
    assert [(v.user, v.vote) for v in status.step("risky").approvals] == [("cli:dana", "approve"), ("cli:erin", "approve")]
    assert rec.sequence() == ["prepare", "risky", "after"]


async def test_concurrent_votes_by_the_same_user_count_once(dev_env):
    rec = Recorder()
    async with worker(dev_env.client, rec, policy(APPROVAL)) as w:
        handle = await start(dev_env.client, w, gated("cli:carl"))
        await wait_for_state(handle, lambda s: s.state == "waiting_approval")
        results = await asyncio.gather(
            *(handle.execute_update(PlaybookRun.vote, vote("risky", "cli:dana")) for _ in range(3)), return_exceptions=True
        )
        assert sum(not isinstance(r, BaseException) for r in results) == 1
        status = await handle.query(PlaybookRun.status)
        assert [v.user for v in status.step("risky").approvals] == ["cli:dana"]
        await cancel(handle)
        await handle.result()


async def test_one_reject_rejects_and_rolls_back(dev_env):
    rec = Recorder()
    async with worker(dev_env.client, rec, policy(APPROVAL)) as w:
        handle = await start(dev_env.client, w, gated("cli:carl"))
        await wait_for_state(handle, lambda s: s.state == "waiting_approval")
        await handle.execute_update(PlaybookRun.vote, vote("risky", "cli:dana"))
        await handle.execute_update(PlaybookRun.vote, vote("risky", "cli:erin", "reject", "wrong service"))
        status = await handle.result()
    assert status.state == "compensated"
    assert status.step("risky").state == "rejected"
    assert status.step("risky").error == "rejected by cli:erin: wrong service"
    assert rec.sequence() == ["prepare", "undo prepare"]


def ended_text(run_id: str) -> str:
    return f"run {run_id!r} has already ended (completed): nothing to vote on"


async def test_vote_after_the_run_ended_is_refused_by_the_bot_not_only_by_temporal(dev_env):
    """A vote on a run that is over is refused by the bot's own checks, saying why, while the
    execution is still open and Temporal would take the update: the run holds on to its end until
    dana's vote, whose approver check is slow, is answered. Then the front door says the run ended."""
    rec = Recorder()
    dana_asked, release = asyncio.Event(), asyncio.Event()

    @activity.defn(name="policy.approver")
    async def approver(request: PolicyRequest) -> Verdict:
        if request.input["user"]["id"] == "cli:dana":
            dana_asked.set()
            await release.wait()
        return Verdict(allow=True)

    front_door = Keyring(b"k" * 32)
    frank = Actor("cli:frank", verified_by="dev")
    decision = {**APPROVAL, "min_approvals": 1}
    async with worker(dev_env.client, rec, [policy(decision)[0], approver]) as w:
        # dana's check is a local activity (engine-v3) and holds the run's workflow task: the other
        # updates get their turn each time the worker heartbeats that task, at 80% of its timeout.
        # A 2 s task timeout instead of the default 10 s: the same story, about five times sooner.
        handle = await dev_env.client.start_workflow(
            PlaybookRun.run, gated("cli:carl"), id=f"run-{uuid.uuid4()}", task_queue=w.task_queue,
            task_timeout=timedelta(seconds=2),
        )
        try:
            await wait_for_state(handle, lambda s: s.state == "waiting_approval")
            dana = asyncio.create_task(handle.execute_update(PlaybookRun.vote, vote("risky", "cli:dana")))
            await asyncio.wait_for(dana_asked.wait(), 10)
            await handle.execute_update(PlaybookRun.vote, vote("risky", "cli:erin"))
            await wait_for_state(handle, lambda s: s.state == "completed")
            assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING, "dana's vote holds it open"

            assert await refused(handle, vote("risky", "cli:frank")) == f"VoteRefused: {ended_text(handle.id)}"
            with pytest.raises(RunError) as ended:
                await runs.vote(dev_env.client, handle.id, vote("risky", "cli:frank"), frank, front_door)
            assert str(ended.value) == f"run {handle.id!r} has already ended (completed): nothing to vote on"
            assert (ended.value.code, ended.value.rule) == ("conflict", "run_state")
        finally:
            release.set()
        with pytest.raises(WorkflowUpdateFailedError) as late:
            await dana  # asked before the end, answered after it: checked again, refused
        assert str(late.value.cause) == f"VoteRefused: {ended_text(handle.id)}"
        final = await handle.result()
        with pytest.raises(RunError) as closed:
            await runs.vote(dev_env.client, handle.id, vote("risky", "cli:frank"), frank, front_door)
        assert str(closed.value) == f"run {handle.id!r} has already ended (completed): nothing to vote on"
    assert [(v.user, v.vote) for v in final.step("risky").approvals] == [("cli:erin", "approve")]
    assert rec.sequence() == ["prepare", "risky", "after"]


async def test_approval_timeout_escalates_then_rejects(skip_env):
    rec = Recorder()
    decision = {**APPROVAL, "min_approvals": 1, "approval_timeout": "15m"}
    async with worker(skip_env.client, rec, policy(decision)) as w:
        handle = await start(skip_env.client, w, gated("cli:carl"))
        status = await handle.result()
    risky = status.step("risky")
    assert status.state == "compensated"
    assert (risky.state, risky.error) == ("rejected", "approval timed out")
    assert risky.escalated_at is not None
    # escalation after the first 15m, rejection after the second
    assert timedelta(minutes=15) <= risky.escalated_at - status.started_at < timedelta(minutes=16)
    assert risky.finished_at - status.started_at >= timedelta(minutes=30)
    assert rec.sequence() == ["prepare", "undo prepare"]


async def test_approval_after_escalation_still_counts(skip_env):
    rec = Recorder()
    decision = {**APPROVAL, "min_approvals": 1, "approval_timeout": "15m"}
    async with worker(skip_env.client, rec, policy(decision)) as w:
        handle = await start(skip_env.client, w, gated("cli:carl"))
        await wait_for_state(handle, lambda s: s.state == "waiting_approval")
        await skip_env.sleep(timedelta(minutes=20))
        status = await handle.query(PlaybookRun.status)
        assert status.step("risky").escalated_at is not None and status.state == "waiting_approval"
        await handle.execute_update(PlaybookRun.vote, vote("risky", "cli:dana"))
        status = await handle.result()
    assert status.state == "completed"


async def test_a_failed_sibling_stops_a_step_waiting_for_approval(dev_env):
    rec = Recorder()
    pb = playbook(
        """
name: doomed
steps:
  - id: prep
    action: t.ok
    compensate: {action: t.ok}
  - id: group
    parallel:
      - {id: risky, action: t.ok, impact: high}
      - {id: bad, action: t.fail, retry: {max_attempts: 1}}
"""
    )
    async with worker(dev_env.client, rec, policy(APPROVAL)) as w:
        run = run_input(pb, requested_by="cli:carl")
        status = await asyncio.wait_for((await start(dev_env.client, w, run)).result(), 20)
    assert status.state == "compensated"
    assert status.step("risky").state == "cancelled"
    assert "parallel group failed" in status.step("risky").error
    assert "risky" not in rec.sequence(), "nobody is asked to approve a doomed step, and it never runs"


@pytest.mark.parametrize("size, published", [(100, True), (70_000, False)])
async def test_the_approval_request_publishes_the_approver_input_when_it_is_small(dev_env, size, published):
    """engine-v8: the input a front door asks the approver rule on rides in the approval request;
    past DOC_BYTES_MAX it is left out (review, stop 43: args near the output budget, repeated there,
    could take the record past what Temporal carries and wedge the run at its approval request)."""
    from bot.engine.verdicts import DOC_FIELD

    rec = Recorder()
    async with worker(dev_env.client, rec, policy(APPROVAL)) as w:
        handle = await start(dev_env.client, w, run_input(playbook(PB), params={"svc": "a" * size}))
        await wait_for_state(handle, lambda s: s.state == "waiting_approval")
        await cancel(handle)
        await handle.result()
    (requested,) = [e for e in rec.audit if e.kind.value == "approval_requested"]
    assert (DOC_FIELD in requested.details) == published
    if published:
        doc = requested.details[DOC_FIELD]
        assert doc["step"]["with"] == {"target": "a" * size} and doc["approvals"] == [] and "user" not in doc
