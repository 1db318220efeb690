"""Attacks through the data templates read (red-team, stop 48): a Slack user's params and a probed
target's answer. Each failed before its fix.

1. `slack.post` text escaped only the strings a `{{ }}` gave: a list or a mapping went in as
   Python prints it, the strings inside it unescaped, so `<!channel>` in a list param (typed by
   any workspace member) or in a target's JSON notified the channel and `<https://evil|https://
   deploy.internal>` showed a link under another name, as the bot.
2. An action's output nested deeper than the workflow's decoder reads (200 levels: 440 bytes of
   `[[[...]]]` from any target an `http.request` probes) left the run stuck: every workflow task
   failed decoding the result, the step never failed, nothing was rolled back, the run never ended.
"""

from __future__ import annotations

import asyncio
from typing import Any

from temporalio import activity

from bot.actions.activities import OUTPUT_MAX_DEPTH, build_activities
from bot.actions.base import ActionContext, ActionInput, ActionParams, ActionResult, action
from bot.actions.secrets import SecretStore
from tests.engine.support import Recorder, playbook, run_input, start, worker

HOSTILE = "<!channel> see <https://evil.example|https://deploy.internal>"


async def test_slack_post_text_escapes_data_inside_a_list_or_a_mapping(dev_env) -> None:
    posted: list[str] = []

    @activity.defn(name="slack.post")
    async def slack_post(inp: ActionInput) -> ActionResult:
        posted.append(inp.params["text"])
        return ActionResult(output={"ts": "1.2"})

    @activity.defn(name="t.health")
    async def health(inp: ActionInput) -> ActionResult:
        return ActionResult(output={"json": {"status": "degraded", "detail": HOSTILE}})  # the target's answer

    pb = playbook("""
name: tell-hosts
params: {hosts: {type: array, items: {type: string}}}
steps:
  - {id: health, action: t.health}
  - id: tell
    action: slack.post
    with:
      channel: "#ops"
      text: "<!here> draining {{ params.hosts }}; health said {{ steps.health.output.json }}"
""")
    async with worker(dev_env.client, Recorder(), extra=[slack_post, health]) as w:
        # `/playbook run tell-hosts hosts=["<!channel> ..."]`, from any member of the workspace
        status = await (await start(dev_env.client, w, run_input(pb, {"hosts": [HOSTILE]}))).result()
    assert status.state == "completed"
    [text] = posted
    assert text.startswith("<!here> draining [")  # the author's own markup stays live
    assert "<!channel>" not in text and "<https://evil.example|" not in text
    assert text.count("&lt;!channel&gt;") == 2


class NoParams(ActionParams):
    pass


class Probe:
    """An action whose target answers with data nested past what a run can read back."""

    @action("test.probe", NoParams)
    async def probe(self, params: NoParams, ctx: ActionContext) -> dict[str, Any]:
        value: Any = 1
        for _ in range(220):
            value = [value]
        return {"json": value}


async def test_an_output_nested_past_what_a_run_reads_fails_its_step_and_the_run_rolls_back(dev_env) -> None:
    pb = playbook("""
name: probe
steps:
  - {id: silence, action: t.ok, compensate: {action: t.ok}}
  - {id: check, action: test.probe}
""")
    rec = Recorder()
    probe = build_activities([Probe()], SecretStore(environ={}))
    async with worker(dev_env.client, rec, extra=probe) as w:
        handle = await start(dev_env.client, w, run_input(pb))
        try:
            status = await asyncio.wait_for(handle.result(), timeout=30)
        except asyncio.TimeoutError:
            await handle.terminate("test cleanup: the run was stuck")
            raise AssertionError("the run never ended: its step's result could not be decoded") from None
    assert status.state == "compensated"
    check = status.step("check")
    assert check.state == "failed" and f"more than {OUTPUT_MAX_DEPTH} levels deep" in (check.error or "")
    assert [(step, undo) for step, undo, _ in rec.calls] == [("silence", False), ("silence", True)]
