"""Run and step state as DESIGN.md names it: the workflow's query result and `status --json`."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from pydantic_core import to_json

from bot.actions.base import OutputRef
from bot.identity.proofs import Proof
from bot.playbook.model import Playbook

# What a run's status may weigh as JSON where it leaves the worker: Temporal refuses a payload past
# 2 MB, and a run whose result (its status) was refused failed its last workflow task on every
# replay: it never ended (ten steps of 250 KB args each). gRPC refuses a query answer past 4 MB.
STATUS_MAX = 1536 * 1024
# Characters of an action's failure a run keeps as its step's error (engine-v13: its status, its
# audit event, which rides on the next activity), and of any error a cut status keeps: a client
# failing an action by id with 400,000 control characters (2.4 MB once JSON-escaped) made the
# undo's input too large on every replay (red team, stop 53).
ERROR_MAX = 2000
OMITTED = "(left out)"


RunState = Literal[
    "pending", "queued", "running", "waiting_approval", "completed", "compensating", "compensated", "failed", "cancelled"
]
StepState = Literal[
    "pending",
    "running",
    "waiting_approval",
    "succeeded",
    "skipped",
    "failed",
    "failed_ignored",
    "denied",
    "rejected",
    "cancelled",
    "compensating",
    "compensated",
    "compensation_failed",
]
CompensationState = Literal["pending", "running", "succeeded", "failed", "skipped"]
TriggerKind = Literal["cli", "slack", "alertmanager", "api", "playbook", "schedule", "grafana", "pagerduty", "opsgenie"]  # playbook: a sub-playbook's child run

FINAL_RUN_STATES: frozenset[str] = frozenset({"completed", "compensated", "failed", "cancelled"})


class TriggerContext(BaseModel):
    """Who or what started the run; `requested_by` is the principal (`slack:U…`, `cli:alice`,
    `api:deploy-bot`, `alertmanager`) that policy and four-eyes check."""

    kind: TriggerKind = "cli"
    requested_by: str
    alert: dict[str, Any] | None = None
    slack: dict[str, Any] | None = None
    schedule: str | None = Field(None, exclude_if=lambda value: value is None, description=(
        "The Temporal Schedule that fires this run (trigger `schedule`); its runs' ids start with it."
    ))


class ParentLink(BaseModel):
    """A child run's parent (format v1.1 `playbook.run`). Admission trusts it only when Temporal
    itself says this run was started by that parent workflow (no client can claim that)."""

    run_id: str
    step_id: str
    root_run_id: str = Field(description="The root of the run tree: the run that a lock's nested grant goes through.")
    depth: int = Field(1, ge=1)
    requester: "Requester"
    pins: dict[str, str] = Field(default_factory=dict, description=(
        "The content hash of every sub-playbook below the root, as the root's admission found them: a "
        "grandchild edited while a vote was due must not run as edited either."
    ))


class RunInput(BaseModel):
    """A validated playbook snapshot: an edited file never changes a running incident."""

    playbook: Playbook
    playbook_hash: str
    params: dict[str, Any] = Field(default_factory=dict)
    trigger: TriggerContext
    proof: Proof | None = Field(None, description="The front door's proof of who asked; none: unverified.")
    parent: ParentLink | None = Field(None, description="Set when a parent run's playbook.run step started this run.")
    verdict: FrontVerdict | None = Field(None, description=(
        "The front door's `start` answer sealed to `proof`, for the worker's admission to use instead of asking "
        "(bot/engine/verdicts.py); a worker from before it ignores it."
    ))


class Vote(BaseModel):
    user: str  # the principal that voted
    name: str = ""
    vote: Literal["approve", "reject"]
    at: datetime
    reason: str = ""
    groups: list[str] = Field(default_factory=list)
    person: str = ""  # who that principal is, per policy (four-eyes and one vote per person compare these)
    verified: bool = False
    # core.confirm: the answer given (a choice, or a typed value); absent on approval votes
    answer: str | int | float | None = Field(None, exclude_if=lambda value: value is None)


class FallbackStatus(BaseModel):
    """The fallback that ran because its step's own action failed (the step's `error` says why)."""

    action: str
    state: Literal["running", "succeeded", "failed", "denied"] = "running"
    attempts: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    args: dict[str, Any] | None = None
    output: dict[str, Any] | None = None
    output_ref: OutputRef | None = None
    decision: dict[str, Any] | None = None


ItemState = Literal["pending", "running", "succeeded", "failed", "skipped", "cancelled"]


class ForeachProgress(BaseModel):
    total: int = 0
    done: int = 0  # items that succeeded
    failed: int = 0
    running: int = 0
    skipped: int = 0  # never started (the group stopped, or was cancelled)

    def text(self) -> str:
        """`3/12 done, 1 failed`: what status, Slack and the audit trail say."""
        said = f"{self.done}/{self.total} done"
        for label, count in (("failed", self.failed), ("running", self.running), ("skipped", self.skipped)):
            if count:
                said += f", {count} {label}"
        return said


class ForeachItem(BaseModel):
    """One item of a foreach group: its steps' addresses read `roll[2].drain`."""

    index: int
    value: str = Field(description="The item, as short JSON text (bounded): what it was, not what templates read.")
    state: ItemState = "pending"
    error: str | None = None
    steps: list[StepStatus] = Field(default_factory=list)


