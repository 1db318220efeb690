"""Engine overhead: a 5-step no-op playbook vs a hand-written 5-activity workflow.

Same dev server, same worker, runs interleaved and spaced the same way (back-to-back runs on the
dev server slow down), durations from Temporal's own start and close times.

    .venv/bin/python -m bench.overhead [--runs 20] [--gap 0.3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import uuid
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker

from bench.baseline import BaselineFiveSteps, noop
from bot.actions.base import ActionContext, ActionParams, action
from bot.devstack import DevServer, free_port
from bot.engine.state import RunInput, TriggerContext
from bot.engine.worker import make_worker, worker_deps
from bot.engine.workflow import PlaybookRun
from bot.playbook.model import Playbook
from bot.settings import Settings

STEPS = 5
POLICIES = Path(__file__).resolve().parent.parent / "policies"


class NoopParams(ActionParams):
    pass


class BenchActions:
    @action("bench.noop", NoopParams)
    async def noop(self, params: NoopParams, ctx: ActionContext) -> dict[str, Any]:
        """Does nothing: what is measured is the engine around it."""
        return {}


def noop_playbook() -> Playbook:
    return Playbook.model_validate(
        {"name": "bench-noop", "steps": [{"id": f"s{i}", "action": "bench.noop"} for i in range(STEPS)]}
    )


async def duration_ms(client: Client, workflow_id: str) -> float:
    desc = await client.get_workflow_handle(workflow_id).describe()
    assert desc.start_time and desc.close_time
    return (desc.close_time - desc.start_time).total_seconds() * 1000


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def main(runs: int, gap: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = DevServer(Path(tmp), port=free_port(), ui_port=free_port())
        await server.start()
        try:
            client = await Client.connect(server.address, data_converter=pydantic_data_converter)
            queue = f"bench-{uuid.uuid4()}"
            settings = Settings(data_dir=Path(tmp) / "data", policies_dir=POLICIES)
            async with worker_deps(settings, extra_providers=[BenchActions()]) as deps:
                worker = make_worker(client, queue, deps.activities)
                baseline_worker = Worker(client, task_queue=queue + "-base", workflows=[BaselineFiveSteps], activities=[noop])
                async with worker, baseline_worker:
                    pb = noop_playbook()
                    run_input = RunInput(playbook=pb, playbook_hash=pb.content_hash(), trigger=TriggerContext(requested_by="bench"))
                    engine: list[float] = []
                    base: list[float] = []
                    for i in range(runs + 2):  # two warm-up rounds, discarded
                        wid = f"bench-engine-{uuid.uuid4()}"
                        status = await client.execute_workflow(PlaybookRun.run, run_input, id=wid, task_queue=queue)
                        assert status.state == "completed", status
                        await asyncio.sleep(gap)
                        bid = f"bench-base-{uuid.uuid4()}"
                        await client.execute_workflow(BaselineFiveSteps.run, STEPS, id=bid, task_queue=queue + "-base")
                        await asyncio.sleep(gap)
                        if i >= 2:
                            engine.append(await duration_ms(client, wid))
                            base.append(await duration_ms(client, bid))
        finally:
            await server.stop()
    rows = [
        ("hand-written workflow (baseline)", base),
        ("PlaybookRun, 5-step no-op playbook", engine),
    ]
    print(f"\nEngine overhead: {runs} runs each, interleaved, {gap}s apart, Temporal start->close time\n")
    print(f"{'':38} {'median ms':>10} {'p95 ms':>10} {'ratio (median)':>15} {'ratio (p95)':>12}")
    for name, values in rows:
        print(
            f"{name:38} {statistics.median(values):10.1f} {pct(values, 0.95):10.1f} "
            f"{statistics.median(values) / statistics.median(base):15.2f} {pct(values, 0.95) / pct(base, 0.95):12.2f}"
        )
    print("\ngoal: ratio (median) <= 1.10")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--gap", type=float, default=0.5)
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.gap))
