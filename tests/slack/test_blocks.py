"""Block Kit rendering: valid shapes, Slack's limits, buttons only while a step waits.

Slack's limits come from tests/slack/slack_limits.py, written from Slack's documentation; the
module under test has its own copies, and raising one of those must fail here."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from bot.engine.state import CompensationStatus, RunStatus, StepStatus, Vote
from bot.slack.blocks import (
    APPROVE_ACTION,
    REJECT_ACTION,
    approval_blocks,
    approval_text,
    short_duration,
    status_blocks,
    status_text,
    summary_text,
)
from tests.slack.slack_limits import HEADER_TEXT_MAX, MESSAGE_BLOCKS_MAX, SECTION_TEXT_MAX, block_errors

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
DECISION = {
    "allow": True,
    "require_approval": True,
    "min_approvals": 2,
    "approver_groups": ["sre-oncall"],
    "reasons": ["production restarts need two SREs"],
}


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def run(**changes: Any) -> RunStatus:
    status = RunStatus(
        run_id="run-42",
        playbook="restart-service",
        playbook_hash="abc",
        state="waiting_approval",
        requested_by="U0REQ",
        trigger="slack",
        params={"service": "api", "environment": "production"},
        started_at=T0,
        steps=[
            StepStatus(
                id="silence",
                action="alertmanager.silence",
                state="succeeded",
                attempts=1,
                started_at=at(0),
                finished_at=at(0.4),
            ),
            StepStatus(
                id="restart",
                action="http.request",
                impact="high",
                state="waiting_approval",
                args={"method": "POST", "url": "https://deploy.internal/v1/services/api/restart"},
                decision=DECISION,
                approvals=[Vote(user="U0DANA", vote="approve", at=at(5))],
                approval_deadline=at(900),
            ),
            StepStatus(id="health", action="http.request", group="verify"),
        ],
    )
    return status.model_copy(update=changes)


def texts(blocks: list[dict[str, Any]]) -> list[str]:
    out = []
    for block in blocks:
        if "text" in block:
            out.append(block["text"]["text"])
        for element in block.get("elements", []):
            if element.get("type") == "mrkdwn":
                out.append(element["text"])
    return out


def assert_valid(blocks: list[dict[str, Any]]) -> None:
    """Slack would take these blocks, and they use only the shapes the bot means to send."""
    assert block_errors(blocks) == []
    assert blocks, "a message with blocks has at least one"
    for block in blocks:
        assert block["type"] in {"header", "section", "context", "actions", "divider"}
        if block["type"] == "section":
            assert block["text"]["type"] == "mrkdwn"
    json.dumps(blocks)  # serialisable as Slack gets it


def test_status_blocks_checklist() -> None:
    blocks = status_blocks(run())

    assert_valid(blocks)
    assert blocks[0]["type"] == "header"
    assert "restart-service" in blocks[0]["text"]["text"] and "waiting approval" in blocks[0]["text"]["text"]
    body = "\n".join(texts(blocks))
    assert "`run-42`" in body and "<@U0REQ>" in body
    assert ":white_check_mark: *silence* `alertmanager.silence` succeeded · 400ms" in body
    assert ":raised_hand: *restart*" in body
    assert "verify › :white_circle: *health*" in body


def test_status_blocks_show_attempts_errors_and_rollback() -> None:
    status = run(
        state="failed",
        finished_at=at(75),
        error="step restart failed",
        not_undone=["silence"],
        steps=[
            StepStatus(id="silence", action="alertmanager.silence", state="compensation_failed", attempts=1),
            StepStatus(
                id="restart",
                action="http.request",
                state="failed",
                attempts=3,
                started_at=at(1),
                finished_at=at(13.25),
                error="http.request: POST https://x returned 503 <html>",
            ),
        ],
        compensations=[
            CompensationStatus(
                step="silence", action="alertmanager.expire_silence", state="failed", attempts=3, error="boom"
            )
        ],
    )
    blocks = status_blocks(status)

    assert_valid(blocks)
    body = "\n".join(texts(blocks))
    assert "3 attempts · 12.2s" in body
    assert "returned 503 &lt;html&gt;" in body  # escaped, never read as a Slack link
    assert "*Rollback*" in body and "undo *silence*" in body
    assert "Could not undo:* *silence*" in body
    assert "took 1m15s" in body


def test_many_steps_stay_within_limits() -> None:
    steps = [
        StepStatus(id=f"step-{i}", action="core.log", state="failed", error="e" * 1000) for i in range(500)
    ]
    blocks = status_blocks(run(steps=steps))

    assert_valid(blocks)
    assert len(blocks) == MESSAGE_BLOCKS_MAX, "as much as Slack takes is shown"
    assert blocks[-1]["type"] == "context" and "more blocks not shown" in blocks[-1]["elements"][0]["text"]
    assert max(len(b["text"]["text"]) for b in blocks if b["type"] == "section") > SECTION_TEXT_MAX - 400, (
        "the checklist is packed close to the limit, not spread thin"
    )


def test_long_names_stay_within_the_header_limit() -> None:
    blocks = status_blocks(run(playbook="p" * 400, state="compensation_failed"))

    assert_valid(blocks)
    header = blocks[0]["text"]["text"]
    assert len(header) == HEADER_TEXT_MAX and header.endswith("…")


def test_status_text() -> None:
    assert status_text(run()) == (
        "restart-service run run-42: waiting approval (1/3 steps done), waiting for approval of restart"
    )


def test_approval_request_shows_what_why_quorum_deadline_and_buttons() -> None:
    blocks = approval_blocks(run(), "restart", DECISION, needed=2)

    assert_valid(blocks)
    body = "\n".join(texts(blocks))
    assert "`http.request`" in body
    assert '```\n{\n  "method": "POST",\n  "url": "https://deploy.internal/v1/services/api/restart"\n}\n```' in body
    assert "• production restarts need two SREs" in body
    assert "1/2 approvals: <@U0DANA>" in body
    assert "approvers: @sre-oncall" in body
    assert f"<!date^{int(at(900).timestamp())}^" in body
    actions = [b for b in blocks if b["type"] == "actions"]
    assert len(actions) == 1
    buttons = actions[0]["elements"]
    assert [b["action_id"] for b in buttons] == [APPROVE_ACTION, REJECT_ACTION]
    assert [b["style"] for b in buttons] == ["primary", "danger"]
    for button in buttons:
        assert json.loads(button["value"]) == {"run_id": "run-42", "step_id": "restart"}
    assert approval_text(run(), "restart").startswith("Approval needed: restart (http.request)")


def test_buttons_name_the_execution_the_request_was_drawn_for() -> None:
    """A status from a worker that fills `execution`: every button of the request carries it, so
    the click is signed for this run and not a later one under the same run id."""
    status = run()
    status.execution = "0193a1b2-0000-7000-8000-00000000000a"
    blocks = approval_blocks(status, "restart", DECISION, needed=2)
    (actions,) = [b for b in blocks if b["type"] == "actions"]
    for button in actions["elements"]:
        assert json.loads(button["value"]) == {"run_id": "run-42", "step_id": "restart", "execution": status.execution}


def test_long_args_are_truncated_inside_the_code_block() -> None:
    status = run()
    status.step("restart").args = {"body": "<&>" * 5000}
    blocks = approval_blocks(status, "restart", DECISION, needed=2)

    assert_valid(blocks)
    args = next(t for t in texts(blocks) if t.startswith("*Will run:*"))
    assert SECTION_TEXT_MAX - 50 < len(args) <= SECTION_TEXT_MAX
    assert args.endswith("… (truncated)```")
    assert args.count("```") == 2
    assert re.search(r"&[a-z]*$", args[: -len("\n… (truncated)```")]) is None  # no half entity


@pytest.mark.parametrize(
    ("state", "votes", "expected"),
    [
        ("running", [Vote(user="U0DANA", vote="approve", at=T0), Vote(user="U0EVE", vote="approve", at=T0)],
         ":white_check_mark: Approved by <@U0DANA>, <@U0EVE>"),
        (
            "rejected",
            [Vote(user="U0EVE", vote="reject", at=T0, reason="not now")],
            ":no_entry_sign: Rejected by <@U0EVE>: not now",
        ),
        ("rejected", [], ":no_entry_sign: Rejected: approval timed out"),
    ],
)
def test_decided_approval_has_no_buttons(state: str, votes: list[Vote], expected: str) -> None:
    status = run()
    step = status.step("restart")
    step.state, step.approvals = state, votes  # type: ignore[assignment]
    blocks = approval_blocks(status, "restart", DECISION, needed=2)

    assert_valid(blocks)
    assert not [b for b in blocks if b["type"] == "actions"]
    assert texts(blocks)[-1] == expected


def test_cli_user_is_not_a_mention() -> None:
    blocks = status_blocks(run(requested_by="cli:alice"))
    assert "`cli:alice`" in "\n".join(texts(blocks))


def test_summary_text() -> None:
    done = run(state="completed", finished_at=at(65), steps=[StepStatus(id="a", action="core.log", state="succeeded")])
    assert summary_text(done) == ":white_check_mark: *restart-service* completed in 1m05s: 1 succeeded."

    failed = run(
        state="failed", finished_at=at(3), error="restart failed", not_undone=["silence"],
        compensations=[CompensationStatus(step="scale", action="x", state="succeeded")],
    )
    text = summary_text(failed)
    assert "*Error:* restart failed" in text
    assert "Rolled back: scale." in text
    assert ":rotating_light: *Could not undo:* *silence*" in text


@pytest.mark.parametrize(("seconds", "text"), [(0.25, "250ms"), (3.25, "3.2s"), (125, "2m05s"), (3720, "1h02m")])
def test_short_duration(seconds: float, text: str) -> None:
    assert short_duration(timedelta(seconds=seconds)) == text