class StepStatus(BaseModel):
    id: str
    action: str
    group: str | None = None
    impact: Literal["low", "high"] = "low"
    state: StepState = "pending"
    attempts: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    args: dict[str, Any] | None = None
    output: dict[str, Any] | None = None
    output_ref: OutputRef | None = Field(
        None, description="A large output kept out of the run's state: its audit event, sha256, size and preview "
        "(`output` then holds only the fields templates read)."
    )
    decision: dict[str, Any] | None = None
    approvals: list[Vote] = Field(default_factory=list)
    approval_deadline: datetime | None = None
    escalated_at: datetime | None = None
    irreversible: bool = False
    fallback: FallbackStatus | None = None
    settled_by: str | None = Field(None, description="The later step that settled this one: its undo was dropped.")
    items: list[ForeachItem] | None = Field(None, description="A foreach group's items (format v1.1), in index order.")
    progress: ForeachProgress | None = None
    refused_votes: int = Field(
        0, description="Votes and answers the run refused on this step (repeats its validator turned away are "
        "counted in the worker's playbook_bot_votes_refused_early metric: they never reach the run's history)."
    )


ForeachItem.model_rebuild()


class Requester(BaseModel):
    """The requester as the worker admitted the run: verified or not, and the person behind it."""

    principal: str
    person: str
    verified: bool = False
    verified_by: str | None = None


ChildVerdict = Literal["release", "compensate", "cancel"]


class ChildCall(BaseModel):
    """A child run a `playbook.run` step started, and what the parent wants of it (read by the
    child through the parent's `status` query: a signal only wakes it, so nobody can forge this)."""

    step: str
    run_id: str
    playbook: str
    state: RunState | Literal["starting", "held"] = "starting"
    verdict: ChildVerdict | None = None


class CompensationStatus(BaseModel):
    step: str
    action: str
    state: CompensationState = "pending"
    attempts: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None


