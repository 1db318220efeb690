"""RefusalLogs (bot/audit/refusals.py): one budgeted log per principal and rule, bounded per
principal, idle ones let go, and a door's own writer used for what is recorded one by one."""

from __future__ import annotations

import pytest

from bot.audit import refusals as refusals_module
from bot.audit.events import AuditEvent
from bot.audit.recorder import RefusalBudget, refusal
from bot.audit.refusals import RefusalLogs

NOW = [600.0]  # the budgets' clock


@pytest.fixture(autouse=True)
def clock(monkeypatch: pytest.MonkeyPatch) -> None:
    NOW[0] = 600.0
    monkeypatch.setattr(refusals_module, "RefusalBudget", lambda: RefusalBudget(per_minute=2, clock=lambda: NOW[0]))


def event(principal: str, n: int) -> AuditEvent:
    return refusal(principal, "vote", "refused", key=f"{principal}-{n}")


async def test_a_principals_rules_past_its_share_are_counted_together_not_anyone_elses() -> None:
    logs = RefusalLogs(None, "slack")
    for rule in range(refusals_module.RULES_EACH):
        assert await logs.record("slack:U1", f"rule-{rule}", event("slack:U1", rule))
    # past its share, U1's new rules share one log: two more one by one, then counted
    assert [await logs.record("slack:U1", f"more-{n}", event("slack:U1", 100 + n)) for n in range(3)] == [
        True, True, False]
    assert await logs.record("slack:U2", "more-0", event("slack:U2", 0)), "another's first refusal is its own"
    await logs.close()


async def test_past_the_bound_idle_logs_are_let_go_and_a_new_principal_keeps_its_rules_apart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Red-team (stop 40): the bound on logs was global and nothing was let go, so after enough
    refused principals over a process's life every new one's rules shared one log, and its junk
    turned the refusal that mattered into a count."""
    monkeypatch.setattr(refusals_module, "REFUSAL_LOGS", 10)
    logs = RefusalLogs(None, "slack")
    for user in range(10):
        await logs.record(f"slack:U{user}", "params", event(f"slack:U{user}", 0))
    NOW[0] += 60  # their minute is over, nothing left to tell
    junk = [await logs.record("slack:UNEW", "params", event("slack:UNEW", n)) for n in range(5)]
    assert junk == [True, True, False, False, False]
    assert await logs.record("slack:UNEW", "vote", event("slack:UNEW", 99)), "its vote refusal is its own record"
    assert len(logs._logs) == 2, "the idle logs were let go"
    await logs.close()


async def test_what_is_recorded_one_by_one_goes_through_the_doors_writer() -> None:
    written: list[str] = []

    async def write(e: AuditEvent) -> None:
        written.append(e.event_id)

    logs = RefusalLogs(None, "slack")
    for n in range(3):
        await logs.record("slack:U1", "start", event("slack:U1", n), write=write)
    assert written == [event("slack:U1", 0).event_id, event("slack:U1", 1).event_id]
    await logs.close()
