"""Data never speaks Slack markup: an error, a param, a reason or a user's own text that spells
`<!channel>` or a `<https://evil|link>` reaches Slack escaped, so it notifies nobody and links
nowhere; only the bot's own mentions (the escalation's `<!subteam^ID>`, a voter's `<@U…>`) stay live."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from slack_sdk.web.async_client import AsyncWebClient
from temporalio import activity

from bot.actions.base import ActionFailed, ActionInput, ActionResult
from bot.engine.state import CompensationStatus, RunStatus, StepStatus, Vote
from bot.slack import blocks
from bot.slack.notifier import SlackNotifier, SlackSync
from tests.engine.support import Recorder, playbook, run_input, start, worker
from tests.slack.fake_slack import FakeSlack
from tests.slack.support import ALICE, slack_stack, text_of

ATTACK = "<!channel> <!here> <@U0MALLORY> <!subteam^S0EVIL> <https://evil.example|click me> &amp; co"
ESCAPED = (
    "&lt;!channel&gt; &lt;!here&gt; &lt;@U0MALLORY&gt; &lt;!subteam^S0EVIL&gt; "
    "&lt;https://evil.example|click me&gt; &amp;amp; co"
)
LIVE = re.compile(r"<[^<>]*>")
SENDS = ("chat.postMessage", "chat.update", "chat.postEphemeral")
NOT_SHOWN = frozenset({"value", "action_id", "block_id"})


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):  # a button's value, action_id and block_id are never shown
        return [s for k, v in value.items() if k not in NOT_SHOWN for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def sent_texts(fake: FakeSlack) -> list[str]:
    """Every text Slack was asked to show: message texts and every string inside their blocks."""
    return [s for call in fake.calls if call.method in SENDS for key in ("text", "blocks")
            for s in _strings(call.params.get(key))]


def live_tokens(texts: list[str]) -> set[str]:
    """What Slack would read as a mention, a link or a date: `<...>` spans."""
    return {token for text in texts for token in LIVE.findall(text)} - {t for t in _dates(texts)}


def _dates(texts: list[str]) -> set[str]:
    return {t for text in texts for t in LIVE.findall(text) if re.fullmatch(r"<!date\^\d+\^[^|<>]*\|[^<>]*>", t)}


PB = """
name: evil-errors
owner: sre
channel: "#incidents"
params:
  note: {type: string}
steps:
  - id: prep
    action: t.ok
    compensate: {action: t.evil, retry: {max_attempts: 1}}
  - id: boom
    action: t.evil
    retry: {max_attempts: 1}
"""


@activity.defn(name="t.evil")
async def evil(inp: ActionInput) -> ActionResult:
    """An action whose error quotes a hostile HTTP response body, as http.request's do."""
    raise ActionFailed(f"HTTP 502 from upstream: {ATTACK}", retryable=False)


async def test_step_and_undo_errors_reach_slack_escaped_and_the_escalation_still_pages(dev_env, fake_slack) -> None:
    fake_slack.add_usergroup("S0SRE", "sre", ["U0BOB"])
    notifier = SlackNotifier(AsyncWebClient(token=fake_slack.token, base_url=fake_slack.api_url))
    async with worker(dev_env.client, Recorder(), [notifier.sync, evil]) as w:
        handle = await start(dev_env.client, w, run_input(playbook(PB), {"note": ATTACK}))
        status = await handle.result()

    assert status.state == "failed" and status.not_undone == ["prep"], status
    assert ATTACK in (status.step("boom").error or "") and ATTACK in (status.compensations[0].error or "")
    thread = [m.text for m in fake_slack.messages if m.thread_ts]
    step_reply = [t for t in thread if t.startswith(":x: *boom*")]
    undo_reply = [t for t in thread if "undo of *prep*" in t]
    assert step_reply and ESCAPED in step_reply[0], thread
    assert undo_reply and ESCAPED in undo_reply[0], thread
    assert live_tokens(sent_texts(fake_slack)) == {"<!subteam^S0SRE>"}, "only the escalation's own mention"
    page = [t for t in thread if "rollback incomplete" in t]
    assert len(page) == 1 and "<!subteam^S0SRE>" in page[0]


