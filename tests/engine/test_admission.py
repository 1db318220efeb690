"""`run.admit` on its own, against the shipped policies (embedded engine) and a real audit file.

tests/security/test_raw_temporal.py proves the same checks through Temporal; these pin each check
to its refusal code and its edge (the proof's age either side of the skew, a hash that matches the
snapshot but not the catalog) in milliseconds, so mutation testing can afford to run them per mutant.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from pydantic import ValidationError
from temporalio.service import RPCError, RPCStatusCode

from bot.audit.events import EventKind
from bot.audit.recorder import AuditWriter, event
from bot.audit.store import SqliteAuditStore
from bot.engine.admission import RUN_WORKFLOW, Admission, AdmitRequest, Admitter, ParentRun
from bot.engine.state import ParentLink, Requester, TriggerContext
from bot.identity.principals import Actor
from bot.identity.proofs import START_SKEW, Keyring, start_content
from bot.playbook.loader import Catalog, load_text
from bot.policy.embedded import EmbeddedEngine

ROOT = Path(__file__).resolve().parents[2]
KEY = b"k" * 32
AT = datetime(2026, 12, 3, 3, 0, tzinfo=UTC)

OPEN = """
name: open
params:
  replicas: {type: integer, enum: [1, 2, 3, 4], default: 2}
steps:
  - {id: note, action: core.log, with: {message: "{{ params.replicas }}"}}
