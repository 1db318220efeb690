"""History of a big foreach: 500 no-op items with 2 steps each (one with an undo), per concurrency.

Prints events, history bytes (JSON) and wall time against Temporal's limits (50k events, 50 MB):
the numbers behind FOREACH_STEP_BUDGET in bot/engine/foreach.py.

    .venv/bin/python -m bench.foreach_history [--items 500] [--concurrency 1 10]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from tests.conftest import binary
from tests.engine.support import Recorder, playbook, run_input, start, worker

PLAYBOOK = """
name: big-foreach
steps:
  - id: roll
    foreach: "{{{{ range({items}) | list }}}}"
    concurrency: {concurrency}
    steps:
      - {{id: a, action: t.ok, compensate: {{action: t.ok}}}}
      - {{id: b, action: t.ok}}
"""


async def main(items: int, concurrencies: list[int]) -> None:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(binary("temporal")), data_converter=pydantic_data_converter,
        dev_server_extra_args=["--log-level", "error"],
    )
    print("| items | concurrency | state | events | history MB | seconds |\n|---|---|---|---|---|---|")
    try:
        for concurrency in concurrencies:
            rec = Recorder()
            began = time.monotonic()
            async with worker(env.client, rec) as w:
                handle = await start(env.client, w, run_input(playbook(PLAYBOOK.format(items=items, concurrency=concurrency))))
                status = await handle.result()
                history = await handle.fetch_history()
            took = time.monotonic() - began
            size = len(history.to_json()) / 1e6
            print(f"| {items} | {concurrency} | {status.state} | {len(history.events)} | {size:.1f} | {took:.0f} |")
    finally:
        await env.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=500)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 10])
    args = parser.parse_args()
    asyncio.run(main(args.items, args.concurrency))
