"""A front door's sealed `start` answer, used by the worker's admission instead of asking again
(bot/engine/verdicts.py), against the shipped policies (embedded engine) and a real audit file.

Each attack is a start whose front-door answer the admission must not believe: the worker asks
its own policy instead, and that policy refuses (or names the requester's real person).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from pydantic import ValidationError

from bot.audit.recorder import AuditWriter
from bot.audit.store import SqliteAuditStore
from bot.engine.admission import Admission, AdmitRequest, Admitter
from bot.engine.runs import StartAsked, ask_start, run_input
from bot.engine.state import FrontVerdict, RunInput, TriggerContext
from bot.engine.verdicts import VERDICT_SKEW, seal_start
from bot.identity.principals import Actor
from bot.identity.proofs import START_SKEW, Keyring
from bot.playbook.loader import Catalog, load_text
from bot.policy.embedded import EmbeddedEngine
from bot.policy.models import Verdict
from tests.engine.test_admission import OPEN

ROOT = Path(__file__).resolve().parents[2]
KEY = b"k" * 32
KEYRING = Keyring(KEY, [KEY])

ALICE = Actor("api:alice", name="Alice", groups=("sre",), verified_by="api")
MALLORY = Actor("api:mallory", name="Mallory", verified_by="api")


async def _engine(root: Path, **data: Any) -> EmbeddedEngine:
    shutil.copytree(ROOT / "policies", root, dirs_exist_ok=True)
    path = root / "playbook" / "data.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **data}))
    engine = EmbeddedEngine(root)
    await engine.load()
    return engine


PEOPLE = {"alice": ["api:alice"], "bob": ["api:bob"]}


@pytest_asyncio.fixture(scope="module")
async def workers(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EmbeddedEngine]:
    """The workers' policy: mallory may start nothing."""
    engine = await _engine(tmp_path_factory.mktemp("workers"), people=PEOPLE, start_denylist=["api:mallory"])
    yield engine
    await engine.close()


@pytest_asyncio.fixture(scope="module")
async def older(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EmbeddedEngine]:
    """A front door's policy from before mallory was denied (its data lags the workers')."""
    engine = await _engine(tmp_path_factory.mktemp("older"), people=PEOPLE)
    yield engine
    await engine.close()


class Counting:
    """The workers' engine, counting the `start` questions the admission asks it."""

    def __init__(self, engine: EmbeddedEngine) -> None:
        self.engine, self.asked = engine, 0

    @property
    def verdict_hash(self) -> str | None:
        return self.engine.verdict_hash

    async def current_verdict_hash(self) -> str | None:
        return await self.engine.current_verdict_hash()

    async def start(self, input: dict[str, Any]) -> Verdict:
        self.asked += 1
        return await self.engine.start(input)


@pytest.fixture
def catalog() -> Catalog:
    return Catalog([load_text(OPEN)])


@pytest.fixture
def policy(workers: EmbeddedEngine) -> Counting:
    return Counting(workers)


@pytest.fixture
def admitter(catalog: Catalog, policy: Counting, tmp_path: Path) -> Admitter:
    return Admitter(lambda: catalog, KEYRING, policy, AuditWriter(SqliteAuditStore(tmp_path / "audit.db")))  # type: ignore[arg-type]


async def front_door(engine: Any, catalog: Catalog, actor: Actor, run_id: str = "run-1",
                     asked_as: Actor | None = None) -> tuple[RunInput, StartAsked]:
    """What a front door sends for `actor`'s start of `open`: its `start` answer (asked about
    `asked_as`, by default the actor) sealed to the proof it signs."""
    loaded = catalog.get("open")
    params = {"replicas": 3}
    trigger = TriggerContext(kind="api", requested_by=actor.principal)
    asked = await ask_start(engine, loaded, params, trigger, asked_as or actor, run_id)
    return run_input(loaded, params, trigger, actor, KEYRING, run_id, asked), asked


