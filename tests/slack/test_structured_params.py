"""Array and object params in `/playbook` text: JSON kept whole by the word splitter, `a,b` for a
list of strings, and the same typing and errors as the CLI (signed payloads, real front door)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from bot.slack.commands import slack_run_id, split_args
from tests.slack.fake_slack import FakeSlack
from tests.slack.support import Stack, eventually, run_status, slack_stack, text_of

ROLL = """
name: roll
summary: Restart hosts one by one
params:
  hosts: {type: array, items: {type: string, pattern: "^[a-z0-9.-]+$"}, min_items: 1}
  target: {type: object, properties: {zone: {type: string, enum: [a, b]}}, required: false}
  ports: {type: array, items: {type: integer}, default: [80, 443]}
steps:
  - id: note
    action: core.log
    with: {message: "rolling {{ params.hosts | join(' then ') }} in {{ params.target.zone if params.target else 'any' }}"}
  - id: wait
    action: core.sleep
    with: {duration: 10m}
"""


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('run roll hosts=["a","b"] x=1', ["run", "roll", 'hosts=["a","b"]', "x=1"]),
        ("run roll hosts=“[“a”, “b”]”", None),  # Slack's curly quotes around the whole value: not JSON, shell rules
        ('run roll target={"zone": "a b"} reason="two words"', ["run", "roll", 'target={"zone": "a b"}', "reason=two words"]),
        ('run roll hosts=[“a”,“b”]', ["run", "roll", 'hosts=["a","b"]']),  # curly quotes inside JSON count
        ('run roll reason="see hosts=[1]" y=2', ["run", "roll", "reason=see hosts=[1]", "y=2"]),
        ("run roll hosts=a,b", ["run", "roll", "hosts=a,b"]),
        ("run roll hosts='[\"a\"]'", ["run", "roll", 'hosts=["a"]']),
        ('run roll hosts=["a"]x', ["run", "roll", "hosts=[a]x"]),  # JSON must end the word
        ('run roll "unbalanced', ["run", "roll", '"unbalanced']),
    ],
)
def test_split_args_keeps_json_values_whole(text: str, words: list[str] | None) -> None:
    if words is None:
        assert split_args(text)[2].startswith("hosts=")
    else:
        assert split_args(text) == words


@pytest_asyncio.fixture
async def stack(dev_env, fake_slack: FakeSlack, tmp_path: Path) -> AsyncIterator[Stack]:
    async with slack_stack(dev_env.client, fake_slack, tmp_path, playbooks={"roll": ROLL}) as s:
        yield s


async def test_run_with_json_array_and_object(stack: Stack) -> None:
    trigger = f"{int(time.time())}.7.{uuid.uuid4().hex[:20]}"
    body, key = stack.command('run roll hosts=["web-1","web-2"] target={"zone":"b"}', trigger_id=trigger)
    assert (await stack.post(body)).status_code == 200
    answer = text_of(await stack.answers(key))
    assert "Started" in answer, answer
    status = await eventually(lambda: run_status(stack, slack_run_id("roll", trigger)), what="run started")
    assert status.params == {"hosts": ["web-1", "web-2"], "target": {"zone": "b"}, "ports": [80, 443]}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("dry-run roll hosts=web-1,web-2", ["rolling web-1 then web-2 in any"]),
        ('dry-run roll hosts=["web-1"] target={"zone":"a"}', ["rolling web-1 in a"]),
        ("run roll hosts=[web-1]", ["'hosts'", "not valid JSON", "hosts='[\"a\",\"b\"]'"]),
        ("run roll hosts=web-1,WEB", ["param 'hosts[1]'", "does not match ^[a-z0-9.-]+$"]),
        ('run roll hosts=a target={"zone":"c"}', ["param 'target.zone'", "is not one of: a, b"]),
        ("run roll hosts=", ["param 'hosts'", "fewer than min_items (1)"]),
        ("list", ["*roll*", "hosts, target?, ports=[80,443]"]),
    ],
)
async def test_answers_and_refusals(stack: Stack, text: str, expected: list[str]) -> None:
    body, key = stack.command(text)
    assert (await stack.post(body)).status_code == 200
    answer = text_of(await stack.answers(key))
    for part in expected:
        assert part in answer, (part, answer)
    assert not await stack.settled_runs(), "nothing started"
