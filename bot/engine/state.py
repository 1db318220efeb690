"""Run and step state as DESIGN.md names it: the workflow's query result and `status --json`."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from bot.playbook.model import Playbook

RunState = Literal[
    "pending", "running", "waiting_approval", "completed", "compensating", "compensated", "failed", "cancelled"
]
StepState = Literal[
    "pending",
    "running",
    "waiting_approval",
    "succeeded",
    "skipped",
    "failed",
    "denied",
    "rejected",
    "cancelled",
    "compensating",
    "compensated",
    "compensation_failed",
]
CompensationState = Literal["pending", "running", "succeeded", "failed", "skipped"]
TriggerKind = Literal["cli", "slack", "alertmanager"]

FINAL_RUN_STATES: frozenset[str] = frozenset({"completed", "compensated", "failed", "cancelled"})


class TriggerContext(BaseModel):
    """Who or what started the run; `requested_by` is the user id policy and four-eyes check."""

    kind: TriggerKind = "cli"
    requested_by: str
    alert: dict[str, Any] | None = None
    slack: dict[str, Any] | None = None


class RunInput(BaseModel):
    """A validated playbook snapshot: an edited file never changes a running incident."""

    playbook: Playbook
    playbook_hash: str
    params: dict[str, Any] = Field(default_factory=dict)
    trigger: TriggerContext


class Vote(BaseModel):
    user: str
    name: str = ""
    vote: Literal["approve", "reject"]
    at: datetime
    reason: str = ""
    groups: list[str] = Field(default_factory=list)


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
    decision: dict[str, Any] | None = None
    approvals: list[Vote] = Field(default_factory=list)
    approval_deadline: datetime | None = None
    escalated_at: datetime | None = None


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

    def step(self, step_id: str) -> StepStatus:
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(step_id)

    @property
    def finished(self) -> bool:
        return self.state in FINAL_RUN_STATES


class VoteRequest(BaseModel):
    """An approval or rejection as Slack or the CLI sends it; groups come from Slack or are empty."""

    step_id: str
    user: str
    name: str = ""
    groups: list[str] = Field(default_factory=list)
    vote: Literal["approve", "reject"] = "approve"
    reason: str = ""


class VoteResult(BaseModel):
    step_id: str
    step_state: StepState
    approvals: int
    needed: int
    message: str
