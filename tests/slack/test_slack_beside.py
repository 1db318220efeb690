"""Slack rate limiting never holds a run up, and never makes it post twice (issue 14).

The notifier runs beside the steps: steps mark Slack stale and go on, one workflow coroutine
syncs, each sync keeps to its own budget under 429s and returns what it did post, and the next
sync goes on from there. The fake Slack records every call, so "posted twice" is countable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import Counter
from pathlib import Path
from collections.abc import AsyncIterator
from typing import Any

from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient
from temporalio import activity
from temporalio.client import WorkflowHandle

from bot.engine.runs import _counted, get_status, vote
from bot.engine.state import RunStatus, StepStatus, VoteRequest
from bot.engine.children import CatalogActivities, Snapshot, SnapshotRequest
from bot.engine.worker import make_worker, worker_deps
from bot.engine.workflow import SLACK_DEFER, SLACK_FINAL_WAIT, PlaybookRun
from bot.identity.principals import Actor
from bot.identity.proofs import Keyring
from bot.policy.activities import PolicyRequest
from bot.policy.models import Decision
from bot.settings import Settings
from bot.slack.notifier import SlackNotifier, SlackState, SlackSync
from tests.engine.support import Recorder, catalog_of, playbook, run_input, start, wait_for_state, worker
from tests.engine.test_approvals import policy
from tests.reliability.record_history import LOCAL_CHANNEL  # the engine-v6 history's playbook
from tests.slack.fake_slack import FakeSlack
from tests.waiting import eventually

CHANNEL_ID = "C0INCIDENTS"
POLICIES = Path(__file__).resolve().parents[2] / "policies"
SLOW = 4.0  # seconds a slow Slack takes to answer a call
RETRY_AFTER = 20  # seconds Slack asks to wait: more than a sync's budget (3 s here)

PB = """
name: busy
channel: "#incidents"
steps:
  - {id: one, action: t.ok, compensate: {action: t.ok}}
  - {id: two, action: t.ok}
  - {id: three, action: t.ok}
  - {id: four, action: t.ok}
  - {id: five, action: t.fail, retry: {max_attempts: 1}}
"""

APPROVAL = {"allow": True, "require_approval": True, "min_approvals": 1, "approver_groups": ["sre"], "reasons": ["prod"]}


def _web(fake_slack: FakeSlack) -> AsyncWebClient:
    """As production builds it (bot/actions/catalog.py): slack_sdk's own 429 retries included."""
    return AsyncWebClient(token=fake_slack.token, base_url=fake_slack.api_url,
                          retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=2)])


def _no_duplicates(fake_slack: FakeSlack) -> None:
    """Every message Slack took is a different one: same thread and same text twice is a repost."""
    posts = Counter((c.params.get("thread_ts"), str(c.params.get("text"))) for c in fake_slack.posts())
    assert [p for p, n in posts.items() if n > 1] == [], "posted twice"
    assert len(fake_slack.top_level(CHANNEL_ID)) == 1, "one status message per run"


async def test_steps_go_on_while_slack_refuses_everything_and_slack_catches_up(dev_env, fake_slack, short_slack_backoff):
    fake_slack.rate_limit_for(3600, retry_after=2)  # until the test says otherwise
    rec = Recorder()
    async with worker(dev_env.client, rec, [SlackNotifier(_web(fake_slack), budget=3).sync]) as w:
        handle = await start(dev_env.client, w, run_input(playbook(PB)))
        # Every step (and the rollback) is done while Slack still answers nothing but 429.
        status = await wait_for_state(handle, lambda s: s.compensations and s.compensations[0].state == "succeeded",
                                      timeout=60)
        assert [s.state for s in status.steps] == ["compensated"] + ["succeeded"] * 3 + ["failed"]
        # (The run's news waits for SLACK_DEFER since its first step, engine-v5: the try may come later.)
        async def tried() -> list:
            return fake_slack.rate_limited()

        await eventually(tried, timeout=10, what="the notifier's try")
        assert fake_slack.refusing() and fake_slack.posts() == [], "nothing reached Slack meanwhile"

        fake_slack.rate_limit_for(0)  # Slack answers again: the run's last sync catches up
        final = await handle.result()

    assert final.state == "compensated"
    _no_duplicates(fake_slack)
    [message] = fake_slack.top_level(CHANNEL_ID)
    assert "busy: compensated" in message.shown(), message.shown()
    thread = [m.text for m in fake_slack.thread(message)]
    assert any("*five* failed" in t for t in thread) and "*busy* compensated" in thread[-1], thread


