"""Slack ack latency: bursts of signed `/playbook run` commands, measured from a load process.

The bot as deployed (`playbook-bot serve` + `playbook-bot worker`, or `playbook-bot dev`) against
a floor on the same Temporal server in the same run: a minimal Bolt app process that verifies the
signature, starts a workflow inside the ack window and acks, its worker in its process
(bench/floor_bolt.py). Three variants of the bot's commands: a working `response_url` (a local
fake answering 200), none (older Slack bodies carry none), and a failing one (answers 500). The
figure: the slowest ack of each burst, median over the bursts, bot / floor (goal <= 1.3 in the
production shape, serve + worker), and in both shapes no command answered other than 200 or later
than 3 s (`dev`'s goal; its ratio is shown beside it). The sides take their bursts in turn (floor, then
each variant, `--bursts` times, each burst from a load process of its own after WARMUP sequential
commands), so each meets the server with the same runs behind it.

    .venv/bin/python -m bench.slack_ack [--bursts 3] [--size 50] [--shape serve|dev|both] [--profile DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from bench import profiles, results
from bench.alert_storm import executions
from bench.load import REQUESTER
from bench.topology import (
    ALERT_TOKEN, ENVELOPE_KEY, ROOT, SIGNING_SECRET, CpuMeter, Topology, WindowCpu, base_env, load_average, run,
    topology,
)

sys.path.insert(0, str(ROOT))
from tests.http_server import serving  # noqa: E402
from tests.slack.fake_slack import FakeSlack  # noqa: E402  (the fake Web API the tests use)

GOAL = "<= 1.3"  # the production shape's (serve + worker) goal, issue 15 item 3
# `dev`'s: issue 15 asks every command answered 200 within 3 s "in both shapes", and the ratio only of
# the production shape; dev's ratio is printed and recorded beside it, to read by.
DEV_GOAL = "every ack 200 within 3 s"
DEADLINE_MS = 3000.0  # Slack's ack window
PLAYBOOK = """
name: ack
channel: "C0INCIDENTS"
steps:
  - {id: note, action: core.log, with: {message: "acked"}}
"""
WARMUP = 3  # sequential commands before each load's bursts, not measured (first connections, code paths)
VARIANTS = ("working response_url", "no response_url", "failing response_url")


class _ResponseUrls(BaseHTTPRequestHandler):
    """POST /ok answers 200 as Slack does; POST /fail answers 500."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status, body = (200, b"ok") if self.path.startswith("/ok") else (500, b"failing on purpose")
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextmanager
def response_urls() -> Iterator[dict[str, str]]:
    with serving(_ResponseUrls) as base:
        yield {"working response_url": f"{base}/ok", "no response_url": "none",
               "failing response_url": f"{base}/fail"}