"""
RESTRICTED = OPEN.replace("name: open", "name: restricted")


@pytest_asyncio.fixture(scope="module")
async def policy(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EmbeddedEngine]:
    root = tmp_path_factory.mktemp("policies")
    shutil.copytree(ROOT / "policies", root, dirs_exist_ok=True)
    data = root / "playbook" / "data.json"
    doc = json.loads(data.read_text())
    doc.update(start_restrictions={"restricted": ["sre"]}, people={"alice": ["cli:alice", "slack:UALICE"]},
               start_denylist=["cli:mallory"])
    data.write_text(json.dumps(doc))
    async with EmbeddedEngine(root) as engine:
        yield engine


@pytest.fixture
def catalog() -> Catalog:
    return Catalog([load_text(OPEN), load_text(RESTRICTED)])


@pytest.fixture
def store(tmp_path: Path) -> SqliteAuditStore:
    return SqliteAuditStore(tmp_path / "audit.db")


@pytest.fixture
def admitter(catalog: Catalog, policy: EmbeddedEngine, store: SqliteAuditStore) -> Admitter:
    return Admitter(lambda: catalog, Keyring(KEY, [KEY]), policy, AuditWriter(store))


def request(catalog: Catalog, name: str = "open", params: dict[str, Any] | None = None, by: str = "cli:alice",
            kind: str = "cli", run_id: str = "run-1", proof_at: datetime | None = None, **extra: Any) -> AdmitRequest:
    loaded = catalog.get(name)
    trigger = TriggerContext(kind=kind, requested_by=by)
    params = {"replicas": "3"} if params is None else params
    proof = None
    if proof_at is not None:
        content = start_content(name, loaded.hash, params, trigger.model_dump(mode="json"))
        proof = Keyring(KEY, [KEY]).sign("start", run_id, Actor(by, name="Alice", groups=("sre",), verified_by="api"),
                                         content, now=proof_at)
    fields: dict[str, Any] = {"run_id": run_id, "playbook": loaded.playbook, "playbook_hash": loaded.hash,
                              "params": params, "trigger": trigger, "proof": proof, "started_at": AT}
    return AdmitRequest(**{**fields, **extra})


async def test_an_open_playbook_is_admitted_with_typed_params_and_an_unverified_requester(
    admitter: Admitter, catalog: Catalog
) -> None:
    admission = await admitter.admit(request(catalog))
    assert admission.allow and admission.refused_by is None and admission.reasons == []
    assert admission.params == {"replicas": 3}
    assert (admission.requester.principal, admission.requester.person) == ("cli:alice", "alice")
    assert (admission.requester.verified, admission.requester.verified_by) == (False, None)
    assert admission.provenance["params"]["replicas"]


async def test_a_verified_member_starts_a_restricted_playbook_a_claim_does_not(
    admitter: Admitter, catalog: Catalog
) -> None:
    proved = await admitter.admit(request(catalog, "restricted", proof_at=AT))
    assert proved.allow
    assert (proved.requester.verified, proved.requester.verified_by) == (True, "api")

    claimed = await admitter.admit(request(catalog, "restricted"))
    assert (claimed.allow, claimed.refused_by) == (False, "start")
    assert claimed.requester.person == "alice"  # who asked is known, even when refused
    assert claimed.message.startswith("refused by the worker's start check: ")


@pytest.mark.parametrize("offset", [START_SKEW - timedelta(seconds=1), -(START_SKEW - timedelta(seconds=1))])
async def test_a_proof_within_the_skew_either_side_verifies(admitter: Admitter, catalog: Catalog, offset: timedelta) -> None:
    assert (await admitter.admit(request(catalog, proof_at=AT - offset))).requester.verified


@pytest.mark.parametrize("offset", [START_SKEW + timedelta(seconds=1), -(START_SKEW + timedelta(seconds=1))])
async def test_a_proof_past_the_skew_either_side_is_refused(admitter: Admitter, catalog: Catalog, offset: timedelta) -> None:
    admission = await admitter.admit(request(catalog, proof_at=AT - offset))
    assert (admission.allow, admission.refused_by) == (False, "proof")
    assert "too far from the start" in admission.reasons[0]
    assert admission.params == {"replicas": 3}


async def test_a_proof_for_someone_else_is_refused(admitter: Admitter, catalog: Catalog) -> None:
    genuine = request(catalog, proof_at=AT)
    stolen = genuine.model_copy(update={"trigger": TriggerContext(kind="cli", requested_by="cli:bob")})
    admission = await admitter.admit(stolen)
    assert (admission.allow, admission.refused_by) == (False, "proof")
    assert admission.requester.principal == "cli:bob" and not admission.requester.verified


async def test_a_proof_for_other_params_is_refused(admitter: Admitter, catalog: Catalog) -> None:
    genuine = request(catalog, proof_at=AT)
    admission = await admitter.admit(genuine.model_copy(update={"params": {"replicas": "4"}}))
    assert (admission.allow, admission.refused_by) == (False, "proof")


async def test_each_check_refuses_with_its_own_code(admitter: Admitter, catalog: Catalog) -> None:
    bad_params = await admitter.admit(request(catalog, params={"replicas": "9"}))
    assert (bad_params.allow, bad_params.refused_by) == (False, "params")
    assert bad_params.params == {"replicas": "9"}

    not_principal = await admitter.admit(request(catalog, by="alice"))
    assert (not_principal.allow, not_principal.refused_by) == (False, "requester")

    denied = await admitter.admit(request(catalog, by="cli:mallory"))
    assert (denied.allow, denied.refused_by) == (False, "start")
    assert "start_denylist" in denied.reasons[0]


async def test_the_catalog_check_compares_the_snapshot_the_claim_and_the_workers_copy(
    admitter: Admitter, catalog: Catalog
) -> None:
    known = catalog.get("open")
    unknown = load_text(OPEN.replace("name: open", "name: private"))
    private = await admitter.admit(request(catalog, playbook=unknown.playbook, playbook_hash=unknown.hash))
    assert (private.refused_by, private.reasons) == ("catalog", ["playbook 'private' is not in this worker's catalog"])

    edited = load_text(OPEN.replace("message:", "level: warning, message:"))
    claims_known = await admitter.admit(request(catalog, playbook=edited.playbook, playbook_hash=known.hash))
    assert claims_known.refused_by == "catalog" and "does not hash to" in claims_known.reasons[0]

    honest_but_other = await admitter.admit(request(catalog, playbook=edited.playbook, playbook_hash=edited.hash))
    assert honest_but_other.refused_by == "catalog"
    assert "is not the version in this worker's catalog" in honest_but_other.reasons[0]


async def test_a_run_id_already_in_the_audit_trail_is_refused(
    admitter: Admitter, catalog: Catalog, store: SqliteAuditStore
) -> None:
    command = event("run-1", None, EventKind.slack_command, actor="slack:UALICE", ts=AT)
    admitted = await admitter.admit(request(catalog, audit=[command]))
    assert admitted.allow  # the events it carries (its trigger) do not make the id "used"
    assert [e.kind for e in store.events("run-1")] == [EventKind.slack_command]

    store.append([event("run-1", None, EventKind.run_started, ts=AT)])
    again = await admitter.admit(request(catalog, run_id="run-1"))
    assert (again.allow, again.refused_by) == (False, "run id")
    assert "already used by an earlier run" in again.reasons[0]
    assert (await admitter.admit(request(catalog, run_id="run-2"))).allow


async def test_a_used_run_id_runs_again_only_on_a_proof_issued_after_its_last_run(
    admitter: Admitter, catalog: Catalog, store: SqliteAuditStore
) -> None:
    """An alert episode re-run after Temporal's retention (`on_rerun: start`) reuses its workflow id
    with a proof the front door signed for it now; the earlier run's proof, replayed, is refused."""
    finished = AT - START_SKEW - timedelta(seconds=10)  # a proof must come START_SKEW after it
    store.append([event("run-1", None, EventKind.run_started, ts=finished - timedelta(seconds=10)),
                  event("run-1", None, EventKind.run_finished, ts=finished)])
    replayed = await admitter.admit(request(catalog, proof_at=finished - timedelta(seconds=20)))
    assert (replayed.allow, replayed.refused_by) == (False, "run id")
    at_the_margin = await admitter.admit(request(catalog, proof_at=finished + START_SKEW))
    assert (at_the_margin.allow, at_the_margin.refused_by) == (False, "run id")
    fresh = await admitter.admit(request(catalog, proof_at=AT - timedelta(seconds=5)))
    assert fresh.allow and fresh.requester.verified


