"""Actions that need no integration: write to the run's log, wait, end the run on purpose, ask a human."""

from __future__ import annotations

import asyncio
import math
from datetime import timedelta
from typing import Annotated, Any, Literal

import structlog
from pydantic import Field, field_validator, model_validator

from bot.actions.base import ActionContext, ActionFailed, ActionParams, action
from bot.playbook import patterns
from bot.playbook.durations import Duration, format_duration
from bot.playbook.model import valid_pattern

log = structlog.get_logger("bot.actions.core")


class LogParams(ActionParams):
    message: str = Field(description="What to write; run, step and playbook ids are added.")
    level: Literal["info", "warning", "error"] = "info"


class SleepParams(ActionParams):
    duration: Duration = Field(description="How long to wait, e.g. '30s', '2m'.")

    @field_validator("duration")
    @classmethod
    def _not_negative(cls, value: timedelta) -> timedelta:
        if value < timedelta(0):
            raise ValueError("duration must not be negative")
        return value


class FailParams(ActionParams):
    reason: str = Field(min_length=1, description="Why the run ends here; it becomes the run's error.")


MESSAGE_MAX = 2000  # characters of a human step's message (a Slack section holds 3000)
CHOICES_MAX = 20  # buttons in one Slack actions block (25 at most, with Reject beside them)
CHOICE_MAX = 75  # characters of a choice: a Slack button's text holds 75
VALUE_MAX = 500  # characters of a typed answer (`input:`)
APPROVERS_MAX = 20


class ApproveParams(ActionParams):
    """core.approve: the run waits for votes; policy decides who may vote, how many and the deadline."""

    message: str = Field(min_length=1, max_length=MESSAGE_MAX, description="What the approvers are asked.")
    approvers: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(
        default_factory=list, max_length=APPROVERS_MAX,
        description="A hint shown to approvers (user groups, people); the `approver` rule still decides who may vote.",
    )


class InputSpec(ActionParams):
    """A typed answer instead of a choice: checked like a param (type, then `pattern`, searched for by RE2)."""

    type: Literal["string", "integer", "number"] = "string"
    pattern: str | None = Field(None, max_length=500, description="A regular expression the answer must match "
                                "(searched for, by RE2: anchor it with ^...$ to match the whole answer).")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        return valid_pattern(value)


class ConfirmParams(ActionParams):
    """core.confirm: a human picks one of `choices` (or types a value for `input:`); the answer is the output."""

    message: str = Field(min_length=1, max_length=MESSAGE_MAX, description="The question.")
    choices: list[Annotated[str, Field(min_length=1, max_length=CHOICE_MAX)]] | None = Field(
        None, min_length=1, max_length=CHOICES_MAX,
        description="What may be answered (a list, or a template rendering one); output.choice is the answer.",
    )
    input: InputSpec | None = Field(None, description="Ask for a value instead of a choice; output.value is the answer.")

    @field_validator("choices")
    @classmethod
    def _unique(cls, value: list[str] | None) -> list[str] | None:
        for choice in value or []:
            if value and value.count(choice) > 1:
                raise ValueError(f"choice {choice!r} is listed twice")
        return value

    @model_validator(mode="after")
    def _one_way_to_answer(self) -> ConfirmParams:
        if (self.choices is None) == (self.input is None):
            raise ValueError("give exactly one of choices: [..] (pick one) or input: {type, pattern} (type a value)")
        return self

    def answer(self, text: str) -> str | int | float:
        """The answer as the step's output holds it; ValueError naming the rule it breaks."""
        if self.choices is not None:
            if text not in self.choices:
                raise ValueError(f"{text[:CHOICE_MAX]!r} is not one of the choices ({', '.join(self.choices)})")
            return text
        spec = self.input
        assert spec is not None
        if len(text) > VALUE_MAX:
            raise ValueError(f"the answer is {len(text)} characters; at most {VALUE_MAX}")
        value: str | int | float = text
        if spec.type != "string":
            try:
                value = int(text) if spec.type == "integer" else float(text)
            except ValueError:
                raise ValueError(f"{text[:60]!r} is not an {spec.type}" if spec.type == "integer"
                                 else f"{text[:60]!r} is not a number") from None
            if isinstance(value, float) and not math.isfinite(value):
                # float() takes nan, inf and 1e999, which no record holds: recorded in the vote's
                # handler, one wedged the run for good (red team)
                raise ValueError(f"{text[:60]!r} is not a finite number")
        if spec.pattern is not None and not patterns.found(spec.pattern, text):
            raise ValueError(f"{text[:60]!r} does not match the pattern {spec.pattern}")
        return value


class CoreActions:
    @action("core.log", LogParams)
    async def log(self, params: LogParams, ctx: ActionContext) -> dict[str, Any]:
        """Write a message to the run's log."""
        # The wrapper has bound run/step/playbook/action ids to the context already.
        getattr(log, params.level)(ctx.mask(params.message), source="playbook")
        return {"message": params.message}

    @action("core.sleep", SleepParams)
    async def sleep(self, params: SleepParams, ctx: ActionContext) -> dict[str, Any]:
        """Wait for a while, e.g. to let a restarted service settle before checking it."""
        # A cancel arrives as CancelledError (the wrapper heartbeats meanwhile); let it through.
        await asyncio.sleep(params.duration.total_seconds())
        return {"slept": format_duration(params.duration)}

    @action("core.fail", FailParams)
    async def fail(self, params: FailParams, ctx: ActionContext) -> dict[str, Any]:
        """End the run on purpose with a reason: the saga undoes what ran, the run ends compensated."""
        # The workflow handles core.fail itself and never schedules this; a direct call fails the same way.
        raise ActionFailed(params.reason, retryable=False)

    @action("core.approve", ApproveParams)
    async def approve(self, params: ApproveParams, ctx: ActionContext) -> dict[str, Any]:
        """Wait for approvers' votes (policy decides who, how many and until when); a reject ends the run."""
        # Handled in the workflow (votes are updates, the deadline a timer); never scheduled.
        raise ActionFailed("core.approve is answered by votes in the run, not run as an action", retryable=False)

    @action("core.confirm", ConfirmParams)
    async def confirm(self, params: ConfirmParams, ctx: ActionContext) -> dict[str, Any]:
        """Ask a human to pick one of several choices (or type a value); the answer is the step's output."""
        raise ActionFailed("core.confirm is answered by a human in the run, not run as an action", retryable=False)
