"""The `approver` verdict a front door asks and seals to the vote it signs (bot/engine/verdicts.py).

A click's vote used to cost its workflow task a local activity (the worker asking the rule);
the front door now asks on the input the run published with its approval request, and the run
uses that answer without asking again. The attacks: whoever can reach Temporal sends a verdict
of their own, a front door is handed another input than the run's (a record planted in the
store), a verdict outlives its moment, a front door's key is not the worker's. Each is refused
before history or ignored (the worker asks the rule on its own input, as before).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from temporalio.api.history.v1 import History
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from bot.audit.events import EventKind, StoredEvent
from bot.engine.front_approver import FrontApprover
from bot.engine.lock_workflow import KeyLock
from bot.engine.runs import RunError, execution_of, vote
from bot.engine.sandbox import workflow_runner
from bot.engine.state import FrontVerdict, VoteRequest
from bot.engine.verdicts import DOC_FIELD, at_time, doc_digest, seal
from bot.engine.workflow import PlaybookRun
from bot.identity.proofs import Keyring, vote_content
from bot.policy.models import Verdict
from tests.security.test_raw_temporal import DATA, PLAYBOOKS, approve_as_bob, assert_nothing_approved, gated_run, refused_vote
from tests.security.trust_stack import (
    FRONT_DOOR,
    ROGUE_KEY,
    TrustStack,
    result,
    slack_actor,
    stack_fixture,
)
from tests.slack.support import BOB, CAROL, principal


stack = stack_fixture("verdicts", PLAYBOOKS, DATA)


def approver_asks(history: History) -> int:
    """The worker's own `policy.approver` questions in a run's history (local activities)."""
    asks = 0
    for e in history.events:
        marker = e.marker_recorded_event_attributes
        if e.HasField("marker_recorded_event_attributes") and marker.marker_name == "core_local_activity":
            data = json.loads(marker.details["data"].payloads[0].data)
            asks += data.get("activity_type") == "policy.approver"
    return asks


async def replays(history: History) -> bool:
    replayer = Replayer(workflows=[PlaybookRun, KeyLock], data_converter=pydantic_data_converter,
                        workflow_runner=workflow_runner())
    return (await replayer.replay_workflow(history, raise_on_replay_failure=False)).replay_failure is None


def published(stack: TrustStack, run_id: str) -> dict[str, Any]:
    """The approver input `risky`'s approval request published."""
    (requested,) = stack.events(run_id, EventKind.approval_requested.value)
    return requested.details[DOC_FIELD]


def votes_on_record(stack: TrustStack, run_id: str) -> list[tuple[str, bool, str | None]]:
    return [(e.actor, e.details["accepted"], e.details.get("approver_asked_by"))
            for e in stack.events(run_id, EventKind.approval_vote.value)]


@dataclass
class Planted:
    """A store whose approval request says what an attacker wrote there."""

    doc: dict[str, Any]

    def get_events(self, event_ids: list[str]) -> dict[str, StoredEvent]:
        return {event_id: StoredEvent(seq=1, event_id=event_id, ts=datetime.now(timezone.utc), run_id="x",
                                      step_id="risky", kind=EventKind.approval_requested, actor="system",
                                      details={DOC_FIELD: self.doc}, prev_hash="0" * 64, hash="0" * 64)
                for event_id in event_ids}


async def test_a_click_carries_the_front_doors_verdict_and_the_run_asks_nothing_more(stack: TrustStack) -> None:
    """Bob's Approve click through Slack: the front door asks the rule on the published input, and
    the run takes the deciding vote without a question of its own. Before engine-v8 the history
    held one `policy.approver` local activity per vote."""
    handle = await gated_run(stack)  # (no channel: the button as one posted now would read)
    assert (await stack.click(BOB, handle.id, "risky", f"{time.time():.6f}")).status_code == 200
    status = await result(handle)
    assert status.state == "completed", status
    (approval,) = status.step("risky").approvals
    assert (approval.user, approval.person, approval.verified, approval.groups) == (principal(BOB), "bob", True, ["sre"])
    history = await handle.fetch_history()
    assert approver_asks(history) == 0
    assert votes_on_record(stack, handle.id) == [(principal(BOB), True, "front door")]
    assert await replays(history)


async def test_a_front_doors_deny_is_the_runs_refusal(stack: TrustStack) -> None:
    """Carol (web, not sre) clicks: the front door's verdict says no, and the run refuses her with
    the rule's reason, on record, without asking again; bob then approves."""
    handle = await gated_run(stack)
    approver = FrontApprover(stack.audit, stack.policy, FRONT_DOOR)
    with pytest.raises(RunError) as refused:
        await vote(stack.client, handle.id, VoteRequest(step_id="risky", user=""), slack_actor(CAROL, "web"), FRONT_DOOR,
                   approver=approver)
    assert refused.value.rule == "approver" and "is not in an approver group (sre)" in str(refused.value)
    assert votes_on_record(stack, handle.id) == [(principal(CAROL), False, "front door")]
    assert approver_asks(await handle.fetch_history()) == 0
    await approve_as_bob(stack, handle)