class RunStatus(BaseModel):
    run_id: str
    execution: str | None = Field(
        None, description="The run's first execution run id: votes, answers and cancels are signed for it "
        "(a run id can run again). None: a status from a worker before this field."
    )
    playbook: str
    playbook_hash: str
    state: RunState = "pending"
    requested_by: str
    trigger: TriggerKind
    params: dict[str, Any] = Field(default_factory=dict)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    steps: list[StepStatus] = Field(default_factory=list)
    compensations: list[CompensationStatus] = Field(default_factory=list)
    error: str | None = None
    not_undone: list[str] = Field(default_factory=list, description="Steps whose compensation failed.")
    escalated_to: list[str] = Field(
        default_factory=list, description="User groups paged because something could not be undone."
    )
    requester: Requester | None = Field(None, description="The requester as the worker verified it.")
    cancelled_by: str | None = Field(None, description="The principal whose cancel the run accepted.")
    cancel_reason: str = ""
    failed_step: str | None = Field(None, description="The step whose failure (or core.fail) ended the run.")
    irreversible: list[str] = Field(
        default_factory=list, description="Irreversible steps that succeeded: no rollback undoes them."
    )
    lock_key: str | None = Field(None, description="The run's rendered concurrency key (format v1.1).")
    waiting_for: dict[str, Any] | None = Field(
        None, description="While queued: {key, holder, position}: the key and the run holding it."
    )
    busy: dict[str, Any] | None = Field(
        None, description="The key was busy and the playbook says refuse or attach: {key, holder, on_busy}; nothing ran."
    )
    trace: list[str] = Field(
        default_factory=list,
        description="What started, in order: step ids, `undo:<id>`, `fallback:<id>` (rehearsals' expect.order).",
    )
    parent_run: str | None = Field(None, description="A child run (playbook.run): the parent run that started it.")
    parent_step: str | None = Field(None, description="A child run: the parent's step that called it.")
    held_by: str | None = Field(
        None, description="A child run whose steps completed: the parent run it waits for (release or roll back)."
    )
    children: list[ChildCall] = Field(default_factory=list, description="Child runs this run's playbook.run steps started.")
    audit_pending: int = Field(
        0, description="Audit events the store could not take yet (it is down): the run holds at its end until it has."
    )
    left_out: list[str] = Field(
        default_factory=list, description="What this status leaves out to stay within Temporal's payload limits "
        "(STATUS_MAX); the audit trail holds it whole."
    )

    def step(self, step_id: str) -> StepStatus:
        """A step by id, or a foreach item's step by its address (`roll[2].drain`)."""
        for step in self.steps:
            if step.id == step_id:
                return step
        group, bracket, rest = step_id.partition("[")
        if bracket:
            index, _, inner = rest.partition("].")
            for step in self.steps:
                if step.id == group and step.items is not None and index.isdigit() and int(index) < len(step.items):
                    for member in step.items[int(index)].steps:
                        if member.id == step_id:
                            return member
        raise KeyError(step_id)

    def all_steps(self) -> list[StepStatus]:
        """Every step status, foreach items' steps included (after their group)."""
        out: list[StepStatus] = []
        for step in self.steps:
            out.append(step)
            for item in step.items or ():
                out.extend(item.steps)
        return out

    @property
    def finished(self) -> bool:
        return self.state in FINAL_RUN_STATES

    def bounded(self, limit: int = STATUS_MAX) -> RunStatus:
        """This status, or a copy within `limit` bytes of JSON, for where it leaves the worker (the
        `status` query, the run's result). What the audit trail holds whole goes first, each cut
        named in `left_out`: finished steps' arguments, long errors, ended foreach items' steps,
        outputs; then every step. What other runs read of it (state, lock key, requester, children)
        stays, and what approvers read of a step still open (its arguments, decision, votes)."""
        if payload_size(self) <= limit:
            return self
        out = self.model_copy(deep=True)
        for name, cut in _CUTS:
            out.left_out.append(name)
            for step in out.all_steps():
                cut(step)
            if payload_size(out) <= limit:
                return out
        out.left_out.append("steps, undos, params and trace")
        out.steps, out.compensations, out.params, out.trace = [], [], {}, []
        out.error = cut_text(out.error, ERROR_MAX)
        return out


class FrontVerdict(BaseModel):
    """A rule's answer as the front door that signed the request asked it: `approver` about a
    vote's signer (on the input whose sha256 is `doc`, its `now` set to `at`) or `start` about a
    run's requester (its time `at`), sealed to the request's proof with the envelope key
    (bot/engine/verdicts.py). The run uses it only where it is the answer the run would have got
    itself; otherwise the worker asks."""

    # Fields a later front door adds are dropped, not refused: a worker that cannot read a verdict
    # must still read the run's input (its seal then fails to hold here, and the worker asks).
    model_config = ConfigDict(frozen=True, extra="ignore")

    allow: bool
    reasons: list[str] = Field(default_factory=list, max_length=20)
    person: str | None = Field(None, max_length=200)
    at: AwareDatetime  # (compared with Temporal's times: a time without a zone is no verdict's)
    doc: str = Field(pattern=r"^[0-9a-f]{64}$")  # (Rust regex: $ is the very end)
    policy_hash: str | None = Field(None, max_length=200)
    decision_id: str | None = Field(None, max_length=200)
    engine: str | None = Field(None, max_length=200)
    seal: str = Field(pattern=r"^[0-9a-f]{12}:[0-9a-f]{64}$")  # key id:HMAC (Keyring.seal)


