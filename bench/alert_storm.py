"""Alert storm: 1,000 distinct alerts, each delivered three times, concurrently.

The bot's /alertmanager (real HTTP, auth, parsing, routing, start policy, audit, one run per
episode) against a floor on the same Temporal server in the same run: bare client starts of the
same 3x duplicated ids with an attach-to-existing policy, with a worker running one-activity
workflows as they come on both sides. Verifies exactly 1,000 runs: none lost, none twice.

    .venv/bin/python -m bench.alert_storm [--alerts 1000] [--concurrency 50] [--audit postgresql]

`--audit postgresql` runs the bot side on a PostgreSQL audit store (Debian's server, started in a
temporary directory with durable settings): the episode claims and the chain on the shared store
that several front doors would use (issue 14).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import aiohttp
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.contrib.pydantic import pydantic_data_converter

from bench.baseline import BaselineFiveSteps
from bench.workers import worker_process
from bot import logging
from bot.devstack import DevServer, free_port
from bot.engine.worker import worker_deps
from bot.playbook.loader import load_directory
from bot.server import Readiness, create_app
from bot.services import _Http, front_door
from bot.settings import Settings

TOKEN = "bench-token"
ROOT = Path(__file__).resolve().parent.parent
PLAYBOOK = """
name: storm
params: {instance: {type: string}}
triggers:
  alertmanager:
    - matchers: ['alertname="Storm"']
      params: {instance: "{{ alert.labels.instance }}"}
steps:
  - {id: note, action: core.log, with: {message: "storm {{ params.instance }}"}}
"""


def deliveries(alerts: int) -> list[dict[str, Any]]:
    """Each alert three times, shuffled: repeats and HA peers arrive in any order."""
    batch = []
    for i in range(alerts):
        alert = {
            "status": "firing",
            "labels": {"alertname": "Storm", "instance": f"host-{i}"},
            "annotations": {},
            "startsAt": "2026-11-22T03:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "",
            "fingerprint": f"{i:016x}",
        }
        body = {
            "version": "4", "groupKey": f"{{}}:{i}", "truncatedAlerts": 0, "status": "firing", "receiver": "bot",
            "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "", "alerts": [alert],
        }
        batch += [body] * 3
    random.Random(7).shuffle(batch)
    return batch


async def bounded(concurrency: int, jobs: list[Any], work: Any) -> list[Any]:
    queue: asyncio.Queue[Any] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    results: list[Any] = []

    async def runner() -> None:
        while not queue.empty():
            results.append(await work(queue.get_nowait()))

    await asyncio.gather(*(runner() for _ in range(concurrency)))
    return results


async def bot_side(
    client: Client, address: str, tmp: Path, alerts: int, concurrency: int, audit_url: str | None = None
) -> tuple[float, collections.Counter]:
    (tmp / "playbooks").mkdir()
    (tmp / "playbooks" / "storm.yaml").write_text(PLAYBOOK)
    port = free_port()
    settings = Settings(
        data_dir=tmp / "data", playbooks_dir=tmp / "playbooks", policies_dir=ROOT / "policies", http_port=port,
        alertmanager_token=TOKEN, task_queue=f"storm-{uuid.uuid4()}", audit_url=audit_url,
    )
    catalog = load_directory(settings.playbooks_dir)
    env = {
        "PLAYBOOK_BOT_DATA_DIR": str(settings.data_dir), "PLAYBOOK_BOT_POLICIES_DIR": str(settings.policies_dir),
        "PLAYBOOK_BOT_TASK_QUEUE": settings.task_queue, "PLAYBOOK_BOT_LOG_LEVEL": "WARNING",
        **({"PLAYBOOK_BOT_AUDIT_URL": audit_url} if audit_url else {}),
    }
    async with worker_deps(settings) as deps, worker_process(address, settings.task_queue, "bot", env):
        http = _Http(settings, create_app(Readiness(), front_door(settings, client, catalog, deps.policy, deps.audit)))
        await http.start()
        try:
            # Alertmanager is another process: so is the load, or it would steal the bot's loop.
            load = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.alert_storm", "--load", f"http://127.0.0.1:{port}",
                "--alerts", str(alerts), "--concurrency", str(concurrency),
                stdout=asyncio.subprocess.PIPE, cwd=ROOT,
            )
            out, _ = await load.communicate()
            report = json.loads(out)
        finally:
            await http.stop()
    elapsed = report["elapsed"]
    outcomes = collections.Counter(report["outcomes"])
    runs = [w async for w in client.list_workflows(f'TaskQueue = "{settings.task_queue}"')]
    outcomes["workflows"] = len({w.id for w in runs})
    return elapsed, outcomes


async def load(url: str, alerts: int, concurrency: int) -> None:
    """The load generator (a child process): deliver everything, print elapsed and outcomes."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(url, connector=connector) as web:
        headers = {"Authorization": f"Bearer {TOKEN}"}

        async def deliver(body: dict[str, Any]) -> list[str]:
            async with web.post("/alertmanager", json=body, headers=headers) as response:
                response.raise_for_status()
                return [o["outcome"] for o in await response.json()]

        bodies = deliveries(alerts)
        started = time.perf_counter()
        results = await bounded(concurrency, bodies, deliver)
        elapsed = time.perf_counter() - started
    print(json.dumps({"elapsed": elapsed, "outcomes": collections.Counter(o for r in results for o in r)}))


