"""Attacks from anyone who can reach Temporal, with no front door in between (issue 11, item 3).

The attacker holds a Temporal client (`dev_env.client`) and no envelope key; the worker is the
real one (`worker_deps`: its `run.admit`, its catalog loaded from a playbooks dir, the shipped
Rego policy). Every attack asserts that nothing was done, counted where it would land (the HTTP
sink the playbooks call), and that the run's status and audit trail say what refused it. The
positive controls show the same stack does act when asked properly.

Against `main` (no proofs, no admission), each start attack ran its steps, each invented vote
counted, and Temporal's own cancel rolled the run back: said per test as "On main: ...".
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
import pytest_asyncio
import yaml
from temporalio import workflow
from temporalio.client import WorkflowFailureError, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from bot.engine.runs import RunError, cancel_run, execution_of, run_input, start_run, vote
from bot.engine.state import (
    CancelRequest,
    RunInput,
    RunStatus,
    TriggerContext,
    VoteRequest,
)
from bot.engine.workflow import PlaybookRun
from bot.identity.proofs import Keyring, cancel_content, vote_content
from bot.playbook.model import Playbook
from tests.security.trust_stack import (
    FRONT_DOOR,
    REMEDIATE,
    ROGUE_KEY,
    TrustStack,
    cli_actor,
    raw_input,
    result,
    slack_actor,
    slack_run,
    state_of,
    trust_stack,
    until,
)
from tests.slack.support import ALICE, BOB, CHANNEL, MALLORY, principal, returns
from tests.waiting import eventually

PLAYBOOKS = {
    "touch": """
name: touch
summary: One low-impact call
owner: sre
vars: {sink: "{sink}"}
params:
  service: {type: string, pattern: "^[a-z0-9-]+$", default: web}
  mode: {type: string, enum: [soft, hard], default: soft}
steps:
  - id: poke
    action: http.request
    with: {method: POST, url: "{{ vars.sink }}/{{ run.id }}/poke/{{ params.service }}/{{ params.mode }}"}
""",
    "remediate": REMEDIATE,
    "gated": """
name: gated
summary: Prepare, then a high-impact call behind an approval
owner: sre
vars: {sink: "{sink}"}
steps:
  - id: prep
    action: http.request
    with: {method: POST, url: "{{ vars.sink }}/{{ run.id }}/prep"}
  - id: risky
    action: http.request
    impact: high
    with: {method: POST, url: "{{ vars.sink }}/{{ run.id }}/risky"}
""",
}

PLAYBOOKS["restricted"] = PLAYBOOKS["touch"].replace("name: touch", "name: restricted")
# Only members of sre may start `restricted` (data.playbook.groups puts bob and dave in it by person).
DATA = {"start_restrictions": {"restricted": ["sre"]}}

# Not in the worker's catalog: the attacker's own playbook, every step "low impact".
PRIVATE = """
name: private
summary: Not deployed anywhere
owner: mallory
vars: {sink: "{sink}"}
steps:
  - id: exfiltrate
    action: http.request
    impact: low
    with: {method: POST, url: "{{ vars.sink }}/{{ run.id }}/exfiltrate"}
