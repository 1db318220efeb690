"""The App Home tab: the user's recent runs and the runs waiting for their approval.

Published (views.publish) when Slack sends `app_home_opened` for the Home tab. Bolt acks the
event before this runs, so it never holds anyone's ack; it is still bounded, since the tab is
opened often: a user's tab is redrawn at most once per REFRESH seconds, at most RENDERS at a
time, each cut at RENDER_TIMEOUT; it reads the newest SCAN executions of this task queue (one
visibility call, the requester from the run's memo) and the statuses of at most RECENT of the
user's runs and RUNNING_SCAN running runs. "Waiting for you" asks the `approver` rule the run
itself would ask (bot/engine/runs.py `check_approver`), never the requester's own runs.

Each waiting step has its buttons on the tab, handled as the thread's are (bot/slack/approvals.py;
the run decides). A click there has no thread or response_url to be answered in, so the tab is
redrawn with what became of it on top (`after_click`).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from slack_bolt.async_app import AsyncApp

from bot.engine.runs import RunError, check_approver, get_status
from bot.engine.state import RunStatus, StepStatus
from bot.identity import principals
from bot.identity.principals import Actor, PrincipalError
from bot.slack.app import SlackDeps, listener
from bot.slack.blocks import RUN_EMOJI, escape, has_choices, requester, slack_date, truncate, typed_answer, vote_buttons
from bot.slack.commands import REQUESTER_MEMO
from bot.slack.groups import GroupResolver

log = structlog.get_logger(__name__)

SCAN = 100  # newest executions looked at for the user's own runs
RECENT = 10
RUNNING_SCAN = 50  # running executions whose status is read for "waiting for you"
WAITING = 10
READ_BATCH = 10
REFRESH = 10.0  # seconds: a tab opened again sooner is not redrawn
RENDERS = 2
RENDER_TIMEOUT = 10.0
CLICK_REREAD = 2.0  # seconds: a click sooner after the tab was read shows it as read, with the click's notice
READ_KEPT = 1000  # users whose last read tab is kept for that
NOTICES = 3  # notices of clicks shown at once
CLICK_GAP = 1.0  # seconds between one user's redraws after clicks (views.publish is rate limited per app)
SECTION_LIMIT = 3000


@dataclass(frozen=True)
class Waiting:
    """A step this user may vote on, as its run's status had it."""

    status: RunStatus
    step: StepStatus


def register(app: AsyncApp, deps: SlackDeps, groups: GroupResolver) -> HomeTab:
    tab = HomeTab(deps, groups)
    app.event("app_home_opened")(listener(deps, tab.handle, acked_by_bolt=True))
    return tab