class _Watched:
    """`inner`, with one method replaced; everything else is the inner object's."""

    def __init__(self, inner: Any, **methods: Any) -> None:
        self._inner = inner
        self.__dict__.update(methods)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def test_the_run_id_read_is_under_way_while_the_start_rule_is_asked(
    catalog: Catalog, policy: EmbeddedEngine, store: SqliteAuditStore
) -> None:
    """Issue 17: the store read and the checks are independent, so they run at once. The read
    used to be a task that began only when the checks first paused, and they may not pause before
    they end: here the rule waits (without pausing) for the read to begin, which it does only if
    it was handed to its thread before the checks started."""
    began = threading.Event()

    def run_last_recorded(*args: Any) -> datetime | None:
        began.set()
        return store.run_last_recorded(*args)

    seen: list[bool] = []

    async def start(doc: dict[str, Any]) -> Any:
        seen.append(began.wait(2))  # blocks this loop: a read not yet handed over cannot begin
        return await policy.start(doc)

    admitter = Admitter(lambda: catalog, Keyring(KEY, [KEY]), _Watched(policy, start=start),
                        AuditWriter(_Watched(store, run_last_recorded=run_last_recorded)))
    admission = await admitter.admit(request(catalog))
    assert admission.allow and seen == [True]
    store.append([event("run-1", None, EventKind.run_started, ts=AT)])
    assert (await admitter.admit(request(catalog))).refused_by == "run id"  # the read's answer still counts


def test_a_request_needs_the_time_temporal_took_the_start(catalog: Catalog) -> None:
    """The proof's age is measured from it: a request without it is refused, never defaulted."""
    fields = request(catalog).model_dump()
    del fields["started_at"]
    with pytest.raises(ValidationError, match="started_at"):
        AdmitRequest(**fields)
    bare = AdmitRequest(**{**request(catalog).model_dump(), "params": {}, "audit": [], "proof": None})
    assert (bare.params, bare.audit, bare.proof) == ({}, [], None)
    defaults = AdmitRequest.model_validate({k: v for k, v in request(catalog).model_dump().items()
                                            if k not in ("params", "audit", "proof")})
    assert (defaults.params, defaults.audit, defaults.proof) == ({}, [], None)


def test_an_admission_says_which_check_refused_and_every_reason() -> None:
    from bot.engine.state import Requester

    refused = Admission(allow=False, refused_by="start", reasons=["frozen", "not on call"],
                        requester=Requester(principal="cli:a", person="cli:a"))
    assert refused.message == "refused by the worker's start check: frozen; not on call"
    assert (refused.params, refused.provenance) == ({}, {})


LOCKED = OPEN.replace("name: open", "name: locked").replace(
    "params:", 'concurrency: {key: "svc:{{ params.replicas }}{{ params.note }}", limit: 1}\nparams:\n  note: {type: string, default: ""}'
)
EACH = OPEN.replace("name: open", "name: each").replace(
    "  - {id: note, action: core.log, with: {message: \"{{ params.replicas }}\"}}",
    "  - id: roll\n    foreach: [a, b]\n    steps:\n      - {id: note, action: core.log, with: {message: \"{{ item }}\"}}",
)


