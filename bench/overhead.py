"""Engine overhead: a 5-step no-op playbook vs a hand-written 5-activity workflow, median run time.

Both workers are their own processes on one Temporal dev server process: `playbook-bot worker`
runs the playbook (five `core.log` steps, the cheapest shipped action, under the shipped policy),
a plain temporalio worker (bench/workers.py) runs BaselineFiveSteps. Runs alternate one at a time,
the same gap apart (back-to-back runs on the dev server slow down); each duration is Temporal's own
start-to-close time from the run's history. Goal: median bot / floor <= 1.10.

    .venv/bin/python -m bench.overhead [--runs 20] [--gap 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import uuid
from pathlib import Path

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from bench import results
from bench.baseline import BaselineFiveSteps
from bench.topology import ENVELOPE_KEY, ROOT, base_env, load_average, run, topology
from bot.engine.runs import start_run
from bot.engine.state import TriggerContext
from bot.identity.principals import Actor
from bot.identity.proofs import Keyring
from bot.playbook.loader import load_directory

GOAL = "<= 1.1"
STEPS = 5
PLAYBOOK = "name: bench-noop\nsteps:\n" + "".join(
    f"  - {{id: s{i}, action: core.log, with: {{message: step {i}}}}}\n" for i in range(STEPS)
)


async def duration_ms(client: Client, workflow_id: str) -> float:
    desc = await client.get_workflow_handle(workflow_id).describe()
    assert desc.start_time and desc.close_time
    return (desc.close_time - desc.start_time).total_seconds() * 1000


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def main(runs: int, gap: float) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "playbooks").mkdir()
        (tmp / "playbooks" / "noop.yaml").write_text(PLAYBOOK)
        queue, floor_queue = f"overhead-{uuid.uuid4()}", f"overhead-floor-{uuid.uuid4()}"
        async with topology(tmp) as topo:
            server = await topo.temporal()
            env = base_env(temporal_address=server.address, task_queue=queue, data_dir=tmp / "data",
                           playbooks_dir=tmp / "playbooks", policies_dir=ROOT / "policies", envelope_key=ENVELOPE_KEY)
            await topo.worker(env)
            await topo.floor_worker(server.address, floor_queue)
            client = await Client.connect(server.address, data_converter=pydantic_data_converter)
            loaded = load_directory(tmp / "playbooks").get("bench-noop")
            actor = Actor("api:bench", "bench", (), "api")  # as the API front door signs it
            keyring = Keyring(ENVELOPE_KEY.encode())
            bot: list[float] = []
            floor: list[float] = []
            for i in range(runs + 2):  # two warm-up rounds, discarded
                trigger = TriggerContext(kind="api", requested_by=actor.principal)
                handle = await start_run(client, queue, loaded, {}, trigger, actor=actor, keyring=keyring)
                status = await handle.result()
                assert status.state == "completed", status
                await asyncio.sleep(gap)
                floor_id = f"overhead-floor-{uuid.uuid4()}"
                await client.execute_workflow(BaselineFiveSteps.run, STEPS, id=floor_id, task_queue=floor_queue)
                await asyncio.sleep(gap)
                if i >= 2:
                    bot.append(await duration_ms(client, handle.id))
                    floor.append(await duration_ms(client, floor_id))
            print(topo.describe())
            topo.note(f"runs started and awaited from the bench process, one at a time, {gap}s apart")
            layout = topo.layout()
    print(f"\nEngine overhead: {runs} runs each, alternating, {gap}s apart, Temporal start->close time, "
          f"load average {load_average()}\n")
    print(f"{'':44} {'median ms':>10} {'p95 ms':>10} {'ratio (median)':>15} {'ratio (p95)':>12}")
    for name, values in (("floor: hand-written 5-activity workflow", floor),
                         (f"bot: {STEPS}-step core.log playbook", bot)):
        print(f"{name:44} {statistics.median(values):10.1f} {pct(values, 0.95):10.1f} "
              f"{statistics.median(values) / statistics.median(floor):15.2f} {pct(values, 0.95) / pct(floor, 0.95):12.2f}")
    ratio = statistics.median(bot) / statistics.median(floor)
    print(f"\ngoal: ratio (median) {GOAL}: {ratio:.2f} -> {'met' if results.met(ratio, GOAL) else 'NOT met'}")
    fig = results.figure(f"engine overhead, {STEPS}-step no-op playbook vs 5-activity workflow, median run",
                         statistics.median(bot), statistics.median(floor), GOAL, "ms", layout)
    results.record(fig, samples={"run durations (engine overhead)": {"bot": bot, "floor (hand-written)": floor}})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--gap", type=float, default=0.5)
    args = parser.parse_args()
    run(main(args.runs, args.gap))
