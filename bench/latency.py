"""Latency an on-call engineer feels: alert -> first action, and Approve click -> gated action.

1. Alert received -> the first step's request reaches the target. Alerts paced at R a second (open
   loop, below saturation) from a load process to `playbook-bot serve` + `playbook-bot worker` on a
   Temporal dev server; the playbook's first step is a low-impact http.request to a target served
   by the load process, which notes when each request arrives. Floor, same server, same pace: bare
   client starts of a workflow whose first activity makes the same request, its worker in its own
   process. Goals: p50 <= 1.3x, p95 <= 1.5x the floor's.
2. Approve click -> the gated step's request reaches the target, on `playbook-bot dev`: N runs of a
   playbook whose high-impact step (production, by the shipped policy) waits for one approval from
   its owner group, then N signed block_actions (Approve) at once. Floor, same server, same burst:
   a minimal Bolt app (verify, ack, a Temporal update on a waiting workflow, which then runs one
   activity making the same request), its worker in its process. Goal: p95 <= 1.3x the floor's.
   Each side sends CLICK_ROUNDS such bursts, the two taking turns (floor first, then bot first, ...)
   with both stacks up throughout; the figure is over all of a side's clicks.

Latency = the target's arrival - the moment the load process sent the alert or click, both read
from time.perf_counter in the load process. The Slack Web API the bot calls (user groups,
chat.postMessage, chat.update) is the tests' fake (tests/slack/fake_slack.py), served from here.

    .venv/bin/python -m bench.latency [--alerts 300] [--rate 10] [--clicks 50] [--only alert|click]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Awaitable, Callable

from temporalio.client import Client

from bench import results
from bench.baseline import BaselineAwaitUpdate
from bench.load import APPROVER, REQUESTER
from bench.topology import (
    ALERT_TOKEN, ENVELOPE_KEY, ROOT, SIGNING_SECRET, CpuMeter, base_env, free_port, load_average, run, topology,
)
from bot.slack.blocks import APPROVE_ACTION

sys.path.insert(0, str(ROOT))
from tests.slack.fake_slack import FakeSlack  # noqa: E402  (the fake Web API the tests use)

ALERT_GOALS = {"p50": "<= 1.3", "p95": "<= 1.5"}
CLICK_GOALS = {"p95": "<= 1.3"}
ALERT_WARMUP = 5  # the first alerts of each side, not reported (first connections, code paths)
ALERT_ROUNDS = 4  # turns each side takes (alternating which goes first)
CLICK_WARMUP = 3  # runs approved one at a time before each side's burst, not reported
CLICK_ROUNDS = 3  # bursts each side sends (alternating which goes first)
STEP = "act"  # the step that makes the request, in both playbooks
OWNER = "sre"  # the playbook's owner: the shipped policy's approver group for its high-impact steps


def alert_playbook(target: str) -> str:
    return f"""
name: first-action
summary: An alert's first remediation request
owner: {OWNER}
params: {{instance: {{type: string, pattern: "^[a-z0-9-]+$"}}}}
triggers:
  alertmanager:
    - matchers: ['alertname="Storm"']
      params: {{instance: "{{{{ alert.labels.instance }}}}"}}
steps:
  - id: {STEP}
    action: http.request
    with: {{method: GET, url: "{target}/hit/{{{{ params.instance }}}}"}}
"""


def gated_playbook(target: str) -> str:
    # No environment param: the shipped policy takes the step as production, so it needs one
    # approval from the owner group (and the requester, verified by Slack, may not give it).
    return f"""
name: gated
summary: A high-impact request behind one approval
owner: {OWNER}
channel: "C0INCIDENTS"
steps:
  - id: {STEP}
    action: http.request
    impact: high
    with: {{method: GET, url: "{target}/hit/{{{{ run.id }}}}"}}
"""


# ---- the figures' arithmetic ---------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest rank: the smallest value with at least q of the values at or under it."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def spread(values: list[float]) -> dict[str, float]:
    return {f"p{round(q * 100)}": round(percentile(values, q), 3) for q in (0.50, 0.95, 0.99)}


def side(lines: list[dict[str, Any]]) -> dict[str, Any]:
    """One load process's report: the reported latencies (ms), and what never arrived or was refused."""
    reported = [line for line in lines if "key" in line and not line["warmup"]]
    return {
        "ms": [line["ms"] for line in reported if line["ms"] is not None],
        "missing": sum(line["ms"] is None for line in reported),
        "refused": sum(line["status"] != 200 for line in reported),
        "answer_ms": [line["answer_ms"] for line in reported],
        "errors": [line["error"] for line in lines if "error" in line][:5],
    }


