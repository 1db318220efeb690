"""Rule answers a front door asked and sealed for the run to use (issue 17): a vote's `approver`
answer, and a start's `start` answer (see "A start's answer" below).

Asked in the workflow task that takes the vote, the question costs that task a local activity:
a second activation, a dispatch, the proof checked again. The front door already vouches for who
clicked (it signs the proof), so it may also ask the rule, on the input the run published with
its approval request (the `approval_requested` record's `approver_input`), and seal the answer
to that vote's proof. The run trusts the answer only where it can tell it is the answer it would
have got itself:

- the update validator (which never runs on replay) refuses a verdict whose seal or proof does
  not hold with a key of this worker, before the vote is history;
- the handler uses it only when its digest is that of the run's own input now (its `now` the
  verdict's, within VERDICT_SKEW of the workflow's clock); a stale or foreign input, a quorum's
  later vote (its `approvals` changed), or a run from before engine-v8 asks the worker as before.

A start's answer: the front door asks `start` before it starts a run, and the worker's admission
asked it again on its own input, in the run's first workflow task (a second trip to a policy
child that has often gone cold meanwhile). The front door now asks on the input the admission
builds (`start_doc`: the run's id, its time the front door's) and seals the answer to the start's
proof. The admission (a local activity: its answer is history, so nothing here replays) uses an
allow only when the proof holds, the seal holds with a key of this worker, the answer is this
worker's policy version, its time is within VERDICT_SKEW of Temporal's start, and its input is the
admission's own at that time; otherwise it asks, as before.

Workflow-safe: no I/O, no clock of its own.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Callable, Iterable

from bot.engine.state import FrontVerdict, TriggerContext
from bot.identity.principals import ALERT_SENDERS, Actor
from bot.identity.proofs import Keyring, Proof
from bot.playbook.model import Playbook
from bot.policy.inputs import policy_input, provenance, rfc3339
from bot.policy.models import ActorVerdict, Verdict, input_digest

SEAL_LABEL = "approver-verdict"
START_SEAL_LABEL = "start-verdict"
UNSEALED = f"{'0' * 12}:{'0' * 64}"  # (the seal's shape, while the fields it covers are checked)
VERDICT_SKEW = timedelta(seconds=60)  # the front door's clock against the workflow's
DOC_FIELD = "approver_input"  # where the approval_requested record carries the input
# A verdict's share of what carries it (a vote, VOTE_BYTES_MAX with the proof and reason; a run's
# input): a policy's long reasons make a larger one, which is not sealed (the worker asks instead).
VERDICT_BYTES_MAX = 8 * 1024
DOC_BYTES_MAX = 64 * 1024  # a larger input is not published, nor asked on by a front door: its worker asks


def doc_digest(doc: dict[str, Any]) -> str:
    """The sha256 of an approver input without its `user` (the proof says who)."""
    return input_digest({k: v for k, v in doc.items() if k != "user"})


def at_time(doc: dict[str, Any], at: datetime) -> dict[str, Any]:
    """The input as asked at `at`: the one field a front door sets itself."""
    return {**doc, "now": rfc3339(at)}


def _sealed(fields: dict[str, Any], run_id: str, execution: str, step_id: str, proof: Proof) -> dict[str, Any]:
    # Bound to the vote's proof (its MAC covers the voter, the vote, the execution and when it was issued).
    return {"verdict": fields, "run_id": run_id, "execution": execution, "step_id": step_id, "proof": proof.mac}


def _sealed_answer(keyring: Keyring, label: str, answer: Verdict, doc: str, at: datetime,
                   bound: Callable[[dict[str, Any]], dict[str, Any]]) -> FrontVerdict:
    """`answer` as a verdict, its seal over `label` and `bound(the verdict's other fields)`;
    ValueError when no verdict can hold it, or it would be past VERDICT_BYTES_MAX."""
    fields = {"allow": answer.allow, "reasons": list(answer.reasons), "person": answer.person, "at": at, "doc": doc,
              "policy_hash": answer.policy_hash, "decision_id": answer.decision_id, "engine": answer.engine}
    unsealed = FrontVerdict.model_validate({**fields, "seal": UNSEALED})
    content = bound(unsealed.model_dump(mode="json", exclude={"seal"}))
    return _bounded(unsealed.model_copy(update={"seal": keyring.seal(label, content)}))


def seal(keyring: Keyring, answer: Verdict, doc: str, at: datetime, run_id: str, execution: str, step_id: str,
         proof: Proof) -> FrontVerdict:
    """`answer` (the rule's, asked on the input whose digest is `doc`) sealed to `proof`."""
    return _sealed_answer(keyring, SEAL_LABEL, answer, doc, at,
                          lambda fields: _sealed(fields, run_id, execution, step_id, proof))


def seal_holds(verdict: FrontVerdict, run_id: str, execution: str | None, step_id: str, proof: Proof | None,
               keyrings: Iterable[Keyring]) -> bool:
    """Whether a keyring seals this verdict to `proof` for this run, execution and step."""
    if proof is None or execution is None:
        return False
    content = _sealed(verdict.model_dump(mode="json", exclude={"seal"}), run_id, execution, step_id, proof)
    return any(k.seal_holds(SEAL_LABEL, content, verdict.seal) for k in keyrings)


def fits(verdict: FrontVerdict, doc: dict[str, Any], now: datetime) -> bool:
    """Whether the verdict was asked on `doc` (the run's own approver input) at a time the
    workflow's clock agrees with."""
    return abs(now - verdict.at) <= VERDICT_SKEW and doc_digest(at_time(doc, verdict.at)) == verdict.doc


def actor_verdict(verdict: FrontVerdict, proof: Proof) -> ActorVerdict:
    """The verdict as the run records a vote's check: the user is the proof's."""
    return ActorVerdict(allow=verdict.allow, reasons=list(verdict.reasons), person=verdict.person,
                        policy_hash=verdict.policy_hash, decision_id=verdict.decision_id, engine=verdict.engine,
                        user=proof.actor().policy_user())


# ---- a start's answer ------------------------------------------------------------------------


def start_sources(playbook: Playbook, params: dict[str, Any], trigger: TriggerContext, actor: Actor) -> dict[str, Any]:
    """`input.provenance` of a start: an alert's facts count as the alert's only when its sender
    verified the actor (a schedule's are pinned by its proof: the admission says so itself)."""
    verified = trigger.kind in ALERT_SENDERS and actor.verified_by == trigger.kind
    return provenance(playbook, params, trigger.kind, trigger.alert, alert_verified=verified)


def start_doc(playbook: Playbook, playbook_hash: str, run_id: str, trigger: TriggerContext, params: dict[str, Any],
              actor: Actor, sources: dict[str, Any], at: datetime) -> dict[str, Any]:
    """The `start` rule's input for run `run_id` as of `at` (DESIGN.md's contract: `run` with its id
    and start time), as the admission asks it and a front door asks it for the admission."""
    run = {"id": run_id, "trigger": trigger.kind, "requested_by": trigger.requested_by, "started_at": rfc3339(at)}
    return policy_input(playbook, playbook_hash, run, params, trigger.alert, at, user=actor.policy_user(),
                        sources=sources)


def _start_sealed(fields: dict[str, Any], run_id: str, proof: Proof) -> dict[str, Any]:
    # Bound to the start's proof (its MAC covers the requester, the run id, the playbook version,
    # the params, the trigger and when it was issued).
    return {"verdict": fields, "run_id": run_id, "proof": proof.mac}


def seal_start(keyring: Keyring, answer: Verdict, doc: str, at: datetime, run_id: str, proof: Proof) -> FrontVerdict:
    """`answer` (the `start` rule's, asked on the input whose digest is `doc`: the whole input, as
    the engine records it, `input_digest`) sealed to `proof`."""
    return _sealed_answer(keyring, START_SEAL_LABEL, answer, doc, at,
                          lambda fields: _start_sealed(fields, run_id, proof))


def _bounded(verdict: FrontVerdict) -> FrontVerdict:
    if (size := len(verdict.model_dump_json())) > VERDICT_BYTES_MAX:
        raise ValueError(f"a verdict of {size} bytes; at most {VERDICT_BYTES_MAX} are sealed")
    return verdict


def start_seal_holds(verdict: FrontVerdict, run_id: str, proof: Proof, keyring: Keyring) -> bool:
    """Whether this keyring seals the start verdict to `proof` for run `run_id`."""
    content = _start_sealed(verdict.model_dump(mode="json", exclude={"seal"}), run_id, proof)
    return keyring.seal_holds(START_SEAL_LABEL, content, verdict.seal)
