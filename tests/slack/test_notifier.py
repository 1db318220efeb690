"""A run with a channel tells its story in Slack: one status message updated in place, the
approval request in its thread (buttons until decided), failures, undos and the summary."""

from __future__ import annotations

import asyncio

from slack_sdk.web.async_client import AsyncWebClient

from bot.engine.state import RunStatus, StepStatus, VoteRequest
from bot.engine.workflow import PlaybookRun
from bot.slack.notifier import SlackNotifier, SlackSync
from tests.engine.support import Recorder, playbook, run_input, start, wait_for_state, worker
from tests.engine.test_approvals import policy

PB = """
name: told
channel: "#incidents"
steps:
  - {id: prep, action: t.ok, compensate: {action: t.ok}}
  - {id: risky, action: t.ok, impact: high}
  - {id: boom, action: t.fail, retry: {max_attempts: 1}}
"""

APPROVAL = {"allow": True, "require_approval": True, "min_approvals": 1, "approver_groups": ["sre"], "reasons": ["prod"]}


async def test_status_message_approval_thread_and_summary(dev_env, fake_slack):
    rec = Recorder()
    notifier = SlackNotifier(AsyncWebClient(token=fake_slack.token, base_url=fake_slack.api_url))
    async with worker(dev_env.client, rec, policy(APPROVAL) + [notifier.sync]) as w:
        handle = await start(dev_env.client, w, run_input(playbook(PB), requested_by="carl"))
        await wait_for_state(handle, lambda s: s.state == "waiting_approval")
        for _ in range(50):  # the approval request lands in the thread right after the wait starts
            if len(fake_slack.calls_to("chat.postMessage")) >= 2:
                break
            await asyncio.sleep(0.1)
        posts = fake_slack.calls_to("chat.postMessage")
        status_post, approval_post = posts[0], posts[1]
        assert status_post.params["channel"] == "#incidents" and "thread_ts" not in status_post.params
        assert approval_post.params.get("thread_ts"), "the approval request goes in the run's thread"
        action_ids = [e["action_id"] for b in approval_post.params["blocks"] if b["type"] == "actions" for e in b["elements"]]
        assert action_ids == ["approval.approve", "approval.reject"]

        await handle.execute_update(PlaybookRun.vote, VoteRequest(step_id="risky", user="dana"))
        status = await handle.result()

    assert status.state == "compensated"
    posts = fake_slack.calls_to("chat.postMessage")
    assert len([p for p in posts if "thread_ts" not in p.params]) == 1, "one status message per run"
    thread = [p.params["text"] for p in posts if p.params.get("thread_ts")]
    assert any("boom" in t and "failed" in t for t in thread)
    assert any("undo of *prep*" in t for t in thread)
    assert any("compensated" in t for t in thread[-1:]), "the summary comes last"
    updates = fake_slack.calls_to("chat.update")
    assert updates, "the status message is updated in place"
    approval_updates = [u for u in updates if "dana" in str(u.params.get("blocks", ""))]
    assert approval_updates, "the approval request shows who voted"
    last = approval_updates[-1].params["blocks"]
    assert not [b for b in last if b["type"] == "actions"], "once decided the buttons go away"


async def test_slack_down_never_fails_the_run(dev_env, fake_slack):
    rec = Recorder()
    fake_slack.server_error(100)
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
    posts = fake_slack.calls_to("chat.postMessage")
    status_ts = fake_slack.messages[0].ts
    told = [p for p in posts if p.params.get("text") == "restarting now"]
    assert told and told[0].params["thread_ts"] == status_ts


def _status(state: str, failed: bool) -> RunStatus:
    steps = [StepStatus(id="a", action="t.ok", state="succeeded"),
             StepStatus(id="b", action="t.fail", state="failed" if failed else "running", error="b broke")]
    return RunStatus(run_id="r-1", playbook="told", playbook_hash="h", state=state, requested_by="carl",
                     trigger="cli", steps=steps)


async def test_a_refused_reply_is_not_taken_as_posted_and_the_thread_stays_in_order(fake_slack):
    notifier = SlackNotifier(AsyncWebClient(token=fake_slack.token, base_url=fake_slack.api_url))
    state = await notifier.sync(SlackSync(channel="#incidents", status=_status("running", failed=False)))
    fake_slack.fail_next("chat.postMessage", "fatal_error")  # the failure reply is refused once
    state = await notifier.sync(SlackSync(channel="#incidents", status=_status("running", failed=True), state=state))
    assert state.posted == [], "nothing is marked posted that Slack did not take"

    final = await notifier.sync(SlackSync(channel="#incidents", status=_status("failed", failed=True), state=state))
    thread = [c.params["text"] for c in fake_slack.calls_to("chat.postMessage") if c.params.get("thread_ts")]
    assert final.posted == ["end:b", "final"]
    assert sum("*b* failed" in t for t in thread) == 2, "once refused, then posted once"
    assert "*b* failed" in thread[-2] and "failed" in thread[-1], "the failure before the summary"


async def test_the_last_sync_of_a_run_tries_again_itself(fake_slack):
    """A finished run has no later sync: a refused summary is retried within this one, once posted."""
    notifier = SlackNotifier(AsyncWebClient(token=fake_slack.token, base_url=fake_slack.api_url))
    state = await notifier.sync(SlackSync(channel="#incidents", status=_status("running", failed=True)))
    fake_slack.fail_next("chat.postMessage", "fatal_error")
    final = await notifier.sync(SlackSync(channel="#incidents", status=_status("failed", failed=True), state=state))
    assert final.posted == ["end:b", "final"]
    summaries = [c for c in fake_slack.calls_to("chat.postMessage") if "told" in c.params.get("text", "")
                 and c.params.get("thread_ts")]
    assert len(summaries) == 2 and summaries[0].params == summaries[1].params, "refused once, posted once"