"""


@pytest_asyncio.fixture(scope="module")
async def stack(dev_env: Any, _slack_server: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TrustStack]:
    async with trust_stack(dev_env.client, _slack_server, tmp_path_factory.mktemp("raw"), PLAYBOOKS, DATA) as s:
        yield s


def snapshot(text: str, sink: str) -> Playbook:
    return Playbook.model_validate(yaml.safe_load(text.replace("{sink}", sink)))


async def assert_refused(stack: TrustStack, handle: WorkflowHandle[Any, Any], check: str, says: str) -> RunStatus:
    """The run ended `cancelled` before its first step, naming the check, on the record; nothing ran."""
    status = await result(handle)
    assert status.state == "cancelled", status
    assert status.error and status.error.startswith(f"refused by the worker's {check} check:"), status.error
    assert says in status.error, status.error
    assert all(st.state == "pending" for st in status.steps), status.steps
    assert stack.sink.of(handle.id) == [], "a refused run called the sink"
    finished = stack.events(handle.id, "run_finished")
    assert [e.details.get("refused_by") for e in finished] == [check], finished
    kinds = {e.kind.value for e in stack.events(handle.id)}
    assert not kinds & {"run_started", "step_started", "step_succeeded", "policy_decision"}, kinds
    return status


def alice_start(stack: TrustStack, name: str, params: dict[str, Any], run_id: str) -> RunInput:
    """The run input the Slack front door would send for alice, proof included."""
    trigger = TriggerContext(kind="slack", requested_by=principal(ALICE))
    return run_input(stack.loaded(name), params, trigger, slack_actor(ALICE, "sre"), FRONT_DOOR, run_id)


# ---- 1a, 1b: playbooks the worker does not hold ------------------------------------------------


async def test_a_private_playbook_is_refused_and_runs_nothing(stack: TrustStack) -> None:
    """A playbook that is in no catalog, every step marked low impact, started straight on Temporal.
    On main: it ran (the sink was called); nothing checked what the snapshot was."""
    pb = snapshot(PRIVATE, stack.sink.url)
    run = RunInput(playbook=pb, playbook_hash=pb.content_hash(), trigger=TriggerContext(requested_by="cli:mallory"))
    handle = await stack.start_raw(run)
    await assert_refused(stack, handle, "catalog", "'private' is not in this worker's catalog")


async def test_a_known_name_with_other_steps_is_refused_whatever_hash_it_claims(stack: TrustStack) -> None:
    """`touch` with its step pointed elsewhere: sent with the catalog's hash, and with the hash of
    the altered snapshot itself. On main: both ran the altered step."""
    loaded = stack.loaded("touch")
    altered = loaded.playbook.model_copy(deep=True)
    altered.steps[0].with_["url"] = "{{ vars.sink }}/{{ run.id }}/altered"  # type: ignore[union-attr]
    altered = Playbook.model_validate(altered.model_dump(mode="json", by_alias=True))
    assert altered.content_hash() != loaded.hash

    claims_catalog = RunInput(playbook=altered, playbook_hash=loaded.hash, trigger=TriggerContext(requested_by="cli:mallory"))
    handle = await stack.start_raw(claims_catalog)
    await assert_refused(stack, handle, "catalog", f"does not hash to the {loaded.hash} it claims")

    consistent = claims_catalog.model_copy(update={"playbook_hash": altered.content_hash()})
    handle = await stack.start_raw(consistent)
    await assert_refused(stack, handle, "catalog", "is not the version in this worker's catalog")


# ---- 1c: params the playbook does not allow ----------------------------------------------------


@pytest.mark.parametrize(
    "params, says",
    [
        ({"service": "web/../../admin"}, "service"),  # fails the pattern
        ({"mode": "nuke"}, "mode"),  # not in the enum
        ({"target": "db-primary"}, "target"),  # not a param of the playbook
    ],
    ids=["pattern", "enum", "unknown"],
)
async def test_params_that_fail_the_playbooks_checks_are_refused(stack: TrustStack, params: dict[str, Any], says: str) -> None:
    """The front door checks params; a raw client skips it. On main: the run started and rendered
    the bad value into the URL it called."""
    handle = await stack.start_raw(raw_input(stack.loaded("touch"), params))
    await assert_refused(stack, handle, "params", says)


# ---- 1d: start proofs ----------------------------------------------------------------------------


async def test_forged_start_proofs_are_refused(stack: TrustStack) -> None:
    """A proof with a random MAC, one signed by a key the worker does not hold, a genuine one for
    another run id, one for other params, one for another requester. On main there were no
    proofs: a raw start claiming `U0ALICE` ran as her."""
    touch = stack.loaded("touch")
    trigger = TriggerContext(kind="slack", requested_by=principal(ALICE))

    def genuine(run_id: str) -> RunInput:
        return alice_start(stack, "touch", {"service": "web"}, run_id)

    def random_mac(run_id: str) -> RunInput:
        run = genuine(run_id)
        assert run.proof is not None
        return run.model_copy(update={"proof": run.proof.model_copy(update={"mac": secrets.token_hex(32)})})

    attacks = {
        "random-mac": (random_mac, "its signature does not match"),
        "rogue-key": (lambda rid: run_input(touch, {"service": "web"}, trigger, slack_actor(ALICE, "sre"),
                                            Keyring(ROGUE_KEY), rid), "signed with an envelope key this worker does not hold"),
        "another-run": (lambda rid: genuine("another-run-id"), "it was issued for run 'another-run-id'"),
        "other-params": (lambda rid: genuine(rid).model_copy(update={"params": {"service": "db", "mode": "hard"}}),
                         "it was issued for a different start"),
        "other-requester": (lambda rid: genuine(rid).model_copy(
            update={"trigger": TriggerContext(kind="slack", requested_by=principal(BOB))}),
            "it was issued for a different start"),
    }
    for case, (make, says) in attacks.items():
        run_id = f"forged-{case}-{uuid.uuid4().hex[:8]}"
        handle = await stack.start_raw(make(run_id), run_id=run_id)
        status = await assert_refused(stack, handle, "proof", says)
        assert status.requester and not status.requester.verified, case


async def test_a_genuine_proof_is_admitted_and_a_missing_one_leaves_the_requester_unverified(stack: TrustStack) -> None:
    """Positive control: the same stack runs a properly signed start (requester verified by Slack),
    and a start without any proof runs as an unverified requester (the policy decides about those)."""
    run_id = f"genuine-{uuid.uuid4().hex[:8]}"
    status = await result(await stack.start_raw(alice_start(stack, "touch", {"service": "api"}, run_id), run_id=run_id))
    assert status.state == "completed", status
    assert status.requester and status.requester.verified and status.requester.verified_by == "slack"
    assert status.requester.person == "alice"
    assert stack.sink.of(run_id) == [f"/{run_id}/poke/api/soft"]

    handle = await stack.start_raw(raw_input(stack.loaded("touch"), {}, requested_by=principal(ALICE)))
    status = await result(handle)
    assert status.state == "completed"
    assert status.requester and not status.requester.verified and status.requester.verified_by is None
    started = stack.events(handle.id, "run_started")
    assert started and started[0].details["requester"]["verified"] is False


async def test_a_restricted_playbook_cannot_be_started_by_claiming_a_members_name(stack: TrustStack) -> None:
    """`restricted` may only be started by sre; bob is in sre by data.playbook.groups. A raw client
    claiming to be bob (as `cli:bob` or `slack:U0BOB`, no proof) is not bob. Positive controls:
    bob through the dev CLI (verified) starts it; carol, verified but not in sre, may not.
    On trust before the fix: the worker's start check counted the claimed name and it ran.
    On main: only front doors asked the start rule; a raw start ran, even one claiming carol."""
    for claimed in ("cli:bob", principal(BOB)):
        handle = await stack.start_raw(raw_input(stack.loaded("restricted"), {}, requested_by=claimed))
        await assert_refused(stack, handle, "start", "restricted may only be started by members of sre")

    actor, keyring = cli_actor("bob")
    trigger = TriggerContext(kind="cli", requested_by=actor.principal)
    handle = await start_run(stack.client, stack.task_queue, stack.loaded("restricted"), {"service": "web", "mode": "soft"},
                             trigger, actor=actor, keyring=keyring)
    assert (await result(handle)).state == "completed"
    assert stack.sink.of(handle.id) == [f"/{handle.id}/poke/web/soft"]

    carol = slack_actor("U0CAROL", "web")
    trigger = TriggerContext(kind="slack", requested_by=carol.principal)
    run_id = f"carol-{uuid.uuid4().hex[:8]}"
    run = run_input(stack.loaded("restricted"), {"service": "web", "mode": "soft"}, trigger, carol, FRONT_DOOR, run_id)
    await assert_refused(stack, await stack.start_raw(run, run_id=run_id), "start", "only be started by members of sre")


async def test_a_raw_start_is_not_shown_in_slack_as_someone_elses_request(stack: TrustStack) -> None:
    """A raw client starts a run claiming alice asked from Slack, naming the incident channel: the
    bot's status message must not say alice asked (nor ping her); it names the claim as unverified.
    Positive control: alice's own Slack-started run is shown as hers, with the mention.
    On trust before the fix: "requested by @alice via slack", a live mention; main's code draws the
    same (not run there)."""
    run = raw_input(stack.loaded("touch"), {}, requested_by=principal(ALICE), kind="slack")
    run.trigger.slack = {"channel": CHANNEL, "user": ALICE}
    handle = await stack.start_raw(run)
    assert (await result(handle)).state == "completed"
    shown = await eventually(lambda: returns(_status_context(stack, handle.id)), what="the run shown in Slack")
    assert "<@U0ALICE>" not in shown, shown
    assert "requested by `slack:U0ALICE` (unverified)" in shown, shown

    run_id = await slack_run(stack, "touch", ALICE)
    shown = await eventually(lambda: returns(_status_context(stack, run_id)), what="alice's run shown in Slack")
    assert "requested by <@U0ALICE> via slack" in shown, shown


def _status_context(stack: TrustStack, run_id: str) -> str:
    """The who/what line of the run's status message, as last drawn."""
    for message in stack.fake.messages:
        blocks = message.blocks or []
        if message.thread_ts is None and any(run_id in json.dumps(b) for b in blocks):
            return json.dumps([b for b in blocks if b.get("type") == "context"])
    return ""