@pytest.fixture
def wide(policy: EmbeddedEngine, store: SqliteAuditStore) -> tuple[Admitter, Catalog]:
    catalog = Catalog([load_text(OPEN), load_text(LOCKED), load_text(EACH)])
    return Admitter(lambda: catalog, Keyring(KEY, [KEY]), policy, AuditWriter(store), foreach_max=7), catalog


async def test_the_lock_key_and_the_foreach_bound_are_decided_here(wide: tuple[Admitter, Catalog]) -> None:
    admitter, catalog = wide
    locked = await admitter.admit(request(catalog, "locked"))
    assert (locked.allow, locked.lock_key) == (True, "svc:3")
    unkeyable = await admitter.admit(request(catalog, "locked", params={"replicas": "3", "note": "\x00" * 3}))
    assert (unkeyable.allow, unkeyable.refused_by) == (False, "concurrency")
    each = await admitter.admit(request(catalog, "each"))
    assert (each.allow, each.foreach_max, each.lock_key) == (True, 7, None)
    plain = await admitter.admit(request(catalog))
    assert (plain.foreach_max, plain.lock_key) == (None, None)  # a v1 playbook's admission is as it was


def _child(catalog: Catalog, *, depth: int = 1, temporal_parent: str | None = "parent-run", kind: str = "playbook",
           parent_by: str = "cli:alice", verified_by: str | None = "slack", namespace: str = "default") -> AdmitRequest:
    parent = ParentLink(run_id="parent-run", step_id="call", root_run_id="parent-run", depth=depth,
                        requester=_requester(parent_by, verified_by))
    return request(catalog, kind=kind, parent=parent, temporal_parent=temporal_parent,
                   temporal_parent_run="parent-execution", temporal_parent_namespace=namespace)


def _requester(principal: str = "cli:alice", verified_by: str | None = "slack") -> Requester:
    return Requester(principal=principal, person="alice", verified=verified_by is not None, verified_by=verified_by)


def _view(requester: Requester | None, workflow_type: str = RUN_WORKFLOW, queue: str = "bot",
          children: tuple[tuple[str, str], ...] = (("call", "run-1"),)) -> ParentRun:
    return ParentRun(workflow_type, queue, "bot", "default", requester, children)


class _Parents:
    """What Temporal and the parent run itself answer about workflow `parent-run`, as a test sets it."""

    def __init__(self) -> None:
        self.view: ParentRun | None = _view(_requester())

    async def __call__(self, workflow_id: str, run_id: str | None) -> ParentRun:
        if workflow_id != "parent-run" or run_id != "parent-execution" or self.view is None:
            raise RPCError("workflow not found", RPCStatusCode.NOT_FOUND, b"")
        return self.view


async def test_a_child_run_is_believed_only_when_temporal_says_its_parent_started_it(
    admitter: Admitter, catalog: Catalog
) -> None:
    parents = admitter.parents = _Parents()
    child = await admitter.admit(_child(catalog))
    assert child.allow and (child.requester.verified, child.requester.verified_by) == (True, "slack")
    deepest = await admitter.admit(_child(catalog, depth=8))
    assert deepest.allow
    for bad, says in [
        (_child(catalog, depth=9), "sub-playbooks nest 9 deep; at most 8"),
        (_child(catalog, temporal_parent=None), "no workflow started it (a client did)"),
        (_child(catalog, temporal_parent="someone-else"), "was started by workflow 'someone-else'"),
        (_child(catalog, kind="cli"), "needs both trigger 'playbook' and its parent run"),
        (_child(catalog, parent_by="cli:bob"), "is not its parent's ('cli:bob')"),
    ]:
        admission = await admitter.admit(bad)
        assert (admission.allow, admission.refused_by) == (False, "parent"), admission
        assert says in admission.reasons[0], admission.reasons
    parents.view = _view(_requester(verified_by="made-up"))
    claimed = await admitter.admit(_child(catalog, verified_by="made-up"))
    assert claimed.allow and not claimed.requester.verified  # a verifier the bot does not know vouches for nobody