def admit_request(sent: RunInput, asked: StartAsked, run_id: str = "run-1", after: timedelta = timedelta(0),
                  **changes: Any) -> AdmitRequest:
    """The admission's request for the run Temporal started `after` the front door asked."""
    fields = {"run_id": run_id, "playbook": sent.playbook, "playbook_hash": sent.playbook_hash,
              "params": sent.params, "trigger": sent.trigger, "proof": sent.proof, "started_at": asked.at + after,
              "verdict": sent.verdict}
    return AdmitRequest(**{**fields, **changes})


async def test_a_front_doors_allow_for_this_very_start_is_used_and_nothing_is_asked_again(
    admitter: Admitter, catalog: Catalog, workers: EmbeddedEngine, policy: Counting
) -> None:
    sent, asked = await front_door(workers, catalog, ALICE)
    assert sent.verdict is not None and sent.verdict.allow and sent.verdict.policy_hash == workers.verdict_hash
    admission = await admitter.admit(admit_request(sent, asked, after=timedelta(milliseconds=30)))
    assert (admission.allow, admission.start_asked_by, policy.asked) == (True, "front door", 0)
    assert (admission.requester.principal, admission.requester.person, admission.requester.verified) == (
        "api:alice", "alice", True)
    assert admission.params == {"replicas": 3}


async def test_an_allow_from_a_front_door_on_another_policy_version_is_asked_again(
    admitter: Admitter, catalog: Catalog, older: EmbeddedEngine, policy: Counting
) -> None:
    """The front door's data predates mallory's denial: its allow must not start mallory's run."""
    sent, asked = await front_door(older, catalog, MALLORY)
    assert sent.verdict is not None and sent.verdict.allow  # sealed: it is that front door's own version
    admission = await admitter.admit(admit_request(sent, asked))
    assert (admission.allow, admission.refused_by, admission.start_asked_by) == (False, "start", None)
    assert "start_denylist" in admission.reasons[0] and policy.asked == 1


async def test_an_allow_asked_about_someone_else_is_asked_again(
    admitter: Admitter, catalog: Catalog, workers: EmbeddedEngine, policy: Counting
) -> None:
    """Sealed to mallory's own proof, but the rule was asked about alice: not mallory's answer."""
    sent, asked = await front_door(workers, catalog, MALLORY, asked_as=ALICE)
    assert sent.verdict is not None and sent.verdict.allow
    admission = await admitter.admit(admit_request(sent, asked))
    assert (admission.allow, admission.refused_by, admission.start_asked_by) == (False, "start", None)
    assert policy.asked == 1


async def test_an_altered_or_foreign_seal_is_not_believed(
    admitter: Admitter, catalog: Catalog, workers: EmbeddedEngine, policy: Counting
) -> None:
    """Who the requester is (`person`: what four-eyes compares) comes from the worker's own
    answer when the verdict was changed after sealing, or sealed with a key it does not hold."""
    sent, asked = await front_door(workers, catalog, ALICE)
    assert sent.verdict is not None
    renamed = sent.verdict.model_copy(update={"person": "bob"})
    own_key = Keyring(b"m" * 32, [b"m" * 32])
    assert sent.proof is not None
    resealed = seal_start(own_key, asked.verdict.model_copy(update={"person": "bob"}), asked.doc, asked.at, "run-1",
                          sent.proof)
    for forged in (renamed, resealed):
        admission = await admitter.admit(admit_request(sent, asked, verdict=forged))
        assert (admission.allow, admission.requester.person, admission.start_asked_by) == (True, "alice", None)
    assert policy.asked == 2


async def test_an_allow_sealed_to_another_runs_proof_is_not_believed(
    admitter: Admitter, catalog: Catalog, workers: EmbeddedEngine, policy: Counting
) -> None:
    first, _ = await front_door(workers, catalog, ALICE, run_id="run-1")
    second, asked = await front_door(workers, catalog, ALICE, run_id="run-2")
    assert first.verdict is not None
    lifted = first.verdict.model_copy(update={"doc": asked.doc, "at": asked.at})  # even naming run-2's input
    admission = await admitter.admit(admit_request(second, asked, run_id="run-2", verdict=lifted))
    assert (admission.allow, admission.start_asked_by, policy.asked) == (True, None, 1)