async def test_a_vote_is_answered_while_slack_is_rate_limited(dev_env, fake_slack, short_slack_backoff):
    """The vote's answer says what the workflow decided, however slow Slack is (it used to wait
    for the sync, past the front door's deadline: "vote not recorded" for a vote that counted)."""
    rec = Recorder()
    pb = playbook('name: gated\nchannel: "#incidents"\nsteps: [{id: risky, action: t.ok, impact: high}]')
    keyring = Keyring(b"k" * 32)
    async with worker(dev_env.client, rec, policy(APPROVAL) + [SlackNotifier(_web(fake_slack), budget=3).sync]) as w:
        handle = await start(dev_env.client, w, run_input(pb, requested_by="cli:carl"))
        await wait_for_state(handle, lambda s: s.state == "waiting_approval")
        fake_slack.rate_limit_for(3600, retry_after=RETRY_AFTER)
        result = await vote(dev_env.client, handle.id, VoteRequest(step_id="risky", user="cli:dana"), Actor("cli:dana"), keyring)
        assert result.message == "cli:dana approved (1/1)" and result.approvals == 1
        # Had the answer been lost on its way, the front door reads what the run decided instead.
        now = await get_status(dev_env.client, handle.id)
        lost = _counted(now, VoteRequest(step_id="risky", user="cli:dana"))
        assert lost == result.model_copy(update={"step_state": lost.step_state}), lost
        assert _counted(now, VoteRequest(step_id="risky", user="cli:erin")) is None
        status = await wait_for_state(handle, lambda s: s.step("risky").state == "succeeded", timeout=60)
        assert fake_slack.refusing()
        fake_slack.rate_limit_for(0)
        final = await handle.result()
    assert final.state == "completed", status
    _no_duplicates(fake_slack)



@contextlib.asynccontextmanager
async def _waiting_on_approval(dev_env: Any, fake_slack: FakeSlack) -> AsyncIterator[WorkflowHandle[Any, RunStatus]]:
    """A one-step gated run requested by carl, waiting on its approval (requested in Slack), with
    its worker up until the block ends."""
    pb = playbook('name: gated\nchannel: "#incidents"\nsteps: [{id: risky, action: t.ok, impact: high}]')
    async with worker(dev_env.client, Recorder(), policy(APPROVAL) + [SlackNotifier(_web(fake_slack), budget=10).sync]) as w:
        handle = await start(dev_env.client, w, run_input(pb, requested_by="cli:carl"))
        await wait_for_state(handle, lambda s: s.state == "waiting_approval" and s.step("risky").decision)
        yield handle


async def test_a_deciding_vote_starts_the_step_while_slack_is_slow(dev_env, fake_slack):
    """The task that accepts the deciding vote schedules the step at once, and neither the step
    nor the voter's answer waits for the Slack sync the vote asks for (redraw the request, say so
    in the thread): the sync, a local activity that holds its task open until Slack answers, goes
    in a later task (engine-v4). Before, both waited 8 s here."""
    keyring = Keyring(b"k" * 32)
    async with _waiting_on_approval(dev_env, fake_slack) as handle:
        await asyncio.sleep(1)  # the request is posted; from here every call Slack answers takes SLOW
        for method in ("chat.update", "chat.postMessage"):
            fake_slack.hang(method, SLOW)
        began = time.monotonic()
        result = await vote(dev_env.client, handle.id, VoteRequest(step_id="risky", user="cli:dana"), Actor("cli:dana"), keyring)
        answered = time.monotonic() - began
        final = await handle.result()
    assert result.approvals == 1 and final.state == "completed"
    assert answered < SLOW / 2, f"the vote's answer waited {answered:.1f}s for Slack"
    events = (await handle.fetch_history()).events
    accepted = next(e for e in events if e.HasField("workflow_execution_update_accepted_event_attributes"))
    acting = next(e for e in events if e.HasField("activity_task_scheduled_event_attributes")
                  and e.activity_task_scheduled_event_attributes.activity_type.name == "t.ok")
    waited = acting.event_time.ToDatetime() - accepted.event_time.ToDatetime()
    assert waited.total_seconds() < SLOW / 2, f"the step was scheduled {waited} after the vote"
    assert [c for c in fake_slack.calls if c.method == "chat.update"], "Slack did get the redraw, late"
    # The wait's bound is never cancelled: the time-skipping test server that `playbook-bot test`
    # rehearses on wedges a run whose task cancels a timer that fired during it.
    bounds = {e.event_id for e in events if e.HasField("timer_started_event_attributes")
              and e.timer_started_event_attributes.start_to_fire_timeout.ToTimedelta() == SLACK_DEFER}
    assert bounds, "the sync did not wait for the vote's step"
    assert not [e for e in events if e.HasField("timer_canceled_event_attributes")
                and e.timer_canceled_event_attributes.started_event_id in bounds]



