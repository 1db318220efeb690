"""The front door's approver question (bot/engine/front_approver.py): what it reads, and that
nothing it cannot have in good time costs a click more than a vote without a verdict."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import datetime, timezone
from typing import Any

from bot.audit.events import EventKind, StoredEvent
from bot.engine import front_approver
from bot.engine.front_approver import FrontApprover
from bot.engine.verdicts import DOC_FIELD, at_time, doc_digest, seal_holds
from bot.identity.principals import Actor
from bot.identity.proofs import Keyring, vote_content
from bot.policy.models import Failure, Verdict

KEY = Keyring(b"k" * 32)
BOB = Actor("slack:U0BOB", "bob", ("sre",), "slack")
DOC = {"playbook": {"name": "gated", "owner": "sre"}, "approvals": [], "now": "2026-12-06T02:59:00Z"}
EXECUTION = "0f1e2d3c-aaaa-bbbb-cccc-000000000001"


class Store:
    """Holds approval requests by event id; counts reads; may hang or fail."""

    def __init__(self, hang: threading.Event | None = None, fail: bool = False) -> None:
        self.records: dict[str, dict[str, Any]] = {}
        self.reads: list[str] = []
        self.hang, self.fail = hang, fail

    def publish(self, run_id: str, step_id: str, doc: dict[str, Any]) -> None:
        from bot.audit.recorder import event
        self.records[event(run_id, step_id, EventKind.approval_requested, execution=EXECUTION.replace("-", "")).event_id] = doc

    def get_events(self, event_ids: list[str]) -> dict[str, StoredEvent]:
        self.reads.append(list(event_ids))
        if self.hang is not None:
            self.hang.wait(10)
        if self.fail:
            raise OSError("disk gone")
        return {e: stored for e in event_ids if (stored := self._stored(e)) is not None}

    def _stored(self, event_id: str) -> StoredEvent | None:
        doc = self.records.get(event_id)
        if doc is None:
            return None
        return StoredEvent(seq=1, event_id=event_id, ts=datetime.now(timezone.utc), run_id="r1", step_id="risky",
                           kind=EventKind.approval_requested, actor="system", details={DOC_FIELD: doc},
                           prev_hash="0" * 64, hash="0" * 64)


class Policy:
    def __init__(self, answer: Verdict, verdict_hash: str | None = "p") -> None:
        self.answer, self.asked, self.verdict_hash = answer, [], verdict_hash

    async def approver(self, doc: dict[str, Any]) -> Verdict:
        self.asked.append(doc)
        return self.answer


def proof(keyring: Keyring = KEY) -> Any:
    return keyring.sign("vote", "r1", BOB, vote_content("risky", "approve", ""), execution=EXECUTION)


async def test_the_verdict_is_asked_on_the_published_input_and_sealed_to_the_proof() -> None:
    store, policy = Store(), Policy(Verdict(allow=True, person="bob", policy_hash="p"))
    store.publish("r1", "risky", DOC)
    approver = FrontApprover(store, policy, KEY)  # type: ignore[arg-type]
    p = proof()
    verdict = await approver.ask("r1", EXECUTION, "risky", BOB, p)
    assert verdict is not None and verdict.allow and verdict.person == "bob" and verdict.policy_hash == "p"
    (asked,) = policy.asked
    assert asked["user"] == BOB.policy_user() and asked["now"] != DOC["now"]
    assert verdict.doc == doc_digest(at_time(DOC, verdict.at))
    assert seal_holds(verdict, "r1", EXECUTION, "risky", p, [KEY])
    # a quorum's next voter, a repeated click: the input is kept, the store not asked again
    assert await approver.ask("r1", EXECUTION, "risky", BOB, p) is not None
    assert len(store.reads) == 1 and len(policy.asked) == 2


async def test_a_burst_of_clicks_reads_the_store_once_or_twice() -> None:
    """50 clicks on 50 runs at once: their inputs are read together, not one read (and one thread)
    each behind the store's lock."""
    store, policy = Store(), Policy(Verdict(allow=True, policy_hash="p"))
    runs = [f"r{i}" for i in range(50)]
    for run_id in runs:
        store.publish(run_id, "risky", {**DOC, "run": {"id": run_id}})
    approver = FrontApprover(store, policy, KEY)  # type: ignore[arg-type]

    async def click(run_id: str) -> Any:
        p = KEY.sign("vote", run_id, BOB, vote_content("risky", "approve", ""), execution=EXECUTION)
        return await approver.ask(run_id, EXECUTION, "risky", BOB, p)

    verdicts = await asyncio.gather(*(click(r) for r in runs))
    assert all(v is not None for v in verdicts)
    assert 1 <= len(store.reads) <= 2 and sorted(e for read in store.reads for e in read) == sorted(store.records)
    assert sorted(doc["run"]["id"] for doc in policy.asked) == sorted(runs)


