"""PlaybookRun: the one generic workflow that interprets a validated playbook snapshot.

Deterministic by construction: templates render from workflow state only, every side effect is
an activity, time comes from `workflow.now()`. State lives in memory and is read by the `status`
query, so bookkeeping adds no round trips.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy as TemporalRetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError, FailureError, TimeoutError

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel, ValidationError

    from bot.actions.activities import describe_validation_error, started_event
    from bot.actions.base import ActionInput, ActionResult
    from bot.audit.events import AuditEvent, EventKind, canonical_json
    from bot.audit.recorder import AuditBatch, AuditMode, event
    from bot.actions.core import ApproveParams, ConfirmParams, FailParams, SleepParams
    from bot.engine.admission import Admission, AdmitRequest
    from bot.engine.answers import HOLDS, SEALED, AnswerCheck, answer_digest
    from bot.engine.approvals import (
        NAME_MAX,
        POLICY_FAILED,
        REASON_MAX,
        VOTE_BYTES_MAX,
        ApprovalBook,
        RefusedVoters,
        VoteRefused,
        policy_failed,
        proof_holds,
    )
    from bot.engine.locking import ID_MAX, NOTICE_SIGNAL, LockNotice, LockRelease, LockRequest, LockView
    from bot.engine.shield import uncancellable
    from bot.engine import results
    from bot.engine.callers import CALLER_REFUSED, CALLER_UNKNOWN
    from bot.engine.spool import CARRY_MAX, HELD_PATCH, AuditSpool
    from bot.engine.subplaybooks import POKE_SIGNAL, SubPlaybooks
    from bot.actions.playbooks import RUN_ACTION
    from bot.engine.state import (
        ERROR_MAX,
        CancelRequest,
        CancelResult,
        CompensationStatus,
        ConfirmRequest,
        ConfirmResult,
        FallbackStatus,
        Poke,
        Requester,
        RunInput,
        RunStatus,
        StepStatus,
        VoteRequest,
        VoteResult,
        cut_text,
        payload_size,
    )
    from bot.identity import principals
    from bot.identity.proofs import START_SKEW, cancel_content, confirm_content, vote_content
    from bot.playbook.durations import format_duration, parse_duration
    from bot.policy.activities import ActorAnswer, Claim, DecisionAnswer, PolicyRequest
    from bot.policy.inputs import policy_input, rfc3339
    from bot.policy.models import ActorVerdict, Decision
    from bot.slack.notifier import SlackState, SlackSync
    from bot.engine.foreach import ForeachRuns
    from bot.engine.verdicts import DOC_BYTES_MAX, DOC_FIELD, actor_verdict, fits
    from bot.playbook.model import FAIL_ACTION, FOREACH_ACTION, Compensation, Fallback, ForeachGroup, ParallelGroup, RetryPolicy, Step
    from bot.playbook.outputs import NOTHING, RUN_OUTPUT_BUDGET, OutputNeeds, json_size, needs_of, shared_playbook
    from bot.playbook.templating import TemplateError, display, inert, render, render_args, truthy

HEARTBEAT_TIMEOUT = timedelta(seconds=10)
DEFAULT_APPROVAL_TIMEOUT = "15m"
SLEEP_ACTION = "core.sleep"
APPROVE_ACTION = "core.approve"  # v1.1 human steps: answered by votes/answers in the workflow (no activity)
CONFIRM_ACTION = "core.confirm"
HUMAN_STEP_ACTIONS = (APPROVE_ACTION, CONFIRM_ACTION)
REFUSED_ANSWERS_AUDITED = 10  # per step: a client repeating bad answers cannot grow the record without bound
ON_FAILURE_GROUP = "on_failure"  # StepStatus.group of the playbook-level on_failure steps
AUDIT_PATCH = "audit-trail-v1"
SLACK_PATCH = "slack-sync-v1"
SLACK_BESIDE_PATCH = "slack-beside-v1"  # Slack syncs in its own coroutine; steps and votes never wait for it
VOTES_PATCH = "refused-votes-v1"  # refused voters remembered (validator), bounded audit and approver input
ALERT_FACTS = ("status", "labels", "fingerprint", "startsAt")  # what of the alert a vote's approver check carries
TRUST_PATCH = "trust-v1"  # the worker admits the run, checks proofs and decides cancels itself
OUTPUTS_PATCH = "outputs-v1"  # large outputs stay in the audit trail; the outputs a run keeps have a budget
# Every patch above (and the spool's two) at once: a run from it on records this one marker, and
# LOCAL_ACTIONS also run as local activities.
ENGINE_V2_PATCH = "engine-v2"
# engine-v2, and a vote's (or an answer's) `approver` check is a local activity, inside the workflow
# task that takes the vote: the task that accepts the deciding vote also schedules the step. A run
# from before replays its votes' checks as activities of their own.
ENGINE_V3_PATCH = "engine-v3"
# engine-v3, and the Slack sync (a local activity, which holds its workflow task open until Slack
# answers) waits while the news it would show dispatches steps' work, bounded by SLACK_DEFER: the
# deciding vote's answer and its step, and each next step, no longer wait for Slack.
ENGINE_V4_PATCH = "engine-v4"
# engine-v4, and once work was dispatched Slack shows the news of that SLACK_DEFER in one sync when
# it is up, the run's end included, unless a human waits on Slack (an approval or answer asked, a
# step that needs the run's thread): a burst of approved steps acts before its runs' Slack updates
# (issue 17). A run from before replays syncing as it did.
ENGINE_V5_PATCH = "engine-v5"
# engine-v5, and a sync does not start while a high-impact step waits for an audit flush under way
# before its dispatch: a sync in the same task (an approval asked beside it in a parallel group)
# held that dispatch until Slack answered.
ENGINE_V6_PATCH = "engine-v6"
# engine-v6, and news whose work is all local (a LOCAL_ACTIONS step runs inside the task that
# dispatched it) waits for that work, not for SLACK_DEFER: nothing it dispatched leaves the task, so
# there is no dispatch for a sync to hold. A run of local steps ends in one workflow task, its end
# shown at once, without the bound's timer and the task after it. A new run records this one marker.
ENGINE_V7_PATCH = "engine-v7"
# engine-v7, and a vote may carry the `approver` answer the front door that signed it asked
# (bot/engine/verdicts.py): its approval request publishes the input, the validator checks the
# seal, and a vote whose verdict fits the run's own input takes no local activity (issue 17).
ENGINE_V8_PATCH = "engine-v8"
# engine-v8, and an action's idempotency key carries the run's first execution (`<run id>/<first
# execution>:<step id>`): an episode's rerun (`on_rerun: start`, once Temporal has forgotten the first
# run) has the same run id, and with the first run's keys its actions read as repeats of the first
# run's: `k8s.rollout_restart` found the first run's record and restarted nothing, and a target that
# honours Idempotency-Key answered from its cache (red-team, stop 48). A retry, and a reset (the same
# first execution), keep their keys: a repeat the target can tell.
ENGINE_V9_PATCH = "engine-v9"
# engine-v9, and a policy answer the run obeys (`decide` before a high-impact step, `cancel` for a
# cancel update) is believed only with the worker's seal, checked by a local activity: a plain
# Temporal client could complete the pending activity by id and hand the run `allow` with no
# approval, or a cancel in a verified canceller's name (bot/engine/answers.py; red-team, stop 50).
ENGINE_V10_PATCH = "engine-v10"
# engine-v10, and an action's result or failure is not believed about the trail: what it says it
# wrote (the events it was handed, its started event) is written again by the worker's own flush
# before the run ends (a no-op for what it did write), the run records a remote step's success and
# its own end itself, and an attempt's started event is kept whatever the result lists. A plain
# client completing a run's last step by id with `audited: true` left the run with nothing in the
# trail (review F2, stop 50; bot/engine/spool.py; red team of the fix: tests/security/).
ENGINE_V11_PATCH = "engine-v11"
# engine-v11, and the lock's answer is confirmed by a local activity (`lock.confirm`): a plain client
# signalled a queued run "granted" and completed its pending confirm by id with `holding: true`,
# and the run acted beside the key's holder (red team, stop 52); and a step's rendered args are at
# most ARGS_MAX bytes.
ENGINE_V12_PATCH = "engine-v12"
# engine-v12, and a run's history is bounded before Temporal's own limit ends it: past
# HISTORY_STEPS_MAX no step starts (the run rolls back), past HISTORY_UNDO_MAX no undo (it is left
# for a human, paged); and at most DISPATCH_MAX bytes of inputs out at once; and ERROR_MAX. 300
# foreach items of a 250 KB param each took a run's history past 50 MB, and Temporal terminated it
# halfway: nothing rolled back, nothing on the record said so.
ENGINE_V13_PATCH = "engine-v13"
# engine-v13, and (red team, stop 54) what an activity carries of the run's audit queue is at most
# CARRY_MAX bytes (bot/engine/spool.py): step_started events of 256 KiB args, waiting to be
# confirmed or queued behind a long step, rode whole on the next activity, past 2 MB, and the run's
# workflow task failed on every replay; a `decide` question checks the history bound as an action
# does (100 items' questions of 780 KB took a run past 50 MB); a step's failure is at most
# ERROR_MAX characters whatever said it (a forged `stored.refused` of 2 MB rode on the undo's
# input), and a large output's reference is cut to what a real one holds.
ENGINE_PATCH = "engine-v14"
# A step's args, rendered, in bytes (engine-v12): an activity's input past Temporal's 2 MB payload
# limit (three args of a million characters each) failed the run's workflow task on every replay
# (PAYLOADS_TOO_LARGE): the run never rolled back or ended. Now the step fails, and the run rolls back.
ARGS_MAX = 256 * 1024
# Bytes of the run's history (Temporal's count, as of the workflow task: the same on replay) past
# which no step starts, and no undo: Temporal terminates a run whose history passes 50 MB (its
# default limit.historySize.error). What the first leaves is for the rollback; the second, for the end.
HISTORY_STEPS_MAX = 20 * 1024 * 1024
HISTORY_UNDO_MAX = 40 * 1024 * 1024
# The same for its events: Temporal terminates a run past 51,200 (limit.historyCount.error). A
# foreach item step with a fallback and an undo makes 17-18 of them (red team, stop 53).
EVENTS_STEPS_MAX = 24_000
EVENTS_UNDO_MAX = 48_000
# Bytes of inputs (an action's args, a policy question, a child's input) the run has out at once
# (engine-v13): Temporal terminates a run whose workflow task's completion passes gRPC's 4 MB (a
# foreach of 100 items at once, each given 256 KB; five policy questions each carrying a 1 MB
# alert). Past it the next waits until one comes back; one alone always goes.
DISPATCH_MAX = 1536 * 1024
# Bytes of a policy question's document at most (engine-v14): with the audit events it carries
# (CARRY_MAX) it stays under 1.75 MiB of Temporal's 2 MB. Each part has a bound of its own (the
# alert, the params, the step's args), but a foreach item has none, and the sum had (review, stop 54).
QUESTION_MAX = 1792 * 1024 - CARRY_MAX
# Light work in the worker itself (no integration, nothing that waits): a local activity, inside the
# workflow task, saves the activity task's round trips through the server. Same wrapper, so the same
# record first, params check, masking and retries; policy and approval gates come before it as for any step.
LOCAL_ACTIONS = frozenset({"core.log"})
ADMIT_TIMEOUT = timedelta(seconds=30)
ANSWER_UNSEALED = "AnswerUnsealed"
# Failures of an action's activity raised before its wrapper runs (so before its record): the worker
# refused the caller (bot/engine/callers.py), or has no such activity (the SDK's own type).
NEVER_RAN = frozenset({CALLER_REFUSED, CALLER_UNKNOWN, "NotFoundError"})
T = TypeVar("T")
ASK_AGAIN_AFTER = timedelta(seconds=1)  # engine-v10: an activity retried without limit that a client failed
ANONYMOUS_CANCELS_AUDITED = 10
CANCEL_REFUSED = "CancelRefused"
CANCEL_UNSUPPORTED = "CancelUnsupported"
CANCEL_DUPLICATE = "CancelDuplicate"  # the same principal asked again (a retry, an HA peer): not a refusal
SLACK_TIMEOUT = timedelta(seconds=30)  # runs started before the audit trail replay without its local activity
SLACK_RETRY_FIRST = 2.0  # seconds before a sync that left something pending is tried again (doubling)
SLACK_RETRY_MAX = 60.0
SLACK_RETRIES = 8  # pending syncs tried again in a row with nothing new to show; news always syncs
SLACK_DEFER = timedelta(seconds=1)  # engine-v4: the longest a sync waits for news that dispatches nothing
# (engine-v5: the longest Slack lags the work a run dispatched, when no human waits on it)
SLACK_FINAL_WAIT = timedelta(minutes=5)  # the run's end waits this long at most for Slack to catch up
POLICY_TIMEOUT = timedelta(seconds=30)
POLICY_RETRY = TemporalRetryPolicy(maximum_attempts=3, initial_interval=timedelta(seconds=1))
LOCK_TIMEOUT = timedelta(seconds=30)
LOCK_ASK_AGAIN = timedelta(minutes=2)  # while queued: the request again, in case its lock was terminated
TRACE_MAX = 5000  # entries of RunStatus.trace; past it the run goes on, untraced


class NotAsked(Exception):
    """A `decide` question the run did not send (engine-v14): its history is past the bound, or the
    question past QUESTION_MAX. The step fails with it ("not started"), as an action not sent does;
    no policy said no, so it is not a denial (every caller of a `decide` catches it)."""


def left_for_undoing(what: str, full: str) -> str:
    """Why a forward step's work was not sent (`what`: "not started", "not asked") once the run's
    history is past its bound (`full`, `_step_room`'s reason)."""
    return f"{what}: {full}; what is left is for undoing what ran"


def idempotency_key(run_id: str, step_id: str, compensation: bool = False, fallback: bool = False,
                    execution: str | None = None) -> str:
    """`<run id>:<step id>` (`:undo`, `:fallback`); from engine-v9, `<run id>/<first execution>:<step id>`."""
    scope = f"{run_id}/{execution}" if execution else run_id
    if fallback:
        return f"{scope}:{step_id}:fallback"
    return f"{scope}:{step_id}:undo" if compensation else f"{scope}:{step_id}"


def _retry(policy: RetryPolicy) -> TemporalRetryPolicy:
    return TemporalRetryPolicy(
        initial_interval=policy.initial_interval,
        backoff_coefficient=policy.backoff,
        maximum_interval=max(policy.max_interval, policy.initial_interval),
        maximum_attempts=policy.max_attempts,
    )


def policy_unanswered(result_type: type[Any], exc: BaseException, cut: bool = False) -> Any:
    """The deny a policy question gets when even asking failed (fail closed), saying why; its
    reason begins with POLICY_FAILED, so a vote denied for it is not held against the voter."""
    message, _ = describe_failure(exc, POLICY_RETRY.maximum_attempts, cut)
    return result_type(allow=False, reasons=[f"{POLICY_FAILED}: {message}"])


def describe_failure(err: BaseException, max_attempts: int, cut: bool = False) -> tuple[str, int]:
    """A one-line reason and the attempts made, from an activity's final failure; `cut` (engine-v13:
    a run's templates and `when:` read it, so an older run replays with it whole), at most ERROR_MAX
    characters."""
    message, attempts = _described(err, max_attempts)
    return (cut_text(message, ERROR_MAX) if cut else message), attempts


def _described(err: BaseException, max_attempts: int) -> tuple[str, int]:
    cause = err.cause if isinstance(err, ActivityError) else err
    if isinstance(cause, ApplicationError):
        details = cause.details[0] if cause.details and isinstance(cause.details[0], dict) else {}
        said = details.get("attempt")
        # A client can fail an activity by id with any details: an attempt that is not one of this
        # activity's (null, a list, Infinity, "x", 10**9) is not taken; int() of one raised in
        # workflow code, on every replay (the run never went on or ended: red team, stop 51).
        readable = isinstance(said, int) and not isinstance(said, bool) and 1 <= said <= max(max_attempts, 1)
        return cause.message, said if readable else max_attempts
    if isinstance(cause, TimeoutError):
        return f"timed out ({cause.type.name.lower().replace('_', '-') if cause.type else 'timeout'})", max_attempts
    if isinstance(cause, CancelledError):
        return "cancelled", max_attempts
    return str(cause or err), max_attempts


class CancelRefused(ApplicationError):
    """`code`/`rule` as VoteRefused's: refused by the `cancel` rule, or a conflict with the run's state."""

    def __init__(self, message: str, code: str = "refused", rule: str = "cancel") -> None:
        super().__init__(message, {"code": code, "rule": rule}, type=CANCEL_REFUSED, non_retryable=True)


class CancelUnsupported(ApplicationError):
    def __init__(self, message: str) -> None:
        super().__init__(message, type=CANCEL_UNSUPPORTED, non_retryable=True)


class CancelDuplicate(ApplicationError):
    def __init__(self, message: str) -> None:
        super().__init__(message, type=CANCEL_DUPLICATE, non_retryable=True)


class _Saga:
    """Compensations in registration order; undone last-in, first-out."""

    def __init__(self) -> None:
        self.entries: list[tuple[Step, Compensation]] = []

    def register(self, step: Step) -> None:
        if step.compensate is not None:
            self.entries.append((step, step.compensate))

    def settle(self, step_ids: set[str]) -> list[tuple[Step, Compensation]]:
        """Drop these steps' undos (a later step settled them); returns what was dropped."""
        dropped = [entry for entry in self.entries if entry[0].id in step_ids]
        self.entries = [entry for entry in self.entries if entry[0].id not in step_ids]
        return dropped


@workflow.defn(name="PlaybookRun")
class PlaybookRun(ForeachRuns, SubPlaybooks, AuditSpool):
    @workflow.init
    def __init__(self, input: RunInput) -> None:
        info = workflow.info()
        # The worker's one parsed copy of this playbook (an equal one), and what its templates read
        # of each step's output (None: all of it): worked out once per playbook, not per run.
        pb, self._needs = shared_playbook(input.playbook)
        input.playbook = pb
        steps: list[StepStatus] = []
        for item in pb.steps:
            if isinstance(item, ForeachGroup):  # its items' steps appear once the items are known
                steps.append(StepStatus(id=item.id, action=FOREACH_ACTION, items=[]))
                continue
            members = item.parallel if isinstance(item, ParallelGroup) else [item]
            group = item.id if isinstance(item, ParallelGroup) else None
            steps.extend(
                StepStatus(id=s.id, action=s.action, group=group, impact=s.impact, irreversible=s.irreversible)
                for s in members
            )
        steps.extend(
            StepStatus(id=s.id, action=s.action, group=ON_FAILURE_GROUP, impact=s.impact, irreversible=s.irreversible)
            for s in pb.on_failure
        )
        self._status = RunStatus(
            run_id=info.workflow_id,
            execution=info.first_execution_run_id,  # what votes, answers and cancels are signed for
            playbook=pb.name,
            playbook_hash=input.playbook_hash,
            requested_by=input.trigger.requested_by,
            trigger=input.trigger.kind,
            params=input.params,
            steps=steps,
        )
        self._input = input
        self._params = input.params  # as the worker admitted them (re-validated) once trusted
        self._provenance: dict[str, Any] | None = None
        # Runs from before proofs replay as they ran: anyone could cancel, nothing was admitted.
        # Set first thing in run() (patch markers are not known yet here); a new run is trusted.
        self._trusted: bool | None = None
        self._body: asyncio.Task[str] | None = None  # the steps; only an accepted cancel stops them
        self._cancels_pending = 0  # cancels being decided: no new step starts meanwhile
        self._anonymous_cancels = 0  # Temporal's own cancel requests, refused (the first few audited)
        self._saga = _Saga()
        self._approvals = ApprovalBook(self._status, input.trigger.requested_by)
        self._log_extra = {"run_id": info.workflow_id, "playbook": pb.name}
        self._spool_setup()  # the run's audit queue (bot/engine/spool.py)
        self._finish_recorded = False  # the last step's activity wrote run_finished with its success
        self._asked_at: dict[str, datetime] = {}  # when each step's approval was requested
        self._failed_groups: set[str] = set()  # parallel groups one of whose steps failed
        self._finishing = False  # the playbook's on_failure steps run: the run has ended, no cancel
        self._channel = pb.channel or (input.trigger.slack or {}).get("channel")
        self._slack = SlackState()
        self._slack_lock = asyncio.Lock()  # one sync at a time: parallel steps must not post twice
        # Runs from slack-beside-v1 on: steps mark Slack stale and go on; one coroutine syncs.
        self._slack_beside = False
        self._slack_stale = False  # something changed since the last sync began
        self._slack_closing = False  # the run has ended: sync what is left, then stop
        self._slack_idle = False  # the Slack coroutine has stopped (or was never needed)
        self._slack_task: asyncio.Task[None] | None = None
        self._bounded_votes = False  # refused-votes-v1, asked first thing in run()
        self._lock_key: str | None = None  # the run's concurrency key, as admission rendered it (v1.1)
        # Each sub-playbook's content hash when this run was admitted: the child that runs is that one.
        self._children: dict[str, str] = {}
        self._lock_answer: LockNotice | None = None  # granted or busy, as signalled: confirmed before it counts
        self._lock_taken = False  # the lock's answer is confirmed: no later notice changes it
        self._refused_answers: dict[str, int] = {}  # core.confirm answers refused per step (v1.1)
        self._outputs_kept = False  # outputs-v1: set first thing in run(), like _trusted
        self._local_light = False  # engine-v2: LOCAL_ACTIONS run as local activities
        self._votes_in_task = False  # engine-v3: a vote's approver check runs inside the workflow task
        self._front_verdicts = False  # engine-v8: a vote's check may be its front door's sealed verdict
        self._keys_per_execution = False  # engine-v9: idempotency keys carry the execution
        self._sealed_answers = False  # engine-v10: `decide` and `cancel` answers need the worker's seal
        self._local_confirm = False  # engine-v12: `lock.confirm` is a local activity
        self._args_bounded = False  # engine-v12: a step's rendered args are at most ARGS_MAX bytes
        self._history_bounded = False  # engine-v13: no step past HISTORY_STEPS_MAX, no undo past HISTORY_UNDO_MAX
        self._in_flight = 0  # engine-v13: bytes of inputs out at once, against DISPATCH_MAX
        self._payloads_bounded = False  # engine-v14: policy questions and carried audit events bounded; failures cut
        self._slack_defers = False  # engine-v4: a sync waits while the news it would show dispatches work
        self._dispatched = 0  # steps' work dispatched so far (policy questions, actions, child runs)
        self._news = 0  # changes marked for Slack so far
        self._defer_bound: asyncio.Future[None] | None = None  # the SLACK_DEFER timer running, never cancelled
        self._slack_coalesces = False  # engine-v5: Slack shows a bound's news when it is up, the end's too
        self._slack_after_flush = False  # engine-v6: a sync waits for a flush a high-impact step waits for
        self._slack_waits_local = False  # engine-v7: news that dispatched only local work waits for it, not the bound
        self._remote = 0  # of _dispatched: work that leaves the workflow task (activities, child runs)
        self._local_running = 0  # local activities running now (inside the workflow task), Slack's own aside
        self._thread_waits = 0  # steps waiting for the run's status message (its thread) to exist
        self._asks = 0  # humans asked to act so far: approvals or answers requested, escalated, owners paged
        self._asks_synced = 0  # ... when the last sync began
        self._refused_cancels = RefusedVoters()  # who the cancel rule refused, for the validator (engine-v2 on)
        self._refusals_by: dict[tuple[str, str], int] = {}  # (step, voter) -> refused votes recorded (engine-v3)
        self._output_bytes = 0  # of outputs kept in state, against RUN_OUTPUT_BUDGET
        self._foreach_setup()  # foreach groups (format v1.1, bot/engine/foreach.py)
        self._init_subplaybooks()  # v1.1 playbook.run: parent and child runs (bot/engine/subplaybooks.py)

    # ---- queries and updates -------------------------------------------------------------

    @workflow.query
    def status(self) -> RunStatus:
        return self._status.bounded()  # within Temporal's payload limits (the run's result too)

    @workflow.signal(name=NOTICE_SIGNAL)
    def lock_notice(self, notice: LockNotice) -> None:
        """The key's lock answers (bot/engine/lock_workflow.py); only while this run waits for it.
        Anyone can send this signal: a grant or busy answer counts once the lock confirms it."""
        if self._lock_key is None or notice.key != self._lock_key or self._lock_taken:
            return
        if notice.outcome == "queued":
            holder = notice.holders[0][:ID_MAX] if notice.holders else None  # (unconfirmed: a forged one was 2 MB)
            self._status.waiting_for = {"key": notice.key, "holder": holder, "position": notice.position}
        else:
            self._lock_answer = notice

    @workflow.signal(name=POKE_SIGNAL)
    def poke(self, poke: Poke) -> None:
        """A parent or child run has something to say: this run reads it from that run's status."""
        self._poked(poke)

    @workflow.update
    async def vote(self, request: VoteRequest) -> VoteResult:
        try:
            result, vote = await self._approvals.cast(request, self._check_approver)
        except VoteRefused as exc:
            front = self._approvals.asked_front(request)
            if self._bounded_votes and not self._approvals.refusal(request, exc):
                raise  # counted; the voter is remembered, and the step's record already says enough
            # Refused after asking policy (or on its proof): audited, the run goes on as it was.
            self._record(
                request.step_id,
                EventKind.approval_vote,
                {"vote": request.vote, "user": request.user, "accepted": False, "message": exc.message,
                 **({"approver_asked_by": "front door"} if front else {})},
                actor=request.user or "unknown",
                key=self._refusal_key(request.step_id, request.user),
            )
            await self._flush_audit()
            raise
        self._record(
            request.step_id,
            EventKind.approval_vote,
            {
                "vote": vote.vote,
                "user": vote.user,
                "person": vote.person,
                "verified": vote.verified,
                "name": vote.name,
                "groups": vote.groups,
                "reason": vote.reason,
                "accepted": True,
                "message": result.message,
                "waited_seconds": self._waited(request.step_id),
                # said only when so: the approver rule was asked by the front door that signed the vote
                **({"approver_asked_by": "front door"} if self._approvals.asked_front(request) else {}),
            },
            actor=vote.user,
            key=vote.user,
        )
        await self._notify()
        return result

    @vote.validator
    def _validate_vote(self, request: VoteRequest) -> None:
        self._approvals.validate(request)
        if self._bounded_votes:
            self._approvals.screen(request, self._asked_since(request.step_id))
        if self._front_verdicts:
            self._approvals.check_verdict(request, self._asked_since(request.step_id))

    @workflow.update
    async def confirm(self, request: ConfirmRequest) -> ConfirmResult:
        """An answer to a core.confirm step (v1.1): checked against the step's choices or input
        first (a refusal names that rule and is audited), then as a vote is (four-eyes, one answer
        per person, the `approver` rule); the accepted answer becomes the step's output."""
        st = self._status.step(request.step_id)
        try:
            answer = self._answer_of(request)
        except VoteRefused as exc:
            self._answer_refused(request, exc.message, str(exc.details[0]["rule"]))
            await self._flush_audit()
            raise
        try:
            vote = await self._approvals.answer(request, answer, self._check_approver)
        except VoteRefused as exc:
            if self._bounded_votes and not self._approvals.refusal(request, exc):
                raise
            self._answer_refused(request, exc.message, str((exc.details[0] or {}).get("rule", "approver")))
            await self._flush_audit()
            raise
        message = f"{request.user} answered {answer!r}"
        self._record(
            request.step_id,
            EventKind.approval_vote,
            {
                "vote": "confirm",
                "answer": answer,
                "user": vote.user,
                "person": vote.person,
                "verified": vote.verified,
                "name": vote.name,
                "groups": vote.groups,
                "reason": vote.reason,
                "accepted": True,
                "message": message,
                "waited_seconds": self._waited(request.step_id),
            },
            actor=vote.user,
            key=vote.user,
        )
        await self._notify()
        return ConfirmResult(step_id=st.id, step_state=st.state, answer=answer, message=message)

    @confirm.validator
    def _validate_confirm(self, request: ConfirmRequest) -> None:
        self._approvals.validate(request)
        if self._bounded_votes:
            self._approvals.screen(request, self._asked_since(request.step_id))
            if self._refused_answers.get(request.step_id, 0) >= REFUSED_ANSWERS_AUDITED:
                # the record is full: a bad answer no longer enters history (nor is asked about)
                self._answer_of(request)

    def _answer_of(self, request: ConfirmRequest) -> str | int | float:
        """The answer as the step's output holds it; VoteRefused naming the choices or input it breaks."""
        spec = ConfirmParams.model_validate(self._status.step(request.step_id).args or {})  # validated before it waited
        rule = "choices" if spec.choices is not None else "input"
        try:
            return spec.answer(request.answer)
        except ValueError as exc:
            message = f"answer to step {request.step_id!r} refused by its {rule}: {exc}; nothing changed"
            raise VoteRefused(message, "invalid", rule) from None

    @workflow.query
    def approver_input(self, step_id: str) -> dict[str, Any]:
        """The `approver` rule's input for a vote on this step, without `user`: a front door asks
        the rule itself with it, and refuses a voter it refuses without touching the run."""
        return self._approver_doc(step_id)

    def _refusal_key(self, step_id: str, user: str) -> str:
        """A refused vote's record key. From engine-v3 on it counts that voter's refusals on the step
        (state, rebuilt from history), not a fresh uuid: a vote handled again after its workflow task
        was lost (the server drops a task taken by a flood of concurrent updates and they are sent
        again) writes the same record a second time, a no-op, instead of a second record."""
        if not self._votes_in_task:
            return f"refused:{user}:{workflow.uuid4()}"
        count = self._refusals_by.get((step_id, user), 0) + 1
        self._refusals_by[(step_id, user)] = count
        return f"refused:{user}:{count}"

    def _answer_refused(self, request: ConfirmRequest, message: str, rule: str) -> None:
        count = self._refused_answers.get(request.step_id, 0) + 1
        self._refused_answers[request.step_id] = count
        if count > REFUSED_ANSWERS_AUDITED:
            return
        self._record(
            request.step_id,
            EventKind.approval_vote,
            {"vote": "confirm", "answer": request.answer[:200], "user": request.user, "accepted": False,
             "rule": rule, "message": message},
            actor=request.user or "unknown",
            key=self._refusal_key(request.step_id, request.user),
        )

    @workflow.update
    async def cancel(self, request: CancelRequest) -> CancelResult:
        """Cancel on behalf of a principal: the `cancel` rule decides (asked with the verified
        actor), the canceller is recorded, then the running step stops and the saga undoes."""
        claim = Claim(
            purpose="cancel", run_id=self._status.run_id, principal=request.user, name=request.name,
            content=cancel_content(request.reason), execution=self._status.execution,
            not_before=self._asked_since(None),
        )
        input = self._run_input_doc()
        self._cancels_pending += 1
        try:
            verdict: ActorVerdict = await self._ask_policy(
                "cancel", input, ActorVerdict, claim=claim, proof=request.proof
            )
        finally:
            self._cancels_pending -= 1
        details = {"by": request.user, "verified": bool(verdict.user.get("verified")), "reason": request.reason}
        ending = self._status.finished or self._status.state == "compensating" or self._finishing
        if not verdict.allow:  # remembered for the validator (state only: no command changes)
            self._refused_cancels.remember(request.user, details["verified"], request.proof is None,
                                           "; ".join(verdict.reasons), "cancel", policy_failed(verdict))
        if not verdict.allow or self._status.cancelled_by is not None or ending:
            reasons = verdict.reasons if not verdict.allow else ["the run is already ending"]
            message = f"{request.user} may not cancel {self._status.run_id}: " + ("; ".join(reasons) or "no reason given")
            self._record(None, EventKind.cancel_requested, {**details, "accepted": False, "reasons": reasons},
                         actor=request.user, key=f"refused:{request.user}:{workflow.uuid4()}")
            await self._flush_audit()
            code, rule = ("refused", "cancel") if not verdict.allow else ("conflict", "run_state")
            raise CancelRefused(message, code, rule)
        self._status.cancelled_by = request.user
        self._status.cancel_reason = request.reason
        self._record(None, EventKind.cancel_requested, {**details, "accepted": True, "person": verdict.person},
                     actor=request.user, key="accepted")
        self._log("cancel accepted", by=request.user)
        if self._body is not None:
            self._body.cancel()
        return CancelResult(
            state=self._status.state,
            message=f"cancel accepted from {request.user}: the running step stops and what the run did is rolled back",
        )

    @cancel.validator
    def _validate_cancel(self, request: CancelRequest) -> None:
        if self._trusted is False:  # None: not started yet, which only a new (trusted) run can be
            raise CancelUnsupported("this run started before verified cancels; it takes Temporal's own cancel")
        if not request.user:
            raise CancelRefused("a cancel needs a principal", "invalid", "principal")
        if self._status.cancelled_by == request.user:
            raise CancelDuplicate(f"run {self._status.run_id} is already being cancelled by {request.user}")
        if self._status.cancelled_by is not None:
            raise CancelRefused(
                f"run {self._status.run_id} is already being cancelled by {self._status.cancelled_by}",
                "conflict",
                "run_state",
            )
        if self._status.finished or self._status.state == "compensating" or self._finishing:
            raise CancelRefused(
                f"run {self._status.run_id} is already ending ({self._status.state}): nothing to cancel",
                "conflict",
                "run_state",
            )
        if self._bounded_votes:
            self._screen_cancel(request)

    def _screen_cancel(self, request: CancelRequest) -> None:
        """As `ApprovalBook.screen` for votes: bounded text; a canceller the `cancel` rule refused
        (a verified one by principal; a proof-less one for proof-less cancels only); and past
        UNVERIFIED_REFUSED_MAX refusals nobody vouched for, every such cancel. Nothing enters
        history (validators do not run on replay)."""
        if (len(request.user) > NAME_MAX or len(request.name) > NAME_MAX or len(request.reason) > REASON_MAX
                or len(request.model_dump_json()) > VOTE_BYTES_MAX):
            raise CancelRefused(f"a cancel's reason is at most {REASON_MAX} characters, its principal and name "
                                f"{NAME_MAX}, the whole cancel with its proof {VOTE_BYTES_MAX} bytes", "invalid", "size")
        if not principals.is_principal(request.user):
            raise CancelRefused(f"a canceller is a principal ({principals.FORMS}); nothing changed", "invalid", "principal")
        book = self._refused_cancels
        verified = proof_holds(request.proof, "cancel", self._status.run_id, cancel_content(request.reason),
                               request.user, self._asked_since(None), self._status.execution)
        earlier = book.earlier(request.user, verified, request.proof is None)
        if earlier is not None:
            raise CancelRefused(f"{request.user} was already refused a cancel of {self._status.run_id} "
                                f"({earlier[0]}); nothing changed", "refused", "cancel")
        if book.closed_to(verified):
            raise CancelRefused(
                f"run {self._status.run_id} has refused {book.unverified} cancels nobody vouched for; it now "
                "hears only verified ones (Slack, the API, or the CLI with the envelope key); nothing changed",
                "refused", "unverified",
            )

    # ---- the run -------------------------------------------------------------------------

    @workflow.run
    async def run(self, input: RunInput) -> RunStatus:
        self._ask_patches()
        if self._spooled():
            asyncio.ensure_future(uncancellable(self._flusher()))
        if self._slack_beside:
            self._slack_task = asyncio.ensure_future(self._slack_coroutine())
        status = self._status
        status.state = "running"
        status.started_at = workflow.now()
        asked_by: dict[str, str] = {}  # who asked the `start` rule, when not this worker (verdicts.py)
        if self._trusted:
            admission = await self._admit()
            if admission.start_asked_by is not None:
                asked_by["start_asked_by"] = admission.start_asked_by
            status.requester = admission.requester
            self._approvals.requester_person = admission.requester.person
            if not admission.allow:
                return await self._refused(admission)
            self._params = status.params = admission.params
            self._provenance = admission.provenance
            self._lock_key = status.lock_key = admission.lock_key  # None for every v1 playbook
            if admission.foreach_max is not None:
                self._foreach_max = admission.foreach_max
            self._children = admission.children
            if input.parent is not None:
                self._adopt_parent()  # admission believed it: Temporal says that parent started this run
        self._log("run started", requested_by=status.requested_by, trigger=status.trigger)
        self._record(
            None,
            EventKind.run_started,
            {
                "playbook": status.playbook,
                "playbook_hash": status.playbook_hash,
                "trigger": status.trigger,
                "requested_by": status.requested_by,
                "requester": status.requester.model_dump(mode="json") if status.requester else None,
                "params": status.params,
                **asked_by,
            },
            actor=status.requested_by,
        )
        await self._notify()
        watcher = asyncio.ensure_future(self._watch_parent()) if self._parent is not None else None
        if self._trusted:
            outcome = await self._guarded(self._locked(input) if self._lock_key else self._steps(input))
        else:
            outcome = await self._steps(input)
        if watcher is not None:
            watcher.cancel()
        if outcome == "completed":
            status.state = "completed"
            if self._parent is not None and await uncancellable(self._hold_for_parent()):
                await uncancellable(self._compensate("failed"))  # its parent rolls it back, as one unit
        elif outcome == "busy":
            status.state = "cancelled"  # refused or attached: nothing ran
        else:
            # Once undoing has begun, a (further) cancel must not cut it short.
            await uncancellable(self._compensate(outcome))
            if input.playbook.on_failure:
                await uncancellable(self._run_on_failure())
        if self._status.children:
            await uncancellable(self._release_children())
        if self._lock_key:
            await uncancellable(self._release_lock())
        status.finished_at = workflow.now()
        self._log("run finished", state=status.state)
        if not self._finish_recorded or status.state != "completed":
            # A cancel that lands after the last step wrote "completed" gets the last word.
            self._record(None, EventKind.run_finished, self._finish_details(), key=status.state)
        await uncancellable(self._close())
        return status.bounded()

    def _ask_patches(self) -> None:
        """Which behaviours this run has, asked first thing, before any command (see `_has`). A run
        from ENGINE_V2_PATCH on has every patch before it and records that one marker instead of five
        (each marker also upserts a search attribute: work for the server in the run's first task);
        each engine-vN after it stands for the one before and what it added, again as one marker; an
        older run replays asking each patch as it did (newest first: a run asks until one is its own)."""
        for patch, engine in ((ENGINE_PATCH, self._engine_v14), (ENGINE_V13_PATCH, self._engine_v13),
                              (ENGINE_V12_PATCH, self._engine_v12),
                              (ENGINE_V11_PATCH, self._engine_v11),
                              (ENGINE_V10_PATCH, self._engine_v10),
                              (ENGINE_V9_PATCH, self._engine_v9),
                              (ENGINE_V8_PATCH, self._engine_v8),
                              (ENGINE_V7_PATCH, self._engine_v7),
                              (ENGINE_V6_PATCH, self._engine_v6),
                              (ENGINE_V5_PATCH, self._engine_v5),
                              (ENGINE_V4_PATCH, self._engine_v4), (ENGINE_V3_PATCH, self._engine_v3),
                              (ENGINE_V2_PATCH, self._engine_v2)):
            if workflow.patched(patch):
                engine()
                return
        self._trusted = workflow.patched(TRUST_PATCH)
        self._outputs_kept = workflow.patched(OUTPUTS_PATCH)  # here, before any activity (see _has)
        if self._spooled():  # asked here, first, like TRUST_PATCH: old histories replay without it
            self._wait_held = workflow.patched(HELD_PATCH)
        # Only trusted runs (all of them new since trust-v1) ask; an older run syncs as it did.
        self._slack_beside = bool(self._channel) and self._trusted and workflow.patched(SLACK_BESIDE_PATCH)
        self._bounded_votes = bool(self._trusted) and workflow.patched(VOTES_PATCH)

    def _first_execution(self) -> str:
        """The run's first execution (hex), what its idempotency keys carry: a rerun under the run id
        is another, while a reset keeps it, so the steps a reset repeats repeat with their keys and
        the target can tell (tests/reliability/test_worker_crash.py)."""
        return workflow.info().first_execution_run_id.replace("-", "")

    def _engine_v14(self) -> None:
        """Every behaviour engine-v14 stands for."""
        self._payloads_bounded = True
        self._engine_v13()

    def _engine_v13(self) -> None:
        """Every behaviour engine-v13 stands for."""
        self._history_bounded = True
        self._engine_v12()

    def _engine_v12(self) -> None:
        """Every behaviour engine-v12 stands for."""
        self._local_confirm = True
        self._args_bounded = True
        self._engine_v11()

    def _engine_v11(self) -> None:
        """Every behaviour engine-v11 stands for."""
        self._confirms = True
        self._engine_v10()

    def _engine_v10(self) -> None:
        """Every behaviour engine-v10 stands for."""
        self._sealed_answers = True
        self._engine_v9()

    def _engine_v9(self) -> None:
        """Every behaviour engine-v9 stands for."""
        self._keys_per_execution = True
        self._engine_v8()

    def _engine_v8(self) -> None:
        """Every behaviour engine-v8 stands for."""
        self._front_verdicts = True
        self._engine_v7()

    def _engine_v7(self) -> None:
        """Every behaviour engine-v7 stands for."""
        self._slack_waits_local = True
        self._engine_v6()

    def _engine_v6(self) -> None:
        """Every behaviour engine-v6 stands for."""
        self._slack_after_flush = True
        self._engine_v5()

    def _engine_v5(self) -> None:
        """Every behaviour engine-v5 stands for."""
        self._slack_coalesces = True
        self._engine_v4()

    def _engine_v4(self) -> None:
        """Every behaviour engine-v4 stands for."""
        self._slack_defers = True
        self._engine_v3()

    def _engine_v3(self) -> None:
        """Every behaviour engine-v3 stands for."""
        self._votes_in_task = True
        self._engine_v2()

    def _engine_v2(self) -> None:
        """Every behaviour engine-v2 stands for."""
        self._trusted = self._outputs_kept = self._bounded_votes = True
        if self._spool is None:  # (an update handled before run() may have asked already)
            self._spool = True
        self._wait_held = self._spool
        self._slack_beside = bool(self._channel)
        self._local_light = True

    async def _steps(self, input: RunInput) -> str:
        """Every step in order: 'completed', 'failed' (roll back) or 'cancelled'."""
        try:
            if self._cancel_requested():  # accepted while the run was being admitted
                raise asyncio.CancelledError()
            for item in input.playbook.steps:
                if isinstance(item, ForeachGroup):
                    ok = await self._run_foreach(item)
                else:
                    ok = await (self._run_group(item) if isinstance(item, ParallelGroup) else self._run_step(item))
                await self._notify()
                if not ok:
                    return "failed"
                if self._cancel_requested():
                    # The SDK resolves an activity that finished despite a cancel request as a
                    # success and swallows the cancel: honour it here, before the next step.
                    raise asyncio.CancelledError()
        except asyncio.CancelledError:
            self._mark_cancelled()
            return "cancelled"
        return "completed"

    # ---- per-target lock (format v1.1 `concurrency:`) --------------------------------------

    async def _locked(self, input: RunInput) -> str:
        """The steps once the key's lock grants a slot; 'busy' when it is held and the playbook
        says refuse or attach; 'cancelled' when cancelled while queued (nothing ran)."""
        try:
            if not await self._take_lock():
                return "busy"
        except asyncio.CancelledError:
            self._mark_cancelled()
            return "cancelled"
        return await self._steps(input)

    async def _take_lock(self) -> bool:
        lock, key, status = self._input.playbook.concurrency, self._lock_key, self._status
        assert lock is not None and key is not None
        status.state = "queued"
        status.waiting_for = {"key": key, "holder": None, "position": 0}
        await self._flush_audit()  # run_started is on the record even if the wait is long
        request = LockRequest(
            key=key, run_id=status.run_id, root_run_id=self._root_run_id(), playbook=status.playbook,
            limit=lock.limit, on_busy=lock.on_busy,
        )
        asked = 0
        ask = True
        while True:
            if ask:
                await self._ask_lock(request)
                asked += 1
                if asked == 1:
                    await self._notify()  # Slack shows the run queued
            try:
                # A cancel accepted while the request was sent may have been swallowed with its success.
                await workflow.wait_condition(
                    lambda: self._lock_answer is not None or self._cancel_requested(), timeout=LOCK_ASK_AGAIN
                )
            except asyncio.TimeoutError:
                ask = True  # ask again (idempotent): a lock that was terminated meanwhile starts afresh
                continue
            if self._lock_answer is None:
                raise asyncio.CancelledError()
            heard = self._lock_answer
            answer = await self._confirm_lock(heard, lock.on_busy)
            if answer is not None:
                self._lock_taken = True
                break
            # Anyone can signal a run: an answer its lock does not stand by is ignored (one heard
            # meanwhile is confirmed next).
            if self._lock_answer is heard:
                self._lock_answer = None
            self._log("lock answer not confirmed by the lock, ignored", key=key, outcome=heard.outcome)
            ask = heard.outcome == "busy"  # a busy answer the lock no longer stands by: ask again now
        status.waiting_for = None
        if answer.outcome == "busy":
            holder = answer.holders[0] if answer.holders else None
            status.busy = {"key": key, "holder": holder, "on_busy": lock.on_busy}
            said = f"attached to run {holder}" if lock.on_busy == "attach" else "refused"
            status.error = f"busy: concurrency key {key!r} is held by run {holder}: {said}, nothing ran"
            self._log("lock busy", key=key, holder=holder, on_busy=lock.on_busy)
            return False
        status.state = "running"
        self._log("lock granted", key=key)
        return True

    async def _ask_lock(self, request: LockRequest) -> None:
        await self._until_answered(lambda: results.execute_unread(
            "lock.request",
            request,
            start_to_close_timeout=LOCK_TIMEOUT,
            retry_policy=TemporalRetryPolicy(maximum_interval=timedelta(seconds=30)),  # until Temporal answers
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            summary=f"lock {request.key[:60]}",
        ), "lock.request")

    async def _confirm_lock(self, said: LockNotice, on_busy: str) -> LockNotice | None:
        """The answer as the key's lock stands by it, read from the lock itself (`lock.confirm`:
        the bot's KeyLock on this task queue), or None when it does not."""
        assert self._lock_key is not None
        key = self._lock_key
        if self._local_confirm:  # no client can answer a local activity
            view: LockView = await self._until_answered(lambda: workflow.execute_local_activity(
                "lock.confirm", key, result_type=LockView, start_to_close_timeout=LOCK_TIMEOUT,
                retry_policy=TemporalRetryPolicy(maximum_attempts=3),
            ), "lock.confirm")
        else:
            view = await self._until_answered(lambda: results.execute(
                "lock.confirm",
                key,
                LockView,
                start_to_close_timeout=LOCK_TIMEOUT,
                retry_policy=TemporalRetryPolicy(maximum_interval=timedelta(seconds=30)),  # until Temporal answers
                cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                summary="confirm the lock's answer",
            ), "lock.confirm")
        if not view.genuine:
            self._log("lock not genuine", key=self._lock_key, reason=view.reason)
            return None
        if view.holding:
            return LockNotice(key=self._lock_key, outcome="granted", holders=view.holders)
        if said.outcome == "busy" and on_busy != "queue" and view.holders and not view.waiting:
            return LockNotice(key=self._lock_key, outcome="busy", holders=view.holders)
        return None

    async def _release_lock(self) -> None:
        """Give the slot back on every end (or leave the queue), through `lock.release`, which seals
        it. A lock that is gone already (ended idle, or noticed this run ended) has nothing to
        release; one that cannot be told notices this run ended at its next check."""
        assert self._lock_key is not None
        try:
            await results.execute_unread(
                "lock.release",
                LockRelease(key=self._lock_key, run_id=self._status.run_id),
                start_to_close_timeout=LOCK_TIMEOUT,
                retry_policy=TemporalRetryPolicy(maximum_attempts=5),
                summary=f"unlock {self._lock_key[:60]}",
            )
        except ActivityError:
            self._log("lock release not delivered: the lock notices the run ended", key=self._lock_key)

    def _cancel_requested(self) -> bool:
        if self._trusted:
            return self._status.cancelled_by is not None
        return workflow.cancellation_reason() is not None

    async def _guarded(self, steps: Any) -> str:
        """Run the steps in their own task, so that Temporal's own cancel, which names no one and
        which any client can send, does not reach them: only an accepted `cancel` update does."""
        self._body = asyncio.ensure_future(steps)
        if self._status.cancelled_by is not None:
            self._body.cancel()
        refused = False
        while True:
            try:
                if refused:  # on the record now, not with the next activity (a wait may be long)
                    refused = False
                    await self._flush_audit()
                return await asyncio.shield(self._body)
            except asyncio.CancelledError:
                if self._body.done():
                    return self._body.result()
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()
                self._refuse_anonymous_cancel()
                refused = True

    def _refuse_anonymous_cancel(self) -> None:
        reason = (
            "a Temporal cancel request names no principal, so the run goes on: cancel with `playbook-bot cancel`, "
            "the API or Slack, which ask the cancel rule"
        )
        workflow.logger.warning("anonymous cancel refused", extra=self._log_extra)
        self._anonymous_cancels += 1
        if self._anonymous_cancels > ANONYMOUS_CANCELS_AUDITED:
            return  # a client repeating it cannot grow the run's record without bound
        self._record(
            None,
            EventKind.cancel_requested,
            {"by": None, "verified": False, "accepted": False, "reasons": [reason]},
            actor="temporal",
            key=f"anonymous:{workflow.uuid4()}",
        )

    async def _admit(self) -> Admission:
        """The worker's own check before anything runs (bot/engine/admission.py); an admission
        that cannot even be asked refuses the run (fail closed)."""
        input = self._input
        requester = input.trigger.requested_by
        try:
            return await workflow.execute_local_activity(
                "run.admit",
                AdmitRequest(
                    run_id=self._status.run_id,
                    playbook=input.playbook,
                    playbook_hash=input.playbook_hash,
                    params=input.params,
                    trigger=input.trigger,
                    proof=input.proof,
                    started_at=workflow.info().start_time,
                    parent=input.parent,
                    temporal_parent=workflow.info().parent.workflow_id if workflow.info().parent else None,
                    temporal_parent_run=workflow.info().parent.run_id if workflow.info().parent else None,
                    temporal_parent_namespace=workflow.info().parent.namespace if workflow.info().parent else None,
                    execution=self._execution(),
                    verdict=input.verdict,
                    accepted_at=workflow.info().workflow_start_time,
                ),
                result_type=Admission,
                start_to_close_timeout=ADMIT_TIMEOUT,
                retry_policy=TemporalRetryPolicy(maximum_attempts=3, initial_interval=timedelta(seconds=1)),
            )
        except ActivityError as exc:
            message, _ = describe_failure(exc, 3, self._history_bounded)
            return Admission(
                allow=False,
                refused_by="admission",
                reasons=[f"the run could not be checked: {message}"],
                requester=Requester(principal=requester, person=requester),
            )

    async def _refused(self, admission: Admission) -> RunStatus:
        """Nothing ran: the run ends `cancelled`, saying which check refused it, on the record."""
        status = self._status
        status.state = "cancelled"
        status.error = admission.message
        status.finished_at = workflow.now()
        workflow.logger.warning("run refused", extra={**self._log_extra, "error": status.error})
        self._record(
            None,
            EventKind.run_finished,
            {**self._finish_details(), "refused_by": admission.refused_by, "requested_by": status.requested_by},
            actor=status.requested_by,
            key=f"refused:{workflow.info().run_id}",  # each refused execution of a run id is on the record
        )
        await uncancellable(self._close())
        return status.bounded()

    async def _close(self) -> None:
        """The run's record and in-flight votes finish even if a cancel arrives now; with the
        spool, the run ends only once the store has taken its whole record (run_finished last);
        then Slack catches up (the final sync), for a bounded while."""
        await self._notify()
        if not self._spooled():
            await self._flush_audit()
            await workflow.wait_condition(workflow.all_handlers_finished)
        else:
            await self._drained()
            await workflow.wait_condition(workflow.all_handlers_finished)
            await self._drained()  # what the last handlers recorded
        if self._slack_beside:
            self._slack_closing = True
            if self._slack_coalesces and (bound := self._defer_bound) is not None:
                # engine-v5: the run never ends with its bound running (a timer that fires during the
                # last task has Temporal refuse the run's completion, 232f52c), and the end's sync
                # waits for it anyway: wait with it, before the bounded wait's timer starts.
                await workflow.wait_condition(lambda: bound.done())
            try:
                await workflow.wait_condition(lambda: self._slack_idle, timeout=SLACK_FINAL_WAIT)
            except asyncio.TimeoutError:
                workflow.logger.warning("slack did not catch up before the run ended", extra=self._log_extra)

    async def _run_group(self, group: ParallelGroup) -> bool:
        if group.when is not None and not self._when(group.when, group.id, [s.id for s in group.parallel]):
            return not any(self._status.step(s.id).state == "failed" for s in group.parallel)
        results = await asyncio.gather(*(self._run_step(s) for s in group.parallel), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return all(results)

    async def _run_step(self, step: Step) -> bool:
        """Run one step; False when the run must roll back. Raises CancelledError on cancel."""
        st = self._status.step(step.id)
        if step.when is not None and not self._when(step.when, step.id, [step.id]):
            return st.state != "failed"
        if (full := self._step_room()) is not None:  # no fallback, no `continue`: nothing more starts
            st.started_at = workflow.now()
            return self._fail(st, left_for_undoing("not started", full))
        await self._thread_known(step)
        try:
            args = self._args(step.action, step.with_, step.id)
        except TemplateError as exc:
            return await self._step_failed(step, st, f"cannot render arguments: {exc}")
        st.args = display(args)  # what status, policy and approvers see; only the action gets markers
        if step.action in HUMAN_STEP_ACTIONS:
            return await self._human_step(step, st)
        if step.impact == "high":
            try:
                if not await self._gate(step, st):
                    return False
            except asyncio.CancelledError:
                self._cancelled(st)  # cancelled while asking policy or waiting for approvers
                raise
        if self._cancels_pending:  # a cancel asked before this step starts wins, if it is allowed
            await workflow.wait_condition(lambda: self._cancels_pending == 0)
            if self._cancel_requested():
                raise asyncio.CancelledError()
        if st.group is not None and st.group in self._failed_groups:
            return self._fail(st, "not run: another step of its parallel group failed", "cancelled")
        self._saga_of(step.id).register(step)  # a foreach item's step: its item's own saga
        st.state = "running"
        st.started_at = workflow.now()
        self._traced(step.id)
        self._log("step started", step_id=step.id, action=step.action)
        if step.action == FAIL_ACTION:
            return self._fail_run(st)
        if step.action == RUN_ACTION:
            return await self._call_child(step, st)  # a child run (bot/engine/subplaybooks.py)
        try:
            if step.action == SLEEP_ACTION:
                result = await self._acted(st, step.retry.max_attempts, self._sleep(st.args))
            else:
                after = [self._finish_event()] if self._closes(step) and self._trusts_audited(step.action) else []
                result = await self._acted(st, step.retry.max_attempts, self._execute(
                    step.id, step.action, args, step.retry, step.timeout, compensation=False, after=after,
                    high=step.impact == "high",
                ))
        except ValueError as exc:
            return await self._step_failed(step, st, str(exc))
        if isinstance(result, tuple):
            message, st.attempts = result
            return await self._step_failed(step, st, message)
        st.attempts = result.attempt
        refusal = self._keep_output(st, result)
        if refusal is not None:
            return self._fail(st, refusal)
        st.state, st.finished_at = "succeeded", workflow.now()
        self._log("step succeeded", step_id=step.id, attempts=st.attempts)
        if result.audited and self._trusts_audited(step.action):
            self._finish_recorded = self._closes(step) and step.action != SLEEP_ACTION
        else:
            self._record(step.id, EventKind.step_succeeded, {"action": step.action, "attempts": st.attempts})
        if step.settles is not None:
            self._settle(step)  # only the step's own success settles: a fallback did not do its work
        self._succeeded_irreversible(step)
        return True

    async def _acted(self, st: StepStatus, max_attempts: int, call: Any) -> ActionResult | tuple[str, int]:
        """The action's result, or (why it failed, attempts made) once its retries are spent; a
        cancel marks the step cancelled and goes on up."""
        try:
            return await call
        except asyncio.CancelledError:
            self._cancelled(st)
            raise
        except ActivityError as exc:
            if isinstance(exc.cause, CancelledError) and self._run_cancelled(exc):
                self._cancelled(st)
                raise asyncio.CancelledError() from exc
            return describe_failure(exc, max_attempts, self._history_bounded)

    async def _until_answered(self, ask: Callable[[], Awaitable[T]], what: str) -> T:
        """An activity retried without limit: only a cancel ends it. From engine-v10 only a cancel
        of this run's: a plain client can fail one by id (a parent's `run.peek` read that as a
        cancel, stopped its child and rolled back: review, stop 50), and that is asked again."""
        while True:
            try:
                return await ask()
            except ActivityError as exc:
                if self._cancelled_by_run():
                    raise asyncio.CancelledError() from exc
                self._log("an activity retried without limit was ended by something other than this run: asked again",
                          activity=what)
                await workflow.sleep(ASK_AGAIN_AFTER, summary=f"{what}: asked again")

    def _cancelled_by_run(self) -> bool:
        """Whether the task awaiting an activity that ended cancelled was cancelled by this run
        (before engine-v10: taken as so)."""
        task = asyncio.current_task()
        return not self._sealed_answers or (task is not None and task.cancelling() > 0)

    def _run_cancelled(self, exc: ActivityError) -> bool:
        """Whether an activity that ended cancelled was cancelled by this run (an accepted cancel or
        a parent's: each cancels the task that awaits it). From engine-v10 one that was not is a
        failure, not a cancel: a plain client can fail a pending activity by id as cancelled, and a
        run that read that as a cancel rolled back with nobody's cancel asked (red-team, stop 50)."""
        cancelled = self._cancelled_by_run()
        if not cancelled:
            self._log("an activity ended cancelled that this run did not cancel: a failure",
                      activity=exc.activity_type, activity_id=exc.activity_id)
        return cancelled

    # ---- failure paths (format v1.1; a v1 step takes none of them) -----------------------

    async def _step_failed(self, step: Step, st: StepStatus, message: str) -> bool:
        """The step could not render or its action failed after its retries: its fallback runs
        instead; else (or if that fails too) it fails the run, or reads failed_ignored under
        `on_failure: continue`. A denied fallback is a denial: the run never goes on past it."""
        message = self._cut_error(message)
        if step.fallback is not None and not (st.group is not None and st.group in self._failed_groups):
            if await self._fallback(step, step.fallback, st, message):
                return True
            if st.state != "running":
                return False  # denied by policy, or cancelled: already recorded
            message = self._cut_error(st.error or message)
        if step.on_failure == "continue" and step.action not in HUMAN_STEP_ACTIONS:
            # A human step that could not even ask (its message did not render) never reads as passed.
            st.state, st.error, st.finished_at = "failed_ignored", message, workflow.now()
            workflow.logger.warning("step failed, ignored", extra={**self._log_extra, "step_id": st.id, "error": message})
            self._record(st.id, EventKind.step_failed,
                         {"action": st.action, "attempts": st.attempts, "error": message, "state": "failed_ignored"})
            return True
        return self._fail(st, message)

    async def _fallback(self, step: Step, fallback: Fallback, st: StepStatus, message: str) -> bool:
        """Run the fallback in the step's place; True when it succeeded (its output is the step's)."""
        record = FallbackStatus(action=fallback.action, started_at=workflow.now())
        st.fallback, st.error = record, message  # the error says why the step fell back
        st.state, st.started_at = "running", st.started_at or workflow.now()  # also when it could not render
        self._log("step failed, falling back", step_id=step.id, fallback=fallback.action, error=message)
        self._record(step.id, EventKind.step_failed, {
            "action": step.action, "attempts": st.attempts, "error": message, "state": "failed", "fallback": fallback.action,
        }, key="fallback" if self._confirms else None)  # (engine-v11: not the id of the fallback's own failure)

        def failed(error: str) -> bool:
            record.state, record.error, record.finished_at = "failed", error, workflow.now()
            st.error = f"{message}; fallback {fallback.action} failed: {error}"
            return False

        if (full := self._step_room()) is not None:
            return failed(f"not started: {full}")
        try:
            args = self._args(fallback.action, fallback.with_, step.id)
        except TemplateError as exc:
            return failed(f"cannot render arguments: {exc}")
        record.args = display(args)
        # A high step that failed before its gate (its arguments did not render) was never allowed:
        # its fallback asks policy itself. One that passed its gate (allowed or approved) falls back.
        if fallback.impact == "high" or (step.impact == "high" and st.decision is None):
            refusal = await self._gate_fallback(step, fallback, record)
            if refusal is not None:
                record.state, record.error, record.finished_at = "denied", refusal, workflow.now()
                return self._fail(st, f"{message}; fallback {fallback.action} {refusal}", "denied")
        if self._cancels_pending:
            await workflow.wait_condition(lambda: self._cancels_pending == 0)
            if self._cancel_requested():
                raise asyncio.CancelledError()
        self._traced(f"fallback:{step.id}")
        result = await self._acted(st, fallback.retry.max_attempts, self._execute(
            step.id, fallback.action, args, fallback.retry, fallback.timeout, compensation=False, fallback=True,
            high=fallback.impact == "high" or step.impact == "high",
        ))
        if isinstance(result, tuple):
            error, record.attempts = result
            return failed(error)
        record.attempts = result.attempt
        refusal = self._keep_output(st, result)
        if refusal is not None:
            record.state, record.error, record.finished_at = "failed", refusal, workflow.now()
            return self._fail(st, f"{message}; fallback {fallback.action}: {refusal}")
        record.output, record.output_ref, record.state = st.output, st.output_ref, "succeeded"
        record.finished_at = st.finished_at = workflow.now()
        st.state = "succeeded"
        self._log("fallback succeeded", step_id=step.id, fallback=fallback.action)
        self._record(step.id, EventKind.step_succeeded,
                     {"action": fallback.action, "attempts": result.attempt, "fallback": True})
        self._succeeded_irreversible(step)
        return True

    async def _gate_fallback(self, step: Step, fallback: Fallback, record: FallbackStatus) -> str | None:
        """A high-impact fallback asks the `decide` rule as a step would (its action and arguments,
        `step.fallback_of` naming the step's own action, no approvals carried over). A decision that
        needs approval refuses it: a fallback cannot wait for votes (make it a step of its own)."""
        as_step = step.model_copy(update={"action": fallback.action, "impact": "high", "with_": fallback.with_})
        input = self._policy_input(as_step, record.args or {})
        input["step"]["fallback_of"] = step.action
        input["approvals"] = []
        try:
            decision: Decision = await self._ask_policy("decide", input, Decision)
        except NotAsked as exc:
            return str(exc)
        record.decision = decision.model_dump(mode="json", exclude_none=True)
        if not decision.allow:
            return "denied by policy: " + ("; ".join(decision.reasons) or "no reason given")
        if decision.needs_approval:
            return "refused: policy asks for approval, which a fallback cannot wait for"
        return None

    # ---- human steps (format v1.1 core.approve / core.confirm; a v1 step takes none of this) ----

    async def _human_step(self, step: Step, st: StepStatus) -> bool:
        """core.approve waits for votes, core.confirm for an answer; no activity runs either way."""
        try:
            return await self._ask_human(step, st)
        except asyncio.CancelledError:
            self._cancelled(st)  # cancelled while asking policy or waiting for people
            raise

    async def _ask_human(self, step: Step, st: StepStatus) -> bool:
        approve = step.action == APPROVE_ACTION
        model = ApproveParams if approve else ConfirmParams
        try:
            params = model.model_validate(st.args or {})
        except ValidationError as exc:
            return await self._step_failed(step, st, describe_validation_error(step.action, exc))
        if approve:
            try:
                decision: Decision = await self._ask_policy("decide", self._policy_input(step, st.args or {}), Decision)
            except NotAsked as exc:
                return self._fail(st, str(exc))
            if not decision.allow:
                st.decision = decision.model_dump(mode="json", exclude_none=True)
                return self._fail(st, "denied by policy: " + ("; ".join(decision.reasons) or "no reason given"), "denied")
            # Always waits for votes: the policy's quorum (at least one) and deadline when it asks
            # for approval, else one vote by the step's timeout.
            asked = decision.needs_approval
            wait = decision.model_copy(update={
                "require_approval": True,
                "min_approvals": max(1, decision.min_approvals if asked else 1),
                "approval_timeout": (decision.approval_timeout if asked and decision.approval_timeout
                                     else format_duration(step.timeout)),
            })
        else:
            owner = self._input.playbook.owner
            wait = Decision(
                allow=True, require_approval=True, min_approvals=1, approver_groups=[owner] if owner else [],
                approval_timeout=format_duration(step.timeout), reasons=[params.message],
            )
        st.decision = wait.model_dump(mode="json", exclude_none=True)
        st.started_at = workflow.now()
        if not await self._await_approval(st, wait):
            return False
        voters = [v for v in st.approvals if v.vote == "approve"]
        if approve:
            st.output = {"approved_by": [v.user for v in voters], "message": params.message}
        else:
            key = "choice" if isinstance(params, ConfirmParams) and params.choices is not None else "value"
            st.output = {key: voters[0].answer, "by": voters[0].user}
        st.state, st.finished_at, st.attempts = "succeeded", workflow.now(), 1
        self._log("step succeeded", step_id=step.id, action=step.action)
        self._record(step.id, EventKind.step_succeeded, {"action": step.action, "attempts": 1, "output": st.output})
        return True

    def _fail_run(self, st: StepStatus) -> bool:
        """core.fail: the run ends here on purpose, its error the reason (then the saga undoes)."""
        try:
            reason = FailParams.model_validate(st.args or {}).reason
        except ValidationError as exc:
            return self._fail(st, describe_validation_error(FAIL_ACTION, exc))
        if self._status.error is None:
            self._status.error, self._status.failed_step = reason, st.id
        return self._fail(st, reason)

    def _settle(self, step: Step) -> None:
        """Drop the settled step's undo (or its group's) and say so on the record."""
        target = step.settles
        group = next((g for g in self._input.playbook.steps if isinstance(g, ParallelGroup) and g.id == target), None)
        if group is not None:
            ids, sagas = {s.id for s in group.parallel}, [self._saga]
        else:
            ids, sagas = self._settled_ids(step)  # a foreach group, an item's step, or within an item
        for saga in sagas:
            for settled, comp in saga.settle(ids):
                self._status.step(settled.id).settled_by = step.id
                self._record(settled.id, EventKind.compensation_settled, {"action": comp.action, "by": step.id})
                self._log("compensation settled", step_id=settled.id, by=step.id)

    def _succeeded_irreversible(self, step: Step) -> None:
        if step.irreversible and step.id not in self._status.irreversible:
            self._status.irreversible.append(step.id)

    async def _run_on_failure(self) -> None:
        """The playbook's on_failure steps, after the saga: each runs (whatever the others did),
        and nothing they do changes how the run ended."""
        status = self._status
        final, error, failed_step = status.state, status.error, status.failed_step
        self._finishing = True
        for step in self._input.playbook.on_failure:
            try:
                await self._run_step(step)
            except asyncio.CancelledError:  # not reachable through a cancel; say so if it ever is
                self._cancelled(status.step(step.id))
            status.state, status.error, status.failed_step = final, error, failed_step
            await self._notify()

    def _when(self, template: str, owner: str, step_ids: list[str]) -> bool:
        """Evaluate a `when:`; false marks the steps skipped, an error marks them failed."""
        try:
            go = truthy(render(template, self._context(owner)))
        except TemplateError as exc:
            for step_id in step_ids:
                self._fail(self._status.step(step_id), f"cannot evaluate when: {exc}")
            return False
        if not go:
            now = workflow.now()
            for step_id in step_ids:
                st = self._status.step(step_id)
                st.state, st.started_at, st.finished_at = "skipped", now, now
                self._record(step_id, EventKind.step_skipped, {"reason": f"when: {template}"})
            self._log("step skipped", step_id=owner)
        return go

    def _fail(self, st: StepStatus, message: str, state: str = "failed") -> bool:
        """End a step that did not succeed (failed, denied, rejected), recorded as step_failed."""
        message = self._cut_error(message)
        if st.group is not None and not self._finishing:
            self._failed_groups.add(st.group)  # its siblings must not start anything new
        st.state, st.error = state, message  # type: ignore[assignment]
        st.finished_at = workflow.now()
        if self._status.error is None:
            self._status.error, self._status.failed_step = f"step {st.id}: {message}", st.id
        workflow.logger.warning("step " + state, extra={**self._log_extra, "step_id": st.id, "error": message})
        self._record(
            st.id, EventKind.step_failed, {"action": st.action, "attempts": st.attempts, "error": message, "state": state}
        )
        return False

    def _cut_error(self, message: str) -> str:
        """(engine-v14) A step's failure as the run keeps it: at most ERROR_MAX characters, whatever
        said it (an action's refusal, a forged result's `stored.refused`, a fallback's failure)."""
        return cut_text(message, ERROR_MAX) if self._payloads_bounded else message  # type: ignore[return-value]

    def _cancelled(self, st: StepStatus) -> None:
        st.state, st.finished_at = "cancelled", workflow.now()
        self._record(st.id, EventKind.step_failed, {"action": st.action, "attempts": st.attempts, "state": "cancelled"})

    async def _sent(self, payload: Any, send: Callable[[], Awaitable[T]], size: int | None = None) -> T:
        """`send()` once the run has room for `payload`'s JSON bytes out (engine-v13, DISPATCH_MAX);
        None: nothing goes out (a local action). `size`: those bytes, when the caller counted them."""
        if not self._history_bounded or payload is None:
            return await send()
        size = payload_size(payload) if size is None else size

        def room() -> bool:
            return self._in_flight == 0 or self._in_flight + size <= DISPATCH_MAX

        while not room():  # asked again on waking: waiters woken together take the room in turn
            await workflow.wait_condition(room)
        self._in_flight += size  # (no await between the check and this)
        try:
            return await send()
        finally:
            self._in_flight -= size

    async def _execute(self, step_id: str, action: str, args: dict[str, Any], *rest: Any, **options: Any) -> ActionResult:
        """An action (`_execute_now`), once the run has room to send its args (a local one sends nothing)."""
        async def send() -> ActionResult:
            # Items started together pass their step's check at once and wait here for room: the
            # history may have filled meanwhile (44 MiB from 100 items of 256 KB; an undo then had none).
            if not options.get("compensation") and (full := self._step_room()) is not None:
                said = left_for_undoing("not started", full)
                raise results.failed_activity(said, action, "", ApplicationError(said, non_retryable=True))
            return await self._execute_now(step_id, action, args, *rest, **options)

        return await self._sent(None if self._runs_locally(action) else args, send)

    async def _execute_now(
        self,
        step_id: str,
        action: str,
        args: dict[str, Any],
        retry: RetryPolicy,
        timeout: timedelta,
        *,
        compensation: bool,
        after: list[AuditEvent] | None = None,
        fallback: bool = False,
        high: bool = False,
    ) -> ActionResult:
        """Run an action. With the spool, an undo or a low-impact step acts even when the store is
        down (its events come back and wait in the queue); a high-impact one (`high`) first waits
        until the store has taken everything queued, its policy decision included, and then
        writes its own record before it acts, as every step did before the spool."""
        spooled = self._spooled()
        if spooled and self._confirms:
            await self._confirmed_some()
        if spooled and not high and not self._runs_locally(action):
            await self._carry_room()  # (a high-impact step's is its _recorded's)
        if spooled and high:
            await self._recorded()  # (last: nothing runs between its check and the handoff)
        mode, queued, at = self._handoff(high) if spooled else ("write", self._take(), 0)
        input = ActionInput(
            run_id=self._status.run_id,
            step_id=step_id,
            playbook=self._status.playbook,
            action=action,
            params=args,
            idempotency_key=idempotency_key(self._status.run_id, step_id, compensation, fallback,
                                            self._first_execution() if self._keys_per_execution else None),
            compensation=compensation,
            audit=[e for _, e in queued],
            audit_after=after or [],
            secrets=list(self._input.playbook.secrets),
            execution=self._execution(),
            audit_mode=mode,
            keep=self._keep(step_id, compensation),
        )
        self._handed(queued)
        summary = f"{step_id}{' (undo)' if compensation else ''}{' (fallback)' if fallback else ''}"
        local = self._runs_locally(action)
        self._acting(local)
        try:
            if local:
                result = await self._local_action(action, input, timeout, retry, summary)
            else:
                result = await results.execute(
                    action,
                    input,
                    ActionResult,
                    start_to_close_timeout=timeout,
                    heartbeat_timeout=HEARTBEAT_TIMEOUT,
                    retry_policy=_retry(retry),
                    cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                    summary=summary,
                )
        except BaseException as exc:
            self._returned(queued)
            self._put_back(queued)  # written or not, ids make a second write a no-op
            if spooled and mode != "write":
                self._keep_started(exc, input, mode, at, retry.max_attempts, trusted=local)
            raise
        self._returned(queued)
        if spooled:
            self._keep_own(queued, input, result.unrecorded, result.attempt, at, mode, trusted=local)
        return result

    def _runs_locally(self, action: str) -> bool:
        """A LOCAL_ACTIONS action of a run from engine-v2 on: a local activity, which only this worker answers."""
        return self._local_light and action in LOCAL_ACTIONS

    def _trusts_audited(self, action: str) -> bool:
        """Whether an action's `audited` (its success and run_finished written) is believed: before
        engine-v11, and from it for an action this worker runs locally."""
        return not self._confirms or self._runs_locally(action)

    def _keep_own(self, queued: list[Any], input: ActionInput, events: list[AuditEvent] | None, attempt: int,
                  at: int, mode: AuditMode, trusted: bool = False) -> None:
        """`_kept` for an action: what it carried, and of what it lists as its own only its own
        (`_own_events`); from engine-v10 only that says the store is down. From engine-v11 an
        activity that says it wrote what it carried and its record (`events` None) has both written
        again by the flusher (`_unconfirmed_too`), and its started event is kept whatever it lists:
        `trusted`, a local activity's word, is taken as it was."""
        own = self._own_events(input, events, attempt)
        if not self._confirms or trusted:
            self._kept(queued, own, at, mode, down=bool(own) or not self._sealed_answers)
            return
        started = started_event(input, attempt, ts=workflow.now())
        if own is None:
            self._unconfirmed_too([*queued, (at, started)])
        else:
            self._kept(queued, [started], at, mode, down=bool(own))

    def _own_events(self, input: ActionInput, events: list[AuditEvent] | None, attempt: int) -> list[AuditEvent] | None:
        """Of the events an action's result or failure says it could not write (the trail is down),
        only what the action itself lists: its started event, as this run builds it (a large output
        is written by the action itself, or its attempt fails). From engine-v10: a result is whatever
        completes the activity, and a plain client can complete one by id; what she listed entered
        the trail as the run's own (another run's approval, this run's next decision before the
        genuine one, the record an undo's large output would be written under: red-team and review,
        stop 50)."""
        if events is None or not self._sealed_answers:
            return events
        started = started_event(input, attempt, ts=workflow.now())
        own = [started for e in events[:1] if e.event_id == started.event_id]
        if len(own) != len(events):
            self._log("events an action's result listed as its own, not written: they are not the action's",
                      step_id=input.step_id, dropped=len(events) - len(own))
        return own

    async def _local_action(
        self, action: str, input: ActionInput, timeout: timedelta, retry: RetryPolicy, summary: str
    ) -> ActionResult:
        """A LOCAL_ACTIONS action as a local activity. Its failure comes back as the failure itself
        (ApplicationError, TimeoutError, CancelledError), not wrapped as an activity's is: wrapped
        here, so every caller reads the two alike (describe_failure, cancel, unrecorded events)."""
        try:
            return await self._local_activity(
                action,
                input,
                result_type=ActionResult,
                start_to_close_timeout=timeout,
                retry_policy=_retry(retry),
                cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                summary=summary,
            )
        except FailureError as exc:
            if isinstance(exc, ActivityError):
                raise
            raise results.failed_activity(f"local activity {action} failed", action, "", exc)

    async def _local_activity(self, activity: str, arg: Any, **options: Any) -> Any:
        """`workflow.execute_local_activity`, counted while it runs: engine-v7 reads "local work
        running" from it. Every local activity but Slack's own sync and the admission before any
        news goes through here."""
        self._local_running += 1
        try:
            return await workflow.execute_local_activity(activity, arg, **options)
        finally:
            self._local_running -= 1

    def _keep_started(self, exc: BaseException, input: ActionInput, mode: AuditMode, at: int, max_attempts: int,
                      trusted: bool = False) -> None:
        """An action that may have acted unrecorded failed: keep its started event. Its failure
        names it; a timeout cannot, so the workflow writes the same event (same id: a no-op if the
        activity did write it). A cancel names nothing either: its step_failed says it was cancelled.
        From engine-v11 any other failure of a remote action keeps it too (`_keep_own`), but a
        cancel of the run's own: one that acted wrote it (a no-op), and a plain client failing the
        step by id, as anything (cancelled included), leaves no gap. (Not called for `write`: that
        action acts only after its record is written, so a failure without one acted on nothing.)"""
        if not isinstance(exc, ActivityError):
            return  # (the task's own cancel: the run's)
        own = self._failed_unrecorded(exc)
        _, attempt = describe_failure(exc, max_attempts)
        timeout = isinstance(exc.cause, TimeoutError)
        ours = isinstance(exc.cause, CancelledError) and self._cancelled_by_run()
        unrun = isinstance(exc.cause, ApplicationError) and exc.cause.type in NEVER_RAN
        if own is not None or (self._confirms and not trusted and not timeout and not ours and not unrun):
            self._keep_own([], input, own, attempt, at, mode, trusted=trusted)
        elif timeout:
            self._put_back([], [started_event(input, attempt, ts=workflow.now())], at)

    def _keep(self, step_id: str, compensation: bool) -> OutputNeeds | None:
        """What the activity returns of a large output: what templates read (an undo's: nothing)."""
        if not self._outputs_kept:
            return None  # a run from before: outputs come back whole, as its templates expect
        return NOTHING if compensation else needs_of(self._needs, step_id)

    def _keep_output(self, st: StepStatus, result: ActionResult) -> str | None:
        """Keep the step's output (or what of a large one templates read), or say why the run cannot:
        the activity refused it, or it would take the run's outputs past RUN_OUTPUT_BUDGET."""
        if self._payloads_bounded and result.stored is not None:
            result.stored = result.stored.bounded()  # (a client completing the action by id writes any)
        st.output, st.output_ref = result.output, result.stored
        if result.stored is not None and result.stored.refused is not None:
            st.output = None
            return result.stored.refused
        if not self._outputs_kept:
            return None
        size = json_size(result.output) + (json_size(result.stored.model_dump(mode="json")) if result.stored else 0)
        if st.id in self._scopes:  # a foreach item's step: counted; past the budget its group stops (foreach.py)
            self._output_bytes += size
            return None
        if self._output_bytes + size > RUN_OUTPUT_BUDGET:
            st.output = None
            return (
                f"its output ({size} bytes kept) would take the outputs this run keeps in its state past their budget "
                f"of {RUN_OUTPUT_BUDGET // (1024 * 1024)} MiB ({self._output_bytes} bytes kept so far), which keeps "
                "the run inside Temporal's limits: have the steps return less, or read fewer fields of large outputs"
                + (f"; the full output is audit event {result.stored.event_id}" if result.stored else "")
            )
        self._output_bytes += size
        return None

    async def _sleep(self, args: dict[str, Any]) -> ActionResult:
        """core.sleep is a durable timer, not an activity: it survives worker restarts, holds no
        activity slot, stops at once on cancel, and skips in time-skipping tests."""
        try:
            params = SleepParams.model_validate(args)
        except ValidationError as exc:
            raise ValueError(describe_validation_error(SLEEP_ACTION, exc)) from None
        await workflow.sleep(params.duration, summary=f"sleep {format_duration(params.duration)}")
        return ActionResult(output={"slept": format_duration(params.duration)}, attempt=1)

    # ---- policy gate and approvals -------------------------------------------------------

    def _run_input_doc(self, step: Step | None = None, args: dict[str, Any] | None = None) -> dict[str, Any]:
        """The input document of DESIGN.md's policy contract, from workflow state only: `run`
        carries the requester as the worker verified it, `provenance` what vouches for each fact."""
        status = self._status
        run: dict[str, Any] = {
            "id": status.run_id,
            "trigger": status.trigger,
            "requested_by": status.requested_by,
            "started_at": rfc3339(status.started_at or workflow.now()),
        }
        if self._trusted:
            run["state"] = status.state
            run["requester"] = status.requester.model_dump(mode="json") if status.requester else None
        return policy_input(
            self._input.playbook,
            status.playbook_hash,
            run,
            self._params,
            self._input.trigger.alert,
            workflow.now(),
            step=step,
            args=args,
            approvals=[v.model_dump(mode="json") for v in status.step(step.id).approvals] if step else [],
            sources=self._provenance,
        )

    def _policy_input(self, step: Step, args: dict[str, Any]) -> dict[str, Any]:
        doc = self._run_input_doc(step, args)
        self._foreach_policy(doc, step.id)  # a foreach item's step: `item` and `index`
        return doc

    async def _ask_policy(self, rule: str, input: dict[str, Any], result_type: type[Any], **options: Any) -> Any:
        """A policy question (`_asked_now`), once the run has room to send it (it carries the alert).
        engine-v14: a question past QUESTION_MAX is not sent (a `decide` raises NotAsked, any other
        is a fail-closed deny); a `decide` is a forward step's, so past the history bound, checked
        again once there is room, it is not sent either (NotAsked)."""
        size = payload_size(input) if self._payloads_bounded else None  # (what `_sent` counts too)
        if size is not None and size > QUESTION_MAX:
            said = (f"the policy question is {size:,} bytes (the alert, params, step and item it carries); one is at "
                    f"most {QUESTION_MAX:,}, as Temporal refuses a payload past 2 MB")
            if rule == "decide":
                raise NotAsked(f"not asked: {said}")
            return result_type(allow=False, reasons=[f"{POLICY_FAILED}: {said}"])

        async def send() -> Any:
            if rule == "decide" and self._payloads_bounded and (full := self._step_room()) is not None:
                raise NotAsked(left_for_undoing("not asked", full))
            return await self._asked_now(rule, input, result_type, **options)

        return await self._sent(input, send, size)

    async def _asked_now(
        self,
        rule: str,
        input: dict[str, Any],
        result_type: type[Any],
        *,
        claim: Claim | None = None,
        proof: Any = None,
    ) -> Any:
        """Ask the policy activity; if even that fails, the answer is a deny (fail closed). With
        the spool, a store that is down does not turn the answer into a deny: what the activity
        could not write comes back and waits in the queue (a high-impact step waits for it)."""
        spooled = self._spooled()
        if spooled:  # the same answer, saying what it could not write
            result_type = {Decision: DecisionAnswer, ActorVerdict: ActorAnswer}.get(result_type, result_type)
        if spooled:
            await self._carry_room()
        mode, queued, at = self._handoff() if spooled else ("write", self._take(), 0)
        request = PolicyRequest(input=input, audit=[e for _, e in queued], claim=claim, proof=proof,
                                execution=self._execution(), audit_mode=mode)
        self._handed(queued)
        self._acting()
        name = f"policy.{rule}"
        # engine-v10: an id of the run's choosing, which the worker's seal on the answer names
        sealed = self._sealed_answers and name in SEALED
        # (its first execution, which a reset keeps: the reset execution replays this very command)
        question = f"{name}:{self._first_execution()}:{workflow.uuid4()}" if sealed else None
        try:
            result = await results.execute(
                name,
                request,
                result_type,
                start_to_close_timeout=POLICY_TIMEOUT,
                retry_policy=POLICY_RETRY,
                summary=f"policy {rule}",
                activity_id=question,
            )
            if question is not None and not await self._answer_holds(name, question, result):
                raise results.failed_activity(f"{name}: an answer no worker sealed", name, question, ApplicationError(
                    f"{name} was answered by something other than a worker of the bot (its seal does not hold): "
                    "refused", type=ANSWER_UNSEALED, non_retryable=True))
        except ActivityError as exc:
            self._returned(queued)
            self._put_back(queued)
            if isinstance(exc.cause, CancelledError) and self._run_cancelled(exc):
                raise asyncio.CancelledError() from exc  # a cancel, not a policy answer
            return policy_unanswered(result_type, exc, self._history_bounded)
        except BaseException:
            self._returned(queued)
            self._put_back(queued)
            raise
        self._returned(queued)
        if spooled:
            self._kept(queued, result.unrecorded, at, mode)
            result.unrecorded = None
        return result

    async def _answer_holds(self, name: str, question: str, answer: BaseModel) -> bool:
        """Whether `answer` carries this worker's seal for `question`, an activity `name` (a local
        activity, which only the worker can answer; its failure is a no)."""
        try:
            check = AnswerCheck(activity_id=question, digest=answer_digest(name, answer),
                                seal=getattr(answer, "seal", None))
        except (TypeError, ValueError) as exc:  # (NaN: no canonical JSON, so no worker sealed it)
            self._log("a policy answer that cannot be digested: refused", error=str(exc))
            return False
        try:
            return bool(await self._local_activity(
                HOLDS, check,
                result_type=bool, start_to_close_timeout=POLICY_TIMEOUT,
                retry_policy=TemporalRetryPolicy(maximum_attempts=3), summary="the policy answer's seal",
            ))
        except FailureError as exc:
            self._log("a policy answer's seal could not be checked: refused", error=str(exc))
            return False

    async def _gate(self, step: Step, st: StepStatus) -> bool:
        """Before a high-impact step: allow, deny, or wait for approvals (DESIGN.md policy contract)."""
        try:
            decision: Decision = await self._ask_policy("decide", self._policy_input(step, st.args or {}), Decision)
        except NotAsked as exc:
            return self._fail(st, str(exc))
        st.decision = decision.model_dump(mode="json", exclude_none=True)
        self._log("policy decision", step_id=step.id, allow=decision.allow, approval=decision.needs_approval)
        if not decision.allow:
            return self._fail(st, "denied by policy: " + ("; ".join(decision.reasons) or "no reason given"), "denied")
        if not decision.needs_approval:
            return True
        return await self._await_approval(st, decision)

    async def _await_approval(self, st: StepStatus, decision: Decision) -> bool:
        """Wait for the quorum; the first deadline escalates, the second rejects."""
        try:
            deadline = parse_duration(decision.approval_timeout or DEFAULT_APPROVAL_TIMEOUT)
        except ValueError:
            deadline = parse_duration(DEFAULT_APPROVAL_TIMEOUT)
        self._approvals.open(st.id, decision.min_approvals)
        self._asked_at[st.id] = workflow.now()
        st.state = "waiting_approval"
        self._refresh_run_state()
        for round in ("first", "second"):
            st.approval_deadline = workflow.now() + deadline
            if round == "first":
                self._log("approval requested", step_id=st.id)
                self._record(
                    st.id,
                    EventKind.approval_requested,
                    {
                        "min_approvals": self._approvals.needed(st.id),
                        "approver_groups": decision.approver_groups,
                        "deadline": rfc3339(st.approval_deadline),
                        "reasons": decision.reasons,
                        "action": st.action,
                        "args": st.args,
                        # what a front door asks the approver rule on (bot/engine/verdicts.py)
                        **self._published_doc(st.id),
                    },
                )
                await self._flush_audit()
                self._asks += 1
                await self._notify()
            try:
                await workflow.wait_condition(
                    lambda: self._approvals.decided(st.id) or st.group in self._failed_groups, timeout=deadline
                )
                break
            except asyncio.TimeoutError:
                stage = "escalated" if round == "first" else "rejected"
                self._record(
                    st.id,
                    EventKind.approval_timeout,
                    {"stage": stage, "approver_groups": decision.approver_groups, "waited_seconds": self._waited(st.id)},
                    key=stage,
                )
                if round == "first":
                    st.escalated_at = workflow.now()
                    workflow.logger.warning(
                        "approval deadline passed: escalating",
                        extra={**self._log_extra, "step_id": st.id, "approver_groups": decision.approver_groups},
                    )
                    await self._flush_audit()
                    self._asks += 1
                    await self._notify()
        if st.group in self._failed_groups and not self._approvals.decided(st.id):
            self._fail(st, "not run: another step of its parallel group failed", "cancelled")
            self._refresh_run_state()
            return False
        rejection = self._approvals.rejected_by(st.id)
        if rejection or not self._approvals.decided(st.id):
            message = (
                f"rejected by {rejection.user}" + (f": {rejection.reason}" if rejection.reason else "")
                if rejection
                else "approval timed out"
            )
            self._fail(st, message, "rejected")
            self._refresh_run_state()
            return False
        st.state = "pending"
        self._refresh_run_state()
        return True

    def _refresh_run_state(self) -> None:
        waiting = any(s.state == "waiting_approval" for s in self._status.all_steps())
        self._status.state = "waiting_approval" if waiting else "running"

    async def _check_approver(self, request: VoteRequest | ConfirmRequest) -> ActorVerdict:
        """The `approver` rule's answer about the voter (or a core.confirm answerer) as the worker
        verified it (its proof). From engine-v3 on it is asked in the workflow task that took the
        vote (`_ask_in_task`), so a deciding vote's task goes on to schedule the step."""
        input = self._approver_doc(request.step_id)
        front = request.verdict if isinstance(request, VoteRequest) and self._front_verdicts else None
        if front is not None and request.proof is not None and fits(front, input, workflow.now()):
            # The validator checked its seal and the proof (it never runs on replay, nor does this need it).
            verdict = actor_verdict(front, request.proof)
            self._approvals.verdict_seen(request, verdict, front=True)
            return verdict
        input["user"] = {"id": request.user, "name": request.name, "groups": request.groups}
        if isinstance(request, ConfirmRequest):
            claim = Claim(
                purpose="confirm", run_id=self._status.run_id, principal=request.user, name=request.name,
                content=confirm_content(request.step_id, request.answer, request.reason),
                execution=self._status.execution, not_before=self._asked_since(request.step_id),
            )
        else:
            claim = Claim(
                purpose="vote", run_id=self._status.run_id, principal=request.user, name=request.name,
                content=vote_content(request.step_id, request.vote, request.reason),
                execution=self._status.execution, not_before=self._asked_since(request.step_id),
            )
        if self._votes_in_task:
            verdict: ActorVerdict = await self._ask_in_task("approver", input, claim, request.proof)
        else:
            verdict = await self._ask_policy("approver", input, ActorVerdict, claim=claim, proof=request.proof)
        self._approvals.verdict_seen(request, verdict)
        return verdict

    def _asked_since(self, step_id: str | None) -> datetime | None:
        """The earliest a genuine proof about this step (None: the run) can have been issued: when
        it began waiting (else the run started), less the clock skew proofs are allowed. A proof
        binds the execution too (`Claim.execution`); this bound stays as defence in depth."""
        since = self._asked_at.get(step_id) if step_id is not None else None
        since = since or self._status.started_at
        return since - START_SKEW if since is not None else None

    async def _ask_in_task(self, rule: str, input: dict[str, Any], claim: Claim, proof: Any) -> ActorVerdict:
        """A question about an actor as a local activity: the worker checks the proof (its key
        never enters workflow code) and asks the rule, inside this workflow task, with no activity
        task's round trip through the server. It carries no audit events, so no store write sits
        in the task either: what is queued rides on the next activity or the flusher. Fails closed
        as `_ask_policy` does."""
        request = PolicyRequest(input=input, claim=claim, proof=proof, execution=self._execution())
        try:
            answer: ActorAnswer = await self._local_activity(
                f"policy.{rule}",
                request,
                result_type=ActorAnswer,
                start_to_close_timeout=POLICY_TIMEOUT,
                retry_policy=POLICY_RETRY,
                summary=f"policy {rule}",
            )
        except FailureError as exc:  # a local activity's failure comes back as itself, not wrapped
            cause = exc.cause if isinstance(exc, ActivityError) else exc
            if isinstance(cause, CancelledError):
                raise asyncio.CancelledError() from exc
            return policy_unanswered(ActorVerdict, exc, self._history_bounded)
        return answer  # (it had nothing to write: `unrecorded` is None)

    def _published_doc(self, step_id: str) -> dict[str, Any]:
        """The approval request's `approver_input` (engine-v8), when it is small enough for a front
        door to ask on (DOC_BYTES_MAX); a larger one would only weigh the record down (its args are
        there already), and the worker asks for its votes."""
        if not self._front_verdicts:
            return {}
        doc = self._approver_doc(step_id)
        return {DOC_FIELD: doc} if json_size(doc) <= DOC_BYTES_MAX else {}

    def _approver_doc(self, step_id: str) -> dict[str, Any]:
        """The policy input of a vote on `step_id`. From refused-votes-v1 on its alert is the facts
        the rule reads (ALERT_FACTS), not the whole alert each vote would otherwise carry."""
        st = self._status.step(step_id)
        pb = self._input.playbook
        step = self._addressed.get(step_id) or next(s for s in [*pb.leaf_steps(), *pb.on_failure] if s.id == step_id)
        doc = self._policy_input(step, st.args or {})
        alert = doc.get("alert")
        if self._bounded_votes and isinstance(alert, dict):
            doc["alert"] = {k: alert[k] for k in ALERT_FACTS if k in alert}
        return doc

    # ---- saga ----------------------------------------------------------------------------

    def _mark_cancelled(self) -> None:
        for st in self._status.all_steps():
            if st.state in ("running", "waiting_approval"):
                self._cancelled(st)
        by, reason = self._status.cancelled_by, self._status.cancel_reason
        said = f"cancelled by {by}" + (f": {reason}" if reason else "") if by else "cancelled"
        if self._status.error is None:
            cancelled = [st.id for st in self._status.all_steps() if st.state == "cancelled"]
            self._status.error, self._status.failed_step = said, (cancelled[0] if cancelled else None)

    async def _compensate(self, outcome: str) -> None:
        status = self._status
        if outcome == "cancelled" and not self._saga.entries and not any(
            st.state == "succeeded" for st in status.all_steps()
        ):
            status.state = "cancelled"  # stopped before anything was done that needs undoing
            return
        status.state = "compensating"
        entries = list(reversed(self._saga.entries))
        records = [CompensationStatus(step=s.id, action=c.action) for s, c in entries]
        status.compensations = [*status.compensations, *records]  # after failed foreach items' own undos
        for (step, comp), record in zip(entries, records):
            await self._undo(step, comp, record)
        status.not_undone = [c.step for c in status.compensations if c.state == "failed"]
        status.state = "failed" if status.not_undone else "compensated"
        if status.not_undone:
            # The system is half rolled back: the playbook's owners are paged (Slack thread, audit).
            status.escalated_to = [self._input.playbook.owner] if self._input.playbook.owner else []
            self._asks += 1  # the owners are paged: Slack shows it at once (engine-v5)
            workflow.logger.error(
                "compensation failed: needs a human",
                extra={**self._log_extra, "not_undone": status.not_undone, "escalated_to": status.escalated_to},
            )

    async def _undo(self, step: Step, comp: Compensation, record: CompensationStatus) -> None:
        st = self._status.step(step.id)
        if (full := self._history_full(HISTORY_UNDO_MAX, EVENTS_UNDO_MAX)) is not None:
            record.started_at = workflow.now()
            record.finished_at, record.state, st.state = workflow.now(), "failed", "compensation_failed"
            record.error = f"not undone: {full}; undo it by hand"
            self._record(step.id, EventKind.compensation_failed, {"action": comp.action, "error": record.error})
            return
        if self._is_child_call(step):
            return await self._undo_child(step, comp, record)
        record.started_at = workflow.now()
        try:
            args = self._args(comp.action, comp.with_, step.id)
        except TemplateError as exc:
            record.finished_at = workflow.now()
            if st.state != "succeeded":
                # The step never produced what its undo needs, so there is nothing to undo.
                record.state, record.error = "skipped", f"nothing to undo: {exc}"
                return
            record.state, record.error = "failed", f"cannot render compensation: {exc}"
            st.state = "compensation_failed"
            self._record(step.id, EventKind.compensation_failed, {"action": comp.action, "error": record.error})
            return
        previous = st.state
        st.state = "compensating"
        record.state = "running"
        self._traced(f"undo:{step.id}")
        self._log("compensation started", step_id=step.id, action=comp.action)
        try:
            result = await self._execute(step.id, comp.action, args, comp.retry, comp.timeout, compensation=True)
        except ActivityError as exc:
            record.error, record.attempts = describe_failure(exc, comp.retry.max_attempts, self._history_bounded)
            record.state, st.state = "failed", "compensation_failed"
            self._record(step.id, EventKind.compensation_failed, {"action": comp.action, "error": record.error})
        else:
            record.attempts, record.state = result.attempt, "succeeded"
            st.state = "compensated"
            if not (result.audited and self._trusts_audited(comp.action)):
                self._record(step.id, EventKind.compensation_succeeded, {"action": comp.action, "attempts": result.attempt})
        record.finished_at = workflow.now()
        self._log("compensation " + record.state, step_id=step.id, was=previous)
        await self._notify()

    # ---- helpers -------------------------------------------------------------------------

    def _step_room(self) -> str | None:
        """Why a step or fallback may not start (engine-v13); the playbook's on_failure steps, which
        run after the rollback, have the undos' room."""
        if self._finishing:
            return self._history_full(HISTORY_UNDO_MAX, EVENTS_UNDO_MAX)
        return self._history_full(HISTORY_STEPS_MAX, EVENTS_STEPS_MAX)

    def _history_full(self, limit: int, events: int) -> str | None:
        """Why nothing more may start (engine-v13): the run's history is past `limit` bytes or
        `events` events."""
        if not self._history_bounded:
            return None
        size, length = workflow.info().get_current_history_size(), workflow.info().get_current_history_length()
        if size > limit:
            return (f"this run's history holds {size / 2**20:.1f} MiB, past the {limit // 2**20} MiB a run may take "
                    "before Temporal's limit (50 MB) ends it")
        if length > events:
            return (f"this run's history holds {length:,} events, past the {events:,} a run may take before "
                    "Temporal's limit (51,200) ends it")
        return None

    def _args(self, action: str, with_: dict[str, Any], owner: str) -> dict[str, Any]:
        """An action's `with:` rendered for step `owner` (its own, its fallback's or its undo's);
        Slack mrkdwn args escaped (MRKDWN_ARGS). TemplateError for one that does not render, or
        (engine-v12) that renders past ARGS_MAX bytes."""
        args = render_args(action, with_, self._context(owner), secrets=self._input.playbook.secrets)
        if self._args_bounded:
            size = len(canonical_json(args).encode("utf-8", "surrogatepass"))
            if size > ARGS_MAX:
                raise TemplateError(f"the arguments are {size:,} bytes once rendered; a step's are at most {ARGS_MAX:,}")
        return args

    def _context(self, owner: str | None = None) -> dict[str, Any]:
        """What templates read; all of it data, made inert so none of it can spell a secret.
        `owner`: the step the template belongs to (a foreach item's step sees its item)."""
        status = self._status
        doc = {
            "params": self._params,
            "vars": self._input.playbook.vars,
            "alert": self._input.trigger.alert,
            "run": {
                "id": status.run_id,
                "playbook": status.playbook,
                "requested_by": status.requested_by,
                "trigger": status.trigger,
                "started_at": status.started_at.isoformat() if status.started_at else None,
                # where the run is told in Slack, so a slack.post step can reply in its thread
                "slack_channel": self._channel,
                "slack_thread_ts": self._slack.message_ts,
                # what ended the run, for the playbook's on_failure steps (None while it goes well)
                "error": status.error,
                "failed_step": status.failed_step,
            },
            "steps": {
                st.id: {"output": st.output, "state": st.state}
                for st in status.steps
                if st.state not in ("pending", "skipped")
            },
        }
        if self._input.playbook.foreach_groups():
            self._foreach_context(doc, owner)
        return inert(doc)

    def _traced(self, address: str) -> None:
        """Note what starts, in order (memory only: no command, so histories replay as before).
        Foreach items and child runs name theirs `id[i]` and `call/child_id` (DESIGN, rehearsal addresses)."""
        if len(self._status.trace) < TRACE_MAX:
            self._status.trace.append(address)

    def _record(
        self,
        step_id: str | None,
        kind: EventKind,
        details: dict[str, Any],
        *,
        actor: str = "system",
        key: str | None = None,
    ) -> None:
        """Queue an audit event; the next activity writes it before it acts."""
        details = self._foreach_audit(step_id, details)  # a foreach item's step says its index
        self._queue(event(self._status.run_id, step_id, kind, details, actor=actor, ts=workflow.now(), key=key,
                          execution=self._execution()))

    def _is_last(self, step: Step) -> bool:
        """The final top-level step, when it is a plain step: its success completes the run."""
        last = self._input.playbook.steps[-1]
        return isinstance(last, Step) and last.id == step.id

    def _closes(self, step: Step) -> bool:
        """Whether the step's activity writes run_finished with its success: the last step, unless
        its success still has something to record (what it settled, that it was irreversible)."""
        return self._is_last(step) and step.settles is None and not step.irreversible and self._input.parent is None

    def _finish_details(self, state: str | None = None) -> dict[str, Any]:
        status = self._status
        return {
            "state": state or status.state,
            "error": None if state else status.error,
            "not_undone": [] if state else status.not_undone,
            "escalated_to": [] if state else status.escalated_to,
            "playbook": status.playbook,
            "trigger": status.trigger,
            "cancelled_by": status.cancelled_by,
            # v1.1, said only when there is something to say, so a v1 run's record is as it was
            **({"failed_step": status.failed_step} if status.failed_step and not state else {}),
            **({"irreversible": list(status.irreversible)} if status.irreversible else {}),
        }

    def _finish_event(self) -> AuditEvent:
        """run_finished as it will read if the last step succeeds, so that step's activity can
        write it and the run needs no extra call to close its record."""
        return event(
            self._status.run_id, None, EventKind.run_finished, self._finish_details("completed"), ts=workflow.now(),
            key="completed", execution=self._execution(),
        )

    def _waited(self, step_id: str) -> float:
        asked = self._asked_at.get(step_id)
        return round((workflow.now() - asked).total_seconds(), 3) if asked else 0.0

    async def _flush_audit(self) -> None:
        """Write queued events now, when no activity is coming to carry them: the flusher does, in
        order, however long the store is down (bot/engine/spool.py). Runs from before the spool:
        a local activity here, retried until the store takes them."""
        if not self._audit or not self._has(AUDIT_PATCH):
            return
        if self._spooled():
            self._flush_wanted = True
            return
        queued = self._take()
        try:
            await self._local_activity(
                "audit.record",
                AuditBatch(events=[e for _, e in queued]),
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=TemporalRetryPolicy(maximum_interval=timedelta(seconds=30)),
            )
        except BaseException:
            self._put_back(queued)
            raise

    async def _notify(self) -> None:
        """Show the run in Slack (status message, approvals, thread). Best effort: a failed sync
        never fails the run, and runs without a channel make no call at all. From slack-beside-v1
        on this only marks Slack stale: the Slack coroutine syncs, and no caller waits for it."""
        if self._slack_beside:
            self._slack_stale = True
            self._news += 1
            return
        if not self._channel or not self._has(SLACK_PATCH):
            return
        async with self._slack_lock:
            await self._sync_slack(attempts=3)  # a run from before slack-beside-v1: retried, as it was

    async def _thread_known(self, step: Step) -> None:
        """The one wait for Slack a step has: a step whose arguments name `run.slack_thread_ts`
        (a reply in the run's thread) waits, bounded, for the status message to exist."""
        if not self._slack_beside or self._slack.message_ts is not None or "slack_thread_ts" not in repr(step.with_):
            return
        self._slack_stale = True
        self._thread_waits += 1
        try:
            await workflow.wait_condition(lambda: self._slack.message_ts is not None, timeout=SLACK_TIMEOUT)
        except asyncio.TimeoutError:
            self._log("slack status message not posted yet: the step has no thread", step_id=step.id)
        finally:
            self._thread_waits -= 1

    async def _slack_coroutine(self) -> None:
        """Beside the steps: one sync whenever Slack is stale, covering every change since the
        last one began. A sync that left something pending (rate limited, refused) is tried again
        after a doubling pause, a few times; news always syncs. At the run's end it syncs what is
        left (engine-v5: once the bound is up, unless someone is paged) and stops (`_close` waits
        for that, bounded)."""
        pause, retries = SLACK_RETRY_FIRST, 0
        synced_at = remote_at = 0  # steps' work (and of it, remote work) dispatched when the last sync began
        while True:
            if not self._slack_stale:
                if self._slack.pending and retries < SLACK_RETRIES:
                    try:
                        await workflow.wait_condition(lambda: self._slack_stale, timeout=timedelta(seconds=pause))
                    except asyncio.TimeoutError:
                        pass  # try what is pending again
                elif self._slack_closing:
                    break
                else:
                    await workflow.wait_condition(lambda: self._slack_stale or self._slack_closing)
                    continue
            if self._slack_defers and not self._slack_closing:
                await self._after_dispatches(synced_at, remote_at)
                synced_at, remote_at = self._dispatched, self._remote
            elif self._slack_coalesces and (bound := self._defer_bound) is not None and not bound.done():
                # The run's end shows once the bound is up, unless it pages someone.
                await workflow.wait_condition(lambda: bound.done() or self._slack_wanted())
            self._slack_stale = False
            self._asks_synced = self._asks
            await self._sync_slack()
            if self._slack.pending:
                retries += 1
                pause = min(SLACK_RETRY_MAX, max(pause * 2 if retries > 1 else SLACK_RETRY_FIRST, self._slack.retry_after))
            else:
                pause, retries = SLACK_RETRY_FIRST, 0
        self._slack_idle = True

    def _acting(self, local: bool = False) -> None:
        """A step's work (its policy question, its action, a child run) is dispatched now; `local`:
        it runs inside this workflow task (a local activity), so no command waits to be sent for it."""
        self._dispatched += 1
        if not local:
            self._remote += 1

    async def _after_dispatches(self, seen: int, remote_seen: int) -> None:
        """Wait while what Slack would show keeps dispatching steps' work, at most SLACK_DEFER: a
        sync is a local activity, which holds its workflow task open until Slack answers, and with
        it the commands that task sends (the deciding vote's answer, the approved step). Each check
        comes once the other coroutines have run as far as they can (conditions are checked when
        nothing else is ready), so the step a vote or a result releases goes first. Counted by
        workflow state, not by workflow task: a query can split a task, and replay then sees a local
        activity's result a task earlier. `seen`: dispatches at the last sync.

        engine-v5: news that dispatches nothing ends the wait only when a human waits on Slack
        (`_slack_wanted`); other news, the run's end included, waits for the bound, so a burst of
        runs' approved steps act before their Slack updates.

        engine-v6: each reading of "dispatched nothing" also waits out an audit flush that a
        high-impact step waits for (`_after_flush`), which the bound does not cut short.

        engine-v7: news that dispatched only local work (`remote_seen`: remote dispatches at the
        last sync) first waits, inside this task, for the local activities running (a local step,
        a child's playbook snapshot, a vote's check, a flush) and what they lead to. If nothing
        remote was dispatched meanwhile, Slack goes once they are done: there is no dispatch for
        the sync to hold, and a run of local steps ends in one task, without the bound's timer.
        A remote dispatch meanwhile, or a human waiting on Slack while local work still runs,
        goes on to the bound as before.

        The bound is a timer that is never cancelled, shared by the waits that begin while it runs
        (at most one per SLACK_DEFER per run): Temporal's time-skipping test server, which
        `playbook-bot test` rehearses on, refuses a cancel of a timer that fired during the task
        and then never gives the run another task (sdk-java #2606, #3088)."""
        await workflow.wait_condition(lambda: True)
        await self._after_flush()
        if self._dispatched == seen:
            return
        if self._slack_waits_local and self._remote == remote_seen:
            def settled() -> bool:
                return (not self._local_running or self._remote != remote_seen or self._thread_waits > 0
                        or self._slack_wanted())

            while True:  # settled, and still so once what the last result released has run
                await workflow.wait_condition(settled)
                await workflow.wait_condition(lambda: True)
                if settled():
                    break
            if self._remote == remote_seen and not self._local_running:
                return
        if self._defer_bound is None or self._defer_bound.done():
            self._defer_bound = asyncio.ensure_future(asyncio.sleep(SLACK_DEFER.total_seconds()))
        bound = self._defer_bound
        coalesce = self._slack_coalesces
        while not ((self._slack_closing and not coalesce) or bound.done()):
            seen, news = self._dispatched, self._news
            if coalesce:  # engine-v5: the end waits too, but a page then goes at once (nothing more is dispatched)
                await workflow.wait_condition(lambda: self._news != news or bound.done() or self._thread_waits > 0
                                              or (self._slack_closing and self._slack_wanted()))
            else:
                await workflow.wait_condition(lambda: self._news != news or self._slack_closing or bound.done())
            await workflow.wait_condition(lambda: True)
            await self._after_flush()
            if self._dispatched == seen and (not coalesce or self._slack_wanted()):
                return  # the news dispatched nothing (engine-v5: and a human waits on it): Slack goes now

    async def _after_flush(self) -> None:
        """engine-v6: while a high-impact step waits for an audit flush before its dispatch
        (`_recorded`), "nothing dispatched" is read once that step has gone: a sync started during
        the flush shares its task and holds the step's dispatch until Slack answers. Only then: a
        flush nobody waits for (an approval request's own) does not hold Slack. Each flush ends in
        its FLUSH_TIMEOUT; a store that is down ends the wait (the step then waits for the store)."""
        if self._slack_after_flush and self._record_flushing():
            await workflow.wait_condition(lambda: not self._record_flushing())
            await workflow.wait_condition(lambda: True)

    def _slack_wanted(self) -> bool:
        """Someone waits on what Slack would show: humans asked to act (an approval or an answer
        requested, or escalated) since the last sync began, or a step that needs the run's thread."""
        return self._thread_waits > 0 or self._asks != self._asks_synced

    async def _sync_slack(self, attempts: int = 1) -> None:
        """One `slack.sync`, never retried from this (stale) state: the coroutine syncs again
        with the state the last sync returned, and the notifier remembers what it posted."""
        steps = self._status.all_steps()
        try:
            self._slack = await workflow.execute_local_activity(
                "slack.sync",
                SlackSync(
                    channel=self._channel or "",
                    status=self._status,
                    decisions={s.id: s.decision for s in steps if s.decision and s.decision.get("require_approval")},
                    needed={s.id: self._approvals.needed(s.id) for s in steps if s.decision},
                    state=self._slack,
                ),
                result_type=SlackState,
                start_to_close_timeout=SLACK_TIMEOUT,
                retry_policy=TemporalRetryPolicy(maximum_attempts=attempts),
            )
        except ActivityError as exc:
            workflow.logger.warning("slack sync failed", extra={**self._log_extra, "error": str(exc.cause or exc)})
            self._slack = self._slack.model_copy(update={"pending": True})

    def _has(self, patch: str) -> bool:
        """Whether this run has an older patch's behaviour. A trusted run was started by code that had
        every patch before trust-v1, so it asks no more: a patch first asked after a local activity
        (admission) does not replay once a query has split that workflow task (Temporal resolves the
        activity a task earlier on replay, before the marker is known, and the run is stuck)."""
        return self._trusted is True or workflow.patched(patch)

    def _log(self, message: str, **fields: Any) -> None:
        workflow.logger.info(message, extra={**self._log_extra, **fields})