async def test_a_child_run_is_believed_only_when_its_parent_is_a_run_of_the_bots(admitter: Admitter, catalog: Catalog) -> None:
    """Temporal names the workflow that started a child, but that workflow may be anyone's
    (tests/security/test_child_runs.py): it must be a PlaybookRun on the bot's queue, and its own
    status must name the requester the child claims."""
    parents = admitter.parents = _Parents()
    for view, says in [
        (_view(None, "NotARun", "mallory"), "started by a 'NotARun' workflow ('parent-run'), not by a run of the bot's"),
        (_view(None, queue="mallory"), "runs on task queue 'mallory', not the bot's 'bot'"),
        (_view(_requester("cli:carol")), "its parent's requester is 'cli:carol' (verified by slack), not the 'cli:alice' (verified by slack) it claims"),
        (_view(_requester(verified_by=None)),
         "its parent's requester is 'cli:alice' (unverified), not the 'cli:alice' (verified by slack)"),
        (_view(_requester(), children=(("other", "run-1"), ("call", "run-2"))), "its parent's status lists no child 'run-1' of step 'call'"),
        (None, "the workflow 'parent-run' that started it is gone"),
    ]:
        parents.view = view
        admission = await admitter.admit(_child(catalog))
        assert (admission.allow, admission.refused_by) == (False, "parent"), admission
        assert says in admission.reasons[0], admission.reasons
    parents.view = _view(_requester())
    elsewhere = await admitter.admit(_child(catalog, namespace="mallorys"))
    assert elsewhere.reasons == ["it was started from namespace 'mallorys', not the bot's 'default'"], elsewhere


def _alert_request(catalog: Catalog, verified_by: str, kind: str = "alertmanager",
                   sender: str = "alertmanager") -> AdmitRequest:
    loaded = catalog.get("open")
    alert = {"labels": {"alertname": "Down"}, "annotations": {}, "fingerprint": "f1"}
    trigger = TriggerContext(kind=kind, requested_by=sender, alert=alert)
    params = {"replicas": "3"}
    content = start_content("open", loaded.hash, params, trigger.model_dump(mode="json"))
    proof = Keyring(KEY, [KEY]).sign("start", "run-1", Actor(sender, verified_by=verified_by), content, now=AT)
    return AdmitRequest(run_id="run-1", playbook=loaded.playbook, playbook_hash=loaded.hash, params=params,
                        trigger=trigger, proof=proof, started_at=AT)


async def test_alert_facts_are_vouched_for_only_by_alertmanagers_own_token(admitter: Admitter, catalog: Catalog) -> None:
    """Params from an alert count as the alert's (not the requester's) only when the webhook token
    verified the start and the trigger is Alertmanager's; anything else is requester-chosen."""
    vouched = await admitter.admit(_alert_request(catalog, "alertmanager"))
    assert vouched.allow, vouched.reasons
    assert vouched.provenance == {"params": {"replicas": "alert"}, "alert": {"source": "alertmanager", "verified": True}}
    other = await admitter.admit(_alert_request(catalog, "api"))
    assert other.provenance["alert"] == {"source": "alertmanager", "verified": False}
    assert other.provenance["params"] == {"replicas": "requester"}


async def test_grafana_alert_facts_are_vouched_for_only_by_grafanas_own_token(admitter: Admitter, catalog: Catalog) -> None:
    """Grafana's webhook token vouches for Grafana-triggered runs, and for nothing else: a grafana
    trigger under Alertmanager's verifier, or an Alertmanager trigger under Grafana's, is requester-chosen."""
    vouched = await admitter.admit(_alert_request(catalog, "grafana", kind="grafana", sender="grafana"))
    assert vouched.allow, vouched.reasons
    assert vouched.provenance == {"params": {"replicas": "alert"}, "alert": {"source": "grafana", "verified": True}}
    assert vouched.requester.verified_by == "grafana"
    for verifier, kind, sender in [("alertmanager", "grafana", "grafana"), ("grafana", "alertmanager", "grafana")]:
        crossed = await admitter.admit(_alert_request(catalog, verifier, kind=kind, sender=sender))
        assert crossed.provenance["params"] == {"replicas": "requester"}, (verifier, kind)
        assert crossed.provenance["alert"]["verified"] is False, (verifier, kind)


async def test_refusals_say_which_check_and_why(admitter: Admitter, catalog: Catalog) -> None:
    cases = [
        (request(catalog, by="alice"), "the requester is not a principal: "),
        (request(catalog, params={"replicas": "9"}), "params do not pass the playbook's checks: "),
        (request(catalog, proof_at=AT).model_copy(update={"params": {"replicas": "4"}}),
         "the start's proof does not verify: "),
    ]
    for req, prefix in cases:
        admission = await admitter.admit(req)
        assert admission.reasons[0].startswith(prefix), admission.reasons


