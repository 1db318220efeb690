"""The load generator: its own process, so its CPU is never charged to the system under test.

    python -m bench.load alerts URL --alerts N --concurrency C [--seed S]
    python -m bench.load starts TEMPORAL_ADDRESS TASK_QUEUE --alerts N --concurrency C [--seed S]
    python -m bench.load slack URL --bursts B --size N [--response-url URL|none] [--gap S] [--text TEXT]
    python -m bench.load paced-alerts URL --target-port P --alerts N --rate R [--warmup W] [--seed S]
    python -m bench.load paced-starts TEMPORAL_ADDRESS TASK_QUEUE --target-port P --alerts N --rate R [...]
    python -m bench.load clicks URL --target-port P --plan FILE [--warmup W]

Prints one JSON object a line on stdout: a sample per request (`{"ms", "status", "outcome", ...}`)
and a last `{"summary": ...}` line. `alerts` posts each of N alerts three times, shuffled, to
/alertmanager; `starts` is its floor, bare client starts of the same triplicated ids with
USE_EXISTING; `slack` sends bursts of signed `/playbook run` commands to /slack/events, and before each burst's samples a
`{"window_cpu": ...}` line: every process's CPU time read just before its first request and after its
last answer (bench.topology.WindowCpu).

The latency kinds (bench/latency.py) serve the target (bench/target.py) on --target-port in this
process and report, per key, `ms` = the target's arrival - the moment the request was sent (null
if it never arrived): `paced-alerts` posts one alert every 1/R s to /alertmanager (open loop: the
next does not wait for an answer), `paced-starts` is its floor, bare client starts of BaselineHttp
at the same pace; `clicks` sends signed Approve clicks on the runs of --plan, the first W one at a
time (not reported), then all the others at once.
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

from bench.target import Target
from bench.topology import ALERT_TOKEN, SIGNING_SECRET, on_cpu
from bot.slack.blocks import APPROVE_ACTION

CHANNEL = "C0INCIDENTS"
REQUESTER = "U0BENCH"  # who sends the slash commands
APPROVER = "U0APPROVER"  # who clicks Approve (bench/latency.py puts them in the approver group)
ARRIVAL_WAIT = 60.0  # seconds the latency kinds wait for the last request to reach the target


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


def command(response_url: str | None, text: str = "run ack") -> str:
    fields = {
        "team_id": "T0FAKE", "channel_id": CHANNEL, "user_id": REQUESTER, "user_name": "bench",
        "command": "/playbook", "text": text, "trigger_id": f"{int(time.time())}.1.{uuid.uuid4().hex[:20]}",
    }
    if response_url:
        fields["response_url"] = response_url
    return urlencode(fields)


async def slack(url: str, bursts: int, size: int, response_url: str | None, gap: float, warmup: int,
                text: str = "run ack") -> None:
    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=size)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as web:

        async def one(burst: int) -> dict[str, Any]:
            body = command(response_url, text)
            started = time.perf_counter()
            try:
                async with web.post(f"{url}/slack/events", data=body, headers=signed(body)) as response:
                    await response.read()
                    status = response.status
            except Exception as exc:
                status = 0
                emit({"error": f"{type(exc).__name__}: {exc}"[:200]})
            return {"burst": burst, "status": status, "ms": round((time.perf_counter() - started) * 1000, 3)}

        for _ in range(warmup):  # first connections and code paths, on either side alike: not in the
            emit({**await one(-1), "warmup": True})  # latency figures, but held to "200 within 3 s" too
        for burst in range(bursts):
            before = on_cpu()
            began, own = time.perf_counter(), time.process_time()
            samples = await asyncio.gather(*(one(burst) for _ in range(size)))
            wall_ms, own_ms = (time.perf_counter() - began) * 1000, (time.process_time() - own) * 1000
            emit({"window_cpu": {"before": before, "after": on_cpu(), "load": os.getpid(), "load_ms": own_ms,
                                 "wall_ms": wall_ms}})
            for sample in samples:
                emit(sample)
            await asyncio.sleep(gap)
    emit({"summary": {"bursts": bursts, "size": size}})


def click(run: dict[str, str], response_url: str) -> str:
    """An Approve click on a run's approval request, as Slack sends a block_actions payload: the
    button's value as it was posted (`value`, when the plan has it), else `{run_id, step_id}`."""
    run_id, step_id, channel, ts = run["run_id"], run["step_id"], run["channel"], run["ts"]
    value = run.get("value") or json.dumps({"run_id": run_id, "step_id": step_id}, separators=(",", ":"))
    payload = {
        "type": "block_actions", "api_app_id": "A0PLAYBOOK", "token": "deprecated-verification-token",
        "user": {"id": APPROVER, "username": "approver", "name": "approver", "team_id": "T0FAKE"},
        "team": {"id": "T0FAKE", "domain": "fake"}, "channel": {"id": channel, "name": "incidents"},
        "container": {"type": "message", "message_ts": ts, "channel_id": channel, "is_ephemeral": False},
        "trigger_id": f"{int(time.time())}.2.{uuid.uuid4().hex[:20]}",
        "message": {"type": "message", "ts": ts, "text": "approval", "user": "U0BOT"},
        "response_url": response_url,
        "actions": [{"type": "button", "action_id": APPROVE_ACTION, "block_id": f"approval:{step_id}",
                     "value": value, "action_ts": str(time.time())}],
    }
    return urlencode({"payload": json.dumps(payload)})


