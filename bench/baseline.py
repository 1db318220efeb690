"""The floor for bench/overhead.py: a hand-written workflow with five no-op activities."""

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