# ---- scheduled runs: a worker-signed proof fixed when the schedule was written ------------------

SCHEDULED = """
name: nightly
params:
  replicas: {type: integer, enum: [1, 2, 3, 4], default: 2}
  environment: {type: string, default: production}
triggers:
  schedule:
    - {cron: "0 3 * * *", params: {replicas: 3, environment: staging}}
steps:
  - {id: note, action: core.log, with: {message: "{{ params.replicas }}"}}
"""
FIRING = "-2026-12-03T03:00:00Z"  # what Temporal appends to the schedule's workflow id


@pytest.fixture
def nightly() -> Catalog:
    return Catalog([load_text(SCHEDULED)])


def scheduled(catalog: Catalog, keyring: Keyring | None = None, run_id: str | None = None, **changes: Any) -> AdmitRequest:
    """The input the schedule holds (as bot/engine/schedules.py builds it), started at AT under `run_id`."""
    from bot.engine.schedules import planned, schedule_input

    [plan] = planned(Catalog([catalog.get("nightly")]))
    run = schedule_input(plan, keyring or Keyring(KEY, [KEY]))
    fields: dict[str, Any] = {"run_id": run_id or plan.id + FIRING, "playbook": run.playbook,
                              "playbook_hash": run.playbook_hash, "params": run.params, "trigger": run.trigger,
                              "proof": run.proof, "started_at": AT}
    return AdmitRequest(**{**fields, **changes})


async def test_a_schedule_proof_signed_long_ago_vouches_for_the_schedule_principal(
    admitter: Admitter, nightly: Catalog
) -> None:
    req = scheduled(nightly)
    assert req.proof is not None
    old = req.model_copy(update={"started_at": req.proof.issued_at + timedelta(days=400)})  # a year of nights later
    admission = await Admitter(lambda: nightly, Keyring(KEY, [KEY]), admitter.policy, admitter.audit).admit(old)
    assert admission.allow, admission.reasons
    assert (admission.requester.principal, admission.requester.verified_by) == ("schedule", "schedule")
    assert admission.params == {"replicas": 3, "environment": "staging"}
    # The file chose these params and the proof pins them: they are the playbook's, not a requester's.
    assert admission.provenance["params"] == {"replicas": "playbook", "environment": "playbook"}


async def test_a_worker_holding_only_a_verifying_key_still_signs_its_schedules(
    admitter: Admitter, nightly: Catalog
) -> None:
    """`dev`'s worker verifies with the dev key and signs nothing else: its schedules use that key."""
    req = scheduled(nightly, keyring=Keyring(None, [KEY]))
    assert req.proof is not None
    admission = await Admitter(lambda: nightly, Keyring(None, [KEY]), admitter.policy, admitter.audit).admit(req)
    assert admission.allow and admission.requester.verified_by == "schedule"


def _attacks(catalog: Catalog) -> list[tuple[str, AdmitRequest]]:
    """A copy of a schedule's input (anyone who can read the schedule has one), bent."""
    base = scheduled(catalog)
    sid = base.trigger.schedule
    assert sid is not None and base.proof is not None
    start = Keyring(KEY, [KEY]).sign(
        "start", base.run_id, Actor("schedule", verified_by="api"),
        start_content("nightly", base.playbook_hash, base.params, base.trigger.model_dump(mode="json")), now=AT,
    )
    return [
        ("under a run id of its own choosing", base.model_copy(update={"run_id": "raw-123"})),
        ("under the schedule's id without a firing time", base.model_copy(update={"run_id": sid})),
        ("under the schedule's id and other text", base.model_copy(update={"run_id": sid + "-now"})),
        ("with other params", base.model_copy(update={"params": {"replicas": 4, "environment": "staging"}})),
        ("claiming production", base.model_copy(update={"params": {"replicas": 3, "environment": "production"}})),
        ("naming another schedule", base.model_copy(update={
            "trigger": base.trigger.model_copy(update={"schedule": "playbook-schedule:nightly:other"}),
            "run_id": "playbook-schedule:nightly:other" + FIRING})),
        ("as another requester", base.model_copy(update={
            "trigger": base.trigger.model_copy(update={"requested_by": "cli:mallory"})})),
        ("on a cli trigger", base.model_copy(update={"trigger": base.trigger.model_copy(update={"kind": "cli"})})),
        ("with a front door's start proof", base.model_copy(update={"proof": start})),
        ("signed with a key no worker holds", scheduled(catalog, keyring=Keyring(b"r" * 32))),
    ]