async def test_a_long_step_does_not_keep_its_run_out_of_slack(dev_env, fake_slack):
    """The sync waits out of tasks that dispatch a step's work for SLACK_DEFER at most: a run whose
    step takes a while shows its status message while the step still runs, not once it is done."""
    rec = Recorder()
    pb = playbook('name: slow\nchannel: "#incidents"\nsteps: [{id: long, action: t.quick, with: {seconds: 8}}]')
    async with worker(dev_env.client, rec, [SlackNotifier(_web(fake_slack), budget=10).sync]) as w:
        handle = await start(dev_env.client, w, run_input(pb))
        began = time.monotonic()
        while not fake_slack.top_level(CHANNEL_ID) and time.monotonic() - began < 6:
            await asyncio.sleep(0.1)
        shown_after = time.monotonic() - began
        assert fake_slack.top_level(CHANNEL_ID), "no status message while the step ran"
        assert (await get_status(dev_env.client, handle.id)).step("long").state == "running"
        final = await handle.result()
    assert final.state == "completed" and shown_after < 6
    [message] = fake_slack.top_level(CHANNEL_ID)
    assert "slow: completed" in message.shown(), message.shown()


def _timeline(events: list) -> list[tuple[int, str, str]]:
    """(event id, kind, detail) of a run's history: the activity or local activity's type, a timer's
    duration in seconds, a fired timer's start event."""
    out = []
    for e in events:
        kind = e.WhichOneof("attributes").removesuffix("_event_attributes")
        detail = ""
        if kind == "activity_task_scheduled":
            detail = e.activity_task_scheduled_event_attributes.activity_type.name
        elif kind == "marker_recorded" and "data" in e.marker_recorded_event_attributes.details:
            data = e.marker_recorded_event_attributes.details["data"].payloads[0].data
            detail = json.loads(data).get("activity_type", "")
        elif kind == "timer_started":
            detail = str(e.timer_started_event_attributes.start_to_fire_timeout.ToTimedelta().total_seconds())
        elif kind == "timer_fired":
            detail = str(e.timer_fired_event_attributes.started_event_id)
        out.append((e.event_id, kind, detail))
    return out


def _first(timeline: list[tuple[int, str, str]], kind: str, detail: str | None = None, after: int = 0) -> int:
    return next(i for i, k, d in timeline if i > after and k == kind and (detail is None or d == detail))


def _bounds_running_at(timeline: list[tuple[int, str, str]], moment: int) -> list[int]:
    """When each SLACK_DEFER bound running at `moment` (an event id) fired (a large id: never)."""
    fired = {int(d): i for i, k, d in timeline if k == "timer_fired"}
    bounds = [i for i, k, d in timeline if k == "timer_started" and d == str(SLACK_DEFER.total_seconds())]
    return [fired.get(b, 10**9) for b in bounds if b < moment < fired.get(b, 10**9)]


