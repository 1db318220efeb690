"""An alert storm while Slack rate-limits: every alert one run, every run told once in Slack.

What the bot does with a 429 (bot/slack/notifier.py): Slack did not act on a 429, so the run's
sync waits out `Retry-After` (at least a second) and makes the same call again, as long as that
fits the sync's own budget; a call it gives up on is counted in `playbook_bot_slack_api_errors`,
never raised into the run, and the next sync posts what is missing from the state the run keeps.
The fake Slack here refuses a large share of calls, each for less than a sync's budget, so nothing
may be lost or given up: one status message per run, its summary in the thread, every run completed.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from bot.actions.catalog import slack_client
from bot.alerts.episodes import episode_id
from bot.engine.runs import get_status
from bot.engine.state import RunStatus
from bot.settings import Settings
from tests.reliability.alertmanager_support import BotStack, bot_stack, eventually, firing, webhook
from tests.slack.fake_slack import FakeSlack

STORM = """
name: storm
summary: Look, then fix
channel: "#incidents"
params:
  instance: {type: string}
triggers:
  alertmanager:
    - matchers: ['alertname="Storm"']
      params: {instance: "{{ alert.labels.instance }}"}
steps:
  - {id: look, action: core.log, with: {message: "looking at {{ params.instance }}"}}
  - {id: fix, action: core.log, with: {message: "fixing {{ params.instance }}"}}
"""
STARTS = "2026-11-22T02:00:00Z"
STARTS_AT = datetime(2026, 11, 22, 2, 0, tzinfo=timezone.utc)
METHODS = ("chat.postMessage", "chat.update")


@pytest.fixture
def storm_slack() -> Iterator[FakeSlack]:
    """A fake Slack of this module's own, so rate limits set here reach no other test."""
    with FakeSlack() as fake:
        yield fake


def retry_budget() -> int:
    """How many times the bot's Web API client retries a 429 (read from the client it builds)."""
    client = slack_client(Settings(slack_bot_token="xoxb-probe"))
    assert client is not None
    budgets = [h.max_retry_count for h in client.retry_handlers if type(h).__name__ == "AsyncRateLimitErrorRetryHandler"]
    assert budgets, "the bot's Slack client retries 429s"
    return budgets[0]


async def slack_errors(stack: BotStack) -> float:
    """Slack calls the worker gave up on (its `playbook_bot_slack_api_errors` counter)."""
    assert stack.worker is not None
    return sum([await stack.worker.metric(stack.http, "playbook_bot_slack_api_errors_total", method=m) for m in METHODS])


@asynccontextmanager
async def storm_stack(dev_env: Any, tmp_path: Path, slack: FakeSlack) -> AsyncIterator[BotStack]:
    """Front door + a worker process apart (its notifier on the fake Slack), as deployed, on the
    real Temporal dev server: the storm's load in this process cannot starve the worker."""
    async with bot_stack(dev_env.client, tmp_path, {"storm": STORM}, worker="process",
                         slack_bot_token=slack.token, slack_api_url=slack.api_url) as stack:
        yield stack