# ---- 1e, 1f: votes ---------------------------------------------------------------------------------


async def gated_run(stack: TrustStack) -> WorkflowHandle[Any, Any]:
    """A `gated` run alice started through the front door, waiting for approval of `risky`."""
    trigger = TriggerContext(kind="slack", requested_by=principal(ALICE))
    handle = await start_run(stack.client, stack.task_queue, stack.loaded("gated"), {}, trigger,
                             actor=slack_actor(ALICE, "sre"), keyring=FRONT_DOOR)
    await until(handle, lambda s: s.step("risky").state == "waiting_approval", "risky waiting for approval")
    return handle


async def refused_vote(handle: WorkflowHandle[Any, Any], request: VoteRequest) -> str:
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update(PlaybookRun.vote, request)
    return str(getattr(refused.value.cause, "message", refused.value.cause))


async def assert_nothing_approved(stack: TrustStack, handle: WorkflowHandle[Any, Any], refusals: int) -> None:
    status = await state_of(handle)
    assert status.step("risky").state == "waiting_approval" and status.step("risky").approvals == []
    assert stack.sink.of(handle.id) == [f"/{handle.id}/prep"], "the high-impact step ran"

    votes = [e for e in stack.events(handle.id, "approval_vote")]
    assert [e.details["accepted"] for e in votes] == [False] * refusals, votes  # each refusal flushed before it answered


