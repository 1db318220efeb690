"""A compensation that fails leaves the system half rolled back: the run ends `failed`, names what
was not undone, and pages the playbook's owners in its Slack thread, once."""

from __future__ import annotations

from slack_sdk.web.async_client import AsyncWebClient

from bot.engine.workflow import PlaybookRun
from bot.slack.notifier import SlackNotifier
from tests.engine.support import Recorder, playbook, run_input, start, worker

PB = """
name: half-undone
owner: sre
channel: "#incidents"
steps:
  - id: drain
    action: t.ok
    compensate: {action: t.fail, with: {retryable: true}, retry: {max_attempts: 2, initial_interval: 1s}}
  - id: scale
    action: t.ok
    compensate: {action: t.ok}
  - id: verify
    action: t.fail
    retry: {max_attempts: 1}
"""


async def _run(dev_env, fake_slack, text: str):
    rec = Recorder()
    fake_slack.add_usergroup("S0SRE", "sre", ["U0BOB"])
    notifier = SlackNotifier(AsyncWebClient(token=fake_slack.token, base_url=fake_slack.api_url))
    async with worker(dev_env.client, rec, [notifier.sync]) as w:
        handle = await start(dev_env.client, w, run_input(playbook(text)))
        status = await handle.result()
        assert status == await handle.query(PlaybookRun.status)
    thread = [c.params["text"] for c in fake_slack.calls_to("chat.postMessage") if c.params.get("thread_ts")]
    return rec, status, thread


async def test_failing_compensation_fails_the_run_and_pages_the_owner_once(dev_env, fake_slack) -> None:
    rec, status, thread = await _run(dev_env, fake_slack, PB)

    assert status.state == "failed"
    assert status.not_undone == ["drain"] and status.escalated_to == ["sre"]
    assert [(c.step, c.state) for c in status.compensations] == [("scale", "succeeded"), ("drain", "failed")]
    # every forward step once, the good undo once, the bad undo exactly its two attempts
    assert rec.sequence() == ["drain", "scale", "verify", "undo scale", "undo drain", "undo drain"]

    finished = [e for e in rec.audit if e.kind == "run_finished"]
    assert len(finished) == 1
    assert finished[0].details["state"] == "failed"
    assert finished[0].details["not_undone"] == ["drain"] and finished[0].details["escalated_to"] == ["sre"]
    assert [e.step_id for e in rec.audit if e.kind == "compensation_failed"] == ["drain"]

    pages = [t for t in thread if "rollback incomplete" in t]
    assert len(pages) == 1, thread
    assert "<!subteam^S0SRE>" in pages[0] and "*drain*" in pages[0], "a mention that notifies the group"
    assert "scale" not in pages[0], "only what was not undone"
    assert "Could not undo" in thread[-1], "the summary comes last and repeats it"


async def test_without_an_owner_the_page_still_goes_out(dev_env, fake_slack) -> None:
    _, status, thread = await _run(dev_env, fake_slack, PB.replace("owner: sre\n", ""))
    assert status.state == "failed" and status.escalated_to == []
    pages = [t for t in thread if "rollback incomplete" in t]
    assert len(pages) == 1 and pages[0].startswith(":rotating_light: Whoever is on call")


async def test_a_clean_rollback_pages_nobody(dev_env, fake_slack) -> None:
    _, status, thread = await _run(dev_env, fake_slack, PB.replace("compensate: {action: t.fail", "compensate: {action: t.ok"))
    assert status.state == "compensated" and status.not_undone == [] and status.escalated_to == []
    assert thread and "compensated" in thread[-1] and "Could not undo" not in thread[-1], thread
    assert not [t for t in thread if "rollback incomplete" in t]