async def _storm(stack: BotStack, slack: FakeSlack, alerts: int, burst: int, timeout: float) -> None:
    budget = retry_budget()
    slack.rate_limit_fraction(0.35, retry_after=1, seed=alerts, max_in_a_row=budget)
    errors_before = await slack_errors(stack)
    run = uuid.uuid4().hex[:8]  # fresh episodes per test: the dev server is shared for the session
    fingerprints = [f"{run}{k:08x}" for k in range(alerts)]
    expected = {episode_id("storm", f, STARTS_AT) for f in fingerprints}

    # Bursts: each group delivered twice at once (HA peers), its first half once more on its own.
    answers: list[dict[str, Any]] = []
    for start in range(0, alerts, burst):
        group = [firing(f, "Storm", STARTS, instance=f"host-{int(f, 16)}") for f in fingerprints[start:start + burst]]
        bodies = [webhook(group), webhook(group[::-1]), webhook(group[: len(group) // 2])]
        responses = await asyncio.gather(*(stack.deliver(b) for b in bodies))
        assert [r.status_code for r in responses] == [200] * 3, [r.text[:200] for r in responses]
        answers += [o for r in responses for o in r.json()]
        await asyncio.sleep(0.2)
    assert Counter(o["run_id"] for o in answers if o["outcome"] == "started") == Counter(expected)
    assert {o["outcome"] for o in answers} <= {"started", "attached", "already_handled"}

    async def all_finished() -> bool:
        runs = await stack.runs()
        return len(runs) == len(expected) and all(w.status and w.status.name != "RUNNING" for w in runs)

    started = time.monotonic()
    await eventually(all_finished, timeout=timeout, what=f"all {alerts} runs finished", interval=0.5)
    drained = time.monotonic() - started

    # Temporal: exactly one run per alert, each completed (Slack failed nothing).
    runs = await stack.runs()
    assert Counter(w.id for w in runs) == Counter(expected)
    statuses = [await get_status(stack.temporal, w.id) for w in runs]
    failed = [(s.run_id, s.state, [(st.id, st.state, st.attempts, st.error) for st in s.steps if st.state != "succeeded"])
              for s in statuses if s.state != "completed"]
    assert not failed, f"{len(failed)} runs did not complete: {failed[:5]}"
    finished = Counter(e.run_id for e in stack.audit.events() if e.kind.value == "run_finished")
    assert finished == Counter(expected), "each run's end recorded once"
    assert Counter(o["run_id"] for o in stack.outcomes() if o["outcome"] == "started") == Counter(expected)

    # Slack: one status message per run (no duplicate from a retry), updated to its end state,
    # and the run's summary in its thread, once.
    tops = [m for m in slack.messages if m.thread_ts is None]
    by_run: dict[str, list[Any]] = defaultdict(list)
    for message in tops:
        run_id = next((r for r in expected if r in message.text), None)
        assert run_id is not None, f"a top-level message for no run: {message.text[:120]}"
        by_run[run_id].append(message)
    assert {r: len(m) for r, m in by_run.items()} == {r: 1 for r in expected}, "exactly one status message per run"
    replies: dict[str, list[Any]] = defaultdict(list)
    for message in slack.messages:
        if message.thread_ts is not None:
            replies[message.thread_ts].append(message)
    for run_id, (status_message,) in by_run.items():
        assert "completed (2/2 steps done)" in status_message.text, (run_id, status_message.text)
        thread = [m.text for m in replies.get(status_message.ts, [])]
        assert len(thread) == 1 and "*storm* completed" in thread[0], (run_id, thread)
    assert sum(len(r) for r in replies.values()) == alerts, "no reply outside a run's thread, none twice"

    # The 429s happened, and each was retried as the bot promises: the same call, after Retry-After.
    limited = slack.rate_limited()
    calls = len(slack.calls)
    assert len(limited) >= 0.2 * calls, (len(limited), calls)
    for call in limited:
        retry = next((c for c in slack.calls if c.at > call.at and c.method == call.method and c.params == call.params), None)
        assert retry is not None, f"a 429 on {call.method} was never retried"
        assert retry.at - call.at >= 0.9, f"retried {retry.at - call.at:.2f}s after a 429 with Retry-After: 1"
    assert await slack_errors(stack) == errors_before, "no Slack call was given up"
    assert not stack.server_errors()
    print(f"\n{alerts} alerts: {calls} Slack calls, {len(limited)} answered 429; runs drained in {drained:.1f}s")


async def test_a_storm_of_sixty_alerts_while_slack_rate_limits(dev_env, tmp_path, storm_slack):
    async with storm_stack(dev_env, tmp_path, storm_slack) as stack:
        await _storm(stack, storm_slack, alerts=60, burst=10, timeout=60)


@pytest.mark.chaos
async def test_a_storm_of_five_hundred_alerts_while_slack_rate_limits(dev_env, tmp_path, storm_slack):
    async with storm_stack(dev_env, tmp_path, storm_slack) as stack:
        await _storm(stack, storm_slack, alerts=500, burst=50, timeout=600)


async def test_a_status_post_refused_again_and_again_is_waited_out_and_posted_once(dev_env, tmp_path, storm_slack):
    """Slack refuses the first status post four times in a row, saying Retry-After: 0: the sync
    waits a second between tries (no hammering), posts it once when Slack takes it, and gives up
    nothing; the run goes on meanwhile."""
    slack, refusals = storm_slack, 4
    async with storm_stack(dev_env, tmp_path, slack) as stack:
        errors_before = await slack_errors(stack)
        slack.rate_limit(refusals, retry_after=0, method="chat.postMessage")
        f = f"{uuid.uuid4().hex[:8]}deadbeef"
        response = await stack.deliver(webhook([firing(f, "Storm", STARTS, instance="one")]))
        run_id = episode_id("storm", f, STARTS_AT)
        assert [(o["outcome"], o["run_id"]) for o in response.json()] == [("started", run_id)]

        # The run's end (its workflow's result) waits for Slack to catch up; its status says
        # "completed" before that, while the Slack sync, an activity of its own, still retries.
        result = stack.temporal.get_workflow_handle(run_id, result_type=RunStatus).result()
        assert (await asyncio.wait_for(result, timeout=30)).state == "completed"
        posts = slack.calls_to("chat.postMessage")
        assert [c.status for c in posts[: refusals + 1]] == [429] * refusals + [200], "refused four times, then taken"
        same = {json.dumps(c.params, sort_keys=True) for c in posts[: refusals + 1]}
        assert len(same) == 1, "one request, retried: not several different posts"
        gaps = [later.at - earlier.at for earlier, later in zip(posts, posts[1: refusals + 1])]
        assert all(gap >= 0.9 for gap in gaps), f"a 429 with Retry-After: 0 was retried too soon: {gaps}"
        assert await slack_errors(stack) == errors_before, "nothing was given up"
        tops = [m for m in slack.messages if m.thread_ts is None]
        assert len(tops) == 1 and run_id in tops[0].text and "completed" in tops[0].text
        thread = [m.text for m in slack.messages if m.thread_ts == tops[0].ts]
        assert len(thread) == 1 and "*storm* completed" in thread[0], thread
        assert await stack.executions(run_id) == 1
