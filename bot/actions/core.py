"""Actions that need no integration: write to the run's log, wait, end the run on purpose."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any, Literal

import structlog
from pydantic import Field, field_validator

from bot.actions.base import ActionContext, ActionFailed, ActionParams, action
from bot.playbook.durations import Duration, format_duration

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
