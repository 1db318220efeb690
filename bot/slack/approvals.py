"""Approve / Reject buttons: a click becomes a vote on the run's workflow; a choice button of a
core.confirm step (v1.1) becomes an answer, which the workflow checks against the step's choices.

The workflow decides (four-eyes, one vote per user, the `approver` rule); this handler only
says who clicked and which groups they are in. A refused vote changes nothing and is told to
the clicker alone (via `@app.error`). An accepted one is redrawn by the run itself: the vote makes
its Slack stale and the notifier, the one writer of the run's messages, redraws the request at
once (no read of the run here, no second chat.update that could land after a newer one).
A button names the execution it was drawn for, so the click is signed for that run (a later run
under the same run id refuses it); a button posted before it did costs one describe first, and is
refused when the run started after the button's message was posted (a later run under that id).
The same buttons on the App Home tab are answered on the tab (bot/slack/home.py `after_click`).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import structlog
from slack_bolt.async_app import AsyncApp

from bot.audit.recorder import refusal
from bot.engine.runs import RunError, confirm, vote
from bot.engine.state import ConfirmRequest, VoteRequest
from bot.identity import principals
from bot.identity.principals import Actor
from bot.slack.app import SlackDeps, describe_error, listener, report_error, slack_actor, slack_user
from bot.slack.blocks import (
    APPROVE_ACTION,
    CHOICE_ACTION_PATTERN,
    REJECT_ACTION,
    escape,
)
from bot.slack.groups import GroupResolver

if TYPE_CHECKING:
    from bot.slack.home import HomeTab

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ButtonRef:
    run_id: str
    step_id: str
    choice: str | None = None  # a core.confirm choice button's answer
    execution: str | None = None  # the run's first execution run id; None: a button posted before it was written


def parse_value(value: Any) -> ButtonRef:
    """The button's value, `{"run_id", "step_id", "execution"?, "choice"?}` as blocks.py writes it."""
    try:
        data = json.loads(value)
        ref = ButtonRef(run_id=data["run_id"], step_id=data["step_id"])
    except (TypeError, ValueError, KeyError, RecursionError):  # (RecursionError: nested past the parser's depth)
        raise RunError("this approval button is malformed; use `playbook-bot approve RUN STEP` instead") from None
    if not isinstance(ref.run_id, str) or not isinstance(ref.step_id, str) or not ref.run_id or not ref.step_id:
        raise RunError("this approval button is malformed; use `playbook-bot approve RUN STEP` instead")
    choice = data.get("choice") if isinstance(data, dict) else None
    if choice is not None and not isinstance(choice, str):
        raise RunError("this choice button is malformed; use `playbook-bot confirm RUN STEP CHOICE` instead")
    execution = data.get("execution") if isinstance(data, dict) else None
    if execution is not None and (not isinstance(execution, str) or not execution):
        raise RunError("this approval button is malformed; use `playbook-bot approve RUN STEP` instead")
    return ButtonRef(ref.run_id, ref.step_id, choice, execution)


def shown_at(body: dict[str, Any]) -> datetime | None:
    """When the clicked button's message was posted: its `ts` is Slack's Unix time of posting.
    None when the click names no message (or a ts that is not one)."""
    ts = ((body.get("container") or {}).get("message_ts") or (body.get("message") or {}).get("ts") or "")
    try:
        seconds = float(ts)
    except (TypeError, ValueError):
        return None
    if not 0 < seconds < 2**32:  # a forged value: no button was posted then
        return None
    return datetime.fromtimestamp(seconds, timezone.utc)


def register(app: AsyncApp, deps: SlackDeps, groups: GroupResolver, home: HomeTab | None = None) -> None:
    on_click = listener(deps, ApprovalButtons(deps, groups, home).handle)
    for action in (APPROVE_ACTION, REJECT_ACTION, CHOICE_ACTION_PATTERN):
        app.action(action)(on_click)


def on_home_tab(body: dict[str, Any]) -> str | None:
    """The clicker, when the button was on their App Home tab (no thread, no response_url there)."""
    view = body.get("view") or {}
    if not isinstance(view, dict) or view.get("type") != "home":
        return None
    return slack_user(body)[0] or None


