"""A run with a channel tells its story in Slack: one status message updated in place, the
approval request in its thread (buttons until decided), failures, undos and the summary."""

from __future__ import annotations

from slack_sdk.web.async_client import AsyncWebClient

from bot.engine.state import RunStatus, StepStatus, VoteRequest
from bot.engine.workflow import PlaybookRun
from bot.slack.notifier import SlackNotifier, SlackState, SlackSync
from tests.engine.support import Recorder, playbook, run_input, start, wait_for_state, worker
from tests.engine.test_approvals import policy
from tests.slack.fake_slack import FakeSlack, Message
from tests.waiting import eventually

CHANNEL_ID = "C0INCIDENTS"  # the fake workspace's #incidents

PB = """
name: told
channel: "#incidents"
steps:
  - {id: prep, action: t.ok, compensate: {action: t.ok}}
  - {id: risky, action: t.ok, impact: high}
  - {id: boom, action: t.fail, retry: {max_attempts: 1}}
"""

APPROVAL = {"allow": True, "require_approval": True, "min_approvals": 1, "approver_groups": ["sre"], "reasons": ["prod"]}


def _notifier(fake_slack: FakeSlack) -> SlackNotifier:
    return SlackNotifier(AsyncWebClient(token=fake_slack.token, base_url=fake_slack.api_url))


async def _approval_request(fake_slack: FakeSlack) -> Message:
    """The run's approval request, once it is in the status message's thread."""
    async def posted() -> list[Message]:
        tops = fake_slack.top_level(CHANNEL_ID)
        return [m for m in fake_slack.thread(tops[0]) if m.buttons()] if tops else []
    return (await eventually(posted, what="approval request in the thread"))[0]


async def test_status_message_approval_thread_and_summary(dev_env, fake_slack):
    """What Slack shows: one status message, kept current; the request in its thread, its
    buttons gone once decided (here by a vote that did not come through Slack, as the CLI's)."""
    rec = Recorder()
    async with worker(dev_env.client, rec, policy(APPROVAL) + [_notifier(fake_slack).sync]) as w:
        handle = await start(dev_env.client, w, run_input(playbook(PB), requested_by="cli:carl"))
        await wait_for_state(handle, lambda s: s.state == "waiting_approval")
        request = await _approval_request(fake_slack)
        [status_message] = fake_slack.top_level(CHANNEL_ID)
        assert request.buttons() == ["approval.approve", "approval.reject"]
        assert "waiting approval" in status_message.shown()

        await handle.execute_update(PlaybookRun.vote, VoteRequest(step_id="risky", user="cli:dana"))
        status = await handle.result()

    assert status.state == "compensated"
    assert fake_slack.top_level(CHANNEL_ID) == [status_message], "one status message per run"
    shown = status_message.shown()
    assert "told: compensated" in shown and "running" not in shown and "waiting approval" not in shown, shown
    assert ":x: *boom* `t.fail` failed" in shown and "undo *prep* `t.ok` succeeded" in shown, shown
    assert request.buttons() == [], "once decided the buttons go away"
    assert "Approved by `cli:dana`" in request.shown(), request.shown()
    thread = [m.shown() for m in fake_slack.thread(status_message)]
    assert thread[0] == request.shown(), "the request opens the thread"
    assert any("*boom* failed" in t for t in thread), thread
    assert any("undo of *prep* succeeded" in t for t in thread), thread
    assert "*told* compensated" in thread[-1], "the summary comes last"


async def test_an_approval_that_times_out_loses_its_buttons(dev_env, fake_slack):
    rec = Recorder()
    timing_out = {**APPROVAL, "approval_timeout": "1s"}
    pb = playbook('name: lapsed\nchannel: "#incidents"\nsteps: [{id: risky, action: t.ok, impact: high}]')
    async with worker(dev_env.client, rec, policy(timing_out) + [_notifier(fake_slack).sync]) as w:
        handle = await start(dev_env.client, w, run_input(pb))
        request = await _approval_request(fake_slack)
        status = await handle.result()

    assert status.step("risky").state == "rejected"
    assert request.buttons() == [], "a request decided by its deadline offers no buttons"
    assert "Rejected" in request.shown(), request.shown()
    [status_message] = fake_slack.top_level(CHANNEL_ID)
    assert f"lapsed: {status.state}" in status_message.shown(), status_message.shown()


async def test_slack_down_never_fails_the_run(dev_env, fake_slack, short_slack_backoff):
    rec = Recorder()
    fake_slack.server_error(8)  # down for the whole run: its syncs and the final ones fail, then it is back
    notifier = SlackNotifier(AsyncWebClient(token=fake_slack.token, base_url=fake_slack.api_url))
    pb = playbook('name: quiet\nchannel: "#incidents"\nsteps: [{id: a, action: t.ok}, {id: b, action: t.ok}]')
    async with worker(dev_env.client, rec, [notifier.sync]) as w:
        status = await (await start(dev_env.client, w, run_input(pb))).result()
    assert status.state == "completed"
    assert rec.sequence() == ["a", "b"]


async def test_slack_post_step_replies_in_the_runs_thread(dev_env, fake_slack):
    from bot.actions.activities import build_activities
    from bot.actions.secrets import SecretStore
    from bot.actions.slack import SlackActions

    rec = Recorder()
    web = AsyncWebClient(token=fake_slack.token, base_url=fake_slack.api_url)
    pb = playbook(
        """
name: chatty
channel: "#incidents"
steps:
  - id: tell
    action: slack.post
    with: {channel: "{{ run.slack_channel }}", thread_ts: "{{ run.slack_thread_ts }}", text: "restarting now"}
"""
    )
    post = build_activities([SlackActions(web)], SecretStore(environ={}))
    async with worker(dev_env.client, rec, [SlackNotifier(web).sync, *post]) as w:
        status = await (await start(dev_env.client, w, run_input(pb))).result()
    assert status.state == "completed", status.error
    [status_message] = fake_slack.top_level(CHANNEL_ID)
    assert [m.text for m in fake_slack.thread(status_message)][:1] == ["restarting now"]