def per_burst(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The slowest ack of each burst and its median (the bursts' commands only), and what missed
    (non-200, over 3 s) among every command sent, the warm-up ones before each burst included:
    the goal is every command answered 200 within 3 s."""
    measured = [s for s in samples if not s.get("warmup")]
    bursts: dict[int, list[float]] = {}
    for s in measured:
        bursts.setdefault(s["burst"], []).append(s["ms"])
    slowest = [max(v) for _, v in sorted(bursts.items())]
    return {
        "slowest": slowest, "median_slowest": statistics.median(slowest), "ms": [s["ms"] for s in measured],
        "non_200": sum(s["status"] != 200 for s in samples), "late": sum(s["ms"] > DEADLINE_MS for s in samples),
        "count": len(measured), "commands": len(samples),
    }


async def lines(topo: Topology, url: str, size: int, response_url: str, window: WindowCpu) -> list[dict[str, Any]]:
    """One burst of `size` commands from a load process of its own, after WARMUP sequential ones
    (marked `warmup`); where the cores went during the burst is added to `window`."""
    out = await topo.load("slack", url, "--bursts", "1", "--size", str(size), "--response-url", response_url,
                          "--warmup", str(WARMUP), "--gap", "0")
    for line in out:
        if "window_cpu" in line:
            window.add(line["window_cpu"])
    return [line for line in out if "burst" in line]


async def shape_run(shape: str, bursts: int, size: int, fake: FakeSlack, urls: dict[str, str],
                    profile: Path | None = None) -> None:
    with tempfile.TemporaryDirectory(prefix=f"bench-slack-{shape}-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "playbooks").mkdir()
        (tmp / "playbooks" / "ack.yaml").write_text(PLAYBOOK)
        queue = f"ack-{uuid.uuid4()}"
        env = base_env(
            data_dir=tmp / "data", playbooks_dir=tmp / "playbooks", policies_dir=ROOT / "policies",
            alertmanager_token=ALERT_TOKEN, envelope_key=ENVELOPE_KEY, task_queue=queue,
            slack_signing_secret=SIGNING_SECRET, slack_bot_token=fake.token, slack_api_url=fake.api_url,
        )
        async with topology(tmp, profile) as topo:
            if shape == "serve":
                server = await topo.temporal()
                address = server.address
                env["PLAYBOOK_BOT_TEMPORAL_ADDRESS"] = address
            else:
                front, address = await topo.dev(env)
            floor_proc = await topo.floor_bolt(address, f"floor-{uuid.uuid4()}", fake.api_url, fake.token)
            if shape == "serve":
                await topo.worker(env)
                front = await topo.serve(env)
            # One burst of each side in turn, `bursts` times: every side meets the server as the runs
            # accumulate on it (a dev server slows as its history grows), not the floor a fresh one.
            sides = {"floor": (floor_proc.url, urls["working response_url"]),
                     **{variant: (front.url, urls[variant]) for variant in VARIANTS}}
            meters = {side: CpuMeter(topo) for side in sides}
            windows = {side: WindowCpu(topo) for side in sides}
            taken: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
            for index in range(bursts):
                for side, (url, response_url) in sides.items():
                    await asyncio.sleep(2)  # the previous burst's runs and answers drain
                    with meters[side]:
                        taken[side] += [{**line, "burst": index}
                                        for line in await lines(topo, url, size, response_url, windows[side])]
            await asyncio.to_thread(floor_proc.stop)
            floor = per_burst(taken["floor"])
            bot = {variant: per_burst(taken[variant]) for variant in VARIANTS}
            for variant in VARIANTS:
                print(f"bot, {variant}: {meters[variant].line()}")  # where the cores went, as the other benches say
                print(f"bot, {variant}: {windows[variant].line()}")
            print(f"floor: {meters['floor'].line()}")
            print(f"floor: {windows['floor'].line()}")
            sent = sum(b["commands"] for b in bot.values())
            runs, ids = await executions(address, queue, sent, timeout=60)
            print(topo.describe())
            layout = topo.layout()
    if profile is not None:  # profiled processes are slower: their figures are not recorded
        for name in ("serve", "worker") if shape == "serve" else ("dev",):
            print(profiles.top(profile / f"{name}.prof"))
    show(shape, bursts, size, floor, bot, runs, ids, layout, record=profile is None)


def show(shape: str, bursts: int, size: int, floor: dict[str, Any], bot: dict[str, dict[str, Any]], runs: int,
         ids: int, layout: list[dict[str, Any]], record: bool = True) -> None:
    where = "serve + worker" if shape == "serve" else "dev"
    print(f"\nSlack ack: {bursts} bursts of {size} signed /playbook run, {where}, load average {load_average()}\n")
    print(f"{'':44} {'p50 ms':>8} {'slowest per burst (ms)':>26} {'median':>8} {'ratio':>6} {'non-200':>8} {'> 3 s':>6}")
    rows = [("floor: minimal Bolt, verify + start + ack", floor)] + [(f"bot, {v}", b) for v, b in bot.items()]
    for name, side in rows:
        slowest = ", ".join(f"{v:.0f}" for v in side["slowest"])
        print(f"{name:44} {statistics.median(side['ms']):8.1f} {slowest:>26} {side['median_slowest']:8.1f} "
              f"{side['median_slowest'] / floor['median_slowest']:6.2f} {side['non_200']:8d} {side['late']:6d}")
    answered = sum(b["commands"] - b["non_200"] for b in bot.values())
    sent = sum(b["commands"] for b in bot.values())
    print(f"\nbot runs started: {runs} ({ids} ids) for {sent} commands sent ({sent - sum(b['count'] for b in bot.values())} "
          f"of them warm-up), {answered} answered 200")
    goal = GOAL if shape == "serve" else DEV_GOAL
    print(f"goal: ratio {GOAL} in every variant, every command 200 within 3 s" if goal == GOAL
          else f"goal ({where}): {DEV_GOAL} in every variant (the ratio {GOAL} is the production shape's)")
    if not record:
        print("(profiled run: not recorded in bench/results.json)")
        return
    figures = []
    for variant, side in bot.items():
        ratio = side["median_slowest"] / floor["median_slowest"]
        fig = results.figure(
            f"Slack ack, {bursts} bursts of {size}, slowest (median of bursts), {where}, {variant}",
            side["median_slowest"], floor["median_slowest"], goal, "ms", layout,
            non_200=side["non_200"], over_3s=side["late"], floor_non_200=floor["non_200"], floor_over_3s=floor["late"],
            notes=(f"{side['non_200']} non-200, {side['late']} over 3 s" if side["non_200"] or side["late"] else ""),
        )
        in_time = side["non_200"] == 0 and side["late"] == 0
        fig["met"] = in_time and results.met(ratio, goal) is not False  # (dev's goal bounds no ratio: None)
        figures.append(fig)
    samples = {f"Slack ack latency ({where})": {"floor (minimal Bolt)": floor["ms"],
                                                **{f"bot, {v}": b["ms"] for v, b in bot.items()}}}
    results.record(*figures, samples=samples)


async def main(bursts: int, size: int, shapes: list[str], profile: Path | None) -> None:
    with FakeSlack() as fake, response_urls() as urls:
        # The commands' sender is a member of the workspace, as a real one is: without it every
        # answer by chat.postEphemeral failed (user_not_found) and was logged twice.
        fake.add_user(REQUESTER, "bench")
        for shape in shapes:
            await shape_run(shape, bursts, size, fake, urls, profile)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bursts", type=int, default=3)
    parser.add_argument("--size", type=int, default=50)
    parser.add_argument("--shape", choices=["serve", "dev", "both"], default="both")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="run the bot's processes under cProfile, dump them in DIR and print their top entries")
    args = parser.parse_args()
    run(main(args.bursts, args.size, ["serve", "dev"] if args.shape == "both" else [args.shape], args.profile))