async def approve_as_bob(stack: TrustStack, handle: WorkflowHandle[Any, Any]) -> RunStatus:
    """Positive control: bob, through the Slack front door (signed proof, his Slack groups)."""
    outcome = await vote(stack.client, handle.id, VoteRequest(step_id="risky", user=""), slack_actor(BOB, "sre"), FRONT_DOOR)
    assert outcome.approvals == 1
    status = await result(handle)
    assert status.state == "completed", status
    assert stack.sink.of(handle.id) == [f"/{handle.id}/prep", f"/{handle.id}/risky"]
    (approval,) = status.step("risky").approvals
    assert (approval.user, approval.person, approval.verified, approval.groups) == (principal(BOB), "bob", True, ["sre"])
    return status


async def test_votes_with_invented_groups_and_no_proof_are_refused(stack: TrustStack) -> None:
    """Raw updates naming an approver and the approver group, without proof: groups are dropped and
    the voter is unverified, which the shipped policy refuses in production; a verified voter's own
    claimed groups count for nothing either (only its proof's). On main: the first vote approved
    the step (groups were taken from the request) and the high-impact call ran."""
    handle = await gated_run(stack)
    said = await refused_vote(handle, VoteRequest(step_id="risky", user=principal(BOB), name="bob", groups=["sre"]))
    assert "slack:U0BOB is unverified" in said and "only a verified principal may approve" in said, said
    # cli:bob is in sre by data.playbook.groups, but nothing vouches that this is bob.
    said = await refused_vote(handle, VoteRequest(step_id="risky", user="cli:bob", groups=["sre"]))
    assert "cli:bob is unverified" in said, said
    # Carol is verified (a genuine proof, her Slack groups: web); the sre she claims is ignored.
    proof = FRONT_DOOR.sign("vote", handle.id, slack_actor("U0CAROL", "web"), vote_content("risky", "approve", ""),
                            execution=await execution_of(stack.client, handle.id))
    said = await refused_vote(handle, VoteRequest(step_id="risky", user="slack:U0CAROL", groups=["sre"], proof=proof))
    assert "is not in an approver group (sre)" in said, said
    await assert_nothing_approved(stack, handle, refusals=3)
    await approve_as_bob(stack, handle)


