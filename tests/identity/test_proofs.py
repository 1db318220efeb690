"""Proofs bound to an execution: what `Keyring.check` takes and refuses.

A vote, answer or cancel proof names the run's first execution run id, so one lifted from an
earlier run under the same run id is refused; a proof signed before that field (none named) still
verifies wherever no execution is asked for, since its MAC leaves the field out.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from bot.identity.principals import Actor
from bot.identity.proofs import Keyring, Proof, ProofError, _mac, key_id, vote_content

KEY = b"unit-test-envelope-key-0123456789abcdef"
RUN = "gated-20261204-120000-abc123"
A, B = "0193a1b2-0000-7000-8000-00000000000a", "0193a1b2-0000-7000-8000-00000000000b"
BOB = Actor("slack:U0BOB", "bob", ("sre",), "slack")
APPROVE = vote_content("risky", "approve", "")


def signed_before_executions() -> Proof:
    """A proof as a front door from before execution binding signed it: its MAC over the old fields."""
    fields = {
        "purpose": "vote", "run_id": RUN, "principal": BOB.principal, "name": BOB.name, "groups": ["sre"],
        "verified_by": "slack", "issued_at": datetime(2026, 12, 1, tzinfo=timezone.utc),
        "digest": Keyring(KEY).sign("vote", RUN, BOB, APPROVE).digest, "key_id": key_id(KEY),  # type: ignore[union-attr]
    }
    return Proof(**fields, mac=_mac(KEY, fields))


def test_a_proof_without_an_execution_still_verifies_where_none_is_asked_for() -> None:
    keyring = Keyring(KEY)
    old = signed_before_executions()
    assert old.execution is None
    assert keyring.check(old, "vote", RUN, APPROVE).principal == BOB.principal
    fresh = keyring.sign("vote", RUN, BOB, APPROVE)  # (starts and schedules are signed so)
    assert fresh is not None and fresh.execution is None and "execution" not in fresh.model_dump(exclude_none=True)
    assert keyring.check(fresh, "vote", RUN, APPROVE) == BOB


def test_a_proof_without_an_execution_is_refused_where_one_is_asked_for() -> None:
    keyring = Keyring(KEY)
    for proof in (signed_before_executions(), keyring.sign("vote", RUN, BOB, APPROVE)):
        assert proof is not None
        with pytest.raises(ProofError, match="bound to no execution of run .* may come from an earlier run"):
            keyring.check(proof, "vote", RUN, APPROVE, execution=A)


def test_a_proof_for_one_execution_holds_for_it_and_not_for_another() -> None:
    keyring = Keyring(KEY)
    proof = keyring.sign("vote", RUN, BOB, APPROVE, execution=A)
    assert proof is not None and proof.execution == A
    assert keyring.check(proof, "vote", RUN, APPROVE, execution=A) == BOB
    with pytest.raises(ProofError, match=f"issued for another execution of run '{RUN}'.*earlier run under this run id"):
        keyring.check(proof, "vote", RUN, APPROVE, execution=B)
    # A worker that asks for no execution (a claim from before the field) takes it on the rest.
    assert keyring.check(proof, "vote", RUN, APPROVE) == BOB


@pytest.mark.parametrize("execution", [B, None], ids=["another execution", "none"])
def test_an_altered_execution_fails_the_mac(execution: str | None) -> None:
    """Rewriting (or dropping) the execution a proof was signed for breaks its signature: the
    field is covered by the MAC whenever it is set."""
    keyring = Keyring(KEY)
    proof = keyring.sign("vote", RUN, BOB, APPROVE, execution=A)
    assert proof is not None
    altered = proof.model_copy(update={"execution": execution})
    with pytest.raises(ProofError, match="forged or altered"):
        keyring.check(altered, "vote", RUN, APPROVE, execution=execution)
    with pytest.raises(ProofError, match="forged or altered"):
        keyring.check(altered, "vote", RUN, APPROVE)