def _status(state: str, failed: bool) -> RunStatus:
    steps = [StepStatus(id="a", action="t.ok", state="succeeded"),
             StepStatus(id="b", action="t.fail", state="failed" if failed else "running", error="b broke")]
    return RunStatus(run_id="r-1", playbook="told", playbook_hash="h", state=state, requested_by="cli:carl",
                     trigger="cli", steps=steps)


async def test_a_refused_reply_is_not_taken_as_posted_and_the_thread_stays_in_order(fake_slack):
    notifier = SlackNotifier(AsyncWebClient(token=fake_slack.token, base_url=fake_slack.api_url))
    state = await notifier.sync(SlackSync(channel="#incidents", status=_status("running", failed=False)))
    fake_slack.fail_next("chat.postMessage", "fatal_error")  # the failure reply is refused once
    state = await notifier.sync(SlackSync(channel="#incidents", status=_status("running", failed=True), state=state))
    assert state.posted == [], "nothing is marked posted that Slack did not take"

    [status_message] = fake_slack.top_level(CHANNEL_ID)
    assert fake_slack.thread(status_message) == [], "the refused reply is not in Slack"

    final = await notifier.sync(SlackSync(channel="#incidents", status=_status("failed", failed=True), state=state))
    thread = [m.text for m in fake_slack.thread(status_message)]
    assert final.posted == ["end:b", "final"]
    assert len(thread) == 2, thread
    assert thread[0].startswith(":x: *b* failed") and "*told* failed" in thread[1], "the failure, then the summary"


async def test_the_last_sync_of_a_run_tries_again_itself(fake_slack):
    """A finished run has no later sync: a refused summary is retried within this one, once posted."""
    notifier = SlackNotifier(AsyncWebClient(token=fake_slack.token, base_url=fake_slack.api_url))
    state = await notifier.sync(SlackSync(channel="#incidents", status=_status("running", failed=True)))
    fake_slack.fail_next("chat.postMessage", "fatal_error")
    final = await notifier.sync(SlackSync(channel="#incidents", status=_status("failed", failed=True), state=state))
    assert final.posted == ["end:b", "final"]
    assert [c.error for c in fake_slack.calls_to("chat.postMessage") if not c.ok] == ["fatal_error"], "refused once"
    [status_message] = fake_slack.top_level(CHANNEL_ID)
    thread = [m.text for m in fake_slack.thread(status_message)]
    assert len(thread) == 2 and "*told* failed" in thread[1], "then posted, once"


async def test_the_status_message_shows_the_runs_state_as_it_changes(fake_slack):
    notifier = _notifier(fake_slack)
    state = await notifier.sync(SlackSync(channel="#incidents", status=_status("running", failed=False)))
    [message] = fake_slack.top_level(CHANNEL_ID)
    assert "told: running" in message.shown()

    await notifier.sync(SlackSync(channel="#incidents", status=_status("failed", failed=True), state=state))

    assert fake_slack.top_level(CHANNEL_ID) == [message]
    assert "told: failed" in message.shown() and "told: running" not in message.shown(), message.shown()
    assert "failed" in message.text and message.updates == 1


def _waiting(step_state: str) -> tuple[RunStatus, dict[str, dict[str, object]]]:
    step = StepStatus(id="risky", action="t.ok", state=step_state, decision=APPROVAL,
                      error="approval timed out" if step_state == "rejected" else None)
    run_state = "waiting_approval" if step_state == "waiting_approval" else "failed"
    status = RunStatus(run_id="r-2", playbook="told", playbook_hash="h", state=run_state, requested_by="cli:carl",
                       trigger="cli", steps=[step])
    return status, {"risky": APPROVAL}


async def test_a_decided_approval_request_is_redrawn_without_buttons(fake_slack):
    notifier = _notifier(fake_slack)
    waiting, decisions = _waiting("waiting_approval")
    state = await notifier.sync(SlackSync(channel="#incidents", status=waiting, decisions=decisions))
    [status_message] = fake_slack.top_level(CHANNEL_ID)
    [request] = [m for m in fake_slack.thread(status_message) if m.buttons()]

    rejected, decisions = _waiting("rejected")
    await notifier.sync(SlackSync(channel="#incidents", status=rejected, decisions=decisions, state=state))

    assert request.buttons() == [] and "Rejected: approval timed out" in request.shown(), request.shown()
    assert "told: failed" in status_message.shown()


async def test_a_run_recorded_before_the_channel_id_was_kept_heals_at_its_next_post(fake_slack):
    """SlackState is workflow state carried in history: an older run's state has no channel ID.
    Its next post answers the ID, and from then on its messages update."""
    notifier = _notifier(fake_slack)
    first = await notifier.sync(SlackSync(channel="#incidents", status=_status("running", failed=False)))
    assert first.channel_id == CHANNEL_ID
    legacy = SlackState.model_validate({"message_ts": first.message_ts, "approval_ts": {}, "posted": []})
    assert legacy.channel_id is None

    state = await notifier.sync(SlackSync(channel="#incidents", status=_status("running", failed=True), state=legacy))
    assert state.channel_id == CHANNEL_ID, "the failure reply's post answered the ID"
    await notifier.sync(SlackSync(channel="#incidents", status=_status("failed", failed=True), state=state))

    [message] = fake_slack.top_level(CHANNEL_ID)
    assert "told: failed" in message.shown(), message.shown()