async def arrivals(target: Target, sent: dict[str, float], answers: dict[str, tuple[int, float]],
                   warmup: set[str], elapsed: float) -> None:
    """Once every request has arrived (or ARRIVAL_WAIT passed): a sample per key, then the summary."""
    missing = await target.wait(sent, ARRIVAL_WAIT)
    for key, at in sent.items():
        arrived = target.arrivals.get(key)
        status, answer_ms = answers.get(key, (0, 0.0))
        emit({"key": key, "ms": None if arrived is None else round((arrived - at) * 1000, 3), "status": status,
              "answer_ms": round(answer_ms, 3), "warmup": key in warmup})
    emit({"summary": {"elapsed": elapsed, "sent": len(sent), "missing": sorted(missing)[:20],
                      "missing_count": len(missing - warmup)}})


async def sent_at(key: str, sent: dict[str, float], answers: dict[str, tuple[int, float]],
                  send: Callable[[], Awaitable[int]]) -> None:
    """Note when `key`'s request leaves, send it, and note its answer (status, ms)."""
    sent[key] = started = time.perf_counter()
    try:
        status = await send()
    except Exception as exc:  # counted (status 0), not fatal
        status = 0
        emit({"error": f"{key}: {type(exc).__name__}: {exc}"[:200]})
    answers[key] = (status, (time.perf_counter() - started) * 1000)


async def paced(target_port: int, count: int, rate: float, warmup: int,
                send: Callable[[int, str], Awaitable[int]]) -> None:
    """One request every 1/rate s (open loop), key host-I for the I-th; the first `warmup` not reported."""
    target = Target()
    await target.start(target_port)
    sent: dict[str, float] = {}
    answers: dict[str, tuple[int, float]] = {}
    tasks = []
    began = time.perf_counter()
    for i in range(warmup + count):
        delay = began + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        key = f"host-{i}"
        tasks.append(asyncio.create_task(sent_at(key, sent, answers, lambda i=i, key=key: send(i, key))))
    await asyncio.gather(*tasks)
    await arrivals(target, sent, answers, {f"host-{i}" for i in range(warmup)}, time.perf_counter() - began)
    await target.stop()


async def paced_alerts(url: str, target_port: int, count: int, rate: float, warmup: int, seed: int) -> None:
    headers = {"Authorization": f"Bearer {ALERT_TOKEN}"}
    async with aiohttp.ClientSession(url, timeout=aiohttp.ClientTimeout(total=120)) as web:

        async def deliver(i: int, key: str) -> int:
            async with web.post("/alertmanager", json=webhook(seed, i), headers=headers) as response:
                await response.read()
                return response.status

        await paced(target_port, count, rate, warmup, deliver)