async def test_a_verdict_asked_on_a_planted_input_is_not_used(stack: TrustStack) -> None:
    """Attack: the input the front door reads is planted (its store written to): the playbook's
    owner is `web`, so the rule allows carol there, and the front door seals that allow. The run's
    own input differs, so it asks the rule itself, and carol is refused."""
    handle = await gated_run(stack)
    doc = published(stack, handle.id)
    planted = FrontApprover(Planted({**doc, "playbook": {**doc["playbook"], "owner": "web"}}), stack.policy, FRONT_DOOR)
    carol = slack_actor(CAROL, "web")
    execution = await execution_of(stack.client, handle.id)
    proof = FRONT_DOOR.sign("vote", handle.id, carol, vote_content("risky", "approve", ""), execution=execution)
    verdict = await planted.ask(handle.id, execution, "risky", carol, proof)
    assert verdict is not None and verdict.allow, verdict  # the front door was fooled
    with pytest.raises(RunError) as refused:
        await vote(stack.client, handle.id, VoteRequest(step_id="risky", user=""), carol, FRONT_DOOR,
                   execution=execution, approver=planted)
    assert "is not in an approver group (sre)" in str(refused.value), refused.value
    assert votes_on_record(stack, handle.id) == [(principal(CAROL), False, None)]
    assert approver_asks(await handle.fetch_history()) == 1
    await assert_nothing_approved(stack, handle, refusals=1)
    await approve_as_bob(stack, handle)


async def test_a_verdict_from_another_moment_is_not_used(stack: TrustStack) -> None:
    """A genuine seal on the run's own input, but asked ten minutes ago (a held click, a front door
    whose clock is off): the run asks the rule itself."""
    handle = await gated_run(stack)
    bob = slack_actor(BOB, "sre")
    execution = await execution_of(stack.client, handle.id)
    proof = FRONT_DOOR.sign("vote", handle.id, bob, vote_content("risky", "approve", ""), execution=execution)
    assert proof is not None
    then = datetime.now(timezone.utc) - timedelta(minutes=10)
    asked = at_time(published(stack, handle.id), then)
    stale = seal(FRONT_DOOR, Verdict(allow=False, reasons=["stale no"], policy_hash=stack.policy.policy_hash), doc_digest(asked), then, handle.id, execution,
                 "risky", proof)
    request = VoteRequest(step_id="risky", user=principal(BOB), name=bob.name, groups=list(bob.groups), proof=proof,
                          verdict=stale)
    outcome = await handle.execute_update(PlaybookRun.vote, request)
    assert outcome.approvals == 1  # the worker's own answer, not the stale no
    assert (await result(handle)).state == "completed"
    assert votes_on_record(stack, handle.id) == [(principal(BOB), True, None)]
    history = await handle.fetch_history()
    assert approver_asks(history) == 1
    assert await replays(history)


def forged(verdict: FrontVerdict, **changes: Any) -> FrontVerdict:
    return verdict.model_copy(update=changes)


async def test_verdicts_nobody_sealed_for_this_vote_are_refused_before_history(stack: TrustStack) -> None:
    """Attack (anyone who can reach Temporal): a vote carrying an allow of their own, or a genuine
    verdict altered, or lifted onto another vote. Each is refused by the validator (rule
    `verdict`): nothing enters history or the trail; bob's own click then approves."""
    handle = await gated_run(stack)
    bob, carol = slack_actor(BOB, "sre"), slack_actor(CAROL, "web")
    execution = await execution_of(stack.client, handle.id)
    doc = doc_digest(at_time(published(stack, handle.id), datetime.now(timezone.utc)))
    now = datetime.now(timezone.utc)

    def proof_for(actor: Any, keyring: Keyring = FRONT_DOOR, vote_: str = "approve") -> Any:
        return keyring.sign("vote", handle.id, actor, vote_content("risky", vote_, ""), execution=execution)

    carol_proof = proof_for(carol)
    carol_no = seal(FRONT_DOOR, Verdict(allow=False, reasons=["no"]), doc, now, handle.id, execution, "risky", carol_proof)
    bob_reject = proof_for(bob, vote_="reject")
    bob_no = seal(FRONT_DOOR, Verdict(allow=True), doc, now, handle.id, execution, "risky", bob_reject)
    rogue = Keyring(ROGUE_KEY)
    rogue_proof = proof_for(carol, rogue)
    attacks = {
        "an allow with no seal, no proof": (carol, None, FrontVerdict(allow=True, at=now, doc=doc, seal=f"{'a' * 12}:{'0' * 64}")),
        "a deny turned to an allow": (carol, carol_proof, forged(carol_no, allow=True)),
        "its person changed": (carol, carol_proof, forged(carol_no, person="bob")),
        "lifted from bob's reject": (carol, carol_proof, bob_no),
        "sealed with a rogue key": (carol, rogue_proof, seal(rogue, Verdict(allow=True), doc, now, handle.id, execution,
                                                             "risky", rogue_proof)),
    }
    for case, (actor, proof, verdict) in attacks.items():
        said = await refused_vote(handle, VoteRequest(step_id="risky", user=actor.principal, groups=["sre"],
                                                      proof=proof, verdict=verdict))
        assert "verdict is not sealed to its proof" in said, (case, said)
    await assert_nothing_approved(stack, handle, refusals=0)
    assert approver_asks(await handle.fetch_history()) == 0
    await approve_as_bob(stack, handle)


async def test_a_front_door_whose_key_the_worker_lacks_votes_as_before(stack: TrustStack) -> None:
    """Misconfigured keys: the worker refuses the verdict (rule `verdict`), the front door sends
    the vote again without it, and the worker answers as it always did (the proof does not
    verify, so bob is unverified and refused, on record once)."""
    handle = await gated_run(stack)
    rogue = Keyring(ROGUE_KEY)
    with pytest.raises(RunError) as refused:
        await vote(stack.client, handle.id, VoteRequest(step_id="risky", user=""), slack_actor(BOB, "sre"), rogue,
                   approver=FrontApprover(stack.audit, stack.policy, rogue))
    assert refused.value.rule == "approver" and "proof does not verify" in str(refused.value), refused.value
    assert votes_on_record(stack, handle.id) == [(principal(BOB), False, None)]
    await approve_as_bob(stack, handle)
