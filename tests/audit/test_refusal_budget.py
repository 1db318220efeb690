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


def test_a_minutes_count_is_settled_once_the_minute_is_over_and_told_once() -> None:
    now = [600.0]
    budget = RefusalBudget(per_minute=1, clock=lambda: now[0])
    assert budget.settle() is None  # nothing counted
    assert [budget.take()[0] for _ in range(3)] == [True, False, False]
    now[0] = 659.0
    assert budget.settle() is None and budget.seconds_left() == 1.0  # the minute is still under way
    now[0] = 661.0
    assert budget.settle() == (2, 10)
    assert budget.settle() is None
    assert budget.take() == (True, 0, None)  # the next minute's first refusal does not tell it again


def test_a_stopping_door_settles_the_minute_under_way() -> None:
    now = [600.0]
    budget = RefusalBudget(per_minute=1, clock=lambda: now[0])
    for _ in range(4):
        budget.take()
    assert budget.settle(final=True) == (3, 10)
    assert budget.settle(final=True) is None
