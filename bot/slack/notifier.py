"""The run's story in Slack: one status message updated in place, and its thread.

The workflow's Slack coroutine calls `slack.sync` (a local activity) beside the steps whenever
something worth showing changed since its last sync; the activity works out what to post or
update from what it already posted (`SlackState`, kept by the workflow). It never outlives its
own deadline (`SYNC_BUDGET`, well inside the activity's timeout): under rate limiting it honours
`Retry-After` only while that fits, then returns what it DID post (`pending`), and the next sync
goes on from there. So no sync is retried from a state that misses its own posts, and a
process-local record of what was posted (run, message key → ts) keeps even a sync that died
after posting from posting again on this worker. Slack is best effort: the run never waits for it.

A playbook names its channel as people do (`#incidents`); `chat.postMessage` takes that, but
`chat.update` takes the channel's ID only. So the ID Slack answers the first post with is kept
with the messages, and every later call uses it.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Any

import structlog
from pydantic import BaseModel, Field
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient
from temporalio import activity

from bot.engine.state import RunStatus
from bot.metrics import SLACK_API_ERRORS
from bot.slack.blocks import approval_blocks, decided_line, escape, status_blocks, status_text, summary_text
from bot.slack.groups import GroupResolver
from bot.slack.web import copy_of

log = structlog.get_logger(__name__)
FINAL_RETRY_PAUSES = (1.0, 3.0)  # the last sync of a run: up to three passes, these pauses between
SYNC_BUDGET = 12.0  # seconds of Slack calls per sync; well inside the local activity's 30 s timeout
MIN_RATE_LIMIT_PAUSE = 1.0  # seconds between a 429 and the same call again, whatever Retry-After says
POSTED_REMEMBERED = 20_000  # entries of the process-local record of posts (oldest forgotten first)


class SlackState(BaseModel):
    """What is already in Slack for this run."""

    message_ts: str | None = None
    # The channel's ID, as chat.postMessage answered it. None until then, and in runs recorded
    # before this field existed: those use the channel as given until a post answers the ID.
    channel_id: str | None = None
    approval_ts: dict[str, str] = Field(default_factory=dict)
    posted: list[str] = Field(default_factory=list)  # keys of thread replies already sent
    # Set by the sync that returned this: Slack does not show everything yet (refused, rate
    # limited, out of time), and how long Slack asked to wait (429 Retry-After), in seconds.
    pending: bool = False
    retry_after: float = 0.0


class SlackSync(BaseModel):
    channel: str
    status: RunStatus
    decisions: dict[str, dict[str, Any]] = Field(default_factory=dict)
    needed: dict[str, int] = Field(default_factory=dict)
    state: SlackState = Field(default_factory=SlackState)


class _Pass:
    """One sync's budget: the deadline, and whether Slack rate limited it (no more calls then)."""

    def __init__(self, run_key: str, budget: float) -> None:
        self.run_key = run_key
        self.deadline = time.monotonic() + budget
        self.retry_after = 0.0  # > 0 once Slack said 429 and waiting would not fit the budget
        self.failed = False  # some call was refused or not made: Slack is behind

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


