"""The load generator: its own process, so its CPU is never charged to the system under test.

    python -m bench.load alerts URL --alerts N --concurrency C [--seed S]
    python -m bench.load starts TEMPORAL_ADDRESS TASK_QUEUE --alerts N --concurrency C [--seed S]
    python -m bench.load slack URL --bursts B --size N [--response-url URL|none] [--gap S]

Prints one JSON object a line on stdout: a sample per request (`{"ms", "status", "outcome", ...}`)
and a last `{"summary": ...}` line. `alerts` posts each of N alerts three times, shuffled, to
/alertmanager; `starts` is its floor, bare client starts of the same triplicated ids with
USE_EXISTING; `slack` sends bursts of signed `/playbook run` commands to /slack/events.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import hmac
import json
import os
import random
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

import aiohttp

from bench.topology import ALERT_TOKEN, SIGNING_SECRET

CHANNEL = "C0INCIDENTS"


def emit(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")


def triplicated(alerts: int, seed: int) -> list[int]:
    """Each alert three times, shuffled: repeats and HA peers arrive in any order."""
    order = [i for i in range(alerts) for _ in range(3)]
    random.Random(seed).shuffle(order)
    return order


def fingerprint(seed: int, i: int) -> str:
    return f"{seed:04x}{i:012x}"


def webhook(seed: int, i: int) -> dict[str, Any]:
    alert = {
        "status": "firing", "labels": {"alertname": "Storm", "instance": f"host-{i}"}, "annotations": {},
        "startsAt": "2026-11-22T03:00:00Z", "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "",
        "fingerprint": fingerprint(seed, i),
    }
    return {
        "version": "4", "groupKey": f"{{}}:{i}", "truncatedAlerts": 0, "status": "firing", "receiver": "bot",
        "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "", "alerts": [alert],
    }


async def bounded(concurrency: int, jobs: list[Any], work: Callable[[Any], Awaitable[dict[str, Any]]]) -> list[dict[str, Any]]:
    pending = iter(jobs)
    samples: list[dict[str, Any]] = []

    async def runner() -> None:
        for job in pending:
            started = time.perf_counter()
            try:
                sample = await work(job)
            except Exception as exc:  # counted, not fatal: a lost delivery is a result
                sample = {"status": 0, "outcome": f"error: {type(exc).__name__}: {exc}"[:200]}
            sample["ms"] = round((time.perf_counter() - started) * 1000, 3)
            samples.append(sample)

    await asyncio.gather(*(runner() for _ in range(concurrency)))
    return samples


async def alerts(url: str, count: int, concurrency: int, seed: int) -> None:
    connector = aiohttp.TCPConnector(limit=concurrency)
    headers = {"Authorization": f"Bearer {ALERT_TOKEN}"}
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as web:

        async def deliver(i: int) -> dict[str, Any]:
            async with web.post("/alertmanager", json=webhook(seed, i), headers=headers) as response:
                if response.status != 200:
                    return {"status": response.status, "outcome": (await response.text())[:200]}
                [outcome] = await response.json()
                return {"status": 200, "outcome": outcome["outcome"]}

        await storm(concurrency, count, seed, deliver)


async def storm(concurrency: int, count: int, seed: int, deliver: Any) -> None:
    """Every id three times, `concurrency` at once; each delivery's sample, then the summary."""
    started = time.perf_counter()
    samples = await bounded(concurrency, triplicated(count, seed), deliver)
    elapsed = time.perf_counter() - started
    for sample in samples:
        emit(sample)
    emit({"summary": {"elapsed": elapsed, "outcomes": collections.Counter(s["outcome"] for s in samples)}})


async def starts(address: str, task_queue: str, count: int, concurrency: int, seed: int) -> None:
    from temporalio.client import Client
    from temporalio.common import WorkflowIDConflictPolicy

    from bench.baseline import BaselineFiveSteps

    client = await Client.connect(address)

    async def start(i: int) -> dict[str, Any]:
        await client.start_workflow(
            BaselineFiveSteps.run, 1, id=f"floor-{fingerprint(seed, i)}", task_queue=task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        )
        return {"status": 200, "outcome": "ok"}

    await storm(concurrency, count, seed, start)


def signed(body: str) -> dict[str, str]:
    ts = str(int(time.time()))
    digest = hmac.new(SIGNING_SECRET.encode(), f"v0:{ts}:{body}".encode(), hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={digest}",
            "Content-Type": "application/x-www-form-urlencoded"}


def command(response_url: str | None) -> str:
    fields = {
        "team_id": "T0FAKE", "channel_id": CHANNEL, "user_id": "U0BENCH", "user_name": "bench",
        "command": "/playbook", "text": "run ack", "trigger_id": f"{int(time.time())}.1.{uuid.uuid4().hex[:20]}",
    }
    if response_url:
        fields["response_url"] = response_url
    return urlencode(fields)


async def slack(url: str, bursts: int, size: int, response_url: str | None, gap: float, warmup: int) -> None:
    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=size)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as web:

        async def one(burst: int) -> dict[str, Any]:
            body = command(response_url)
            started = time.perf_counter()
            try:
                async with web.post(f"{url}/slack/events", data=body, headers=signed(body)) as response:
                    await response.read()
                    status = response.status
            except Exception as exc:
                status = 0
                emit({"error": f"{type(exc).__name__}: {exc}"[:200]})
            return {"burst": burst, "status": status, "ms": round((time.perf_counter() - started) * 1000, 3)}

        for _ in range(warmup):  # not reported: first connections and code paths, on either side alike
            await one(-1)
        for burst in range(bursts):
            for sample in await asyncio.gather(*(one(burst) for _ in range(size))):
                emit(sample)
            await asyncio.sleep(gap)
    emit({"summary": {"bursts": bursts, "size": size}})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    kinds = parser.add_subparsers(dest="kind", required=True)
    for name in ("alerts", "starts"):
        sub = kinds.add_parser(name)
        sub.add_argument("target", nargs="+", help="URL (alerts) or TEMPORAL_ADDRESS TASK_QUEUE (starts)")
        sub.add_argument("--alerts", type=int, default=1000)
        sub.add_argument("--concurrency", type=int, default=32)
        sub.add_argument("--seed", type=int, default=7)
    sub = kinds.add_parser("slack")
    sub.add_argument("url")
    sub.add_argument("--bursts", type=int, default=3)
    sub.add_argument("--size", type=int, default=50)
    sub.add_argument("--response-url", default="none", help="a URL, or none (older Slack bodies carry none)")
    sub.add_argument("--gap", type=float, default=1.0, help="seconds between bursts")
    sub.add_argument("--warmup", type=int, default=3, help="sequential commands before the bursts, not reported")
    args = parser.parse_args()
    if args.kind == "alerts":
        asyncio.run(alerts(args.target[0], args.alerts, args.concurrency, args.seed))
    elif args.kind == "starts":
        asyncio.run(starts(args.target[0], args.target[1], args.alerts, args.concurrency, args.seed))
    else:
        asyncio.run(slack(args.url, args.bursts, args.size, None if args.response_url == "none" else args.response_url,
                          args.gap, args.warmup))
    sys.stdout.flush()
    os._exit(0)  # temporalio can crash in interpreter teardown (sdk-python#300): leave now


if __name__ == "__main__":
    main()
