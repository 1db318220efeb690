"""What the approval buttons' handler reads from a click (bot/slack/approvals.py)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from bot.slack.approvals import shown_at


def test_a_clicks_message_time_is_slacks_ts_of_the_message() -> None:
    """Slack's `message_ts` is the Unix time the message was posted (with a sequence after the
    point): what a button without an execution is checked against (runs.execution_of)."""
    click = {"container": {"message_ts": "1764900000.123456"}, "message": {"ts": "1.000001"}}
    assert shown_at(click) == datetime.fromtimestamp(1764900000.123456, timezone.utc)
    assert shown_at({"message": {"ts": "1764900000.000200"}}) == datetime.fromtimestamp(1764900000.0002, timezone.utc)


@pytest.mark.parametrize("ts", [None, "", "soon", "nan", "inf", "-1", "0", "1e40", 1764900000])
def test_a_click_without_a_readable_message_time_has_none(ts: object) -> None:
    """None: no check by time (a number, though Slack sends a string, is read as the time)."""
    expected = datetime.fromtimestamp(1764900000, timezone.utc) if ts == 1764900000 else None
    assert shown_at({"container": {"message_ts": ts}}) == expected
