"""Floors: hand-written workflows with five no-op activities (bench/overhead.py and others), and
with one no-op activity then a wait for a signal (bench/approval_rss.py)."""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow


@activity.defn(name="baseline.noop")
async def noop(step: str) -> str:
    return step


@workflow.defn(name="BaselineFiveSteps")
class BaselineFiveSteps:
    @workflow.run
    async def run(self, steps: int) -> list[str]:
        done = []
        for i in range(steps):
            done.append(
                await workflow.execute_activity(noop, f"s{i}", start_to_close_timeout=timedelta(minutes=5))
            )
        return done


@workflow.defn(name="BaselineAwaitSignal")
class BaselineAwaitSignal:
    """A run waiting on approval at its least: one activity done, then a signal or a deadline (the
    bot's approval wait has a timer too)."""

    def __init__(self) -> None:
        self._waiting = False
        self._approved = False

    @workflow.run
    async def run(self, deadline_s: int) -> bool:
        await workflow.execute_activity(noop, "s0", start_to_close_timeout=timedelta(minutes=5))
        self._waiting = True
        try:
            await workflow.wait_condition(lambda: self._approved, timeout=timedelta(seconds=deadline_s))
        except TimeoutError:
            return False
        return True

    @workflow.signal
    def approve(self) -> None:
        self._approved = True

    @workflow.query
    def waiting(self) -> bool:
        return self._waiting and not self._approved