async def paced_starts(address: str, task_queue: str, target_port: int, count: int, rate: float, warmup: int,
                       seed: int) -> None:
    from temporalio.client import Client

    from bench.baseline import BaselineHttp

    client = await Client.connect(address)

    async def start(i: int, key: str) -> int:
        url = f"http://127.0.0.1:{target_port}/hit/{key}"
        await client.start_workflow(BaselineHttp.run, url, id=f"latency-floor-{fingerprint(seed, i)}",
                                    task_queue=task_queue)
        return 200

    await paced(target_port, count, rate, warmup, start)


async def clicks(url: str, target_port: int, plan: list[dict[str, str]], warmup: int) -> None:
    """Approve on each run of `plan` ({run_id, step_id, channel, ts, value?}); keys are the run ids."""
    target = Target()
    await target.start(target_port)
    sent: dict[str, float] = {}
    answers: dict[str, tuple[int, float]] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60),
                                     connector=aiohttp.TCPConnector(limit=len(plan) or 1)) as web:

        async def approve(i: int, run: dict[str, str]) -> None:
            respond = f"http://127.0.0.1:{target_port}/hit/response-{i}"  # Slack's response_url, answering 200
            body = click(run, respond)

            async def post() -> int:
                async with web.post(f"{url}/slack/events", data=body, headers=signed(body)) as response:
                    await response.read()
                    return response.status

            await sent_at(run["run_id"], sent, answers, post)

        for i, run in enumerate(plan[:warmup]):  # one at a time, each until its request arrived
            await approve(i, run)
            await target.wait([run["run_id"]], ARRIVAL_WAIT)
        began = time.perf_counter()
        await asyncio.gather(*(approve(i, run) for i, run in enumerate(plan) if i >= warmup))
        await arrivals(target, sent, answers, {run["run_id"] for run in plan[:warmup]}, time.perf_counter() - began)
    await target.stop()


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
    sub.add_argument("--text", default="run ack", help="the command's text")
    for name in ("paced-alerts", "paced-starts"):
        sub = kinds.add_parser(name)
        sub.add_argument("target", nargs="+", help="URL (paced-alerts) or TEMPORAL_ADDRESS TASK_QUEUE (paced-starts)")
        sub.add_argument("--target-port", type=int, required=True)
        sub.add_argument("--alerts", type=int, default=300)
        sub.add_argument("--rate", type=float, default=10.0, help="alerts a second")
        sub.add_argument("--warmup", type=int, default=5, help="the first W alerts are not reported")
        sub.add_argument("--seed", type=int, default=7)
    sub = kinds.add_parser("clicks")
    sub.add_argument("url")
    sub.add_argument("--target-port", type=int, required=True)
    sub.add_argument("--plan", type=argparse.FileType(), required=True, help="JSON: [{run_id, step_id, channel, ts, value?}]")
    sub.add_argument("--warmup", type=int, default=3, help="the first W clicks, one at a time, not reported")
    args = parser.parse_args()
    if args.kind == "alerts":
        asyncio.run(alerts(args.target[0], args.alerts, args.concurrency, args.seed))
    elif args.kind == "starts":
        asyncio.run(starts(args.target[0], args.target[1], args.alerts, args.concurrency, args.seed))
    elif args.kind == "slack":
        asyncio.run(slack(args.url, args.bursts, args.size, None if args.response_url == "none" else args.response_url,
                          args.gap, args.warmup, args.text))
    elif args.kind == "paced-alerts":
        asyncio.run(paced_alerts(args.target[0], args.target_port, args.alerts, args.rate, args.warmup, args.seed))
    elif args.kind == "paced-starts":
        asyncio.run(paced_starts(args.target[0], args.target[1], args.target_port, args.alerts, args.rate,
                                 args.warmup, args.seed))
    else:
        asyncio.run(clicks(args.url, args.target_port, json.load(args.plan), args.warmup))
    sys.stdout.flush()
    os._exit(0)  # temporalio can crash in interpreter teardown (sdk-python#300): leave now


if __name__ == "__main__":
    main()