async def test_an_approved_step_acts_before_its_runs_slack_update(dev_env, fake_slack):
    """engine-v5: once a vote's step is under way, Slack shows what follows (the step's result, the
    run's end) in one sync when SLACK_DEFER is up, so a burst of approvals acts first and updates
    Slack after. Before, the run's end synced at once, in the middle of the others' steps."""
    keyring = Keyring(b"k" * 32)
    async with _waiting_on_approval(dev_env, fake_slack) as handle:
        await asyncio.sleep(SLACK_DEFER.total_seconds() * 1.5)  # as a human takes a while: the ask's bound is up
        await vote(dev_env.client, handle.id, VoteRequest(step_id="risky", user="cli:dana"), Actor("cli:dana"), keyring)
        final = await handle.result()
    assert final.state == "completed"
    timeline = _timeline((await handle.fetch_history()).events)
    voted = _first(timeline, "workflow_execution_update_accepted")
    acted = _first(timeline, "activity_task_scheduled", "t.ok", after=voted)
    bound = _first(timeline, "timer_started", str(SLACK_DEFER.total_seconds()), after=voted)
    bound_up = _first(timeline, "timer_fired", str(bound))
    syncs = [i for i, k, d in timeline if i > voted and k == "marker_recorded" and d == "slack.sync"]
    assert syncs and min(syncs) > bound_up > acted, f"Slack synced before the bound was up: {timeline[voted - 1:]}"
    assert not [t for t in timeline if t[1] == "timer_started" and t[2] == str(SLACK_FINAL_WAIT.total_seconds())], \
        "the end waited for the bound before its bounded wait: no timer of its own in the history"
    [message] = fake_slack.top_level(CHANNEL_ID)
    assert "gated: completed" in message.shown(), message.shown()


async def test_an_approval_request_is_shown_without_waiting_for_the_bound(dev_env, fake_slack):
    """A human asked to act is news Slack shows at once: the sync that posts the request goes in the
    task that asks, not when the policy question's SLACK_DEFER is up."""
    async with _waiting_on_approval(dev_env, fake_slack) as handle:
        async def request_synced() -> list[tuple[int, str, str]] | None:
            timeline = _timeline((await handle.fetch_history()).events)
            asked = _first(timeline, "activity_task_scheduled", "policy.decide")
            return timeline if [i for i, k, d in timeline if i > asked and k == "marker_recorded"
                                and d == "slack.sync"] else None

        timeline = await eventually(request_synced, timeout=10, what="the sync that shows the request")
        asked = _first(timeline, "activity_task_scheduled", "policy.decide")
        await handle.cancel()
    answered = _first(timeline, "activity_task_completed", after=asked)  # the policy asks for approval
    shown = _first(timeline, "marker_recorded", "slack.sync", after=asked)
    assert all(shown < up for up in _bounds_running_at(timeline, answered)), f"the request waited for the bound: {timeline}"
    [message] = fake_slack.top_level(CHANNEL_ID)
    assert "waiting approval" in message.shown(), message.shown()


async def test_an_approval_request_does_not_hold_back_a_sibling_dispatched_in_its_task(dev_env, fake_slack):
    """A parallel group's gated step asks for approval in the same workflow task in which its
    sibling's action is dispatched: the sibling is scheduled with that task, and the sync that
    shows the request goes in a later one. A sync is a local activity that holds its task open
    until Slack answers; synced in the asking task, it held the sibling's action for as long as
    Slack took (review of engine-v5, point 1), and so did one started while the sibling waited for
    the flush of the request's record (engine-v6)."""
    asked: list[str] = []

    @activity.defn(name="policy.decide")
    async def decide(request: PolicyRequest) -> Decision:
        # Both answers come while the run's first sync (from SLACK_DEFER on, SLOW long) waits on a
        # slow Slack, so one task gets both, the sibling's first: it then waits in `_recorded` for the
        # flush that risky's approval request starts (risky's question held the queued record).
        step = request.input["step"]["id"]
        asked.append(step)
        await asyncio.sleep(SLACK_DEFER.total_seconds() + (0.8 if step == "sibling" else 1.4))
        return Decision(**(APPROVAL if step == "risky" else {"allow": True}))

    pb = playbook("""
name: pair
channel: "#incidents"
steps:
  - id: both
    parallel:
      - {id: risky, action: t.ok, impact: high}
      - {id: sibling, action: t.ok, impact: high}
""")
    fake_slack.hang("chat.postMessage", SLOW)
    async with worker(dev_env.client, Recorder(), [decide, *policy(APPROVAL)[1:],
                                                    SlackNotifier(_web(fake_slack), budget=10).sync]) as w:
        handle = await start(dev_env.client, w, run_input(pb, requested_by="cli:carl"))

        async def request_synced() -> list[Any] | None:
            events = (await handle.fetch_history()).events
            timeline = _timeline(events)
            acting = [i for i, k, d in timeline if k == "activity_task_scheduled" and d == "t.ok"]
            return events if acting and [i for i, k, d in timeline if i > acting[0] and k == "marker_recorded"
                                         and d == "slack.sync"] else None

        events = await eventually(request_synced, timeout=20, what="the sync that shows the request")
        await handle.cancel()
    decides = {e.event_id for e in events if e.HasField("activity_task_scheduled_event_attributes")
               and e.activity_task_scheduled_event_attributes.activity_type.name == "policy.decide"}
    answers = [e.event_id for e in events if e.HasField("activity_task_completed_event_attributes")
               and e.activity_task_completed_event_attributes.scheduled_event_id in decides]
    started = {e.event_id: e for e in events if e.HasField("workflow_task_started_event_attributes")}
    acting = next(e for e in events if e.HasField("activity_task_scheduled_event_attributes")
                  and e.activity_task_scheduled_event_attributes.activity_type.name == "t.ok")
    took = started[max(i for i in started if i < acting.event_id)]  # the task that dispatched the sibling
    assert sorted(asked) == ["risky", "sibling"] and len(answers) == 2
    timeline = _timeline(events)
    assert not [i for i in started if answers[0] < i < took.event_id], \
        f"scenario not built: the policy answers came in different tasks: {timeline}"
    assert [i for i, _, d in timeline if took.event_id < i < acting.event_id and d == "audit.record"], \
        f"scenario not built: the sibling did not wait for a flush: {timeline}"
    waited = acting.event_time.ToDatetime() - took.event_time.ToDatetime()
    assert waited.total_seconds() < SLOW / 2, f"the sibling waited {waited} in the task that asked: {timeline}"