@pytest.mark.parametrize("after", [VERDICT_SKEW + timedelta(seconds=1), -(VERDICT_SKEW + timedelta(seconds=1))])
async def test_an_answer_further_than_the_skew_from_the_start_is_asked_again(
    admitter: Admitter, catalog: Catalog, workers: EmbeddedEngine, policy: Counting, after: timedelta
) -> None:
    sent, asked = await front_door(workers, catalog, ALICE)
    admission = await admitter.admit(admit_request(sent, asked, after=after))
    assert (admission.allow, admission.start_asked_by, policy.asked) == (True, None, 1)
    within = await admitter.admit(admit_request(sent, asked, after=VERDICT_SKEW - timedelta(seconds=1)))
    assert within.start_asked_by == "front door" and policy.asked == 1


async def test_a_sealed_deny_is_asked_again(
    admitter: Admitter, catalog: Catalog, workers: EmbeddedEngine, policy: Counting
) -> None:
    """A front door starts nothing it was refused; a deny here is not its answer to trust."""
    sent, asked = await front_door(workers, catalog, ALICE)
    assert sent.proof is not None
    deny = asked.verdict.model_copy(update={"allow": False, "reasons": ["frozen"]})
    sealed = seal_start(KEYRING, deny, asked.doc, asked.at, "run-1", sent.proof)
    admission = await admitter.admit(admit_request(sent, asked, verdict=sealed))
    assert (admission.allow, admission.start_asked_by, policy.asked) == (True, None, 1)


async def test_a_start_without_its_proof_never_uses_one(
    admitter: Admitter, catalog: Catalog, workers: EmbeddedEngine
) -> None:
    """Only a front door's start proof vouches for a start verdict (the seal is bound to it)."""
    sent, asked = await front_door(workers, catalog, ALICE)
    unproven = await admitter.admit(admit_request(sent, asked, proof=None))
    assert (unproven.allow, unproven.start_asked_by, unproven.requester.verified) == (True, None, False)


async def test_a_front_door_seals_only_an_allow_of_its_known_version_for_the_run_it_signs(
    catalog: Catalog, workers: EmbeddedEngine
) -> None:
    loaded, params = catalog.get("open"), {"replicas": 3}
    trigger = TriggerContext(kind="api", requested_by=ALICE.principal)
    asked = await ask_start(workers, loaded, params, trigger, ALICE, "run-1")
    assert asked.sealable and run_input(loaded, params, trigger, ALICE, KEYRING, "run-1", asked).verdict is not None
    assert run_input(loaded, params, trigger, ALICE, KEYRING, "run-2", asked).verdict is None  # asked for run-1
    unknown = StartAsked(asked.run_id, asked.at, asked.doc, asked.verdict, None)  # OPA: version unknown
    other = StartAsked(asked.run_id, asked.at, asked.doc, asked.verdict.model_copy(update={"policy_hash": "x"}),
                       asked.version)  # answered by a version reloaded meanwhile
    wordy = StartAsked(asked.run_id, asked.at, asked.doc,
                       asked.verdict.model_copy(update={"reasons": [f"r{i}" for i in range(21)]}), asked.version)
    long_winded = StartAsked(asked.run_id, asked.at, asked.doc,  # 20 reasons of 1 KB: past VERDICT_BYTES_MAX
                             asked.verdict.model_copy(update={"reasons": ["r" * 1000] * 20}), asked.version)
    for no in (unknown, other, wordy, long_winded):
        assert run_input(loaded, params, trigger, ALICE, KEYRING, "run-1", no).verdict is None
    unverified = Actor("api:alice")
    no_proof = run_input(loaded, params, TriggerContext(kind="api", requested_by="api:alice"), unverified,
                         KEYRING, "run-1", asked)
    assert (no_proof.proof, no_proof.verdict) == (None, None)


def test_an_admission_from_before_start_verdicts_reads_as_asked_by_the_worker() -> None:
    """Histories recorded before this field: their admissions read back with it unset."""
    old = {"allow": True, "requester": {"principal": "api:alice", "person": "alice"}}
    assert Admission.model_validate(old).start_asked_by is None


