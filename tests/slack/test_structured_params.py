"""Array and object params in `/playbook` text: JSON kept whole by the word splitter, `a,b` for a
list of strings, and the same typing and errors as the CLI (signed payloads, real front door)."""

from __future__ import annotations

import random
import shlex
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from bot.slack import commands
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


def _split_by_reparsing(text: str) -> list[str]:
    """The splitter as it was: every `key=[` candidate split the whole text before it again.
    Quadratic, so only a reference for short texts."""
    text = text.translate(commands._SMART_QUOTES)
    words: list[str] = []
    pos = 0
    try:
        for match in commands._JSON_ASSIGNMENT.finditer(text):
            if match.start() < pos:
                continue
            try:
                before = shlex.split(text[pos : match.start()])
            except ValueError:
                continue
            try:
                _, end = commands._JSON.raw_decode(text, match.end())
            except (ValueError, RecursionError):
                continue
            if end < len(text) and not text[end].isspace():
                continue
            words += [*before, text[match.start() : end]]
            pos = end
        return words + shlex.split(text[pos:])
    except ValueError:
        return text.split()


def test_split_args_reads_quotes_as_splitting_the_text_again_would() -> None:
    """The same words as splitting the text before each candidate again, on random short texts
    made of quotes, escapes and JSON pieces."""
    pieces = ["a", " ", '"', "'", "\\", "k=", "h=[", "[", "]", "{", "}", '"x"', ",", "1", ":", "\n", "x=[1]", 'y={"a":1}', "“", "’"]
    rng = random.Random(17)
    for _ in range(5000):
        text = "run pb " + "".join(rng.choice(pieces) for _ in range(rng.randint(0, 25)))
        assert split_args(text) == _split_by_reparsing(text), repr(text)


@pytest.mark.parametrize("text", ['help "' + " a=[" * 3000, "help " + " a=[1]x" * 3000],
                         ids=["candidates behind an open quote", "candidates that are not words"])
def test_a_long_command_text_is_split_reading_each_character_about_once(text: str, monkeypatch) -> None:
    """One command of 12-18 KB of `a=[` words took seconds of the front door's event loop (every
    request's ack waited): each candidate split the growing text before it again. Counted, not
    timed: what the shell splitter is handed stays about the text's length."""
    handed: list[int] = []
    real = shlex.split
    monkeypatch.setattr(shlex, "split", lambda s, *a, **k: (handed.append(len(s)), real(s, *a, **k))[1])
    split_args(text)
    assert sum(handed) <= 2 * len(text), f"{sum(handed)} characters handed to shlex for a {len(text)}-character text"


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
