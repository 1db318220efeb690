"""Approval wait: N runs waiting on approval on one worker, resident memory (goals: <= 300 MB at
1,000 runs, <= 1.5 GB at 10,000).

The bot (`playbook-bot worker` in its own process, its policy engine child included) holds N runs of
a playbook whose first step is a core.log and whose second, high-impact step waits for one approval.
The floor, on the same Temporal server in the same run: a plain temporalio worker process holding N
hand-written workflows that ran one no-op activity and wait for a signal. RSS is VmRSS summed over
each worker process and its descendants, read from /proc: idle before any run, at its peak while the
runs start, and settled once all N wait. Every run is terminated and every process stopped at the end.

    .venv/bin/python -m bench.approval_rss [--runs 1000] [--concurrency 20] [--settle 10]
    .venv/bin/python -m bench.approval_rss --big    # 10,000 runs (the second goal)

The processes are started by bench/topology.py (the Temporal dev server, `playbook-bot worker`, the
floor worker), each in its own process group; the runs are started and queried from this process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import os
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError
from temporalio.worker import Worker

import bot.engine.worker
import bot.worker_service
from bench import results
from bench.baseline import BaselineAwaitSignal
from bench.topology import ENVELOPE_KEY, Proc, run, topology
from bot import logging
from bot.engine.runs import RunError, get_status, start_run
from bot.identity.principals import Actor
from bot.identity.proofs import Keyring
from bot.engine.state import TriggerContext
from bot.playbook.loader import load_directory

T = TypeVar("T")
GOALS_MB = {1000: 300.0, 10_000: 1500.0}  # runs -> RSS bound
DEADLINE_S = 3600  # approval deadline on both sides: longer than the benchmark, so nothing times out
GATED_STEP = "risky"
PLAYBOOK = f"""
name: gated
summary: A cheap step, then a high-impact one behind one approval
owner: sre
steps:
  - id: prep
    action: core.log
    with: {{message: prepare}}
  - id: {GATED_STEP}
    action: core.log
    impact: high
    with: {{message: "the risky thing"}}
"""
# The decision shape of tests/slack/support.py: high impact needs one approval from sre.
POLICY = """package playbook.authz

import rego.v1

decision := {"allow": true, "require_approval": false, "min_approvals": 0, "approver_groups": [], "reasons": ["low impact"]} if {
	input.step.impact != "high"
} else := {"allow": true, "require_approval": true, "min_approvals": 1, "approver_groups": ["sre"], "approval_timeout": "1h", "reasons": ["high impact needs one approval from sre"]}

default approver := {"allow": false, "reasons": ["only members of sre may approve"]}

approver := {"allow": true, "reasons": []} if "sre" in input.user.groups

default start := {"allow": true, "reasons": []}
"""
progress_console = Console(stderr=True)


# ---- resident memory from /proc -----------------------------------------------------------------


@dataclass
class Rss:
    """KiB resident in a process tree, in total, anonymous (heaps) and file-backed (code), and per process."""

    total: int = 0
    anon: int = 0
    file: int = 0
    processes: dict[str, int] = field(default_factory=dict)

    @property
    def mb(self) -> float:
        return self.total * 1024 / 1e6


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = Path("/proc", entry.name, "stat").read_text()
                children.setdefault(int(stat.rpartition(")")[2].split()[1]), []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def process_name(pid: int) -> str:
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    if "-m" in argv[:-1]:
        module = argv[argv.index("-m") + 1]
        return module + (" " + argv[argv.index("-m") + 2] if module == "bot.cli" else "")
    return Path(argv[0]).name


def rss(root: int) -> Rss:
    """The tree's RSS now; processes that exit while it is read are skipped."""
    out = Rss()
    for pid in descendants(root):
        try:
            status = dict(
                line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
            )
            name = f"{process_name(pid)} ({pid})"
        except OSError:
            continue
        kib = {key: int(status.get(key, "0 kB").split()[0]) for key in ("VmRSS", "RssAnon", "RssFile", "RssShmem")}
        out.total += kib["VmRSS"]
        out.anon += kib["RssAnon"]
        out.file += kib["RssFile"] + kib["RssShmem"]
        out.processes[name] = kib["VmRSS"]
    return out