def figures(title: str, goals: dict[str, str], bot: dict[str, Any], floor: dict[str, Any], layout: Any,
            **extra: Any) -> list[dict[str, Any]]:
    """A results.json record per goal (bot vs floor at that percentile), each with every percentile of both."""
    bot_p, floor_p = spread(bot["ms"]), spread(floor["ms"])
    complete = not (bot["missing"] or bot["refused"] or floor["missing"] or floor["refused"])
    notes = "" if complete else (f"bot: {bot['missing']} never arrived, {bot['refused']} not 200; "
                                 f"floor: {floor['missing']} never arrived, {floor['refused']} not 200")
    out = []
    for key, goal in goals.items():
        fig = results.figure(f"{title}, {key}", bot_p[key], floor_p[key], goal, "ms", layout, notes=notes,
                             bot_percentiles=bot_p, floor_percentiles=floor_p, bot_n=len(bot["ms"]),
                             floor_n=len(floor["ms"]), bot_missing=bot["missing"], floor_missing=floor["missing"],
                             **extra)
        fig["met"] = fig["met"] and complete
        out.append(fig)
    return out


def table(title: str, goals: dict[str, str], bot: dict[str, Any], floor: dict[str, Any], floor_name: str) -> None:
    print(f"\n{title}, load average {load_average()}\n")
    print(f"{'':46} {'n':>5} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'missing':>8} {'not 200':>8}")
    for name, s in ((floor_name, floor), ("bot", bot)):
        p = spread(s["ms"])
        print(f"{name:46} {len(s['ms']):5d} {p['p50']:8.1f} {p['p95']:8.1f} {p['p99']:8.1f} {s['missing']:8d} "
              f"{s['refused']:8d}")
        for error in s["errors"]:
            print(f"  {name}: {error}")
    bot_p, floor_p = spread(bot["ms"]), spread(floor["ms"])
    for key, goal in goals.items():
        ratio = bot_p[key] / floor_p[key] if floor_p[key] else math.nan
        print(f"goal: {key} ratio {goal}: {ratio:.2f} -> {'met' if results.met(ratio, goal) else 'NOT met'}")


# ---- 1. alert -> first action ------------------------------------------------------------------


def merged(sides: list[dict[str, Any]]) -> dict[str, Any]:
    """The rounds of one side as one sample."""
    return {"ms": [ms for s in sides for ms in s["ms"]], "missing": sum(s["missing"] for s in sides),
            "refused": sum(s["refused"] for s in sides), "answer_ms": [ms for s in sides for ms in s["answer_ms"]],
            "errors": [e for s in sides for e in s["errors"]][:5]}


async def take_turns(n: int, floor_round: Callable[[int], Awaitable[None]],
                     bot_round: Callable[[int], Awaitable[None]]) -> None:
    """Round `n` of a figure: the floor's turn first in even rounds, the bot's in odd ones."""
    for turn in ((floor_round, bot_round) if n % 2 == 0 else (bot_round, floor_round)):
        await turn(n)
        await asyncio.sleep(1)  # the turn's runs finish before the other side's begins


def report_rounds(cpu_floor: CpuMeter, cpu_bot: CpuMeter, floors: list[dict[str, Any]],
                  bots: list[dict[str, Any]]) -> None:
    """Each side's CPU, and how steady its rounds were."""
    print(f"floor: {cpu_floor.line()}")
    print(f"bot: {cpu_bot.line()}")
    for name, sides in (("floor", floors), ("bot", bots)):
        print(f"{name} p50 / p95 per round (ms): "
              + ", ".join(f"{spread(s['ms'])['p50']:.0f} / {spread(s['ms'])['p95']:.0f}" for s in sides))


