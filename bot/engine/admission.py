"""`run.admit`: the worker's own check of a run before its first step.

Anyone who can reach Temporal can start a `PlaybookRun` with any snapshot, params and requester,
under any workflow id. The worker therefore runs nothing it cannot vouch for: the run id must be
new to the audit trail, the playbook must be in its own catalog at the same content hash, the
params must pass the playbook's own checks, the requester's proof (if any) must verify, and the
`start` rule must allow it. A local activity: its answer is recorded in history, so a replay (or
a worker with another key or catalog) decides the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Awaitable, Callable, Literal, get_args

import structlog
from pydantic import BaseModel, Field
from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from bot.alerts.payload import too_big_to_run
from bot.audit.events import AuditEvent
from bot.audit.recorder import AUDIT_UNAVAILABLE, AuditWriter
from bot.audit.store import AuditUnavailable
from bot.engine.locking import LockKeyError, render_lock_key
from bot.engine.locks import RUN_WORKFLOW
from bot.engine.state import FrontVerdict, ParentLink, Requester, RunStatus, TriggerContext
from bot.engine.verdicts import VERDICT_SKEW, start_doc, start_seal_holds, start_sources
from bot.identity import principals
from bot.identity.principals import Actor, VerifiedBy
from bot.identity.proofs import START_SKEW, Keyring, Proof, ProofError, schedule_content, start_content
from bot.playbook.loader import Catalog, UnknownPlaybook, child_names
from bot.playbook.model import Playbook
from bot.playbook.params import ParamError, coerce_params
from bot.policy.engine import PolicyEngine
from bot.policy.inputs import PLAYBOOK, rfc3339
from bot.policy.models import input_digest

log = structlog.get_logger(__name__)
VERIFIERS = frozenset(get_args(VerifiedBy))

# Which check refused a run (a fixed code, for the audit trail and tests).
RUN_ID, REQUESTER, CATALOG, PARAMS, PROOF, START = "run id", "requester", "catalog", "params", "proof", "start"
CONCURRENCY = "concurrency"
PARENT = "parent"
ALERT = "alert"
SCHEDULED_RUN_ID = re.compile(r"-[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")  # Temporal's suffix
CHILD_DEPTH_MAX = 8  # sub-playbooks calling sub-playbooks: cycles are refused at load, this bounds the rest
PARENT_UNKNOWN = "ParentUnknown"


PARENT_READ_TIMEOUT = timedelta(seconds=10)


@dataclass(frozen=True)
class ParentRun:
    """The execution that started a child run, as Temporal describes it, and what its own status
    says (read only from a PlaybookRun on the bot's queue, where the bot's code answers)."""

    workflow_type: str
    task_queue: str
    own_queue: str  # the queue the child's admission runs on: the bot's
    own_namespace: str
    requester: Requester | None
    children: tuple[tuple[str, str], ...] = ()  # (step, child run id) its status lists


async def read_parent(workflow_id: str, run_id: str | None) -> ParentRun:
    """The parent execution of the run being admitted (run.admit is its local activity): that run
    of the id, not whichever is newest (a reset or a new workflow under a terminated run's id would
    otherwise answer for it)."""
    info = activity.info()
    handle = activity.client().get_workflow_handle(workflow_id, run_id=run_id)
    desc = await handle.describe(rpc_timeout=PARENT_READ_TIMEOUT)
    requester, children = None, ()
    if desc.workflow_type == RUN_WORKFLOW and desc.task_queue == info.task_queue:
        status = await handle.query("status", result_type=RunStatus, rpc_timeout=PARENT_READ_TIMEOUT)
        # what its playbook.run step gives its child (bot/engine/subplaybooks.py)
        requester = status.requester or Requester(principal=status.requested_by, person=status.requested_by)
        children = tuple((c.step, c.run_id) for c in status.children)
    return ParentRun(desc.workflow_type, desc.task_queue, info.task_queue, info.namespace, requester, children)


class AdmitRequest(BaseModel):
    run_id: str
    playbook: Playbook
    playbook_hash: str
    params: dict[str, Any] = Field(default_factory=dict)
    trigger: TriggerContext
    proof: Proof | None = None
    started_at: datetime = Field(
        description="When the run's first task ran (Temporal's clock, not the client's): the `start` input's time."
    )
    audit: list[AuditEvent] = Field(default_factory=list)
    parent: ParentLink | None = Field(None, description="What the run's input claims about its parent run.")
    temporal_parent: str | None = Field(
        None, description="The workflow that started this run, as Temporal recorded it (None: a client did)."
    )
    temporal_parent_run: str | None = Field(None, description="That workflow's run (execution), as Temporal recorded it.")
    temporal_parent_namespace: str | None = Field(None, description="That workflow's namespace, as Temporal recorded it.")
    execution: str | None = Field(
        None, description="This run's execution as its event ids carry it: its own events are no earlier run."
    )
    verdict: FrontVerdict | None = Field(None, description="The front door's sealed `start` answer (RunInput.verdict).")
    accepted_at: datetime | None = Field(None, description=(
        "When Temporal accepted this execution's start (its workflow_start_time; started_at is its first task's, "
        "later when the run waited for a worker); None: started_at."
    ))


class Admission(BaseModel):
    allow: bool
    refused_by: str | None = None  # run id | requester | alert | parent | catalog | params | proof | start | concurrency
    reasons: list[str] = Field(default_factory=list)
    params: dict[str, Any] = Field(default_factory=dict)
    requester: Requester
    provenance: dict[str, Any] = Field(default_factory=dict)
    lock_key: str | None = Field(None, description="The rendered concurrency key (format v1.1), checked here.")
    foreach_max: int | None = Field(None, description=(
        "Items a foreach group may have (PLAYBOOK_BOT_FOREACH_MAX), decided here so a replay reads the same bound; "
        "None: the workflow's default."
    ))
    start_asked_by: Literal["front door"] | None = Field(None, description=(
        "Set when the front door's sealed `start` answer was used instead of asking (bot/engine/verdicts.py)."
    ))
    children: dict[str, str] = Field(default_factory=dict, description=(
        "Each sub-playbook the run may call (playbook.run), by name: its content hash in this worker's catalog "
        "now. The child that runs must still be that version (bot/engine/children.py)."
    ))

    @property
    def message(self) -> str:
        return f"refused by the worker's {self.refused_by} check: " + "; ".join(self.reasons)


def _accepted(request: AdmitRequest) -> datetime:
    """When Temporal accepted the start: a proof's age and a verdict's are measured from it, not
    from the first task (a run that waited for a worker, through an outage, is the same start)."""
    return request.accepted_at or request.started_at


class Admitter:
    """Holds what the check needs: the worker's catalog, its envelope keys and its policy."""

    def __init__(
        self,
        catalog: Callable[[], Catalog],
        keyring: Keyring,
        policy: PolicyEngine,
        audit: AuditWriter | None = None,
        foreach_max: int | None = None,
        refresh: Callable[[], Awaitable[bool]] | None = None,
        parents: Callable[[str, str | None], Awaitable[ParentRun]] = read_parent,
    ) -> None:
        self.catalog = catalog
        # Reload the catalog now (LiveCatalog.reload): a front door that reloaded an edit before
        # this worker did must not have its run refused for a version this worker is about to serve.
        self.refresh = refresh
        self.keyring = keyring
        self.policy = policy
        self.audit = audit or AuditWriter(None)
        self.foreach_max = foreach_max
        self.parents = parents

    @activity.defn(name="run.admit")
    async def admit(self, request: AdmitRequest) -> Admission:
        await self.audit.write(request.audit)
        trigger = request.trigger
        unverified = Requester(principal=trigger.requested_by, person=trigger.requested_by)
        with structlog.contextvars.bound_contextvars(run_id=request.run_id, playbook=request.playbook.name):
            # The store read runs while the checks below and the `start` question do (issue 17: they
            # are independent); its answer still comes first: a used run id is refused as such. It
            # is handed to its thread before the checks start: a task would begin only at their
            # first pause, and they may not pause before the end (measured: the read began 1.2 ms
            # into an admission of 1.9 ms, whose checks took 0.6).
            reading = self.audit.run_recorded(request.run_id, request.execution)  # a reset of this run is this run
            try:
                admission = await self._checked(request, unverified)
            except BaseException:
                if not reading.cancel() and not reading.cancelled():
                    reading.exception()  # (answered already: its failure, if any, is not this one's to tell)
                raise
            if problem := await self._run_id_problem(request.run_id, request.proof, reading):
                admission = _refusal(RUN_ID, problem, unverified, request.params)
            if not admission.allow:
                log.warning("run refused by the worker", check=admission.refused_by, reason=admission.reasons[0],
                            requested_by=admission.requester.principal)
            return admission

    async def _checked(self, request: AdmitRequest, unverified: Requester) -> Admission:
        """Every check but the run id's, in order: the first refusal, or the admission."""
        trigger = request.trigger
        try:
            principals.check(trigger.requested_by)
        except principals.PrincipalError as exc:
            return _refusal(REQUESTER, f"the requester is not a principal: {exc}", unverified, request.params)
        if trigger.alert is not None and (problem := too_big_to_run(trigger.alert)):
            # (the webhook's own check; a run started straight on Temporal is asked here: red team, stop 54)
            return _refusal(ALERT, problem, unverified, request.params)
        if problem := self._parent_problem(request) or await self._parent_not_ours(request):
            return _refusal(PARENT, problem, unverified, request.params)
        if (problem := self._catalog_problem(request)) and self.refresh is not None and await self.refresh():
            problem = self._catalog_problem(request)
        if problem:
            return _refusal(CATALOG, problem, unverified, request.params)
        try:
            params = coerce_params(request.playbook, request.params)
        except ParamError as exc:
            return _refusal(PARAMS, f"params do not pass the playbook's checks: {exc}", unverified, request.params)
        try:
            actor = self._actor(request, params)
        except ProofError as exc:
            return _refusal(PROOF, f"the start's proof does not verify: {exc}", unverified, params)
        sources = start_sources(request.playbook, params, trigger, actor)
        if actor.verified_by == "schedule":  # the catalog's own file chose them, and the proof pins them
            sources = {**sources, "params": {name: PLAYBOOK for name in params}}
        verdict = await self._front_start(request, params, actor, sources)
        if verdict is None:
            verdict = await self.policy.start(start_doc(
                request.playbook, request.playbook_hash, request.run_id, trigger, params, actor, sources,
                request.started_at,
            ))
        requester = Requester(
            principal=actor.principal,
            person=verdict.person or actor.principal,
            verified=actor.verified,
            verified_by=actor.verified_by,
        )
        if not verdict.allow:
            return _refusal(START, "; ".join(verdict.reasons) or "no reason given", requester, params, sources)
        try:
            key = render_lock_key(request.playbook, params, trigger.alert)
        except LockKeyError as exc:
            return _refusal(CONCURRENCY, str(exc), requester, params, sources)
        foreach_max = self.foreach_max if request.playbook.foreach_groups() else None  # v1: as it was
        return Admission(allow=True, params=params, requester=requester, provenance=sources, lock_key=key,
                         foreach_max=foreach_max, start_asked_by="front door" if request.verdict is verdict else None,
                         children=self._children(request.playbook, request.parent))

    def _children(self, playbook: Playbook, parent: ParentLink | None) -> dict[str, str]:
        """The content hash of every sub-playbook below `playbook` (children, theirs, ...): a child
        run keeps the pins its root's admission set (review: grandchildren were pinned only when their
        parent started, after the root's vote), this worker's catalog now gives the rest."""
        catalog = self.catalog()
        pins: dict[str, str] = {}
        waiting = list(child_names(playbook))
        while waiting:
            name = waiting.pop()
            if name in pins or name not in catalog:
                continue
            loaded = catalog.get(name)
            pins[name] = loaded.hash
            waiting += child_names(loaded.playbook)
        return {**pins, **(parent.pins if parent is not None else {})}

    async def _front_start(self, request: AdmitRequest, params: dict[str, Any], actor: Actor,
                           sources: dict[str, Any]) -> FrontVerdict | None:
        """The front door's sealed allow, when it is the answer this worker would get itself now:
        sealed to the start's (verified) proof with a key of this worker, asked of this worker's
        policy version (as a question would find it: files changed since are looked for), within
        VERDICT_SKEW of Temporal's acceptance of the start, on this admission's own input (its time
        the verdict's). None: ask (a deny is never taken on trust either: the front door starts
        nothing it was refused, so one here is asked again; nor is anything this cannot read)."""
        front, proof = request.verdict, request.proof
        if front is None or proof is None or not front.allow or request.parent is not None:
            return None
        if proof.purpose != "start" or actor.verified_by in (None, "schedule"):
            return None
        current = getattr(self.policy, "current_verdict_hash", None)
        version = await current() if current is not None else None
        if version is None or front.policy_hash != version:
            log.info("front door's start answer not used: another policy version", asked=front.policy_hash,
                     worker=version)
            return None
        try:
            if abs(_accepted(request) - front.at) > VERDICT_SKEW:
                return None
            if not start_seal_holds(front, request.run_id, proof, self.keyring):
                log.warning("front door's start answer not used: its seal does not hold with this worker's keys")
                return None
            doc = start_doc(request.playbook, request.playbook_hash, request.run_id, request.trigger, params, actor,
                            sources, front.at)
            if input_digest(doc) != front.doc:
                log.info("front door's start answer not used: it was asked on another input")
                return None
        except (TypeError, ValueError) as exc:  # (an input no digest can hold: asked, and refused, as before)
            log.info("front door's start answer not used: it cannot be checked", error=str(exc))
            return None
        return front

    async def _run_id_problem(self, run_id: str, proof: Proof | None,
                              reading: Awaitable[datetime | None]) -> str | None:
        """A run id names one run at a time. Temporal starts a closed workflow id again for any
        client that asks, which could replay an earlier run's start proof. So an id already on
        the record is admitted again only with a start proof issued more than START_SKEW after that
        earlier run was recorded: a front door decided to run it again (an alert episode with
        `on_rerun: start`, after Temporal's retention of a day at least); the margin is the clock
        difference between a front door (the proof) and a worker (the run's events) that the proof
        check already tolerates. Event ids carry the execution, so both runs keep their whole
        trail. Whether the proof is genuine is checked next, like any other. A store that cannot be
        read does not stop an unverified start (any client can start one under a new id; its first
        writes wait in the run, logged as an error), but fails one with a proof (retried, then the
        run is refused as not checked): with the audit spool a run acts while the store is down,
        so "unknown" must not admit a replayed proof and the identity it vouches for."""
        try:
            earlier = await reading  # AuditWriter.run_recorded
        except AuditUnavailable as exc:
            if proof is None:
                log.error("audit store unreadable: cannot tell whether this run id was used before", error=str(exc))
                return None
            raise ApplicationError(
                f"audit store unavailable: cannot tell whether run id {run_id!r} was used before: {exc}",
                type=AUDIT_UNAVAILABLE,
            ) from None
        if earlier is None or (proof is not None and proof.purpose == "start" and proof.issued_at > earlier + START_SKEW):
            return None  # (a schedule's proof is older than its firings: one firing, one run, never again)
        return (f"run id {run_id!r} was already used by an earlier run, and this start's proof was not issued well "
                f"after that run (more than {START_SKEW} later): a run id names one run, and a proof starts one run")

    def _parent_problem(self, request: AdmitRequest) -> str | None:
        """A child run (trigger `playbook`) is believed only when Temporal says its claimed parent
        started it: a client can write any input, but cannot make a workflow its parent."""
        trigger, parent = request.trigger, request.parent
        if trigger.kind != "playbook" and parent is None:
            return None
        if trigger.kind != "playbook" or parent is None:
            return "a child run needs both trigger 'playbook' and its parent run; this run claims only one of them"
        if request.temporal_parent is None:
            return (f"it claims to be a child of run {parent.run_id!r}, but no workflow started it (a client did): "
                    "child runs are started by their parent's playbook.run step")
        if request.temporal_parent != parent.run_id:
            return (f"it claims to be a child of run {parent.run_id!r}, but was started by workflow "
                    f"{request.temporal_parent!r}")
        if parent.requester.principal != trigger.requested_by:
            return f"its requester {trigger.requested_by!r} is not its parent's ({parent.requester.principal!r})"
        if parent.depth > CHILD_DEPTH_MAX:
            return f"sub-playbooks nest {parent.depth} deep; at most {CHILD_DEPTH_MAX}"
        return None

    async def _parent_not_ours(self, request: AdmitRequest) -> str | None:
        """A parent Temporal names is still anyone's workflow: someone who can reach the namespace
        can run a worker whose workflow starts a PlaybookRun child on the bot's queue, with any
        requester in its input (tests/security/test_child_runs.py). So the parent execution
        Temporal names (by run, and in the bot's namespace) must be a PlaybookRun whose tasks go
        to the bot's queue, the requester the child claims must be the one the parent's own status
        gives (its admission's), and that status must list this child for the step it claims."""
        parent, started_by = request.parent, request.temporal_parent
        if parent is None or started_by is None:
            return None
        try:
            found = await self.parents(started_by, request.temporal_parent_run)
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return f"the workflow {started_by!r} that started it is gone"
            raise ApplicationError(f"cannot read the parent run {started_by!r}: {exc}", type=PARENT_UNKNOWN) from None
        namespace = request.temporal_parent_namespace
        if namespace is not None and namespace != found.own_namespace:
            return f"it was started from namespace {namespace!r}, not the bot's {found.own_namespace!r}"
        if found.workflow_type != RUN_WORKFLOW:
            return f"it was started by a {found.workflow_type!r} workflow ({started_by!r}), not by a run of the bot's"
        if found.task_queue != found.own_queue:
            return (f"its parent {started_by!r} runs on task queue {found.task_queue!r}, not the bot's "
                    f"{found.own_queue!r}: it is not a run of the bot's")
        if found.requester is None or (found.requester.principal, found.requester.verified, found.requester.verified_by) != (
                parent.requester.principal, parent.requester.verified, parent.requester.verified_by):
            said = _who(found.requester) if found.requester else "no one"
            return f"its parent's requester is {said}, not the {_who(parent.requester)} it claims"
        if (parent.step_id, request.run_id) not in found.children:
            return f"its parent's status lists no child {request.run_id!r} of step {parent.step_id!r}"
        return None

    def _catalog_problem(self, request: AdmitRequest) -> str | None:
        name = request.playbook.name
        try:
            known = self.catalog().get(name)
        except UnknownPlaybook:
            return f"playbook {name!r} is not in this worker's catalog"
        actual = request.playbook.content_hash()
        if actual != request.playbook_hash:
            return f"the snapshot of {name!r} does not hash to the {request.playbook_hash} it claims"
        if actual != known.hash and not self.catalog().retired(name, actual):
            return (
                f"{name!r} at {actual[:19]} is not the version in this worker's catalog ({known.hash[:19]}): "
                "deploy the same playbooks to front doors and workers"
            )
        return None

    def _actor(self, request: AdmitRequest, params: dict[str, Any]) -> Actor:
        trigger = request.trigger
        proof = request.proof
        if request.parent is not None:  # checked by _parent_problem: the parent's admission verified it
            who = request.parent.requester
            verified_by = who.verified_by if who.verified and who.verified_by in VERIFIERS else None
            return Actor(who.principal, verified_by=verified_by)  # type: ignore[arg-type]
        if proof is None:
            return Actor(trigger.requested_by)  # unverified: no groups, whatever was claimed
        if trigger.kind == "schedule" or proof.purpose == "schedule":
            return self._scheduled_actor(request)
        content = start_content(request.playbook.name, request.playbook_hash, request.params, trigger.model_dump(mode="json"))
        actor = self.keyring.check(proof, "start", request.run_id, content)
        if actor.principal != trigger.requested_by:
            raise ProofError(f"it names {actor.principal}, but the run claims {trigger.requested_by}")
        age = _accepted(request) - proof.issued_at
        if age > START_SKEW or -age > START_SKEW:
            raise ProofError(f"it was issued at {rfc3339(proof.issued_at)}, too far from the start "
                             f"({rfc3339(_accepted(request))})")
        return actor

    def _scheduled_actor(self, request: AdmitRequest) -> Actor:
        """A scheduled run's proof was signed by a worker when it created the schedule, maybe months
        ago, so it has no start-time age: instead it is bound to the schedule (the run id must be
        that schedule's id plus the firing time Temporal appends) and to the playbook's version and
        params, which the catalog check holds to the worker's own. A copy of the schedule's input
        can only fire the same run again, what Temporal lets anyone who can trigger the schedule do."""
        trigger, proof = request.trigger, request.proof
        assert proof is not None
        if proof.purpose != "schedule" or trigger.kind != "schedule" or trigger.schedule is None:
            raise ProofError("a scheduled run needs trigger 'schedule' naming its schedule and a schedule's proof; "
                             f"this one has trigger {trigger.kind!r} and a {proof.purpose} proof")
        run_id = request.run_id
        suffix = run_id[len(trigger.schedule):] if run_id.startswith(trigger.schedule) else ""
        if not SCHEDULED_RUN_ID.fullmatch(suffix):
            raise ProofError(f"run id {run_id!r} is not one schedule {trigger.schedule!r} starts "
                             "(its id followed by the firing time)")
        start = start_content(request.playbook.name, request.playbook_hash, request.params, trigger.model_dump(mode="json"))
        actor = self.keyring.check(proof, "schedule", trigger.schedule, schedule_content(trigger.schedule, start))
        if actor.principal != trigger.requested_by or actor.verified_by != "schedule":
            raise ProofError(f"it names {actor.principal}, but the run claims {trigger.requested_by}")
        return actor


def _who(requester: Requester) -> str:
    how = f"verified by {requester.verified_by}" if requester.verified else "unverified"
    return f"{requester.principal!r} ({how})"


def _refusal(check: str, reason: str, requester: Requester, params: dict[str, Any],
             sources: dict[str, Any] | None = None) -> Admission:
    return Admission(
        allow=False, refused_by=check, reasons=[reason], params=params, requester=requester, provenance=sources or {}
    )