class VoteRequest(BaseModel):
    """An approval or rejection. `user` is the principal; its groups and verification come from
    `proof` alone (the worker ignores groups a client merely claims). `verdict`: the front door's
    `approver` answer, when it asked (a worker before engine-v8 ignores it)."""

    step_id: str
    user: str
    name: str = ""
    groups: list[str] = Field(default_factory=list)
    vote: Literal["approve", "reject"] = "approve"
    reason: str = ""
    proof: Proof | None = None
    verdict: FrontVerdict | None = None


ANSWER_MAX = 1000  # characters of a core.confirm answer, and of its reason


class ConfirmRequest(BaseModel):
    """An answer to a core.confirm step: `answer` is the choice picked (or the value typed for an
    `input:` step). Who answers, as for votes, comes from `proof` alone."""

    step_id: str
    user: str
    name: str = ""
    groups: list[str] = Field(default_factory=list)
    answer: str = Field(max_length=ANSWER_MAX)
    reason: str = Field("", max_length=ANSWER_MAX)
    proof: Proof | None = None


class ConfirmResult(BaseModel):
    step_id: str
    step_state: StepState
    answer: str | int | float
    message: str


class Poke(BaseModel):
    """Parent and child runs wake each other with this signal; the woken run then reads the
    other's status (a query the worker answers), so a forged poke changes nothing."""

    run_id: str


class CancelRequest(BaseModel):
    """Who asks to cancel, and why; the `cancel` rule decides, the run records the canceller."""

    user: str
    name: str = ""
    reason: str = ""
    proof: Proof | None = None


class CancelResult(BaseModel):
    state: str
    message: str


class VoteResult(BaseModel):
    step_id: str
    step_state: StepState
    approvals: int
    needed: int
    message: str


ParentLink.model_rebuild()


def payload_size(value: Any) -> int:
    """Bytes of `value` as the payload converter writes it (UTF-8 JSON, not characters: 🔥 is four)."""
    return len(to_json(value))


def cut_text(text: str | None, limit: int) -> str | None:
    """`text` of at most `limit` characters, a cut one ending in "…"."""
    return text if text is None or len(text) <= limit else text[: limit - 1] + "…"


def _omitted(value: dict[str, Any] | None, what: str) -> dict[str, Any] | None:
    return None if value is None else {OMITTED: f"{what}: the step's audit events hold them"}


OPEN_STATES = frozenset({"running", "waiting_approval", "compensating"})  # what approvers and votes read


def _no_args(step: StepStatus) -> None:
    if step.state in OPEN_STATES:  # an approver is shown these (the App Home tab, `status`)
        return
    step.args = _omitted(step.args, "its arguments")
    if step.fallback is not None:
        step.fallback.args = _omitted(step.fallback.args, "its fallback's arguments")


def _no_outputs(step: StepStatus) -> None:
    step.output = _omitted(step.output, "its output")
    if step.fallback is not None:
        step.fallback.output = _omitted(step.fallback.output, "its fallback's output")


def _no_item_steps(step: StepStatus) -> None:
    for item in step.items or ():
        if item.state not in ("pending", "running"):  # (a running item's step may wait for a vote)
            item.steps = []


def _short_errors(step: StepStatus) -> None:
    step.error = cut_text(step.error, ERROR_MAX)
    for item in step.items or ():
        item.error = cut_text(item.error, ERROR_MAX)


# Outputs last: a parent run reads its child's (its `playbook.run` step's report).
_CUTS = (("arguments", _no_args), ("long errors", _short_errors), ("foreach items' steps", _no_item_steps),
         ("outputs", _no_outputs))
