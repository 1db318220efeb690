"""The dry run's plan shows, and asks the policy about, the arguments a run would render."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bot.playbook.loader import LoadedPlaybook
from bot.policy.models import Decision
from bot.rehearse.plan import plan_lines
from tests.engine.support import playbook

HOSTILE = "<!channel> at <https://evil.example|https://deploy.internal>"


async def test_a_slack_text_is_shown_and_asked_about_as_the_run_would_post_it() -> None:
    """A run escapes what a `{{ }}` puts in a `slack.post` text (bot/playbook/templating.py
    MRKDWN_ARGS); the dry run showed it, and asked the policy about it, unescaped: another text
    than the one the run's gate is asked about."""
    pb = playbook("""
name: announce
params: {hosts: {type: array, items: {type: string}}}
steps:
  - id: tell
    action: slack.post
    impact: high
    with: {channel: "#ops", text: "<!here> draining {{ params.hosts }}"}
    compensate: {action: slack.post, with: {channel: "#ops", text: "undone {{ params.hosts }}"}}
""")
    asked: list[dict[str, Any]] = []

    async def decide(doc: dict[str, Any]) -> Decision:
        asked.append(doc)
        return Decision(allow=True, require_approval=False, reasons=[])

    loaded = LoadedPlaybook(pb, Path("announce.yaml"), pb.content_hash())
    lines = "\n".join(await plan_lines(loaded, {"hosts": [HOSTILE]}, "cli:tester", decide))
    [doc] = asked
    text = doc["step"]["with"]["text"]
    assert text.startswith("<!here> draining [") and "&lt;!channel&gt;" in text and "<!channel>" not in text
    assert "<!channel>" not in lines and lines.count("&lt;!channel&gt;") == 2  # the step's text and its undo's