async def test_without_a_record_a_proof_or_a_key_the_vote_goes_without_a_verdict() -> None:
    store, policy = Store(), Policy(Verdict(allow=True, policy_hash="p"))
    approver = FrontApprover(store, policy, KEY)  # type: ignore[arg-type]
    assert await approver.ask("r1", EXECUTION, "risky", BOB, proof()) is None  # not recorded yet (or before engine-v8)
    store.publish("r1", "risky", DOC)
    assert await approver.ask("r1", EXECUTION, "risky", BOB, proof()) is not None  # a miss is not kept
    assert await approver.ask("r1", EXECUTION, "risky", BOB, None) is None
    verifying_only = Keyring(verifying=[b"k" * 32])  # a front door that cannot sign asks nothing
    assert await FrontApprover(store, policy, verifying_only).ask("r1", EXECUTION, "risky", BOB, proof()) is None  # type: ignore[arg-type]
    mangled = Store()
    mangled.publish("r1", "risky", "text")  # type: ignore[arg-type]  (a record whose input is no object)
    assert await FrontApprover(mangled, policy, KEY).ask("r1", EXECUTION, "risky", BOB, proof()) is None  # type: ignore[arg-type]
    assert len(policy.asked) == 1


async def test_a_policy_that_cannot_answer_leaves_the_question_to_the_worker() -> None:
    store = Store()
    store.publish("r1", "risky", DOC)
    down = Policy(Verdict(allow=False, reasons=["policy could not be evaluated: engine down"], failure=Failure.UNREACHABLE))
    assert await FrontApprover(store, down, KEY).ask("r1", EXECUTION, "risky", BOB, proof()) is None  # type: ignore[arg-type]


async def test_a_store_that_hangs_or_fails_costs_a_click_its_wait_once(monkeypatch: Any) -> None:
    monkeypatch.setattr(front_approver, "READ_WAIT", 0.2)
    release = threading.Event()
    store = Store(hang=release)
    store.publish("r1", "risky", DOC)
    approver = FrontApprover(store, Policy(Verdict(allow=True)), KEY)  # type: ignore[arg-type]
    try:
        began = time.monotonic()
        answers = await asyncio.gather(*(approver.ask("r1", EXECUTION, "risky", BOB, proof()) for _ in range(3)))
        assert answers == [None] * 3 and time.monotonic() - began < 1.0
        assert len(store.reads) == 1, "one read (one thread) for the three clicks"
        assert await approver.ask("r1", EXECUTION, "risky", BOB, proof()) is None
        assert len(store.reads) == 1, "the store is not asked again during the pause"
    finally:
        release.set()
    failing = Store(fail=True)
    assert await FrontApprover(failing, Policy(Verdict(allow=True)), KEY).ask(  # type: ignore[arg-type]
        "r1", EXECUTION, "risky", BOB, proof()) is None


async def test_an_input_past_its_bound_is_neither_asked_nor_kept() -> None:
    """Red team (stop 43): the kept inputs were bounded by count only; rows of a megabyte each
    (planted in the store, or a step whose args grew) held 512 MB. An input past DOC_BYTES_MAX is
    left to the worker."""
    store, policy = Store(), Policy(Verdict(allow=True, policy_hash="p"))
    store.publish("r1", "risky", {**DOC, "step": {"with": {"blob": "x" * front_approver.DOC_BYTES_MAX}}})
    approver = FrontApprover(store, policy, KEY)  # type: ignore[arg-type]
    for _ in range(2):
        assert await approver.ask("r1", EXECUTION, "risky", BOB, proof()) is None
    assert len(store.reads) == 2 and policy.asked == []  # not kept: read again, never asked


async def test_an_answer_of_no_known_version_is_not_sealed() -> None:
    """OPA (its version is the one its last answer named), an engine whose reload failed, or an
    answer of another version than the engine's now: no worker could tell it is of its own policy."""
    store = Store()
    store.publish("r1", "risky", DOC)
    for policy in (Policy(Verdict(allow=True, policy_hash="p"), verdict_hash=None),
                   Policy(Verdict(allow=True, policy_hash=None)), Policy(Verdict(allow=True, policy_hash="q"))):
        assert await FrontApprover(store, policy, KEY).ask("r1", EXECUTION, "risky", BOB, proof()) is None  # type: ignore[arg-type]
    assert len(store.reads) == 2  # (the first was never read for: its engine names no version)


async def test_an_answer_no_verdict_holds_leaves_the_question_to_the_worker() -> None:
    """Review (stop 43): 21 reasons (or a 300-character person) made sealing raise, and the click
    failed; a verdict that would crowd the vote past its bound is not sent either."""
    store = Store()
    store.publish("r1", "risky", DOC)
    for answer in (Verdict(allow=True, policy_hash="p", reasons=["r"] * 21), Verdict(allow=True, policy_hash="p", person="x" * 300),
                   Verdict(allow=True, policy_hash="p", reasons=["r" * 9000])):
        assert await FrontApprover(store, Policy(answer), KEY).ask("r1", EXECUTION, "risky", BOB, proof()) is None  # type: ignore[arg-type]


async def test_a_policy_that_does_not_answer_in_time_leaves_the_question_to_the_worker(monkeypatch: Any) -> None:
    monkeypatch.setattr(front_approver, "ASK_WAIT", 0.1)
    store = Store()
    store.publish("r1", "risky", DOC)

    class Slow(Policy):
        async def approver(self, doc: dict[str, Any]) -> Verdict:
            await asyncio.sleep(5)
            return self.answer

    began = time.monotonic()
    assert await FrontApprover(store, Slow(Verdict(allow=True, policy_hash="p")), KEY).ask(  # type: ignore[arg-type]
        "r1", EXECUTION, "risky", BOB, proof()) is None
    assert time.monotonic() - began < 1