async def test_votes_with_foreign_or_replayed_proofs_are_refused(stack: TrustStack) -> None:
    """Bob's vote signed with a key no front door holds, and genuine proofs lifted from elsewhere
    (another run's history, another step, a cancel, another voter's, another execution of this run
    id, or bound to no execution as front doors signed before execution binding). On main there were no
    proofs: a raw update naming bob with groups [sre] approved."""
    handle = await gated_run(stack)
    bob = slack_actor(BOB, "sre")
    approve = vote_content("risky", "approve", "")
    execution = await execution_of(stack.client, handle.id)  # each proof is for this execution but for one thing

    def signed(keyring: Keyring, purpose: Any, run_id: str, content: Any) -> Any:
        return keyring.sign(purpose, run_id, bob, content, execution=execution)

    attacks = {
        "rogue key": (signed(Keyring(ROGUE_KEY), "vote", handle.id, approve), principal(BOB),
                      "signed with an envelope key this worker does not hold"),
        "another run": (signed(FRONT_DOOR, "vote", "gated-run-bob-approved-yesterday", approve), principal(BOB),
                        "it was issued for run 'gated-run-bob-approved-yesterday'"),
        "another step": (signed(FRONT_DOOR, "vote", handle.id, vote_content("prep", "approve", "")), principal(BOB),
                         "it was issued for a different vote"),
        "a reject": (signed(FRONT_DOOR, "vote", handle.id, vote_content("risky", "reject", "no")), principal(BOB),
                     "it was issued for a different vote"),
        "a cancel": (signed(FRONT_DOOR, "cancel", handle.id, cancel_content("")), principal(BOB),
                     "it proves a cancel, not a vote"),
        "another voter": (signed(FRONT_DOOR, "vote", handle.id, approve), "slack:U0DAVE",
                          "it names slack:U0BOB, not slack:U0DAVE"),
        "another execution": (FRONT_DOOR.sign("vote", handle.id, bob, approve, execution=str(uuid.uuid4())),
                              principal(BOB), "it was issued for another execution of run"),
        "no execution": (FRONT_DOOR.sign("vote", handle.id, bob, approve), principal(BOB),
                         "it is bound to no execution of run"),
    }
    for case, (proof, user, says) in attacks.items():
        said = await refused_vote(handle, VoteRequest(step_id="risky", user=user, groups=["sre"], proof=proof))
        assert says in said, (case, said)
    await assert_nothing_approved(stack, handle, refusals=len(attacks))
    await approve_as_bob(stack, handle)


async def test_a_principal_with_a_nul_neither_enters_history_nor_stalls_the_run(stack: TrustStack) -> None:
    """Attack (red team): a raw vote and a raw cancel whose principal holds a NUL. Its refusal's
    audit event could not be stored (the store refuses NUL ids, and PostgreSQL always did), which
    read as an outage: the run's high-impact step then waited for ever for its record, even after
    bob's genuine approval, and the run never ended. Both are refused before history now, and an
    id that still holds one is recorded as a store can hold it."""
    handle = await gated_run(stack)
    said = await refused_vote(handle, VoteRequest(step_id="risky", user="cli:eve\x00x", groups=["sre"]))
    assert "is a principal" in said, said
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update(PlaybookRun.cancel, CancelRequest(user="cli:eve\x00x", reason="stop"))
    assert "is a principal" in str(getattr(refused.value.cause, "message", refused.value.cause))
    await approve_as_bob(stack, handle)
    # A raw start claiming such a requester: refused by admission, on record, and the run ends.
    raw = await stack.start_raw(raw_input(stack.loaded("gated"), {}, requested_by="cli:mallory\x00"))
    status = await result(raw)
    assert status.state == "cancelled" and status.audit_pending == 0, status
    assert stack.sink.of(raw.id) == []


@pytest.mark.parametrize("user", ["system", "<!channel> please approve", "bob"])
async def test_a_raw_vote_or_cancel_by_a_non_principal_is_refused_before_history(stack: TrustStack, user: str) -> None:
    """Attack (red team): a raw vote and a raw cancel whose `user` is no principal at all. The
    policy refused them as unverified, but their refusals were on record under that text: `system`
    (the engine's own actor), a Slack mention, or a bare `bob` that `_person` reads as the person
    bob. Refused by the validator now (rule `principal`): nothing enters history or the trail."""
    handle = await gated_run(stack)
    with pytest.raises(WorkflowUpdateFailedError) as voted:
        await handle.execute_update(PlaybookRun.vote, VoteRequest(step_id="risky", user=user, groups=["sre"]))
    with pytest.raises(WorkflowUpdateFailedError) as cancelled:
        await handle.execute_update(PlaybookRun.cancel, CancelRequest(user=user, reason="stop"))
    for refused in (voted, cancelled):
        assert refused.value.cause.details[0]["rule"] == "principal", refused.value.cause
    await approve_as_bob(stack, handle)
    on_record = [(e.kind.value, e.actor) for e in stack.events(handle.id)
                 if e.kind.value in ("approval_vote", "cancel_requested")]
    assert on_record == [("approval_vote", principal(BOB))], on_record