async def settled_rss(root: int, samples: int, every: float = 1.0) -> Rss:
    """The median of a few samples (by total): one GC or allocator hiccup does not decide the row."""
    taken = []
    for i in range(samples):
        if i:
            await asyncio.sleep(every)
        taken.append(rss(root))
    return sorted(taken, key=lambda r: r.total)[len(taken) // 2]


@contextlib.asynccontextmanager
async def peak_rss(root: int, every: float = 0.5) -> Any:
    """Sample in the background; the yielded list holds the peak total KiB seen so far."""
    peak = [0]

    async def sample() -> None:
        while True:
            peak[0] = max(peak[0], rss(root).total)
            await asyncio.sleep(every)

    task = asyncio.create_task(sample())
    try:
        yield peak
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        peak[0] = max(peak[0], rss(root).total)


# ---- loading the workers -----------------------------------------------------------------------


async def bounded(concurrency: int, items: Iterable[T], work: Callable[[T], Awaitable[Any]]) -> list[Any]:
    """`work` over `items`, `concurrency` at a time: the dev server slows under unbounded bursts."""
    pending = iter(items)
    results: list[Any] = []

    async def runner() -> None:
        for item in pending:
            results.append(await work(item))

    await asyncio.gather(*(runner() for _ in range(concurrency)))
    return results


@dataclass
class Side:
    """One worker process under load: how to start a run and how to tell it waits."""

    name: str
    process: Proc
    task_queue: str
    start: Callable[[int], Awaitable[str]]  # -> workflow id
    is_waiting: Callable[[str], Awaitable[bool]]  # raises if the run ended instead
    idle: Rss = field(default_factory=Rss)
    loaded: Rss = field(default_factory=Rss)
    peak_kib: int = 0
    start_s: float = 0.0
    wait_s: float = 0.0
    exit_code: int | None = None
    pids: list[int] = field(default_factory=list)


def alive(side: Side) -> None:
    side.process.check()


async def wait_polling(client: Client, side: Side, timeout: float = 60.0) -> None:
    """Until the worker polls its workflow task queue: connected, policies loaded, ready."""
    deadline = time.monotonic() + timeout
    request = DescribeTaskQueueRequest(
        namespace=client.namespace, task_queue=TaskQueue(name=side.task_queue),
        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
    )
    while not (await client.workflow_service.describe_task_queue(request)).pollers:
        alive(side)
        if time.monotonic() > deadline:
            raise RuntimeError(f"the {side.name} worker is not polling {side.task_queue} after {timeout:.0f}s")
        await asyncio.sleep(0.5)


async def load(side: Side, runs: int, concurrency: int, settle: float, timeout: float, progress: Progress) -> list[str]:
    """Start `runs` runs, wait until every one waits, let the worker settle, then read its RSS."""
    starting = progress.add_task(f"{side.name}: starting", total=runs)
    waiting = progress.add_task(f"{side.name}: waiting", total=runs)

    async def start(i: int) -> str:
        workflow_id = await side.start(i)
        progress.advance(starting)
        return workflow_id

    began = time.monotonic()
    async with peak_rss(side.process.pid) as peak:
        ids = await bounded(concurrency, range(runs), start)
        side.start_s = time.monotonic() - began
        pending, deadline = ids, time.monotonic() + timeout
        while pending:
            alive(side)
            pending = await still_starting(side, pending, concurrency)
            progress.update(waiting, completed=runs - len(pending))
            if pending and time.monotonic() > deadline:
                raise RuntimeError(f"{len(pending)} {side.name} runs not waiting after {timeout:.0f}s")
            if pending:
                await asyncio.sleep(1)
        side.wait_s = time.monotonic() - began
        side.peak_kib = peak[0]
    settling = progress.add_task(f"{side.name}: settling {settle:.0f}s", total=None)
    await asyncio.sleep(settle)
    side.loaded = await settled_rss(side.process.pid, 5)
    side.peak_kib = max(side.peak_kib, side.loaded.total)
    progress.update(settling, total=1, completed=1)
    return ids


async def still_starting(side: Side, pending: list[str], concurrency: int) -> list[str]:
    """The runs of `pending` (in start order) not waiting yet. Runs reach the wait roughly in the order
    they started, so a sweep stops at the first batch with none there: every query is work for the
    worker under test, and a thousand of them a second would slow what they measure."""
    left: list[str] = []
    for at in range(0, len(pending), concurrency):
        batch = pending[at : at + concurrency]
        there = await asyncio.gather(*(side.is_waiting(workflow_id) for workflow_id in batch))
        left += [workflow_id for workflow_id, ok in zip(batch, there) if not ok]
        if not any(there):
            return left + pending[at + concurrency :]
    return left


async def terminate(client: Client, side: Side, ids: list[str], concurrency: int, progress: Progress) -> int:
    """Terminate every run the side started; returns how many of its runs still run (0 expected)."""
    task = progress.add_task(f"{side.name}: terminating", total=len(ids))

    async def stop(workflow_id: str) -> None:
        with contextlib.suppress(RPCError):  # already closed
            await client.get_workflow_handle(workflow_id).terminate("benchmark over")
        progress.advance(task)

    await bounded(concurrency, ids, stop)
    query = f'TaskQueue = "{side.task_queue}" AND ExecutionStatus = "Running"'
    deadline = time.monotonic() + 30
    while (left := (await client.count_workflows(query)).count) and time.monotonic() < deadline:
        await asyncio.sleep(0.5)  # visibility trails the terminations
    return left


# ---- the two sides -----------------------------------------------------------------------------


def bot_env(tmp: Path, task_queue: str) -> dict[str, str]:
    (tmp / "playbooks").mkdir()
    (tmp / "playbooks" / "gated.yaml").write_text(PLAYBOOK)
    authz = tmp / "policies" / "playbook" / "authz"
    authz.mkdir(parents=True)
    (authz / "authz.rego").write_text(POLICY)
    return {
        "PLAYBOOK_BOT_DATA_DIR": str(tmp / "data"), "PLAYBOOK_BOT_PLAYBOOKS_DIR": str(tmp / "playbooks"),
        "PLAYBOOK_BOT_POLICIES_DIR": str(tmp / "policies"), "PLAYBOOK_BOT_TASK_QUEUE": task_queue,
        "PLAYBOOK_BOT_LOG_LEVEL": "WARNING", "PLAYBOOK_BOT_OPA_URL": "", "PLAYBOOK_BOT_ENVELOPE_KEY": ENVELOPE_KEY,
    }


def bot_side(client: Client, process: Proc, task_queue: str, playbooks: Path) -> Side:
    loaded = load_directory(playbooks).get("gated")
    actor = Actor("api:bench", "bench", (), "api")  # as the API front door signs it
    keyring = Keyring(ENVELOPE_KEY.encode())
    trigger = TriggerContext(kind="api", requested_by=actor.principal)

    async def start(i: int) -> str:
        return (await start_run(client, task_queue, loaded, {}, trigger, actor=actor, keyring=keyring)).id

    async def is_waiting(run_id: str) -> bool:
        try:
            status = await get_status(client, run_id)
        except RunError:  # its first workflow task has not run yet
            return False
        if status.finished:
            raise RuntimeError(f"bot run {run_id} ended {status.state} instead of waiting: {status.error}")
        return status.step(GATED_STEP).state == "waiting_approval"

    return Side("bot", process, task_queue, start, is_waiting)


def floor_side(client: Client, process: Proc, task_queue: str) -> Side:
    async def start(i: int) -> str:
        handle = await client.start_workflow(
            BaselineAwaitSignal.run, DEADLINE_S, id=f"floor-await-{i}-{uuid.uuid4().hex[:8]}", task_queue=task_queue
        )
        return handle.id

    async def is_waiting(workflow_id: str) -> bool:
        try:
            return await client.get_workflow_handle(workflow_id).query(BaselineAwaitSignal.waiting)
        except RPCError:  # not picked up yet
            return False

    return Side("floor", process, task_queue, start, is_waiting)


def cache_setting() -> str:
    """The sticky cache holds every waiting run in memory, so its size is part of the result."""
    default = inspect.signature(Worker).parameters["max_cached_workflows"].default
    sources = inspect.getsource(bot.engine.worker) + inspect.getsource(bot.worker_service)
    if "max_cached_workflows" in sources:
        return "set by the bot: see bot/engine/worker.py"
    return f"{default} on both sides (the temporalio default: bot/engine/worker.py does not set it)"


# ---- main --------------------------------------------------------------------------------------


async def main(runs: int, concurrency: int, settle: float, timeout: float) -> None:
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-rss-") as tmp_name:
        tmp = Path(tmp_name)
        async with topology(tmp) as topo:
            server = await topo.temporal()
            client = await Client.connect(server.address, data_converter=pydantic_data_converter)
            bot_queue, floor_queue = f"approval-{uuid.uuid4()}", f"approval-floor-{uuid.uuid4()}"
            env = {**os.environ, **bot_env(tmp, bot_queue), "PLAYBOOK_BOT_TEMPORAL_ADDRESS": server.address}
            floor_proc = await topo.floor_worker(server.address, floor_queue, "floor-await")
            bot_proc = await topo.worker(env)
            floor = floor_side(client, floor_proc, floor_queue)
            bot = bot_side(client, bot_proc, bot_queue, tmp / "playbooks")
            try:
                await measure(client, [floor, bot], runs, concurrency, settle, timeout)
            except BaseException:
                for proc in (bot_proc, floor_proc):
                    progress_console.print(f"{proc.name} log (tail):\n{proc.log.read_text(errors='replace')[-3000:]}")
                raise
            for side in (floor, bot):
                side.pids = descendants(side.process.pid)
            print(topo.describe())
            layout = topo.layout()
            for proc in (floor_proc, bot_proc):
                await asyncio.to_thread(proc.stop)
            for side in (floor, bot):
                side.exit_code = side.process.popen.returncode
    stray = [pid for side in (floor, bot) for pid in side.pids if Path(f"/proc/{pid}").exists()]
    report(floor, bot, runs, concurrency, time.monotonic() - began, stray, layout)


async def measure(client: Client, sides: list[Side], runs: int, concurrency: int, settle: float, timeout: float) -> None:
    """Idle RSS of both workers first, then each side loaded, measured and emptied in turn."""
    for side in sides:
        await wait_polling(client, side)
    await asyncio.sleep(settle)  # imports done, policy child up, pollers steady
    for side in sides:
        side.idle = await settled_rss(side.process.pid, 3)
    columns = (TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=progress_console) as progress:
        for side in sides:
            ids = await load(side, runs, concurrency, settle, timeout, progress)
            left = await terminate(client, side, ids, concurrency, progress)
            if left:
                raise RuntimeError(f"{left} {side.name} runs still running after termination")


def report(floor: Side, bot: Side, runs: int, concurrency: int, wall: float, stray: list[int],
           layout: list[dict[str, Any]]) -> None:
    def row(name: str, f: float, b: float, unit: str, fmt: str = "10.1f") -> None:
        print(f"{name:34} {unit:>4} {f:{fmt}} {b:{fmt}} {b / f if f else float('nan'):10.2f}")

    per_run = [(side.loaded.total - side.idle.total) / runs for side in (floor, bot)]

    def mb(kib: float) -> float:
        return kib * 1024 / 1e6

    print(f"\nApproval wait: {runs} runs waiting on approval on one worker, same Temporal server, "
          f"started {concurrency} at a time\nRSS of each worker process and its children (MB = 10^6 bytes)\n")
    print(f"{'':34} {'':>4} {'floor':>10} {'bot':>10} {'bot/floor':>10}")
    row("idle, before any run", mb(floor.idle.total), mb(bot.idle.total), "MB")
    row(f"peak while starting {runs}", mb(floor.peak_kib), mb(bot.peak_kib), "MB")
    row(f"{runs} waiting (settled)", floor.loaded.mb, bot.loaded.mb, "MB")
    row("  of which anonymous (heap)", mb(floor.loaded.anon), mb(bot.loaded.anon), "MB")
    row("per waiting run (settled - idle)", per_run[0], per_run[1], "KiB")
    print("\nfloor: a plain temporalio Worker running BaselineAwaitSignal (one no-op activity, then a signal)")
    print(f"bot:   playbook-bot worker, '{GATED_STEP}' step waiting_approval on every run")
    for side in (floor, bot):
        parts = ", ".join(f"{name} {mb(kib):.1f}" for name, kib in side.loaded.processes.items())
        print(f"  {side.name} processes with {runs} waiting (MB): {parts}")
    print(f"max_cached_workflows: {cache_setting()}")
    for side in (floor, bot):
        print(f"{side.name}: all {runs} started in {side.start_s:.1f}s, all waiting after {side.wait_s:.1f}s")
    clean = floor.exit_code == 0 and bot.exit_code == 0 and not stray
    print(f"all runs terminated; worker exit codes floor {floor.exit_code}, bot {bot.exit_code}; "
          f"stray processes: {stray or 'none'}{'' if clean else '  <- NOT CLEAN'}")
    print(f"wall time {wall:.0f}s")
    bound = GOALS_MB.get(runs)
    if bound is None:
        print(f"\ngoals: <= 300 MB at 1,000 runs, <= 1,500 MB at 10,000 ({runs} runs measured: no goal, not recorded)")
        return
    goal = "<= 1.0"
    ratio = bot.loaded.mb / bound
    print(f"\ngoal: bot RSS with {runs} runs waiting <= {bound:.0f} MB: {bot.loaded.mb:.1f} MB "
          f"-> {'met' if ratio <= 1 else 'NOT met'} (floor {floor.loaded.mb:.1f} MB)")
    fig = results.figure(
        f"memory, {runs:,} runs waiting on approval on one worker, RSS (ratio: bot / {bound:.0f} MB goal)",
        bot.loaded.mb, floor.loaded.mb, goal, "MB", layout, ratio=ratio,
        notes=f"the floor column is the plain temporalio worker holding {runs:,} waiting workflows; the goal is absolute",
    )
    results.record(fig)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--big", action="store_true", help="10,000 runs (long: the second memory goal)")
    parser.add_argument("--concurrency", type=int, default=20, help="starts and status queries in flight")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds before each RSS reading")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds for all runs to reach the wait")
    args = parser.parse_args()
    with open(os.devnull, "w") as devnull:
        logging.configure("WARNING", "json", stream=devnull)
        run(main(10_000 if args.big else args.runs, args.concurrency, args.settle,
                         max(args.timeout, 3600.0) if args.big else args.timeout))