async def test_a_step_on_the_runs_thread_does_not_wait_for_the_bound(dev_env, fake_slack):
    """A step that replies in the run's thread needs the status message: the sync goes at once for
    it, even while an earlier step's SLACK_DEFER still runs."""
    from bot.actions.activities import build_activities
    from bot.actions.secrets import SecretStore
    from bot.actions.slack import SlackActions

    rec = Recorder()
    web = _web(fake_slack)
    pb = playbook("""
name: chatty
channel: "#incidents"
steps:
  - {id: first, action: t.ok}
  - id: tell
    action: slack.post
    with: {channel: "{{ run.slack_channel }}", thread_ts: "{{ run.slack_thread_ts }}", text: "restarting now"}
""")
    post = build_activities([SlackActions(web)], SecretStore(environ={}))
    async with worker(dev_env.client, rec, [SlackNotifier(web, budget=10).sync, *post]) as w:
        handle = await start(dev_env.client, w, run_input(pb))
        status = await handle.result()
    assert status.state == "completed", status.error
    timeline = _timeline((await handle.fetch_history()).events)
    first_done = _first(timeline, "activity_task_completed")  # the next step wants the thread
    told = _first(timeline, "activity_task_scheduled", "slack.post")
    assert all(told < up for up in _bounds_running_at(timeline, first_done)), f"the reply waited for the bound: {timeline}"
    [message] = fake_slack.top_level(CHANNEL_ID)
    assert [m.text for m in fake_slack.thread(message)][:1] == ["restarting now"]


async def test_a_half_rolled_back_run_pages_its_owners_without_waiting_for_the_bound(dev_env, fake_slack):
    """An undo that failed pages the playbook's owners in the run's thread: that sync goes at once,
    not when the undo's SLACK_DEFER is up."""
    rec = Recorder()
    pb = playbook("""
name: half-undone
owner: sre
channel: "#incidents"
steps:
  - {id: drain, action: t.ok, compensate: {action: t.fail, retry: {max_attempts: 1}}}
  - {id: verify, action: t.fail, retry: {max_attempts: 1}}
""")
    async with worker(dev_env.client, rec, [SlackNotifier(_web(fake_slack), budget=10).sync]) as w:
        handle = await start(dev_env.client, w, run_input(pb))
        final = await handle.result()
    assert final.state == "failed" and final.escalated_to == ["sre"], final
    timeline = _timeline((await handle.fetch_history()).events)
    undone = [i for i, k, _ in timeline if k == "activity_task_failed"][-1]  # the undo failed: page
    paged = _first(timeline, "marker_recorded", "slack.sync", after=undone)
    assert 10**9 not in _bounds_running_at(timeline, len(timeline)), f"the run ended with a bound running: {timeline}"
    assert all(paged < up for up in _bounds_running_at(timeline, undone)), f"the page waited for the bound: {timeline}"
    [message] = fake_slack.top_level(CHANNEL_ID)
    paging = [m.text for m in fake_slack.thread(message) if "rollback incomplete" in m.text]
    assert len(paging) == 1, [m.text for m in fake_slack.thread(message)]


