"""`playbook.run` (format v1.1): run another playbook of the catalog as a child run.

The workflow handles it itself (a child workflow with its own saga, gates and approvals); the
registry entry gives `validate` and the JSON Schema its params. Scheduled as an activity, which
the workflow never does, it refuses.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import Field, field_validator

from bot.actions.base import ActionContext, ActionParams, ActionRefused, action
from bot.playbook.durations import Duration
from bot.playbook.model import NAME_PATTERN

RUN_ACTION = "playbook.run"
CHILD_PARAMS_MAX = 64  # params handed to a child run


class RunPlaybookParams(ActionParams):
    name: str = Field(pattern=NAME_PATTERN, max_length=63, description=(
        "The playbook to run, by name: a literal (not a template), so cycles and unknown names are load-time errors."
    ))
    params: dict[str, Any] = Field(default_factory=dict, max_length=CHILD_PARAMS_MAX, description=(
        "The child's params (templates over this run's params, steps and alert); checked against the child's "
        "own params when it starts."
    ))
    timeout: Duration | None = Field(None, description=(
        "How long to wait for the child's steps; none (default): as long as they take. When it passes the "
        "child is cancelled (its own saga undoes it) and this step fails."
    ))

    @field_validator("timeout")
    @classmethod
    def _positive(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value <= timedelta(0):
            raise ValueError("timeout must be positive")
        return value


class PlaybookActions:
    @action(RUN_ACTION, RunPlaybookParams)
    async def run(self, params: RunPlaybookParams, ctx: ActionContext) -> dict[str, Any]:
        """Run another playbook as a child run (its own saga, gates and approvals); its output is {state, steps}."""
        # The workflow runs children itself and never schedules this.
        raise ActionRefused(f"{RUN_ACTION} runs as a child workflow of its run, never as an activity")
