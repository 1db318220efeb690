"""foreach against the same steps written out: 100 no-op items at concurrency 10 vs ten parallel groups of ten.

As users run it: one `playbook-bot dev` process (embedded Temporal, worker, HTTP front door), each
run started by its own `playbook-bot run NAME` process, as from another terminal. Both playbooks
do 100 `core.log` steps at most ten at a time: `foreach` over 100 items with `concurrency: 10`,
and the floor, ten `parallel:` groups of ten run one after another. Runs alternate between the
two (the order swapped each round), spaced the same way; wall time is Temporal's start -> close
of each run, the ratio is of the medians of one bench run (issue 13's goal: <= 1.3).

Twice: without a channel, and with one (`channel:` set, a fake Slack Web API on a local port),
because a run with a channel syncs its Slack message after each foreach item and after each
top-level step. Each row also counts the run's history: events, workflow tasks, activities and
local activities (admission, audit, slack.sync), which is where the time goes.

    .venv/bin/python -m bench.foreach [--runs 7] [--gap 0.5] [--variants plain slack]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from bot.devstack import read_record
from bot.engine.state import RunStatus
from bot.settings import Settings
from bot.temporal import connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.e2e.support import Service, base_env, cli, free_port, http_status, write_policies  # noqa: E402
from tests.slack.fake_slack import FakeSlack  # noqa: E402  (the fake Web API the tests use)

ITEMS, CONCURRENCY = 100, 10
CHANNEL = "C0INCIDENTS"
GOAL = 1.3


def foreach_playbook(name: str, channel: str | None) -> str:
    head = f"name: {name}\n" + (f'channel: "{channel}"\n' if channel else "")
    return head + (
        "steps:\n"
        "  - id: each\n"
        f'    foreach: "{{{{ range({ITEMS}) | list }}}}"\n'
        f"    concurrency: {CONCURRENCY}\n"
        "    steps:\n"
        '      - {id: note, action: core.log, with: {message: "item {{ item }}"}}\n'
    )


def groups_playbook(name: str, channel: str | None) -> str:
    """The same 100 steps written out: ten parallel groups of ten, one group after another."""
    lines = [f"name: {name}", *([f'channel: "{channel}"'] if channel else []), "steps:"]
    per = ITEMS // CONCURRENCY
    for g in range(per):
        lines += [f"  - id: g{g}", "    parallel:"]
        lines += [
            f'      - {{id: s{g * CONCURRENCY + i}, action: core.log, with: {{message: "item {g * CONCURRENCY + i}"}}}}'
            for i in range(CONCURRENCY)
        ]
    return "\n".join(lines) + "\n"


PLAYBOOKS = {
    "bench-groups": groups_playbook("bench-groups", None),
    "bench-foreach": foreach_playbook("bench-foreach", None),
    "bench-groups-slack": groups_playbook("bench-groups-slack", CHANNEL),
    "bench-foreach-slack": foreach_playbook("bench-foreach-slack", CHANNEL),
}


@dataclass
class Sample:
    seconds: list[float] = field(default_factory=list)
    events: int = 0
    workflow_tasks: int = 0
    activities: int = 0
    local_activities: int = 0


async def one_run(client: Client, env: dict[str, str], name: str, sample: Sample) -> None:
    """Start the run from its own CLI process, wait for its end, read its times and history."""
    started = await asyncio.to_thread(cli, ["run", name, "--json"], env, 120)
    assert started.code == 0, str(started)
    run_id = json.loads(started.stdout)["run_id"]
    handle = client.get_workflow_handle(run_id, result_type=RunStatus)
    status = await handle.result()
    assert status.state == "completed", (name, status.state, status.error)
    desc = await handle.describe()
    assert desc.start_time and desc.close_time
    sample.seconds.append((desc.close_time - desc.start_time).total_seconds())
    history = await handle.fetch_history()
    kinds = [e.event_type for e in history.events]
    sample.events = len(kinds)
    sample.workflow_tasks = kinds.count(EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED)
    sample.activities = kinds.count(EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED)
    sample.local_activities = kinds.count(EventType.EVENT_TYPE_MARKER_RECORDED)


async def measure(client: Client, env: dict[str, str], pair: tuple[str, str], runs: int, gap: float) -> dict[str, Sample]:
    samples = {name: Sample() for name in pair}
    warm = {name: Sample() for name in pair}
    for name in pair:  # one warm-up run each, discarded
        await one_run(client, env, name, warm[name])
    for i in range(runs):
        for name in pair if i % 2 == 0 else pair[::-1]:
            await one_run(client, env, name, samples[name])
            await asyncio.sleep(gap)
        print(f"  round {i + 1}/{runs}: " + ", ".join(f"{n} {samples[n].seconds[-1]:.2f}s" for n in pair),
              file=sys.stderr, flush=True)
    return samples


def start_dev(env: dict[str, str], logs: Path) -> Service:
    dev = Service(["dev"], env, logs, "dev")
    url = f"http://127.0.0.1:{env['PLAYBOOK_BOT_HTTP_PORT']}/readyz"
    deadline = time.monotonic() + 90
    while http_status(url) != 200:
        if dev.proc.poll() is not None or time.monotonic() > deadline:
            dev.close()
            raise SystemExit(f"playbook-bot dev did not become ready:\n{dev}")
        time.sleep(0.3)
    return dev


def stop_dev(dev: Service, data_dir: Path) -> None:
    record = read_record(data_dir)
    dev.terminate(30)
    dev.close()
    if record is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(record.pid, signal.SIGKILL)  # the embedded Temporal server, if dev left it


PAIRS = {"plain": ("bench-groups", "bench-foreach"), "slack": ("bench-groups-slack", "bench-foreach-slack")}


async def main(runs: int, gap: float, variants: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp_name, FakeSlack() as fake:
        tmp = Path(tmp_name)
        (tmp / "playbooks").mkdir()
        for name, text in PLAYBOOKS.items():
            (tmp / "playbooks" / f"{name}.yaml").write_text(text)
        data_dir = tmp / "data"
        env = base_env(
            data_dir=data_dir, playbooks_dir=tmp / "playbooks", policies_dir=write_policies(tmp / "policies"),
            http_port=free_port(), dev_server_port=free_port(), dev_server_ui_port=free_port(),
            slack_bot_token=fake.token, slack_api_url=fake.api_url, log_level="WARNING",
        )
        dev = start_dev(env, tmp / "logs")
        try:
            client = await connect(Settings(data_dir=data_dir))
            results = [
                (await measure(client, env, PAIRS[variant], runs, gap), "none" if variant == "plain" else "fake Slack")
                for variant in variants
            ]
        finally:
            stop_dev(dev, data_dir)
    report(results, runs, gap)


def report(results: list[tuple[dict[str, Sample], str]], runs: int, gap: float) -> None:
    print(f"\nforeach vs parallel groups: {ITEMS} core.log steps at most {CONCURRENCY} at a time, "
          f"`playbook-bot dev`, runs started by `playbook-bot run`, {runs} runs each, alternating, {gap}s apart\n")
    print("| playbook | channel | median s | min s | max s | ratio (median) | events | workflow tasks "
          "| activities | local activities |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for samples, channel in results:
        groups, each = samples.values()
        floor = statistics.median(groups.seconds)
        for label, s in (("10 parallel groups of 10 (floor)", groups), ("foreach, concurrency 10", each)):
            med = statistics.median(s.seconds)
            print(f"| {label} | {channel} | {med:.2f} | {min(s.seconds):.2f} | {max(s.seconds):.2f} | {med / floor:.2f} "
                  f"| {s.events} | {s.workflow_tasks} | {s.activities} | {s.local_activities} |")
    print(f"\ngoal: foreach <= {GOAL}x the parallel groups (median wall time)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--gap", type=float, default=0.5)
    parser.add_argument("--variants", nargs="+", choices=list(PAIRS), default=list(PAIRS),
                        help="plain: no channel; slack: a channel on a fake Slack Web API")
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.gap, args.variants))