# ---- red team, stop 44 ---------------------------------------------------------------------


async def test_a_worker_whose_files_changed_since_its_last_question_does_not_take_a_stale_allow(
    tmp_path: Path, catalog: Catalog, older: EmbeddedEngine
) -> None:
    """A rollout reaches the worker's files (mallory denylisted) while a front door runs the old
    data. The admission compared the front door's hash with the hash the worker last loaded, which
    only a question refreshed: the lagging allow matched it, and mallory's run was admitted. It now
    looks at the files first, as its own question would have."""
    root = tmp_path / "worker"
    shutil.copytree(ROOT / "policies", root)
    data = root / "playbook" / "data.json"
    before = data.read_text()
    data.write_text(json.dumps({**json.loads(before), "people": PEOPLE}))
    async with EmbeddedEngine(root, reload_interval=0) as worker:
        await worker.load()
        assert worker.verdict_hash == older.verdict_hash  # one version, deployed everywhere
        data.write_text(json.dumps({**json.loads(before), "people": PEOPLE, "start_denylist": ["api:mallory"]}))
        admitter = Admitter(lambda: catalog, KEYRING, Counting(worker), AuditWriter(SqliteAuditStore(tmp_path / "a.db")))  # type: ignore[arg-type]
        sent, asked = await front_door(older, catalog, MALLORY)
        assert sent.verdict is not None and sent.verdict.allow  # the lagging front door's own answer
        admission = await admitter.admit(admit_request(sent, asked))
        assert (admission.allow, admission.refused_by, admission.start_asked_by) == (False, "start", None)


async def test_a_verdict_the_admission_cannot_read_is_asked_instead_of_failing_the_run(
    admitter: Admitter, catalog: Catalog, workers: EmbeddedEngine, policy: Counting
) -> None:
    """A copied RunInput whose verdict time has no zone (a raw client's edit): the admission's
    comparison with Temporal's time raised, and the run was refused as unchecked after 3 attempts."""
    sent, asked = await front_door(workers, catalog, ALICE)
    assert sent.verdict is not None
    naive = sent.verdict.model_copy(update={"at": asked.at.replace(tzinfo=None)})  # (past the model's own check)
    admission = await admitter.admit(admit_request(sent, asked, verdict=naive))
    assert (admission.allow, admission.start_asked_by, policy.asked) == (True, None, 1)


async def test_a_run_that_waited_for_a_worker_is_measured_from_its_acceptance(
    admitter: Admitter, catalog: Catalog, workers: EmbeddedEngine, policy: Counting
) -> None:
    """Workers down past the proof's skew (an outage during an incident): the run's first task
    comes late, but Temporal accepted the start when the front door sent it. Its proof and its
    verdict were measured from the first task: the proof read as stale, and the run was refused."""
    sent, asked = await front_door(workers, catalog, ALICE)
    late = asked.at + START_SKEW + timedelta(minutes=1)
    waited = await admitter.admit(admit_request(sent, asked, after=late - asked.at, accepted_at=asked.at))
    assert (waited.allow, waited.requester.verified, waited.start_asked_by, policy.asked) == (
        True, True, "front door", 0)
    replayed = await admitter.admit(admit_request(sent, asked, run_id="run-1", accepted_at=late))  # a start made now
    assert (replayed.allow, replayed.refused_by) == (False, "proof")


def test_a_verdict_time_needs_its_zone_and_a_later_field_is_dropped_not_refused(
    catalog: Catalog, workers: EmbeddedEngine
) -> None:
    """A worker must read a run's input a later front door wrote: an unknown field in its verdict
    is dropped (then the seal does not hold, and the worker asks); a time without a zone is refused."""
    fields = {"allow": True, "at": "2026-12-06T22:00:00Z", "doc": "a" * 64, "seal": f"{'0' * 12}:{'0' * 64}"}
    assert FrontVerdict.model_validate({**fields, "confidence": 1}).allow
    with pytest.raises(ValidationError, match="timezone"):
        FrontVerdict.model_validate({**fields, "at": "2026-12-06T22:00:00"})