def _hostile_status(state: str, step_state: str) -> RunStatus:
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    decision = {"allow": True, "require_approval": True, "approver_groups": ["sre", ATTACK], "reasons": [ATTACK]}
    finished = state in ("failed", "compensated")
    return RunStatus(
        run_id=f"r-{ATTACK}", playbook="told", playbook_hash="h", state=state, requested_by=f"cli:{ATTACK}",
        trigger="cli", params={"note": ATTACK, ATTACK: "x"}, started_at=now,
        finished_at=now + timedelta(minutes=3) if finished else None,
        steps=[
            StepStatus(id=f"prep{ATTACK}", action=f"t.ok{ATTACK}", group=ATTACK, state="succeeded"),
            StepStatus(
                id="risky", action="t.ok", impact="high", state=step_state, args={"msg": ATTACK}, decision=decision,
                error=ATTACK if step_state == "rejected" else None, approval_deadline=now + timedelta(minutes=10),
                escalated_at=now + timedelta(minutes=5),
                approvals=[Vote(user="U0BOB", vote="approve", at=now),
                           Vote(user=f"cli:{ATTACK}", name=ATTACK, vote="reject", reason=ATTACK, at=now)],
            ),
            StepStatus(id="boom", action="t.fail", state="failed" if finished else "pending",
                       error=ATTACK if finished else None),
        ],
        compensations=[CompensationStatus(step=f"prep{ATTACK}", action="t.ok", state="failed", error=ATTACK)]
        if finished else [],
        error=ATTACK if finished else None,
        not_undone=[f"prep{ATTACK}"] if finished else [],
        escalated_to=["sre", ATTACK] if finished else [],
    )


async def test_every_data_string_the_notifier_sends_is_escaped(fake_slack) -> None:
    """Ids, params, args, reasons, votes, errors and group handles from policy: none is live."""
    fake_slack.add_usergroup("S0SRE", "sre", ["U0BOB"])
    notifier = SlackNotifier(AsyncWebClient(token=fake_slack.token, base_url=fake_slack.api_url))
    waiting = _hostile_status("waiting_approval", "waiting_approval")
    decisions = {"risky": waiting.step("risky").decision or {}}
    state = await notifier.sync(SlackSync(channel="#incidents", status=waiting, decisions=decisions))
    assert state.approval_ts, "the approval request was posted"
    final = _hostile_status("failed", "rejected")
    state = await notifier.sync(SlackSync(channel="#incidents", status=final, decisions=decisions, state=state))
    assert "final" in state.posted and "escalated:rollback" in state.posted and "escalated:risky" in state.posted

    texts = sent_texts(fake_slack)
    assert live_tokens(texts) == {"<!subteam^S0SRE>", "<@U0BOB>"}, "the bot's own mentions only"
    assert any(ESCAPED in t for t in texts)
    page = [m.text for m in fake_slack.messages if "rollback incomplete" in m.text]
    assert page and "<!subteam^S0SRE>" in page[0] and "@&lt;!channel&gt;" in page[0]


def test_the_block_kit_texts_escape_what_they_quote() -> None:
    status = _hostile_status("failed", "rejected")
    texts = [blocks.status_text(status), blocks.approval_text(status, "risky"), blocks.summary_text(status),
             blocks.decided_line(status.step("risky")), json.dumps(blocks.status_blocks(status)),
             json.dumps(blocks.approval_blocks(status, "risky", status.step("risky").decision or {}, 1))]
    assert live_tokens(texts) <= {"<@U0BOB>"}
    assert blocks.mention("U0BOB") == "<@U0BOB>"
    assert "<" not in blocks.mention("U0BOB\n") and "<" not in blocks.mention(f"U0BOB>{ATTACK}")


async def test_refusals_quote_the_users_text_escaped(dev_env, fake_slack: FakeSlack, tmp_path: Path) -> None:
    """A refused command echoes what it was sent (a playbook name, a run id, a param value)."""
    async with slack_stack(dev_env.client, fake_slack, tmp_path) as stack:
        for command in (f"run {ATTACK}", f"status {ATTACK}", f"cancel {ATTACK}", f"run hold service={ATTACK}",
                        f"run hold {ATTACK}"):
            body, key = stack.command(command.replace(ATTACK, json.dumps(ATTACK)), user=ALICE)
            assert (await stack.post(body)).status_code == 200
            answer = text_of(await stack.answers(key))
            assert live_tokens([answer]) == set(), (command, answer)
            assert "&lt;!channel&gt;" in answer, (command, answer)
