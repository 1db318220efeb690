"""bot/urgent.py: work that can wait gives way to work someone is waiting on, for a bounded while."""

from __future__ import annotations

import asyncio
import time

import pytest

from bot import urgent as urgency
from bot.urgent import busy, give_way, urgent


async def test_an_idle_process_gives_way_to_nothing() -> None:
    began = time.monotonic()
    await give_way(5.0)
    assert not busy() and time.monotonic() - began < 0.05


async def test_what_gives_way_goes_once_the_urgent_work_has_ended() -> None:

    async def waiting() -> float:
        await give_way(5.0)
        return time.monotonic()

    with urgent():
        assert busy()
        waiter = asyncio.create_task(waiting())
        await asyncio.sleep(0.2)
        assert not waiter.done(), "it waited while the urgent work ran"
        ended = time.monotonic()
    went = await asyncio.wait_for(waiter, 2.0)
    assert not busy() and urgency.QUIET <= went - ended < 0.5


async def test_a_moment_without_urgent_work_is_not_the_end_of_a_burst() -> None:
    async def burst() -> None:  # one piece after another, a short gap between them
        for _ in range(5):
            with urgent():
                await asyncio.sleep(0.03)
            await asyncio.sleep(0.01)

    task = asyncio.create_task(burst())
    await asyncio.sleep(0.01)
    await give_way(5.0)
    assert task.done(), "it went only once the burst was over"


async def test_urgent_work_that_never_ends_holds_nothing_past_the_bound() -> None:
    with urgent():
        began = time.monotonic()
        await give_way(0.2)
        assert 0.2 <= time.monotonic() - began < 0.5


async def test_long_running_work_stops_holding_anything_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rollout being watched for ten minutes must not hold every Slack update back meanwhile."""
    monkeypatch.setattr(urgency, "LONG_AFTER", 0.1)
    with urgent():
        await asyncio.sleep(0.15)
        assert not busy()
        began = time.monotonic()
        await give_way(5.0)
        assert time.monotonic() - began < 0.2
    assert not busy()
