"""The front door's sealed `approver` verdict (bot/engine/verdicts.py): what its seal binds, and
when a run takes it as its own answer."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from bot.engine.verdicts import VERDICT_SKEW, actor_verdict, at_time, doc_digest, fits, seal, seal_holds
from bot.identity.principals import Actor
from bot.identity.proofs import Keyring, vote_content
from bot.policy.models import Verdict

KEY = Keyring(b"k" * 32)
OTHER = Keyring(b"o" * 32)
BOB = Actor("slack:U0BOB", "bob", ("sre",), "slack")
NOW = datetime(2026, 12, 6, 3, 0, tzinfo=timezone.utc)
DOC: dict[str, Any] = {
    "playbook": {"name": "gated", "owner": "sre", "hash": "h"}, "run": {"id": "r1"}, "params": {"svc": "api"},
    "alert": None, "approvals": [], "now": "2026-12-06T02:59:00Z", "provenance": {},
    "step": {"id": "risky", "action": "http.request", "impact": "high", "with": {}},
}


def proof(actor: Actor = BOB, vote: str = "approve", keyring: Keyring = KEY, run_id: str = "r1", execution: str = "e1") -> Any:
    return keyring.sign("vote", run_id, actor, vote_content("risky", vote, ""), now=NOW, execution=execution)


def sealed(answer: Verdict | None = None, doc: dict[str, Any] = DOC, at: datetime = NOW, keyring: Keyring = KEY,
           the_proof: Any = None) -> Any:
    return seal(keyring, answer or Verdict(allow=True, person="bob", policy_hash="p", decision_id="d"),
                doc_digest(at_time(doc, at)), at, "r1", "e1", "risky", the_proof or proof(keyring=keyring))


def test_a_seal_holds_for_its_vote_only() -> None:
    p = proof()
    verdict = sealed(the_proof=p)
    assert seal_holds(verdict, "r1", "e1", "risky", p, [KEY])
    assert seal_holds(verdict, "r1", "e1", "risky", p, [OTHER, KEY])  # any key held (rotation)
    assert not seal_holds(verdict, "r1", "e1", "risky", p, [OTHER])
    assert not seal_holds(verdict, "r1", "e1", "risky", p, [])
    assert not seal_holds(verdict, "r2", "e1", "risky", p, [KEY]), "another run"
    assert not seal_holds(verdict, "r1", "e2", "risky", p, [KEY]), "another execution of the run id"
    assert not seal_holds(verdict, "r1", None, "risky", p, [KEY]), "a run that names no execution"
    assert not seal_holds(verdict, "r1", "e1", "prep", p, [KEY]), "another step"
    assert not seal_holds(verdict, "r1", "e1", "risky", proof(vote="reject"), [KEY]), "another vote's proof"
    assert not seal_holds(verdict, "r1", "e1", "risky", proof(Actor("slack:U0EVE", "eve", ("sre",), "slack")), [KEY])
    assert not seal_holds(verdict, "r1", "e1", "risky", None, [KEY]), "no proof"


@pytest.mark.parametrize("change", [
    {"allow": False}, {"person": "alice"}, {"reasons": ["changed"]}, {"doc": "0" * 64},
    {"at": NOW + timedelta(seconds=1)}, {"policy_hash": "q"}, {"decision_id": "e"}, {"engine": "opa"},
])
def test_every_field_of_a_verdict_is_sealed(change: dict[str, Any]) -> None:
    p = proof()
    altered = sealed(the_proof=p).model_copy(update=change)
    assert not seal_holds(altered, "r1", "e1", "risky", p, [KEY])


def test_a_verdict_fits_the_input_it_was_asked_on_at_a_time_the_run_agrees_with() -> None:
    verdict = sealed()
    assert fits(verdict, DOC, NOW)
    assert fits(verdict, {**DOC, "now": "2026-12-06T03:00:30Z"}, NOW + timedelta(seconds=30)), "the run's own `now` is replaced"
    assert fits(verdict, {**DOC, "user": {"id": "slack:U0EVE"}}, NOW), "`user` is the proof's, not the input's"
    assert fits(verdict, DOC, NOW + VERDICT_SKEW) and fits(verdict, DOC, NOW - VERDICT_SKEW)
    assert not fits(verdict, DOC, NOW + VERDICT_SKEW + timedelta(seconds=1)), "asked too long ago"
    assert not fits(verdict, DOC, NOW - VERDICT_SKEW - timedelta(seconds=1)), "from the future"
    assert not fits(verdict, {**DOC, "params": {"svc": "db"}}, NOW)
    assert not fits(verdict, {**DOC, "approvals": [{"user": "slack:U0DAVE"}]}, NOW), "a quorum's later vote"
    assert not fits(verdict, {**DOC, "playbook": {**DOC["playbook"], "owner": "web"}}, NOW)


def test_the_runs_answer_names_the_user_of_the_proof() -> None:
    p = proof()
    answer = actor_verdict(sealed(the_proof=p), p)
    assert (answer.allow, answer.person, answer.policy_hash, answer.decision_id) == (True, "bob", "p", "d")
    assert answer.user == {"id": "slack:U0BOB", "name": "bob", "groups": ["sre"], "verified": True, "verified_by": "slack"}


def test_a_verdict_past_8_kb_is_not_sealed() -> None:
    """A policy's long reasons (20 of 1 KB) make a verdict no vote carries: the worker asks instead."""
    with pytest.raises(ValueError, match="at most 8192"):
        sealed(Verdict(allow=True, reasons=["r" * 1000] * 20, person="bob", policy_hash="p"))
    assert sealed(Verdict(allow=True, reasons=["r" * 300] * 20, person="bob", policy_hash="p")).allow