async def floor_side(
    client: Client, address: str, alerts: int, concurrency: int
) -> tuple[float, collections.Counter]:
    queue = f"storm-floor-{uuid.uuid4()}"
    ids = [f"floor-{i:016x}" for i in range(alerts)] * 3
    random.Random(7).shuffle(ids)
    async with worker_process(address, queue, "floor"):

        async def start(workflow_id: str) -> str:
            await client.start_workflow(
                BaselineFiveSteps.run, 1, id=workflow_id, task_queue=queue,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            )
            return "ok"

        started = time.perf_counter()
        await bounded(concurrency, ids, start)
        elapsed = time.perf_counter() - started
    runs = [w async for w in client.list_workflows(f'TaskQueue = "{queue}"')]
    return elapsed, collections.Counter({"workflows": len({w.id for w in runs})})


async def main(alerts: int, concurrency: int, audit: str) -> None:
    with tempfile.TemporaryDirectory() as tmp, audit_store(audit) as audit_url:
        server = DevServer(Path(tmp) / "temporal", port=free_port(), ui_port=free_port())
        await server.start()
        try:
            client = await Client.connect(server.address, data_converter=pydantic_data_converter)
            floor_s, floor_counts = await floor_side(client, server.address, alerts, concurrency)
            await asyncio.sleep(2)
            bot_s, outcomes = await bot_side(client, server.address, Path(tmp), alerts, concurrency, audit_url)
        finally:
            await server.stop()
    floor_rate, bot_rate = alerts / floor_s, alerts / bot_s
    where = "PostgreSQL" if audit_url else "SQLite"
    print(f"\nAlert storm: {alerts} distinct alerts x 3 deliveries, {concurrency} concurrent, same Temporal server, "
          f"audit store {where}\n")
    print(f"{'':44} {'seconds':>8} {'episodes/s':>11} {'ratio':>6}")
    print(f"{'bare client starts, attach-to-existing (floor)':44} {floor_s:8.2f} {floor_rate:11.1f} {1.0:6.2f}")
    print(f"{'bot /alertmanager (auth, route, policy, audit)':44} {bot_s:8.2f} {bot_rate:11.1f} {bot_rate / floor_rate:6.2f}")
    print(f"\noutcomes: {dict(outcomes)}; floor workflows: {floor_counts['workflows']}")
    exact = outcomes["started"] == alerts and outcomes["workflows"] == alerts
    exact = exact and outcomes["attached"] + outcomes["already_handled"] == 2 * alerts
    print(f"exactly {alerts} runs, none lost, none twice: {'yes' if exact else 'NO'}")
    print("goal: ratio >= 0.70")


@contextlib.contextmanager
def audit_store(audit: str) -> Iterator[str | None]:
    """None: the SQLite file in the data dir; else a URL of a fresh PostgreSQL database."""
    if audit == "sqlite":
        yield None
        return
    from tests.pg import cluster, find_bindir

    bindir = find_bindir()
    if bindir is None:
        sys.exit("PostgreSQL's initdb and pg_ctl not found (/usr/lib/postgresql/*/bin): apt-get install postgresql")
    with cluster(bindir, durable=True) as pg:
        yield pg.url(pg.create_database())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alerts", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--audit", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--load", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        asyncio.run(load(args.load, args.alerts, args.concurrency))
    else:
        logging.configure("INFO", "json", stream=open(os.devnull, "w"))  # the bot logs every outcome, as in production
        asyncio.run(main(args.alerts, args.concurrency, args.audit))