class SlackNotifier:
    def __init__(
        self, web: AsyncWebClient | None, groups: GroupResolver | None = None, *, budget: float = SYNC_BUDGET
    ) -> None:
        self.web = _without_rate_limit_retries(web)
        self.groups = groups or (GroupResolver(self.web) if self.web is not None else None)
        self.budget = budget
        self._posted: OrderedDict[tuple[str, str], dict[str, str]] = OrderedDict()

    @activity.defn(name="slack.sync")
    async def sync(self, request: SlackSync) -> SlackState:
        """Bring Slack up to date, within this sync's budget. A reply counts as posted only once
        Slack took it, and the thread stays in order: a refused reply holds back the ones after
        it until a later sync. The result says whether anything is still `pending`."""
        if self.web is None:
            return request.state.model_copy(update={"pending": False, "retry_after": 0.0})
        state = request.state.model_copy(deep=True, update={"pending": False, "retry_after": 0.0})
        run = _Pass(_run_key(request.status.run_id), self.budget)
        for pause in (*FINAL_RETRY_PAUSES, None):
            run.failed = False
            if await self._pass(request, state, run) or not request.status.finished or run.retry_after:
                break
            if pause is None or run.remaining() < pause:
                break
            log.warning("slack: the run's last messages were refused; trying again", run_id=request.status.run_id)
            await asyncio.sleep(pause)
        state.pending = run.failed
        state.retry_after = run.retry_after
        if state.pending:
            log.warning("slack: not everything is shown yet; the next sync goes on from here",
                        run_id=request.status.run_id, retry_after=run.retry_after)
        return state

    async def _pass(self, request: SlackSync, state: SlackState, run: _Pass) -> bool:
        """One attempt at everything; True when Slack now shows all of it."""
        status = request.status
        await self._status_message(request.channel, status, state, run)
        if state.message_ts is None:
            run.failed = True
            return False
        for step in status.all_steps():  # foreach items' steps ask approval under their address
            if step.id in request.decisions and (step.state == "waiting_approval" or step.id in state.approval_ts):
                await self._approval(request, step.id, state, run)
        for key, text in self._replies(status, await self._mentions(status)):
            if key in state.posted:
                continue
            if not await self._reply(request.channel, state, text, run, key):
                run.failed = True
                return False
            state.posted.append(key)
        return not run.failed

    async def _status_message(self, channel: str, status: RunStatus, state: SlackState, run: _Pass) -> None:
        blocks, text = status_blocks(status), status_text(status)
        if state.message_ts is None:
            response = await self._post(channel, state, run, "status", text=text, blocks=blocks)
            if response:
                state.message_ts = response["ts"]
        else:
            await self._update(channel, state, run, state.message_ts, text=text, blocks=blocks)

    async def _approval(self, request: SlackSync, step_id: str, state: SlackState, run: _Pass) -> None:
        """The approval request in the thread; updated as votes come, buttons gone once decided."""
        status = request.status
        blocks = approval_blocks(status, step_id, request.decisions[step_id], request.needed.get(step_id, 1))
        step = status.step(step_id)
        text = f"approval needed for {escape(step_id)}" if step.state == "waiting_approval" else decided_line(step)
        if step_id not in state.approval_ts:
            response = await self._post(
                request.channel, state, run, f"approval:{step_id}", thread_ts=state.message_ts, text=text, blocks=blocks
            )
            if response:
                state.approval_ts[step_id] = response["ts"]
        else:
            await self._update(request.channel, state, run, state.approval_ts[step_id], text=text, blocks=blocks)

    async def _post(self, channel: str, state: SlackState, run: _Pass, key: str, **kwargs: Any) -> Any:
        """chat.postMessage, once per message: what this worker already posted for the run (a
        sync that died after posting, whose state never came back) is taken, not posted again.
        The first answer tells the channel's ID, kept for every later call."""
        known = self._posted.get((run.run_key, key))
        if known is not None:
            response: Any = known
        else:
            response = await self._call(run, "chat.postMessage", channel=state.channel_id or channel, **kwargs)
            if response:
                self._remember(run.run_key, key, {"ts": response["ts"], "channel": response.get("channel") or ""})
        if response and state.channel_id is None and response.get("channel"):
            state.channel_id = response["channel"]
        return response

    def _remember(self, run_key: str, key: str, posted: dict[str, str]) -> None:
        self._posted[(run_key, key)] = posted
        while len(self._posted) > POSTED_REMEMBERED:
            self._posted.popitem(last=False)

    async def _update(self, channel: str, state: SlackState, run: _Pass, ts: str, **kwargs: Any) -> Any:
        """chat.update, by the channel's ID: Slack answers a name with `channel_not_found`."""
        return await self._call(run, "chat.update", channel=state.channel_id or channel, ts=ts, **kwargs)

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

    async def _reply(self, channel: str, state: SlackState, text: str, run: _Pass, key: str) -> bool:
        return bool(await self._post(channel, state, run, f"reply:{key}", thread_ts=state.message_ts, text=text))

    async def _call(self, run: _Pass, method: str, **kwargs: Any) -> Any:
        """One Web API call; an error is counted and logged, never raised into the run. A 429 is
        waited out (Retry-After) only while that fits the sync's budget; after that, and once the
        budget is spent, no call is made: the sync returns what it did and the next goes on."""
        assert self.web is not None
        while True:
            if run.retry_after or run.remaining() <= 0:
                run.failed = True
                return None
            try:
                return await self.web.api_call(method, json=kwargs)
            except SlackApiError as exc:
                if exc.response.status_code != 429:
                    SLACK_API_ERRORS.labels(method).inc()
                    log.warning("slack api error", method=method, error=exc.response.get("error"))
                    run.failed = True
                    return None
                # Slack did not act on a 429: waiting and calling again posts nothing twice. Never
                # sooner than a second (a Retry-After of 0 must not turn into a hammering loop).
                wait = max(_retry_after(exc.response.headers), MIN_RATE_LIMIT_PAUSE)
                if wait > run.remaining():
                    SLACK_API_ERRORS.labels(method).inc()  # given up for this sync (the metric's meaning)
                    log.warning("slack rate limited past this sync's budget", method=method, retry_after=wait)
                    run.retry_after = wait
                    continue
                log.info("slack rate limited: waiting", method=method, retry_after=wait)
                await asyncio.sleep(wait)
            except Exception as exc:  # connection trouble: Slack is best effort
                SLACK_API_ERRORS.labels(method).inc()
                log.warning("slack unreachable", method=method, error=f"{type(exc).__name__}: {exc}")
                run.failed = True
                return None


def _retry_after(headers: Any) -> float:
    """Seconds Slack asked to wait (at least one: a 429 without the header still means wait)."""
    value = None
    for name, v in dict(headers or {}).items():
        if str(name).lower() == "retry-after":
            value = v[0] if isinstance(v, list) and v else v
    try:
        return max(1.0, float(value)) if value is not None else 1.0
    except (TypeError, ValueError):
        return 1.0


def _run_key(run_id: str) -> str:
    """The run's execution (workflow id and run id: a later run of the same id posts afresh)."""
    try:
        info = activity.info()
    except RuntimeError:  # called outside an activity (tests)
        return run_id
    return f"{info.workflow_id or run_id}/{info.workflow_run_id or ''}"


def _without_rate_limit_retries(web: AsyncWebClient | None) -> AsyncWebClient | None:
    """The client without slack_sdk's own 429 retries, which sleep Retry-After past any
    deadline: the notifier waits them out itself, within its budget. A copy (with the caller's
    connections, if it keeps them): the caller's client keeps its handlers."""
    if web is None or not any(isinstance(h, AsyncRateLimitErrorRetryHandler) for h in web.retry_handlers):
        return web
    return copy_of(web, retry_handlers=[h for h in web.retry_handlers
                                        if not isinstance(h, AsyncRateLimitErrorRetryHandler)])