@pytest.mark.parametrize("index", range(10))
async def test_a_copied_schedule_input_bent_any_way_is_refused(
    admitter: Admitter, nightly: Catalog, index: int
) -> None:
    what, req = _attacks(nightly)[index]
    admission = await Admitter(lambda: nightly, Keyring(KEY, [KEY]), admitter.policy, admitter.audit).admit(req)
    assert (admission.allow, admission.refused_by) == (False, "proof"), what
    assert admission.requester.verified is False, what


async def test_a_firing_runs_once_its_replay_is_refused(
    admitter: Admitter, nightly: Catalog, store: SqliteAuditStore
) -> None:
    """Even once the schedule was re-signed (a sync after an edit): a firing's run id is not reused."""
    req = scheduled(nightly)
    assert req.proof is not None
    store.append([event(req.run_id, None, EventKind.run_started, ts=req.proof.issued_at - timedelta(days=1))])
    again = await Admitter(lambda: nightly, Keyring(KEY, [KEY]), admitter.policy, admitter.audit).admit(req)
    assert (again.allow, again.refused_by) == (False, "run id")


async def test_a_schedule_without_a_proof_is_an_unverified_principal(admitter: Admitter, nightly: Catalog) -> None:
    """A worker with no key at all makes schedules without proofs: policy sees an unverified
    `schedule` (the shipped policy lets it start an open playbook), and its params are nobody's."""
    req = scheduled(nightly).model_copy(update={"proof": None})
    admission = await Admitter(lambda: nightly, Keyring(KEY, [KEY]), admitter.policy, admitter.audit).admit(req)
    assert admission.allow and admission.requester.verified is False
    assert admission.provenance["params"] == {"replicas": "requester", "environment": "requester"}


async def test_an_admission_pins_each_sub_playbook_to_its_version_now(policy: EmbeddedEngine, store: SqliteAuditStore) -> None:
    """What a run's `playbook.run` steps will start is decided here, with the run: a child edited
    later (before an approval's vote) must not run as edited (tests/security/test_reload_drift_runs.py)."""
    child = load_text(OPEN.replace("name: open", "name: child"))
    caller = load_text(OPEN.replace("name: open", "name: caller").replace(
        "  - {id: note, action: core.log, with: {message: \"{{ params.replicas }}\"}}",
        "  - {id: call, action: playbook.run, with: {name: child}}"))
    catalog = Catalog([load_text(OPEN), child, caller])
    admitter = Admitter(lambda: catalog, Keyring(KEY, [KEY]), policy, AuditWriter(store))
    admission = await admitter.admit(request(catalog, "caller"))
    assert admission.allow, admission.reasons
    assert admission.children == {"child": child.hash}
    assert (await admitter.admit(request(catalog))).children == {}


async def test_a_root_pins_its_grandchildren_and_a_child_keeps_its_roots_pins(
    policy: EmbeddedEngine, store: SqliteAuditStore
) -> None:
    """Review: a child's own admission (when its call step starts, after the root's vote) pinned the
    grandchildren to the catalog then, so a grandchild edited while the vote was due ran as edited."""
    call = "  - {id: note, action: core.log, with: {message: \"{{ params.replicas }}\"}}"
    grandchild = load_text(OPEN.replace("name: open", "name: grandchild"))
    child = load_text(OPEN.replace("name: open", "name: child").replace(
        call, "  - {id: call, action: playbook.run, with: {name: grandchild}}"))
    caller = load_text(OPEN.replace("name: open", "name: caller").replace(
        call, "  - {id: call, action: playbook.run, with: {name: child}}"))
    catalog = Catalog([load_text(OPEN), grandchild, child, caller])
    admitter = Admitter(lambda: catalog, Keyring(KEY, [KEY]), policy, AuditWriter(store))
    root = await admitter.admit(request(catalog, "caller"))
    assert root.children == {"child": child.hash, "grandchild": grandchild.hash}
    pinned = {"child": child.hash, "grandchild": "sha256:" + "0" * 64}  # as the root found it, since edited
    link = ParentLink(run_id="parent-run", step_id="call", root_run_id="parent-run", requester=_requester(), pins=pinned)
    assert admitter._children(child.playbook, link) == pinned