class HomeTab:
    def __init__(self, deps: SlackDeps, groups: GroupResolver) -> None:
        self.deps = deps
        self.groups = groups
        self._drawn: dict[str, float] = {}  # user -> time.monotonic() of the last redraw
        self._renders = asyncio.Semaphore(RENDERS)  # tabs opened
        self._click_renders = asyncio.Semaphore(RENDERS)  # tabs clicked on: clicks never starve opens
        self._notices: dict[str, list[str]] = {}  # user -> what their clicks came to, not yet shown
        self._redrawing: set[str] = set()  # one redraw per user at a time, so the newest is shown last
        self._read: OrderedDict[str, tuple[float, list[dict[str, Any]]]] = OrderedDict()  # user -> last read tab

    async def handle(self, event: dict[str, Any]) -> None:
        if event.get("tab", "home") != "home":
            return
        user = event.get("user")
        try:
            principal = principals.slack(user if isinstance(user, str) else "")
        except PrincipalError:
            log.info("app_home_opened without a valid user; ignored")
            return
        assert isinstance(user, str)
        now = time.monotonic()
        if now - self._drawn.get(user, -REFRESH) < REFRESH or self._renders.locked():
            return  # drawn moments ago, or busy: the tab keeps what it shows
        await self._redraw(user, principal, self._renders)

    async def after_click(self, user: str, notice: str, *, changed: bool = False) -> None:
        """Redraw the clicker's tab with `notice` on top. A click while their tab is being redrawn
        leaves its notice for that redraw (the last NOTICES are shown). A refused click within
        CLICK_REREAD of the last read shows the tab as then read, so clicking fast costs no
        Temporal reads; one that `changed` a run (a recorded vote: once per person and step) is
        read again, so its buttons go."""
        try:
            principal = principals.slack(user)
        except PrincipalError:
            return
        pending = self._notices.setdefault(user, [])
        pending[:] = [*pending, notice][-NOTICES:]
        if changed:
            self._read.pop(user, None)
        await self._redraw(user, principal, self._click_renders)

    async def _redraw(self, user: str, principal: str, renders: asyncio.Semaphore) -> None:
        if user in self._redrawing:
            return  # the redraw under way shows what is pending
        self._redrawing.add(user)
        try:
            while True:
                notices = self._notices.pop(user, [])
                await self._publish(user, principal, renders, notices)
                if user not in self._notices:
                    return
                renders = self._click_renders  # what is pending now came from clicks
                await asyncio.sleep(CLICK_GAP)  # clicks meanwhile share the next publish
        finally:
            self._redrawing.discard(user)

    async def _publish(self, user: str, principal: str, renders: asyncio.Semaphore, notices: list[str]) -> None:
        now = time.monotonic()
        self._drawn[user] = now
        if len(self._drawn) > 10_000:  # forget old entries: a bounded map
            self._drawn = {u: t for u, t in self._drawn.items() if now - t < REFRESH}
        read_at, blocks = self._read.get(user, (-CLICK_REREAD, []))
        async with renders:
            if not notices or now - read_at >= CLICK_REREAD:
                try:
                    blocks = await asyncio.wait_for(self.blocks(user, principal), RENDER_TIMEOUT)
                    self._read[user] = (now, blocks)
                    self._read.move_to_end(user)
                    while len(self._read) > READ_KEPT:
                        self._read.popitem(last=False)
                except Exception as exc:  # noqa: BLE001  Temporal slow or down: say so on the tab
                    log.warning("app home not rendered", error=f"{type(exc).__name__}: {exc}")
                    blocks = [_section(":warning: playbook-bot could not read runs just now; open the tab again later.")]
            shown = ([_section("\n".join(notices))] if notices else []) + blocks
            try:
                await self.deps.web.views_publish(user_id=user, view={"type": "home", "blocks": shown})
            except Exception as exc:  # noqa: BLE001  best effort: the next open tries again
                log.warning("app home not published", error=f"{type(exc).__name__}: {exc}")

    async def blocks(self, user: str, principal: str) -> list[dict[str, Any]]:
        mine, waiting = await asyncio.gather(self.recent(principal), self.waiting(user, principal))
        blocks: list[dict[str, Any]] = [_header("Waiting for your approval")]
        for i, w in enumerate(waiting):
            blocks.append(_section(_waiting_line(w.status, w.step)))
            if w.status.execution is not None:  # a button binds its execution (no message time here to check)
                blocks.append(vote_buttons(w.status, w.step, f"home.vote.{i}"))
        if not waiting:
            blocks.append(_section("_Nothing is waiting for you._"))
        blocks.append({"type": "divider"})
        blocks.append(_header("Your recent runs"))
        blocks.append(_section("\n".join(_run_line(s) for s in mine) if mine else
                               "_No runs started by you from Slack lately._"))
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": (
            f"Type `/playbook` in a channel to start a run from a form · updated {slack_date(datetime.now(UTC))}")}]})
        return blocks

    async def recent(self, principal: str) -> list[RunStatus]:
        """The user's newest RECENT runs among the newest SCAN (their requester from the memo)."""
        query = f'WorkflowType = "PlaybookRun" AND TaskQueue = "{self.deps.task_queue}"'
        ids: list[str] = []
        async for execution in self.deps.client.list_workflows(query, limit=SCAN):
            if await execution.memo_value(REQUESTER_MEMO, None) == principal:
                ids.append(execution.id)
                if len(ids) >= RECENT:
                    break
        return [s for s in await asyncio.gather(*(self._status(i) for i in ids)) if s is not None]

    async def waiting(self, user: str, principal: str) -> list[Waiting]:
        """The steps of running runs waiting for a vote this user may cast."""
        query = (f'WorkflowType = "PlaybookRun" AND TaskQueue = "{self.deps.task_queue}" '
                 'AND ExecutionStatus = "Running"')
        ids = [w.id async for w in self.deps.client.list_workflows(query, limit=RUNNING_SCAN)]
        actor: Actor | None = None
        found: list[Waiting] = []
        for first in range(0, len(ids), READ_BATCH):
            for status in await asyncio.gather(*(self._status(i) for i in ids[first:first + READ_BATCH])):
                if status is None or status.requested_by == principal:
                    continue  # four-eyes: never one's own run
                for step in status.all_steps():
                    if step.state != "waiting_approval" or any(v.user == principal for v in step.approvals):
                        continue
                    if actor is None:
                        groups = await self.groups.handles(user, stale_ok=True)
                        actor = Actor(principal, "", tuple(groups), "slack")
                    try:
                        await check_approver(self.deps.client, self.deps.policy, status, step.id, actor)
                    except RunError:
                        continue  # the approver rule says not this user
                    found.append(Waiting(status, step))
                    if len(found) >= WAITING:
                        return found
        return found

    async def _status(self, run_id: str) -> RunStatus | None:
        try:
            return await get_status(self.deps.client, run_id)
        except RunError:
            return None


def _run_line(status: RunStatus) -> str:
    when = f" · {slack_date(status.started_at)}" if status.started_at else ""
    return truncate(f"{RUN_EMOJI.get(status.state, '')} *{escape(status.playbook)}* {status.state.replace('_', ' ')}"
                    f" · `{escape(status.run_id)}`{when}", 290)


def _waiting_line(status: RunStatus, step: StepStatus) -> str:
    due = f" · deadline {slack_date(step.approval_deadline)}" if step.approval_deadline else ""
    if status.execution is None:  # a run from before runs recorded it: its buttons are in its thread
        how = "Vote in the run's thread, or with `playbook-bot`."
    elif step.action != "core.confirm":
        how = "Vote here, in the run's thread, or with `playbook-bot`."
    elif has_choices(step):
        how = "Answer here, in the run's thread, or with `playbook-bot confirm`."
    else:
        how = typed_answer(status, step)
    return truncate(
        f":raised_hand: *{escape(status.playbook)}* step *{escape(step.id)}* `{escape(step.action)}` · run "
        f"`{escape(status.run_id)}` · requested by {requester(status)}{due}\n{how}", SECTION_LIMIT)


def _header(text: str) -> dict[str, Any]:
    return {"type": "header", "text": {"type": "plain_text", "text": text, "emoji": True}}


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": truncate(text, SECTION_LIMIT)}}