class ApprovalButtons:
    def __init__(self, deps: SlackDeps, groups: GroupResolver, home: HomeTab | None = None) -> None:
        self.deps = deps
        self.groups = groups
        self.home = home

    async def handle(self, ack: Callable[[], Awaitable[None]], body: dict[str, Any], respond: Any) -> None:
        await ack()
        clicker = on_home_tab(body) if self.home is not None else None
        try:
            done = await self._vote(body)
        except Exception as exc:  # noqa: BLE001  refused or failed: told to the clicker alone (report_error)
            if clicker is not None and self.home is not None:
                if isinstance(exc, RunError):  # first: the tab's redraw may wait its turn
                    await self._audit_refusal(body, str(exc))
                await self.home.after_click(clicker, describe_error(exc, body))
                return
            await report_error(self.deps.web, exc, body, respond)
            if isinstance(exc, RunError):
                await self._audit_refusal(body, str(exc))
            return
        if clicker is not None and self.home is not None:  # in the thread the run's own redraw says it
            await self.home.after_click(clicker, done, changed=True)

    async def _audit_refusal(self, body: dict[str, Any], reason: str) -> None:
        user = slack_user(body)[0]
        action = (body.get("actions") or [{}])[0]
        try:
            run_id: str | None = parse_value(action.get("value")).run_id
        except RunError:
            run_id = None
        key = f"{body.get('trigger_id') or user}:{action.get('action_ts') or ''}"
        operation = "confirm" if CHOICE_ACTION_PATTERN.match(str(action.get("action_id") or "")) else "vote"
        actor = slack_actor(user)
        await self.deps.refusals.record(actor, operation, refusal(actor, operation, reason, run_id=run_id, key=key))

    async def _vote(self, body: dict[str, Any]) -> str:
        """Cast the click's vote or answer; what became of it, as the clicker is told on the tab."""
        action = (body.get("actions") or [{}])[0]
        ref = parse_value(action.get("value"))
        answering = bool(CHOICE_ACTION_PATTERN.match(str(action.get("action_id") or "")))
        if answering and ref.choice is None:
            raise RunError("this choice button names no choice; use `playbook-bot confirm RUN STEP CHOICE` instead")
        choice = "approve" if action.get("action_id") == APPROVE_ACTION else "reject"
        user_id, name = slack_user(body)
        if not user_id:
            raise RunError("this click names no Slack user; nothing was recorded")
        if slack_actor(user_id) == "slack":  # not a well-formed user id: refused, on record as `slack`
            raise RunError("this click's Slack user id is malformed; nothing was recorded")
        with structlog.contextvars.bound_contextvars(run_id=ref.run_id, step_id=ref.step_id, slack_user=user_id):
            # Verified by Slack's signature (checked before this handler); the proof tells the worker so.
            actor = Actor(
                principals.slack(user_id),
                name,
                tuple(await self.groups.handles(user_id)),
                "slack",
            )
            if answering:
                # The value only says which choice was clicked; the workflow refuses one not in the step's choices.
                asked = ConfirmRequest(step_id=ref.step_id, user=actor.principal, answer=str(ref.choice)[:1000])
                answered = await confirm(self.deps.client, ref.run_id, asked, actor, self.deps.keyring,
                                         execution=ref.execution, shown_at=shown_at(body))
                log.info("slack answer recorded", answer=answered.answer)
                return (f":white_check_mark: Your answer *{escape(str(ref.choice)[:100])}* to step *{escape(ref.step_id)}* "
                        f"of run `{escape(ref.run_id)}` was recorded.")
            request = VoteRequest(step_id=ref.step_id, user=actor.principal, vote=choice)
            # One update; RunError: refused by the run (its validator, or the approver rule it asks), nothing changed
            result = await vote(self.deps.client, ref.run_id, request, actor, self.deps.keyring, execution=ref.execution,
                                shown_at=shown_at(body), approver=self.deps.approver)
            log.info("slack vote recorded", vote=choice, approvals=result.approvals, needed=result.needed)
            verb = "rejection" if choice == "reject" else f"approval ({result.approvals}/{result.needed})"
            return f":white_check_mark: Your {verb} of step *{escape(ref.step_id)}* of run `{escape(ref.run_id)}` was recorded."