async def test_an_unverified_requester_cannot_have_her_own_run_approved(stack: TrustStack) -> None:
    """Mallory (in sre) starts `gated` straight on Temporal claiming bob asked, then approves it
    herself through Slack: four-eyes compared her with "bob". A production high-impact step of a
    run whose requester nobody vouched for cannot be approved by anyone, so it is denied.
    On trust before the fix: her vote was accepted and the high-impact call was made.
    On main: the same (a raw vote as `U0MALLORY` with groups [sre] approved it)."""
    handle = await stack.start_raw(raw_input(stack.loaded("gated"), {}, requested_by=principal(BOB)))
    status = await until(handle, lambda s: s.step("risky").state != "pending", "risky decided")
    if status.step("risky").state == "waiting_approval":
        with pytest.raises(RunError):  # the hole: before the fix this vote was accepted
            await vote(stack.client, handle.id, VoteRequest(step_id="risky", user=""), slack_actor(MALLORY, "sre"),
                       FRONT_DOOR)
    status = await result(handle)
    assert status.step("risky").state == "denied", status.step("risky")
    assert "requester slack:U0BOB is unverified" in (status.step("risky").error or ""), status.step("risky").error
    assert stack.sink.of(handle.id) == [f"/{handle.id}/prep"], "the high-impact step ran"


# ---- 1g: cancels ---------------------------------------------------------------------------------


async def test_temporals_own_cancel_is_refused_and_undoes_nothing(stack: TrustStack) -> None:
    """`handle.cancel()` names no one: the run goes on, nothing is rolled back, the refusal is on the
    record at once. A cancel update without proof, even naming the requester, is refused by the
    shipped policy in production; one with her proof lifted from another run, by the worker.
    Positive control: a verified owner-group member's cancel rolls back.
    On trust before the fix: the refusal stayed queued until the run's next activity (none during
    a ten-minute sleep or an approval wait), so the audit trail did not show it.
    On main: Temporal's cancel stopped the run and the undo call was made."""
    trigger = TriggerContext(kind="slack", requested_by=principal(ALICE))
    handle = await start_run(stack.client, stack.task_queue, stack.loaded("remediate"), {}, trigger,
                             actor=slack_actor(ALICE, "sre"), keyring=FRONT_DOOR)
    await until(handle, lambda s: s.step("hold").state == "running", "hold running")

    await handle.cancel()
    refused = await eventually(lambda: returns(stack.events(handle.id, "cancel_requested")),
                               what="the refused Temporal cancel audited")
    assert [(e.actor, e.details["accepted"], e.details["by"]) for e in refused] == [("temporal", False, None)]
    with pytest.raises(WorkflowUpdateFailedError) as unverified:
        await handle.execute_update(PlaybookRun.cancel, CancelRequest(user=principal(ALICE), reason="mine"))
    assert "slack:U0ALICE is unverified" in str(unverified.value.cause), unverified.value.cause
    lifted = FRONT_DOOR.sign("cancel", "alices-other-run", slack_actor(ALICE, "sre"), cancel_content(""))
    with pytest.raises(WorkflowUpdateFailedError) as replayed:
        await handle.execute_update(PlaybookRun.cancel, CancelRequest(user=principal(ALICE), proof=lifted))
    assert "it was issued for run 'alices-other-run'" in str(replayed.value.cause), replayed.value.cause

    status = await state_of(handle)
    assert status.state == "running" and status.step("hold").state == "running", status
    assert status.cancelled_by is None
    assert stack.sink.of(handle.id) == [f"/{handle.id}/poke"], "something was undone"
    decided = [(e.details["accepted"], e.details["by"]) for e in stack.events(handle.id, "cancel_requested")]
    assert sorted(decided, key=str) == sorted([(False, None)] + [(False, principal(ALICE))] * 2, key=str), decided

    actor, keyring = cli_actor("bob")  # in sre (the owner group) by data.playbook.groups
    await cancel_run(stack.client, handle.id, actor, keyring, reason="positive control")
    status = await result(handle)
    assert status.state == "compensated" and status.cancelled_by == "cli:bob", status
    assert stack.sink.of(handle.id) == [f"/{handle.id}/poke", f"/{handle.id}/undo-poke"]


