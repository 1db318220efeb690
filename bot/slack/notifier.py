"""The run's story in Slack: one status message updated in place, and its thread.

The workflow calls `slack.sync` (a local activity) with its status whenever something worth
showing changed; the activity works out what to post or update from what it already posted
(`SlackState`, kept by the workflow), so a retried sync posts nothing twice that it knows of.
Slack is best effort: a failed sync is logged and the run goes on.

A playbook names its channel as people do (`#incidents`); `chat.postMessage` takes that, but
`chat.update` takes the channel's ID only. So the ID Slack answers the first post with is kept
with the messages, and every later call uses it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from pydantic import BaseModel, Field
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from temporalio import activity

from bot.engine.state import RunStatus
from bot.metrics import SLACK_API_ERRORS
from bot.slack.blocks import approval_blocks, decided_line, escape, status_blocks, status_text, summary_text
from bot.slack.groups import GroupResolver

log = structlog.get_logger(__name__)
FINAL_RETRY_PAUSES = (1.0, 3.0)  # the last sync of a run: up to three passes, these pauses between
FINAL_RETRY_BUDGET = 15.0  # seconds; well inside the local activity's 30 s timeout


class SlackState(BaseModel):
    """What is already in Slack for this run."""

    message_ts: str | None = None
    # The channel's ID, as chat.postMessage answered it. None until then, and in runs recorded
    # before this field existed: those use the channel as given until a post answers the ID.
    channel_id: str | None = None
    approval_ts: dict[str, str] = Field(default_factory=dict)
    posted: list[str] = Field(default_factory=list)  # keys of thread replies already sent


class SlackSync(BaseModel):
    channel: str
    status: RunStatus
    decisions: dict[str, dict[str, Any]] = Field(default_factory=dict)
    needed: dict[str, int] = Field(default_factory=dict)
    state: SlackState = Field(default_factory=SlackState)


class SlackNotifier:
    def __init__(self, web: AsyncWebClient | None, groups: GroupResolver | None = None) -> None:
        self.web = web
        self.groups = groups or (GroupResolver(web) if web is not None else None)

    @activity.defn(name="slack.sync")
    async def sync(self, request: SlackSync) -> SlackState:
        """Bring Slack up to date. A reply counts as posted only once Slack took it, and the
        thread stays in order: a refused reply holds back the ones after it until a later sync.
        The last sync of a run has no later one, so it tries again a few times itself."""
        if self.web is None:
            return request.state
        state = request.state.model_copy(deep=True)
        deadline = time.monotonic() + FINAL_RETRY_BUDGET
        for pause in (*FINAL_RETRY_PAUSES, None):
            if await self._pass(request, state) or not request.status.finished:
                break
            if pause is None or time.monotonic() + pause > deadline:
                log.error("slack: the run's last messages were refused; giving up", run_id=request.status.run_id)
                break
            log.warning("slack: the run's last messages were refused; trying again", run_id=request.status.run_id)
            await asyncio.sleep(pause)
        return state

    async def _pass(self, request: SlackSync, state: SlackState) -> bool:
        """One attempt at everything; True when Slack now shows all of it."""
        status = request.status
        await self._status_message(request.channel, status, state)
        if state.message_ts is None:
            return False
        for step in status.all_steps():  # foreach items' steps ask approval under their address
            if step.id in request.decisions and (step.state == "waiting_approval" or step.id in state.approval_ts):
                await self._approval(request, step.id, state)
        for key, text in self._replies(status, await self._mentions(status)):
            if key in state.posted:
                continue
            if not await self._reply(request.channel, state, text):
                return False
            state.posted.append(key)
        return True

    async def _status_message(self, channel: str, status: RunStatus, state: SlackState) -> None:
        blocks, text = status_blocks(status), status_text(status)
        if state.message_ts is None:
            response = await self._post(channel, state, text=text, blocks=blocks)
            if response:
                state.message_ts = response["ts"]
        else:
            await self._update(channel, state, state.message_ts, text=text, blocks=blocks)

    async def _approval(self, request: SlackSync, step_id: str, state: SlackState) -> None:
        """The approval request in the thread; updated as votes come, buttons gone once decided."""
        status = request.status
        blocks = approval_blocks(status, step_id, request.decisions[step_id], request.needed.get(step_id, 1))
        step = status.step(step_id)
        text = f"approval needed for {escape(step_id)}" if step.state == "waiting_approval" else decided_line(step)
        if step_id not in state.approval_ts:
            response = await self._post(request.channel, state, thread_ts=state.message_ts, text=text, blocks=blocks)
            if response:
                state.approval_ts[step_id] = response["ts"]
        else:
            await self._update(request.channel, state, state.approval_ts[step_id], text=text, blocks=blocks)

    async def _post(self, channel: str, state: SlackState, **kwargs: Any) -> Any:
        """chat.postMessage; the first answer tells the channel's ID, kept for every later call."""
        response = await self._call("chat.postMessage", channel=state.channel_id or channel, **kwargs)
        if response and state.channel_id is None and response.get("channel"):
            state.channel_id = response["channel"]
        return response

    async def _update(self, channel: str, state: SlackState, ts: str, **kwargs: Any) -> Any:
        """chat.update, by the channel's ID: Slack answers a name with `channel_not_found`."""
        return await self._call("chat.update", channel=state.channel_id or channel, ts=ts, **kwargs)

    async def _mentions(self, status: RunStatus) -> dict[str, str]:
        """Mentions that page the groups an escalation names (overdue approvals, failed undo)."""
        handles = set(status.escalated_to)
        for step in status.all_steps():
            if step.escalated_at is not None:
                handles.update((step.decision or {}).get("approver_groups", []))
        if self.groups is None:
            return {h: f"@{escape(h)}" for h in handles}
        return {h: await self.groups.mention(h) for h in sorted(handles)}

    @staticmethod
    def _replies(status: RunStatus, mentions: dict[str, str]) -> list[tuple[str, str]]:
        """The thread replies, keyed. Every data string is escaped; `mentions` (the escalation's
        own `<!subteam^ID>`) is the only markup that stays live."""
        out: list[tuple[str, str]] = []
        for step in status.all_steps():
            sid = escape(step.id)
            if step.state in ("failed", "denied", "rejected"):
                out.append((f"end:{step.id}", f":x: *{sid}* {step.state}: {escape(step.error or '')}"))
            if step.escalated_at is not None:
                groups = " ".join(mentions[g] for g in (step.decision or {}).get("approver_groups", []))
                out.append((f"escalated:{step.id}", f":rotating_light: approval for *{sid}* is overdue {groups}"))
        for comp in status.compensations:
            if comp.state in ("succeeded", "failed", "skipped"):
                icon = {"succeeded": ":leftwards_arrow_with_hook:", "failed": ":bangbang:", "skipped": ":fast_forward:"}
                text = f"{icon[comp.state]} undo of *{escape(comp.step)}* {comp.state} {escape(comp.error or '')}"
                out.append((f"undo:{comp.step}", text))
        if status.finished and status.not_undone:
            who = " ".join(mentions[g] for g in status.escalated_to) or "Whoever is on call"
            undone = ", ".join(f"*{escape(s)}*" for s in status.not_undone)
            out.append(
                ("escalated:rollback", f":rotating_light: {who}: rollback incomplete, {undone} could not be undone. "
                 "The system is half rolled back; check and finish these by hand.")
            )
        if status.finished:
            out.append(("final", summary_text(status)))
        return out

    async def _reply(self, channel: str, state: SlackState, text: str) -> bool:
        return bool(await self._post(channel, state, thread_ts=state.message_ts, text=text))

    async def _call(self, method: str, **kwargs: Any) -> Any:
        """One Web API call; an error is counted and logged, never raised into the run."""
        assert self.web is not None
        try:
            return await self.web.api_call(method, json=kwargs)
        except SlackApiError as exc:
            SLACK_API_ERRORS.labels(method).inc()
            log.warning("slack api error", method=method, error=exc.response.get("error"))
        except Exception as exc:  # connection trouble: Slack is best effort
            SLACK_API_ERRORS.labels(method).inc()
            log.warning("slack unreachable", method=method, error=f"{type(exc).__name__}: {exc}")
        return None