async def alert_figure(alerts: int, rate: float, rounds: int = ALERT_ROUNDS) -> None:
    """Floor and bot take turns in `rounds` rounds on one server (floor first, then bot first, ...),
    both workers up throughout: a dev server slows as its history grows, and the machine's noise
    comes and goes, so neither side gets only the fresh server or only a quiet minute."""
    seed = int(time.time()) % 0xFFF0
    per_round = max(1, alerts // rounds)
    with tempfile.TemporaryDirectory(prefix="bench-latency-alert-") as tmp_name:
        tmp = Path(tmp_name)
        target_port = free_port()
        (tmp / "playbooks").mkdir()
        (tmp / "playbooks" / "first-action.yaml").write_text(alert_playbook(f"http://127.0.0.1:{target_port}"))
        queue = f"latency-{uuid.uuid4()}"
        async with topology(tmp) as topo:
            server = await topo.temporal()
            env = base_env(
                data_dir=tmp / "data", playbooks_dir=tmp / "playbooks", policies_dir=ROOT / "policies",
                alertmanager_token=ALERT_TOKEN, envelope_key=ENVELOPE_KEY, task_queue=queue,
                temporal_address=server.address,
            )
            topo.note(f"{'target':<14} each load process serves it on 127.0.0.1:{target_port} while it runs")
            floor_queue = f"latency-floor-{uuid.uuid4()}"
            await topo.floor_worker(server.address, floor_queue, "floor-http")
            await topo.worker(env)
            front = await topo.serve(env)
            await asyncio.sleep(2)  # every process connected and polling
            floors: list[dict[str, Any]] = []
            bots: list[dict[str, Any]] = []
            cpu_floor, cpu_bot = CpuMeter(topo), CpuMeter(topo)
            for n in range(rounds):
                pace = ["--alerts", str(per_round), "--rate", str(rate), "--warmup", str(ALERT_WARMUP),
                        "--seed", str(seed + n)]

                async def floor_round(n: int) -> None:
                    with cpu_floor:
                        floors.append(side(await topo.load("paced-starts", server.address, floor_queue,
                                                           "--target-port", str(target_port), *pace)))

                async def bot_round(n: int) -> None:
                    with cpu_bot:
                        bots.append(side(await topo.load("paced-alerts", front.url, "--target-port",
                                                         str(target_port), *pace)))

                await take_turns(n, floor_round, bot_round)
            report_rounds(cpu_floor, cpu_bot, floors, bots)
            print(topo.describe())
            layout = topo.layout()
    bot, floor = merged(bots), merged(floors)
    title = f"alert -> first action, {alerts} at {rate:g}/s, serve + worker"
    table(title, ALERT_GOALS, bot, floor, "floor: bare start -> first activity")
    results.record(*figures(title, ALERT_GOALS, bot, floor, layout, alerts=alerts, rate=rate),
                   samples={"alert -> first action (serve + worker, paced)":
                            {"bot (serve + worker)": bot["ms"], "floor (bare start)": floor["ms"]}})


# ---- 2. Approve click -> gated action ----------------------------------------------------------


def workspace(fake: FakeSlack) -> None:
    """The requester, and the approver in the owner's user group (the shipped policy's approver group)."""
    fake.add_user(REQUESTER, "bench")
    fake.add_user(APPROVER, "approver")
    fake.add_usergroup("S0SRE", OWNER, [APPROVER])


def approval_requests(fake: FakeSlack) -> dict[str, dict[str, str]]:
    """The approval requests the bot posted, by run id: what an Approve click on each carries."""
    found = {}
    for message in list(fake.messages):
        for block in message.blocks or []:
            for element in block.get("elements", []) if block.get("type") == "actions" else []:
                if element.get("action_id") == APPROVE_ACTION:
                    value = json.loads(element["value"])  # Slack sends a click's value back as posted
                    found[value["run_id"]] = {"run_id": value["run_id"], "step_id": value["step_id"],
                                              "channel": message.channel, "ts": message.ts, "value": element["value"]}
    return found


async def until(what: str, check: Any, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := await check()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not after {timeout:.0f}s")
        await asyncio.sleep(0.5)
    return result


async def floor_plan(address: str, queue: str, target: str, count: int) -> list[dict[str, str]]:
    """`count` BaselineAwaitUpdate runs, each waiting for its update; their clicks' plan."""
    client = await Client.connect(address)
    handles = [await client.start_workflow(BaselineAwaitUpdate.run, f"{target}/hit/{run_id}", id=run_id,
                                           task_queue=queue)
               for run_id in (f"latency-click-floor-{uuid.uuid4().hex[:12]}" for _ in range(count))]

    async def all_waiting() -> bool:
        return all(await asyncio.gather(*(h.query(BaselineAwaitUpdate.waiting) for h in handles)))

    await until("floor runs waiting", all_waiting)
    return [{"run_id": h.id, "step_id": STEP, "channel": "C0INCIDENTS", "ts": "1.000001"} for h in handles]


async def click_figure(clicks: int, rounds: int = CLICK_ROUNDS) -> None:
    """Floor and bot take turns in `rounds` rounds on one server (floor first, then bot first, ...),
    both front doors and workers up throughout, as the alert figure does: each round prepares its
    side's runs (all waiting on their approval) and then sends its burst, so neither side always
    gets the fresher server or the other's idle minute."""
    count = clicks + CLICK_WARMUP
    with tempfile.TemporaryDirectory(prefix="bench-latency-click-") as tmp_name, FakeSlack() as fake:
        tmp = Path(tmp_name)
        workspace(fake)
        target_port = free_port()
        target = f"http://127.0.0.1:{target_port}"
        (tmp / "playbooks").mkdir()
        (tmp / "playbooks" / "gated.yaml").write_text(gated_playbook(target))
        env = base_env(
            data_dir=tmp / "data", playbooks_dir=tmp / "playbooks", policies_dir=ROOT / "policies",
            alertmanager_token=ALERT_TOKEN, envelope_key=ENVELOPE_KEY, task_queue=f"latency-{uuid.uuid4()}",
            slack_signing_secret=SIGNING_SECRET, slack_bot_token=fake.token, slack_api_url=fake.api_url,
        )
        async with topology(tmp) as topo:
            topo.note(f"{'fake Slack':<14} {fake.api_url}  (tests/slack/fake_slack.py, a thread of the bench process)")
            topo.note(f"{'target':<14} each load process serves it on 127.0.0.1:{target_port} while it runs")
            front, address = await topo.dev(env)
            floor_queue = f"latency-floor-{uuid.uuid4()}"
            floor_proc = await topo.floor_bolt(address, floor_queue, fake.api_url, fake.token)
            floors: list[dict[str, Any]] = []
            bots: list[dict[str, Any]] = []
            cpu_floor, cpu_bot = CpuMeter(topo), CpuMeter(topo)
            used: set[str] = set()  # the bot's runs clicked in earlier rounds

            async def floor_round(n: int) -> None:
                plan_file = tmp / f"floor-plan-{n}.json"
                plan_file.write_text(json.dumps(await floor_plan(address, floor_queue, target, count)))
                with cpu_floor:
                    floors.append(side(await topo.load("clicks", floor_proc.url, "--target-port", str(target_port),
                                                       "--plan", str(plan_file), "--warmup", str(CLICK_WARMUP))))

            async def bot_round(n: int) -> None:
                # The bot's runs, started as a user starts them (signed /playbook commands), each
                # waiting on its gated step once its approval request is posted.
                await topo.load("slack", front.url, "--bursts", str(count), "--size", "1", "--warmup", "0",
                                "--gap", "0.1", "--text", "run gated")

                async def posted() -> dict[str, Any] | None:
                    fresh = {k: v for k, v in approval_requests(fake).items() if k not in used}
                    return fresh if len(fresh) >= count else None

                requests = list((await until(f"{count} approval requests posted", posted)).values())[:count]
                used.update(r["run_id"] for r in requests)
                plan_file = tmp / f"bot-plan-{n}.json"
                plan_file.write_text(json.dumps(requests))
                await asyncio.sleep(2)  # the runs' Slack syncs settle
                with cpu_bot:
                    bots.append(side(await topo.load("clicks", front.url, "--target-port", str(target_port),
                                                     "--plan", str(plan_file), "--warmup", str(CLICK_WARMUP))))

            for n in range(rounds):
                await take_turns(n, floor_round, bot_round)
            report_rounds(cpu_floor, cpu_bot, floors, bots)
            print(topo.describe())
            layout = topo.layout()
    bot, floor = merged(bots), merged(floors)
    title = f"Approve click -> gated action, {clicks} at once, dev"
    table(title, CLICK_GOALS, bot, floor, "floor: minimal Bolt -> update -> activity")
    results.record(*figures(title, CLICK_GOALS, bot, floor, layout, clicks=clicks, rounds=rounds),
                   samples={"Approve click -> gated action (dev, at once)":
                            {"bot (dev)": bot["ms"], "floor (minimal Bolt + update)": floor["ms"]}})


async def main(alerts: int, rate: float, clicks: int, only: str | None) -> None:
    if only in (None, "alert"):
        await alert_figure(alerts, rate)
    if only in (None, "click"):
        await click_figure(clicks)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alerts", type=int, default=300, help="alerts measured (after a few not reported)")
    parser.add_argument("--rate", type=float, default=10.0, help="alerts a second")
    parser.add_argument("--clicks", type=int, default=50, help="Approve clicks sent at once")
    parser.add_argument("--only", choices=["alert", "click"], help="one figure only")
    args = parser.parse_args()
    run(main(args.alerts, args.rate, args.clicks, args.only))
