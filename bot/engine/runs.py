"""Starting and reading runs: what the CLI, Slack and the Alertmanager receiver share."""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import structlog
from temporalio.api.enums.v1 import WorkflowExecutionStatus
from temporalio.client import (
    Client,
    RPCTimeoutOrCancelledError,
    WorkflowExecutionDescription,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.service import RPCError, RPCStatusCode

from bot.engine.locking import LockKeyError, render_lock_key
from bot.engine.locks import busy_holder
from bot.engine.state import (
    CancelRequest,
    CancelResult,
    ConfirmRequest,
    ConfirmResult,
    RunInput,
    RunStatus,
    TriggerContext,
    TriggerKind,
    VoteRequest,
    VoteResult,
)
from bot.engine.approvals import VOTE_REFUSED
from bot.engine.front_approver import FrontApprover
from bot.engine.verdicts import seal_start, start_doc, start_sources
from bot.engine.workflow import CANCEL_DUPLICATE, CANCEL_UNSUPPORTED, PlaybookRun
from bot.identity.principals import Actor
from bot.identity.proofs import Keyring, cancel_content, confirm_content, start_content, vote_content
from bot.playbook.loader import Catalog, LoadedPlaybook, UnknownPlaybook
from bot.policy.engine import PolicyEngine
from bot.policy.models import Verdict
from bot.policy.inputs import policy_input

log = structlog.get_logger(__name__)

QUERY_TIMEOUT = timedelta(seconds=5)


class RunError(RuntimeError):
    """A refused or failed operation on a run; the message is for the operator. `code` is what
    kind (refused: a rule said no; not_found; conflict: the run or step is not in a state for it;
    invalid; unavailable: Temporal or a worker did not answer) and `rule` which check said so, so
    the HTTP API picks its status without reading the message."""

    def __init__(self, message: str, code: str = "refused", rule: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.rule = rule


def _refused(cause: BaseException | None) -> RunError:
    """A workflow's VoteRefused/CancelRefused as a RunError, keeping the code and rule it carries."""
    details = getattr(cause, "details", None) or ()
    info = details[0] if details and isinstance(details[0], dict) else {}
    return RunError(
        getattr(cause, "message", None) or str(cause), str(info.get("code") or "refused"), info.get("rule")
    )


class RunBusy(RunError):
    """The playbook's concurrency key is held and it says `refuse`: nothing started."""

    def __init__(self, key: str, holder: str) -> None:
        super().__init__(
            f"busy: concurrency key {key!r} is held by run {holder}; this playbook refuses to queue "
            "(on_busy: refuse): try again when that run has ended",
            "conflict",
            "concurrency",
        )
        self.key = key
        self.holder = holder


async def lock_conflict(
    client: Client, loaded: LoadedPlaybook, params: dict[str, Any], trigger: TriggerContext, run_id: str | None
) -> str | None:
    """For a refuse/attach playbook whose key another run holds: that run's id (RunBusy for
    refuse). A key that does not render is a RunError (the worker would refuse the run). The
    worker enforces the lock again: this answer only spares a start that could not act."""
    lock = loaded.playbook.concurrency
    if lock is None:
        return None
    try:
        key = render_lock_key(loaded.playbook, params, trigger.alert)
    except LockKeyError as exc:
        raise RunError(str(exc), "invalid", "concurrency") from None
    if lock.on_busy == "queue" or key is None:
        return None
    holder = await busy_holder(client, key, lock.limit)
    if holder is None or holder == run_id:
        return None
    if lock.on_busy == "refuse":
        raise RunBusy(key, holder)
    return holder


def new_run_id(playbook: str, now: datetime | None = None) -> str:
    now = now or datetime.now(timezone.utc)
    return f"{playbook}-{now:%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


def start_policy_input(
    loaded: LoadedPlaybook, params: dict[str, Any], trigger: TriggerContext, actor: Actor
) -> dict[str, Any]:
    """DESIGN.md's policy input without `step`, with `user`, for no run in particular: who may
    start which playbook (a dry run, or whether someone may read a run). A start asks `ask_start`'s."""
    run = {"trigger": trigger.kind, "requested_by": trigger.requested_by}
    return policy_input(
        loaded.playbook, loaded.hash, run, params, trigger.alert, datetime.now(timezone.utc),
        user=actor.policy_user(), sources=start_sources(loaded.playbook, params, trigger, actor),
    )


@dataclass(frozen=True)
class StartAsked:
    """The `start` rule's answer for run `run_id` as this front door asked it, on the input the
    worker's admission builds (its time `at`), and the policy version this engine was sure it
    answered with (None: unknown, e.g. OPA): `run_input` seals an allow for the admission to use."""

    run_id: str
    at: datetime
    doc: str | None  # the engine's input_digest of the input asked (None: it has none, not being JSON)
    verdict: Verdict
    version: str | None

    @property
    def sealable(self) -> bool:
        return (self.verdict.allow and self.doc is not None and self.version is not None
                and self.verdict.policy_hash == self.version)


async def ask_start(policy: PolicyEngine, loaded: LoadedPlaybook, params: dict[str, Any], trigger: TriggerContext,
                    actor: Actor, run_id: str) -> StartAsked:
    """The `start` rule for run `run_id`, asked now on the input the worker's admission builds."""
    at = datetime.now(timezone.utc)
    doc = start_doc(loaded.playbook, loaded.hash, run_id, trigger, params, actor,
                    start_sources(loaded.playbook, params, trigger, actor), at)
    version = getattr(policy, "verdict_hash", None)  # read before asking: another version's answer is not sealed
    answer = await policy.start(doc)
    # The digest the engine recorded (models.input_digest, what the admission compares): none for an
    # input that is not JSON (an alert's overflowing value), which the engine refused; nothing is sealed.
    return StartAsked(run_id, at, answer.input_digest, answer, version)


async def check_start(
    policy: PolicyEngine,
    loaded: LoadedPlaybook,
    params: dict[str, Any],
    trigger: TriggerContext,
    actor: Actor,
    run_id: str,
) -> StartAsked:
    """The `start` rule, asked before anything starts; a deny is a RunError with the reasons.
    (The worker checks it again itself, with this answer when it can tell it is its own: see
    bot/engine/verdicts.py.)"""
    asked = await ask_start(policy, loaded, params, trigger, actor, run_id)
    if not asked.verdict.allow:
        reasons = "; ".join(asked.verdict.reasons) or "no reason given"
        raise RunError(f"{actor.principal} may not start {loaded.playbook.name}: {reasons}", rule="start")
    return asked


async def why_not_readable(
    policy: PolicyEngine, catalog: Catalog, status: RunStatus, actor: Actor, via: TriggerKind
) -> str | None:
    """None when the actor may read the run: whoever the `start` rule would let start its playbook
    with its params (through the same door); else why not. A playbook no longer loaded is nobody's."""
    try:
        loaded = catalog.get(status.playbook)
    except UnknownPlaybook:
        return f"playbook {status.playbook!r} is not loaded by this front door"
    trigger = TriggerContext(kind=via, requested_by=actor.principal)
    verdict = await policy.start(start_policy_input(loaded, status.params, trigger, actor))
    return None if verdict.allow else "; ".join(verdict.reasons) or "no reason given"


async def check_read(
    policy: PolicyEngine, catalog: Catalog, status: RunStatus, actor: Actor, via: TriggerKind
) -> None:
    """RunError (refused, rule `start`) unless the actor may read the run (`why_not_readable`)."""
    why_not = await why_not_readable(policy, catalog, status, actor, via)
    if why_not is not None:
        raise unreadable(actor, status, why_not)


def unreadable(actor: Actor, status: RunStatus, why_not: str) -> RunError:
    """The refusal of an actor who may not read the run (`why_not_readable` said why)."""
    return RunError(
        f"{actor.principal} may not see runs of {status.playbook}: may not start it: {why_not}", "refused", "start"
    )


# Refusals about the caller, not the run (the policy's verdict on them, their own vote or request):
# told to anyone. The rest (unknown_step, run_state, step_state, step_kind, choices, input, ...)
# say something of the run, and are told only to a caller who may read it (`hidden_from`).
CALLER_RULES = frozenset({"approver", "policy_unavailable", "cancel", "four_eyes", "one_vote_per_person",
                          "unverified", "principal", "size"})


async def hidden_from(
    client: Client, policy: PolicyEngine, catalog: Catalog, run_id: str, actor: Actor, via: TriggerKind,
    refusal: RunError,
) -> tuple[RunStatus, str] | None:
    """(the run's status, why the actor may not read it) when `refusal` says something of a run
    the actor may not read (its steps, their states, a step's choices, that it ended), so the door
    answers as its status read would; None when the refusal may be told as it is (about the
    caller, an unknown run, an outage, or a reader)."""
    if refusal.rule in CALLER_RULES or refusal.rule == "unknown_run" or refusal.code == "unavailable":
        return None
    try:
        status = await get_status(client, run_id)
    except RunError:
        return None
    why_not = await why_not_readable(policy, catalog, status, actor, via)
    return None if why_not is None else (status, why_not)


def run_input(
    loaded: LoadedPlaybook, params: dict[str, Any], trigger: TriggerContext, actor: Actor, keyring: Keyring,
    run_id: str, asked: StartAsked | None = None,
) -> RunInput:
    """The run's input with the front door's proof of who asked (none for an unverified actor),
    and its `start` answer sealed to that proof when it was asked for this very run."""
    if actor.principal != trigger.requested_by:
        raise ValueError(f"actor {actor.principal} is not the requester {trigger.requested_by}")
    content = start_content(loaded.playbook.name, loaded.hash, params, trigger.model_dump(mode="json"))
    proof = keyring.sign("start", run_id, actor, content)
    verdict = None
    if proof is not None and asked is not None and asked.run_id == run_id and asked.sealable and asked.doc:
        try:
            verdict = seal_start(keyring, asked.verdict, asked.doc, asked.at, run_id, proof)
        except ValueError:  # an answer no verdict holds, or too long to carry (reasons): the worker asks
            verdict = None
    return RunInput(playbook=loaded.playbook, playbook_hash=loaded.hash, params=params, trigger=trigger, proof=proof,
                    verdict=verdict)


async def start_run(
    client: Client,
    task_queue: str,
    loaded: LoadedPlaybook,
    params: dict[str, Any],
    trigger: TriggerContext,
    *,
    actor: Actor,
    keyring: Keyring,
    run_id: str | None = None,
    on_conflict: WorkflowIDConflictPolicy = WorkflowIDConflictPolicy.USE_EXISTING,
    memo: dict[str, Any] | None = None,
    asked: StartAsked | None = None,
) -> WorkflowHandle[PlaybookRun, RunStatus]:
    """Start a run; with a natural-key run_id a repeat attaches to the running one instead
    (`on_conflict=FAIL`: WorkflowAlreadyStartedError, for a caller that must tell them apart).
    A playbook whose concurrency key is held: `refuse` raises RunBusy naming the holder, `attach`
    returns the holder's handle (as a duplicate would), `queue` starts a run that waits."""
    holder = await lock_conflict(client, loaded, params, trigger, run_id)
    if holder is not None:
        return client.get_workflow_handle(holder, result_type=RunStatus)
    run_id = run_id or new_run_id(loaded.playbook.name)
    return await client.start_workflow(
        PlaybookRun.run,
        run_input(loaded, params, trigger, actor, keyring, run_id, asked),
        id=run_id,
        task_queue=task_queue,
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        id_conflict_policy=on_conflict,
        memo=memo,
        static_summary=f"{loaded.playbook.name} by {trigger.requested_by} ({trigger.kind})",
    )


async def get_status(client: Client, run_id: str) -> RunStatus:
    """The run's state: the result once closed (no worker needed), the live query while running."""
    handle = client.get_workflow_handle(run_id)
    try:
        desc = await handle.describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise RunError(f"unknown run {run_id!r}", "not_found", "unknown_run") from None
        raise RunError(f"cannot read run {run_id!r}: {exc.message}", "unavailable") from None
    if desc.workflow_type != "PlaybookRun":
        raise RunError(f"{run_id!r} is a {desc.workflow_type} workflow, not a playbook run", "not_found", "unknown_run")
    if desc.raw_description.workflow_execution_info.status == WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_RUNNING:
        try:
            return await handle.query(PlaybookRun.status, rpc_timeout=QUERY_TIMEOUT)
        except RPCError as exc:
            raise RunError(
                f"run {run_id!r} is running but its status cannot be read ({exc.message}): is a worker polling "
                "its task queue?",
                "unavailable",
            ) from None
    try:
        return await client.get_workflow_handle(run_id, result_type=RunStatus).result(follow_runs=False)
    except Exception as exc:  # terminated or timed out by an operator in Temporal itself
        raise RunError(
            f"run {run_id!r} ended outside playbook-bot ({desc.status.name if desc.status else '?'}): {exc}",
            "conflict",
            "run_state",
        ) from None


SHOWN_SKEW = timedelta(minutes=1)  # Slack's clock against Temporal's, for a button's age (execution_of)


async def execution_of(client: Client, run_id: str, *, shown_at: datetime | None = None) -> str:
    """The run's first execution run id, which a vote, answer or cancel is signed for (a run id can
    run again): one describe. RunError for no such run, or when Temporal does not answer.

    `shown_at`: when the button asking this was posted, for a button that does not name its
    execution (posted before buttons did): an execution that started after it (by more than the
    clocks' skew) is a later run under the same run id, which that button was never shown for."""
    try:
        desc = await client.get_workflow_handle(run_id).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise RunError(f"unknown run {run_id!r}", "not_found", "unknown_run") from None
        raise RunError(f"cannot read run {run_id!r}: {exc.message}", "unavailable") from None
    if shown_at is not None and desc.start_time > shown_at + SHOWN_SKEW:
        raise RunError(
            f"this button was posted {shown_at:%Y-%m-%d %H:%M:%SZ}, before run {run_id!r} started "
            f"({desc.start_time:%Y-%m-%d %H:%M:%SZ}): it belongs to an earlier run under that id; "
            "nothing was recorded (use the buttons on the run's own message)",
            "conflict", "run_state",
        )
    return desc.raw_description.workflow_execution_info.first_run_id or desc.run_id


def pinned(client: Client, run_id: str, execution: str) -> WorkflowHandle[Any, Any]:
    """The run's handle for one execution: Temporal itself refuses an update meant for an earlier
    run under this run id."""
    return client.get_workflow_handle(run_id, first_execution_run_id=execution)


async def cancel_run(
    client: Client, run_id: str, actor: Actor, keyring: Keyring, reason: str = "", *, execution: str | None = None
) -> tuple[RunStatus, CancelResult]:
    """Ask the run to cancel on the actor's behalf: the worker asks the `cancel` rule and records
    the canceller. Refused: RunError naming the rule's reasons, and the run goes on as it was.
    The proof is signed for `execution` (default: the one the run's status names)."""
    status = await get_status(client, run_id)
    if status.finished:
        raise RunError(f"run {run_id!r} has already ended ({status.state})", "conflict", "run_state")
    execution = execution or status.execution or await execution_of(client, run_id)
    request = CancelRequest(
        user=actor.principal,
        name=actor.name,
        reason=reason,
        proof=keyring.sign("cancel", run_id, actor, cancel_content(reason), execution=execution),
    )
    handle = pinned(client, run_id, execution)
    try:
        result = await handle.execute_update(PlaybookRun.cancel, request, rpc_timeout=UPDATE_TIMEOUT)
    except WorkflowUpdateFailedError as exc:
        cause = exc.cause
        kind = getattr(cause, "type", None)
        if kind == CANCEL_UNSUPPORTED:  # a run from before verified cancels
            await handle.cancel()
            return status, CancelResult(state=status.state, message="cancel requested (a run from before verified cancels)")
        if kind == CANCEL_DUPLICATE:  # asked again by the same principal: already under way
            return status, CancelResult(state=status.state, message=getattr(cause, "message", "") or str(cause))
        raise _refused(cause) from None
    except (RPCError, RPCTimeoutOrCancelledError) as exc:  # unreachable, or no answer within the timeout
        await _ended_meanwhile(client, run_id, "cancel")
        said = exc.message if isinstance(exc, RPCError) else f"no answer within {UPDATE_TIMEOUT.total_seconds():g}s"
        raise RunError(f"cancel not recorded: {said}", "unavailable") from None
    return status, result


async def vote(client: Client, run_id: str, request: VoteRequest, actor: Actor, keyring: Keyring, *,
               execution: str | None = None, shown_at: datetime | None = None,
               approver: FrontApprover | None = None) -> VoteResult:
    """Cast a vote as `actor`: one update, its proof carrying the principal and groups as verified
    here and bound to `execution` (the run's first execution run id, as a Slack button carries it;
    None: learnt with one describe first). The run decides: its validator refuses what it can
    before anything is recorded (and repeats of a voter it refused). The `approver` rule is asked
    by `approver` here when it can (its answer sealed to the proof, bot/engine/verdicts.py); the
    worker asks it inside the workflow task that takes the vote when the run cannot take that
    answer (another input, policy version or key), or there is none.
    `shown_at`: when the clicked button was posted (see execution_of)."""
    execution = execution or await execution_of(client, run_id, shown_at=shown_at)
    content = vote_content(request.step_id, request.vote, request.reason)
    proof = keyring.sign("vote", run_id, actor, content, execution=execution)
    words = ("vote on", "vote")
    verdict = await approver.ask(run_id, execution, request.step_id, actor, proof) if approver is not None else None
    if verdict is not None:
        try:
            return await _as_actor(client, run_id, execution, PlaybookRun.vote,
                                   request.model_copy(update={"verdict": verdict}), actor, proof, words)
        except RunError as exc:
            if exc.rule != "verdict":
                raise
            log.warning("the worker refused this front door's approver verdict (envelope keys or policy versions "
                        "differ): the vote goes again without it", run_id=run_id, said=str(exc))
    return await _as_actor(client, run_id, execution, PlaybookRun.vote, request, actor, proof, words)


async def confirm(
    client: Client, run_id: str, request: ConfirmRequest, actor: Actor, keyring: Keyring, *,
    execution: str | None = None, shown_at: datetime | None = None,
) -> ConfirmResult:
    """Answer a core.confirm step as `actor` (its proof covers the exact answer and, as a vote's,
    the execution); the workflow refuses an answer outside the step's choices or input (audited),
    then checks it as a vote."""
    execution = execution or await execution_of(client, run_id, shown_at=shown_at)
    content = confirm_content(request.step_id, request.answer, request.reason)
    proof = keyring.sign("confirm", run_id, actor, content, execution=execution)
    return await _as_actor(client, run_id, execution, PlaybookRun.confirm, request, actor, proof, ("answer", "answer"))


UPDATE_TIMEOUT = timedelta(seconds=30)


async def _as_actor(client: Client, run_id: str, execution: str, update: Any, request: Any, actor: Actor,
                    proof: Any, words: tuple[str, str]) -> Any:
    """Send a vote or an answer as `actor` with its proof to the execution it was signed for;
    `words`: (what one does, what one sends). The update is the only call on the way (no status
    read, no policy question first); reading the run's status is left to the paths that go wrong,
    to say why."""
    doing, sent = words
    request = request.model_copy(
        update={"user": actor.principal, "name": request.name or actor.name, "groups": list(actor.groups), "proof": proof}
    )
    try:
        return await pinned(client, run_id, execution).execute_update(update, request, rpc_timeout=UPDATE_TIMEOUT)
    except WorkflowUpdateFailedError as exc:
        refusal = _refused(exc.cause)
        if getattr(exc.cause, "type", None) != VOTE_REFUSED:  # no vote handler: is it a run at all?
            _already_ended(await _status_if_readable(client, run_id), doing)
        raise refusal from None
    except (RPCError, RPCTimeoutOrCancelledError) as exc:  # closed, unknown, another execution, or no answer in time
        status = await _status_if_readable(client, run_id)
        _another_execution(status, execution, doing)
        _already_ended(status, doing)
        counted = _counted(status, request) if status is not None else None
        if counted is not None:  # it counted; only its answer was lost on the way
            return counted
        why = exc.message if isinstance(exc, RPCError) else f"no answer within {UPDATE_TIMEOUT.seconds}s"
        raise RunError(f"{sent} not recorded: {why} (is a worker polling the run's task queue?)",
                       "unavailable") from None


async def _status_if_readable(client: Client, run_id: str) -> RunStatus | None:
    """The run's status, None when it cannot be read now; RunError for no run (unknown, or not a
    playbook run)."""
    try:
        return await get_status(client, run_id)
    except RunError as exc:
        if exc.code == "unavailable":
            return None
        raise


def _another_execution(status: RunStatus | None, execution: str, doing: str) -> None:
    """RunError when the run id runs again: what was asked (an old Slack button) was for the earlier run."""
    if status is not None and status.execution is not None and status.execution != execution:
        raise RunError(
            f"run {status.run_id!r} has run again since this was asked: the run it was for has ended, nothing to "
            f"{doing} (look at the run's new request)", "conflict", "run_state",
        )


def _already_ended(status: RunStatus | None, doing: str) -> None:
    if status is not None and status.finished:
        raise RunError(
            f"run {status.run_id!r} has already ended ({status.state}): nothing to {doing}", "conflict", "run_state"
        )


async def check_approver(
    client: Client, policy: PolicyEngine, status: RunStatus, step_id: str, actor: Actor, doing: str = "vote on"
) -> None:
    """The `approver` rule, asked by a front door with the input the run itself would send (its
    `approver_input` query) and the actor as verified here: a refusal is a RunError naming the
    rule. Votes do not ask it (the run does, once); what may be voted on does (Slack's App Home).
    Anything this cannot ask (a step not waiting, a worker without the query, a policy that
    fails) is left alone."""
    try:
        st = status.step(step_id)
    except KeyError:
        return
    if st.state != "waiting_approval" or actor.principal == status.requested_by:
        return  # the run's validator says so (not waiting; four-eyes), with nothing recorded
    if any(v.user == actor.principal for v in st.approvals):
        return  # one vote per person: the validator again
    run_id = status.run_id
    try:
        doc = await client.get_workflow_handle(run_id).query(
            PlaybookRun.approver_input, step_id, rpc_timeout=QUERY_TIMEOUT
        )
    except (RPCError, WorkflowQueryFailedError):
        return
    verdict = await policy.approver({**doc, "user": actor.policy_user()})
    if verdict.allow or verdict.failure is not None:
        return
    reasons = "; ".join(verdict.reasons) or "the approver policy refused"
    verb = "answer" if doing == "answer" else "approve"  # as the run itself words it (bot/engine/approvals.py)
    raise RunError(
        f"{actor.principal} may not {verb} step {step_id!r}: {reasons} (refused by the approver rule, asked by the "
        f"front door: run {run_id} is unchanged)",
        "refused",
        "approver",
    )


def _counted(status: RunStatus, request: Any) -> VoteResult | ConfirmResult | None:
    """An update whose answer was lost on the way (the front door's deadline passed): what the run
    decided, from its status. The vote counted if the step lists it; else None."""
    try:
        st = status.step(request.step_id)
    except KeyError:
        return None
    cast = next((v for v in st.approvals if v.user == request.user), None)
    if cast is None:
        return None
    if isinstance(request, ConfirmRequest):
        answer = cast.answer if cast.answer is not None else ""
        return ConfirmResult(step_id=st.id, step_state=st.state, answer=answer,
                             message=f"{request.user} answered {answer!r}")
    count = sum(1 for v in st.approvals if v.vote == "approve")
    needed = int((st.decision or {}).get("min_approvals") or 1)
    verb = "rejected" if cast.vote == "reject" else f"approved ({count}/{needed})"
    return VoteResult(step_id=st.id, step_state=st.state, approvals=count, needed=max(1, needed),
                      message=f"{request.user} {verb}")


async def _ended_meanwhile(client: Client, run_id: str, what: str) -> None:
    """An update that met a closing run: say so, instead of Temporal's update-aborted text."""
    with contextlib.suppress(RPCError):
        if await is_running(client, run_id) is False:  # another vote decided, or a cancel, meanwhile
            raise RunError(
                f"run {run_id!r} ended while your request was on its way: nothing to {what}", "conflict", "run_state"
            ) from None


async def is_running(client: Client, run_id: str) -> bool | None:
    """True while the execution is open, False once it closed, None if there is no such run;
    other RPC errors are the caller's to name."""
    desc = await run_description(client, run_id)
    return None if desc is None else is_open(desc)


async def run_description(client: Client, run_id: str) -> WorkflowExecutionDescription | None:
    """The run's latest execution as Temporal describes it, None if there is no such run; other
    RPC errors are the caller's to name."""
    try:
        return await client.get_workflow_handle(run_id).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return None
        raise


def is_open(desc: WorkflowExecutionDescription) -> bool:
    status = desc.raw_description.workflow_execution_info.status
    return status == WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_RUNNING