# ---- a run id used twice ---------------------------------------------------------------------------


async def test_a_finished_runs_id_and_input_cannot_run_again(stack: TrustStack) -> None:
    """Anyone who can read Temporal can take a finished run's input (proof included) from its
    history and start it again under the same workflow id, which Temporal allows once the first
    execution closed: the proof (bound to that run id, minutes old) verified, the steps ran again
    as alice, and the audit trail, keyed by run id, swallowed every event of the second execution.
    On trust before the fix: exactly that (two calls at the sink).
    On main: the same without any proof (the second run, as anyone, left no audit event)."""
    run_id = f"once-{uuid.uuid4().hex[:8]}"
    first = await stack.start_raw(alice_start(stack, "touch", {"service": "api"}, run_id), run_id=run_id)
    assert (await result(first)).state == "completed"
    history = await first.fetch_history()
    attrs = history.events[0].workflow_execution_started_event_attributes
    (taken,) = await stack.client.data_converter.decode(attrs.input.payloads, [RunInput])
    assert taken.proof is not None

    again = await stack.start_raw(taken, run_id=run_id)
    status = await result(again)
    assert stack.sink.of(run_id) == [f"/{run_id}/poke/api/soft"], "the run's steps ran twice"
    assert status.state == "cancelled" and status.error and "refused by the worker's run id check" in status.error, status
    refused = [e for e in stack.events(run_id, "run_finished") if e.details.get("refused_by")]
    assert [e.details["refused_by"] for e in refused] == ["run id"], refused


async def _poke(args: list[Any]) -> Any:
    """One `http.request` on the bot's queue, params of Mallory's choosing."""
    url, queue, run_id = args
    return await workflow.execute_activity(
        "http.request",
        {"run_id": run_id, "step_id": "poke", "playbook": "restricted", "action": "http.request",
         "params": {"method": "POST", "url": url}, "idempotency_key": f"{run_id}:poke"},
        task_queue=queue, start_to_close_timeout=timedelta(seconds=10), retry_policy=RetryPolicy(maximum_attempts=1))


@workflow.defn(name="Direct")
class Direct:
    """Mallory's workflow, under a type of her own."""

    @workflow.run
    async def run(self, args: list[Any]) -> Any:
        return await _poke(args)


@workflow.defn(name="PlaybookRun")
class Posing:
    """Mallory's workflow under the bot's type name, on her own queue."""

    @workflow.run
    async def run(self, args: list[Any]) -> Any:
        return await _poke(args)


@pytest.mark.parametrize("mallorys", [Direct, Posing], ids=["own type", "posing as PlaybookRun"])
async def test_a_workflow_of_an_attackers_own_worker_cannot_run_the_bots_actions(stack: TrustStack, mallorys) -> None:
    """Skip the run and call the bot's activities straight from a workflow of one's own: anyone who
    can reach the namespace can run a worker, and admission, the policy gate and approvals live in
    the PlaybookRun workflow, which this path never enters (docs/security.md, "What access to
    Temporal grants"). Before the fix: one POST at the sink, as no one. Now the activity asks
    Temporal which workflow scheduled it and refuses one that is not the bot's type on its queue."""
    queue, run_id = f"mallory-{uuid.uuid4()}", f"direct-{uuid.uuid4().hex[:8]}"
    name = mallorys.__temporal_workflow_definition.name
    async with Worker(stack.client, task_queue=queue, workflows=[mallorys], workflow_runner=UnsandboxedWorkflowRunner()):
        with pytest.raises(WorkflowFailureError) as failed:
            await stack.client.execute_workflow(name, [f"{stack.sink.url}/{run_id}/poke", stack.task_queue, run_id],
                                                id=f"mallory-{uuid.uuid4().hex[:8]}", task_queue=queue)
    cause = failed.value.cause.cause
    assert isinstance(cause, ApplicationError) and cause.type == "CallerRefused", cause
    assert "is not one of the bot's" in cause.message
    assert stack.sink.of(run_id) == [], "mallory's workflow ran the bot's http.request"