def _status(failed: bool, finished: bool = False) -> RunStatus:
    steps = [StepStatus(id="a", action="t.ok", state="succeeded"),
             StepStatus(id="b", action="t.fail", state="failed" if failed else "running", error="b broke")]
    return RunStatus(run_id="r-9", playbook="told", playbook_hash="h", state="failed" if finished else "running",
                     requested_by="cli:carl", trigger="cli", steps=steps)


async def test_a_sync_keeps_to_its_budget_and_returns_what_it_posted(fake_slack):
    """Rate limited past its budget, a sync stops and says so (pending, Retry-After) instead of
    timing out, so its posts are never lost to a retry from the state before it."""
    notifier = SlackNotifier(_web(fake_slack), budget=3)
    fake_slack.rate_limit(n=1, retry_after=1)  # a short limit fits the budget: waited out
    state = await notifier.sync(SlackSync(channel="#incidents", status=_status(failed=False)))
    assert state.message_ts and not state.pending
    assert len(fake_slack.rate_limited()) == 1 and len(fake_slack.posts()) == 1

    fake_slack.rate_limit_for(3600, retry_after=RETRY_AFTER)
    state = await notifier.sync(SlackSync(channel="#incidents", status=_status(failed=True), state=state))
    assert state.pending and state.retry_after == RETRY_AFTER
    assert state.posted == [] and state.message_ts, "the status message it had is kept"
    assert len(fake_slack.rate_limited()) == 2, "one refused call, then no more in this sync (no hammering)"

    fake_slack.rate_limit_for(0)
    state = await notifier.sync(SlackSync(channel="#incidents", status=_status(failed=True, finished=True), state=state))
    assert not state.pending and state.posted == ["end:b", "final"]
    _no_duplicates(fake_slack)


async def test_a_sync_whose_answer_was_lost_does_not_post_again(fake_slack):
    """A sync that posted and then died (its state never reached the workflow): the next sync,
    from the older state, takes what this worker posted instead of posting it again."""
    notifier = SlackNotifier(_web(fake_slack), budget=3)
    lost = await notifier.sync(SlackSync(channel="#incidents", status=_status(failed=True)))
    state = await notifier.sync(SlackSync(channel="#incidents", status=_status(failed=True), state=SlackState()))
    assert state.message_ts == lost.message_ts and state.posted == ["end:b"]
    assert len(fake_slack.posts()) == 2, "the status message and the reply, once each"
    _no_duplicates(fake_slack)


LOCAL_THEN_REMOTE = """
name: local-then-remote
channel: "C0INCIDENTS"
steps:
  - {id: first, action: core.log, with: {message: first}}
  - {id: check, action: shell.run, with: {argv: [python3, -c, "pass"]}}
"""


async def _run_shipped(dev_env: Any, fake_slack: FakeSlack, tmp_path: Any, text: str, *others: str,
                       replace: Any = None) -> tuple[RunStatus, list]:
    """`text` run to its end by the worker's own activities (core.log a local activity, the
    shipped policy, the notifier on the fake Slack; `others` in its catalog, `replace` an activity
    of the same name), and its history's timeline."""
    pb = playbook(text)
    settings = Settings(data_dir=tmp_path / "data", policies_dir=POLICIES, slack_bot_token=fake_slack.token,
                        slack_api_url=fake_slack.api_url, shell_allow=["python3"])
    async with worker_deps(settings, catalog=catalog_of(pb, *(playbook(o) for o in others))) as deps:
        activities = deps.activities
        if replace is not None:
            name = replace.__temporal_activity_definition.name
            activities = [a for a in activities if getattr(a, "__temporal_activity_definition").name != name] + [replace]
        async with make_worker(dev_env.client, f"tq-{uuid.uuid4()}", activities) as w:
            handle = await dev_env.client.start_workflow(PlaybookRun.run, run_input(pb), id=f"run-{uuid.uuid4()}",
                                                         task_queue=w.task_queue)
            final = await asyncio.wait_for(handle.result(), 30)
    return final, _timeline((await handle.fetch_history()).events)


