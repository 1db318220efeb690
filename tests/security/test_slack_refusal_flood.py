"""A workspace member's flood of refused Slack commands: each user's refusals, per rule, are recorded
one by one up to a budget a minute and the rest as that minute's count (bot/audit/refusals.py), as
the HTTP API's are, so a scripted Slack client can neither grow the audit trail without bound nor
turn another user's refusals, or its own by another rule, into a count."""

from __future__ import annotations

import collections
import time
import types
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import structlog.testing

from bot.audit import refusals as refusals_module
from bot.audit.events import EventKind
from bot.audit.recorder import RefusalBudget
from bot.audit.refusals import RefusalLogs
from bot.audit.store import SqliteAuditStore
from bot.slack.background import Background
from bot.slack import app as app_module
from bot.slack import commands
from tests.slack.fake_slack import FakeSlack
from tests.slack.support import ALICE, MALLORY, Stack, eventually, returns, slack_stack

MINUTE = [10]  # the budget's clock, in minutes


@pytest_asyncio.fixture
async def stack(dev_env, fake_slack: FakeSlack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Stack]:
    monkeypatch.setattr(refusals_module, "RefusalBudget",
                        lambda: RefusalBudget(per_minute=5, clock=lambda: MINUTE[0] * 60.0 + 1))
    async with slack_stack(dev_env.client, fake_slack, tmp_path) as s:
        yield s


def refused(stack: Stack) -> list:
    return [e for e in stack.audit.events()
            if e.kind == EventKind.access_refused or (e.kind == EventKind.slack_command
                                                      and e.details.get("outcome") == "refused")]


async def command(stack: Stack, text: str, user: str) -> None:
    body, _ = stack.command(text, user=user)
    response = await stack.post(body)
    assert response.status_code == 200, response.text


async def test_a_flood_of_refused_commands_is_recorded_up_to_the_budget_then_counted_per_user(stack: Stack) -> None:
    """Attack (red-team, stop 39): every refused command wrote its own audit event, with no bound.
    The webhook doors and the HTTP API had a budget; Slack users did not."""
    MINUTE[0] = 10
    for i in range(8):  # junk: no such playbook
        await command(stack, f"run no-such-playbook-{i}", MALLORY)
    await command(stack, "run no-such-playbook", ALICE)
    await command(stack, "run gated bad-param-without-equals", MALLORY)  # another rule: its own budget
    await eventually(lambda: _count(stack, 7), what="the refusals within budget recorded")

    MINUTE[0] = 11  # the next minute's first refusal tells the last one's count
    await command(stack, "run no-such-playbook-again", MALLORY)
    await eventually(lambda: _count(stack, 9), what="the count and the next refusal recorded")

    events = refused(stack)
    mallory = [e for e in events if e.actor == "slack:U0MALLORY"]
    counts = [e for e in mallory if e.kind == EventKind.access_refused]
    assert [(c.details["operation"], c.details["reason"][:15]) for c in counts] == [("slack:playbook", "3 more refusals")]
    assert len([e for e in mallory if e.kind == EventKind.slack_command]) == 5 + 1 + 1  # 5 junk, 1 params, 1 next minute
    assert len([e for e in events if e.actor == "slack:U0ALICE"]) == 1  # another's refusal is still its own record


async def _count(stack: Stack, n: int) -> bool:
    return len(refused(stack)) >= n


async def test_a_refused_command_is_recorded_even_if_the_store_fails_once(stack: Stack, monkeypatch) -> None:
    """Red-team (stop 40): the budget's one best-effort write replaced the retries a refused
    command's record had, so a store busy for a moment (a locked file, a failover) lost it."""
    MINUTE[0] = 20
    append, failed = stack.audit.append, set()

    def flaky(events, *args, **kwargs):  # each batch's first attempt fails
        ids = tuple(e.event_id for e in events)
        if ids not in failed:
            failed.add(ids)
            raise RuntimeError("database is locked")
        return append(events, *args, **kwargs)

    monkeypatch.setattr(stack.audit, "append", flaky)
    await command(stack, "run no-such-playbook-at-all", ALICE)
    await eventually(lambda: _count(stack, 1), timeout=10, what="the refusal recorded on a retry")
    assert [e.details["reason"][:16] for e in refused(stack)] == ["unknown playbook"]


