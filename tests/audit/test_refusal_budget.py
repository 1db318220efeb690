"""RefusalBudget: refusals of anonymous callers recorded one by one up to a rate, the rest counted."""

from __future__ import annotations

from bot.audit.recorder import RefusalBudget


def test_past_the_budget_refusals_are_counted_and_reported_in_the_next_minute() -> None:
    now = [600.0]  # minute 10
    budget = RefusalBudget(per_minute=3, clock=lambda: now[0])
    assert [budget.take() for _ in range(5)] == [(True, 0, None)] * 3 + [(False, 0, None)] * 2
    now[0] = 660.0  # minute 11: its first refusal reports minute 10's two unrecorded ones, once
    assert budget.take() == (True, 2, 10)
    assert budget.take() == (True, 0, None)
    now[0] = 1200.0  # a quiet minute later: nothing to report
    assert budget.take() == (True, 0, None)