def _task_of(timeline: list[tuple[int, str, str]], event: int) -> int:
    """Which workflow task (counted from 1) sent the command behind `event`."""
    return sum(1 for i, k, _ in timeline if k == "workflow_task_completed" and i < event)


async def test_a_run_of_local_steps_ends_in_one_task_and_shows_its_end_at_once(dev_env, fake_slack, tmp_path):
    """engine-v7: news whose work all ran inside the task (core.log is a local activity) has no
    dispatch for a sync to hold, so it waits for that work, not for SLACK_DEFER: the run is
    synced and ends in its first workflow task, without the bound's timer and the task after it
    (engine-v6 took two tasks and a 1 s timer; the Slack ack bench's runs are such runs)."""
    final, timeline = await _run_shipped(dev_env, fake_slack, tmp_path, LOCAL_CHANNEL)
    assert final.state == "completed", final.error
    assert [k for _, k, _ in timeline].count("workflow_task_completed") == 1, timeline
    assert not [t for t in timeline if t[1] == "timer_started"], f"a timer: {timeline}"
    steps = [i for i, k, d in timeline if k == "marker_recorded" and d == "core.log"]
    syncs = [i for i, k, d in timeline if k == "marker_recorded" and d == "slack.sync"]
    assert len(steps) == 2 and syncs and min(syncs) > max(steps), f"Slack synced before the steps were done: {timeline}"
    [message] = fake_slack.top_level(CHANNEL_ID)
    assert "local-channel: completed" in message.shown(), message.shown()


async def test_local_work_then_a_remote_step_still_keeps_slack_out_of_the_dispatching_task(dev_env, fake_slack, tmp_path):
    """engine-v7 waits for local work only while nothing leaves the task: once the next step's
    activity is dispatched, the sync waits for the bound as before, so it does not hold the task
    that schedules that activity."""
    final, timeline = await _run_shipped(dev_env, fake_slack, tmp_path, LOCAL_THEN_REMOTE)
    assert final.state == "completed", final.error
    scheduled = _first(timeline, "activity_task_scheduled", "shell.run")
    first_sync = _first(timeline, "marker_recorded", "slack.sync")
    assert _task_of(timeline, first_sync) > _task_of(timeline, scheduled), f"the sync held the dispatch: {timeline}"
    assert _first(timeline, "timer_started", str(SLACK_DEFER.total_seconds())) < first_sync
    [message] = fake_slack.top_level(CHANNEL_ID)
    assert "local-then-remote: completed" in message.shown(), message.shown()


LOCAL_BESIDE_CHILD = """
name: local-beside-child
channel: "C0INCIDENTS"
steps:
  - id: both
    parallel:
      - {id: note, action: core.log, with: {message: first}}
      - {id: call, action: playbook.run, with: {name: quiet-child}}
"""

QUIET_CHILD = """
name: quiet-child
steps:
  - {id: inner, action: core.log, with: {message: inner}}
"""


async def test_local_work_beside_a_child_run_being_prepared_does_not_hold_its_start(dev_env, fake_slack, tmp_path):
    """engine-v7 counts every local activity in flight, not only local steps: a child run reads
    its playbook in a local activity (playbook.snapshot) before it is started, and a sync begun
    once the core.log beside it was done held that start in its task until Slack answered
    (review of engine-v7, point 1: the snapshot slowed so that it ends last)."""

    @activity.defn(name="playbook.snapshot")
    async def slow_snapshot(request: SnapshotRequest) -> Snapshot:
        await asyncio.sleep(0.5)
        return await CatalogActivities(lambda: catalog_of(playbook(QUIET_CHILD))).snapshot(request)

    final, timeline = await _run_shipped(dev_env, fake_slack, tmp_path, LOCAL_BESIDE_CHILD, QUIET_CHILD,
                                         replace=slow_snapshot)
    assert final.state == "completed", final.error
    started = _first(timeline, "start_child_workflow_execution_initiated")
    syncs = [i for i, k, d in timeline if k == "marker_recorded" and d == "slack.sync"]
    assert syncs and all(_task_of(timeline, i) != _task_of(timeline, started) for i in syncs), \
        f"a sync shared the task that starts the child: {timeline}"