async def test_a_refusal_the_store_never_takes_is_described_in_the_log(stack: Stack, monkeypatch) -> None:
    """Red-team (stop 40): a refused command whose record was given up said only its event id in
    the log: who was refused, and why, was nowhere."""
    MINUTE[0] = 30
    monkeypatch.setattr(commands, "RECORD_RETRIES", (None,))  # give up at once

    def down(events, *args, **kwargs):
        raise RuntimeError("audit store down")

    monkeypatch.setattr(stack.audit, "append", down)
    with structlog.testing.capture_logs() as logs:
        await command(stack, "run no-such-playbook-ever", ALICE)
        given_up = await eventually(lambda: returns([e for e in logs if e["event"] == "slack_command not recorded; given up"]),
                                    timeout=10, what="the give-up logged")
    assert given_up[0]["actor"] == "slack:U0ALICE" and "unknown playbook" in given_up[0]["reason"], given_up


class _Down:
    """A real store that refuses every append until `until` (time.monotonic): an outage."""

    def __init__(self, store: SqliteAuditStore, until: float) -> None:
        self.store, self.until = store, until

    def append(self, events, *args, **kwargs):
        if time.monotonic() < self.until:
            raise RuntimeError("could not connect to server (failover)")
        return self.store.append(events, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


async def test_a_flood_of_refused_commands_during_an_outage_crowds_out_no_one_elses_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Red-team (stop 40, round 2): during a store outage, one user's refused commands (each
    queued, and each retried on the records lane's two workers) filled that lane's queue, and
    another user's `started` record was dropped. Refusals now take a lane of their own, where one
    user may have only so many waiting: nobody else's records or refusals are crowded out. (The
    command's audit path alone.)"""
    monkeypatch.setattr(commands, "RECORD_RETRIES", (0.5, None))
    monkeypatch.setattr(refusals_module, "RefusalBudget", lambda: RefusalBudget(per_minute=60, clock=lambda: 600.0))
    real = SqliteAuditStore(tmp_path / "audit.db")
    store = _Down(real, time.monotonic() + 0.3)
    deps = types.SimpleNamespace(audit=store, refusals=RefusalLogs(store, "slack"), background=Background(),
                                 refusals_queued=collections.Counter())
    command = commands.PlaybookCommand.__new__(commands.PlaybookCommand)
    command.deps = deps
    rules = ["playbook", "params", "command", "start", "concurrency"]
    for i in range(1100):
        command._record({"user_id": "U0MALLORY", "trigger_id": f"junk-{i}", "text": "run nope"}, None, "refused",
                        reason="junk", rule=rules[i % len(rules)])
    command._record({"user_id": "U0ALICE", "trigger_id": "alice-1", "text": "run restart-db"}, "r-1", "started")
    command._record({"user_id": "U0BOB", "trigger_id": "bob-1", "text": "run nope"}, None, "refused", reason="no",
                    rule="playbook")
    await deps.background.drain(30)
    await deps.refusals.close()
    stored = {e.event_id for e in real.events()}
    assert "slack:alice-1:started" in stored, "another user's record was crowded out"
    assert "slack:bob-1:refused" in stored, "another user's refusal was crowded out"
    assert deps.background.records.dropped == 0 and deps.background.refusals.dropped == 0
    # Mallory's: as many as one user may have waiting (each within the budget), the rest turned away
    assert sum(1 for i in stored if i.startswith("slack:junk-")) == app_module.REFUSALS_QUEUED_EACH
    real.close()
