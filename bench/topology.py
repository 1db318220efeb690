"""The processes a bench measures, started as a user runs them, and the load process beside them.

Everything here is its own OS process in its own session (process group): the Temporal dev server
(`DevServer`, as `dev` starts it), `playbook-bot serve` and `playbook-bot worker`, or `playbook-bot
dev`; the floors (a plain temporalio worker, a minimal Bolt app with its worker in its process); and
the load generator (`python -m bench.load`), which prints JSON samples on stdout. The bench process
itself only starts, waits and reads: it never serves or loads. Every process group is stopped on
exit, Ctrl-C included.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bot.devstack import RECORD_FILE, DevServer, free_port

ROOT = Path(__file__).resolve().parent.parent
CLI = Path(sys.executable).parent / "playbook-bot"
ENVELOPE_KEY = "b" * 64  # shared by the benches' front doors and workers (`serve` refuses to start without one)
ALERT_TOKEN = "bench-alertmanager-token"
SIGNING_SECRET = "bench-signing-secret"


def base_env(**settings: Any) -> dict[str, str]:
    """This environment without any PLAYBOOK_BOT_* leaking in, plus the given settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLAYBOOK_BOT_")}
    env["PLAYBOOK_BOT_LOG_FORMAT"] = "json"
    env["PLAYBOOK_BOT_LOG_LEVEL"] = "WARNING"
    for key, value in settings.items():
        if value is not None:
            env[f"PLAYBOOK_BOT_{key.upper()}"] = str(value)
    return env


@dataclass
class Proc:
    """One started process (and its process group)."""

    name: str
    argv: list[str]
    popen: subprocess.Popen[bytes]
    log: Path
    address: str = ""  # what the topology prints
    url: str = ""  # the HTTP base URL, for a front door

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def check(self) -> None:
        if not self.alive():
            tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"{self.name} (pid {self.pid}) exited with code {self.popen.returncode}:\n{tail}")

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM to the group, then SIGKILL after `grace` seconds."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)  # stragglers in its group, if any
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)


@dataclass
class Topology:
    """The processes of one bench; `describe()` is printed before its table."""

    tmp: Path
    profile_dir: Path | None = None  # `playbook-bot` under cProfile (bench/profiled.py), one dump per process
    procs: list[Proc] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _order: list[Proc | str] = field(default_factory=list)  # processes and notes, in start order
    _loads: int = 0
    _servers: list[DevServer] = field(default_factory=list)
    _dev_data: list[Path] = field(default_factory=list)

    def cli(self, name: str, command: str) -> list[str]:
        """`playbook-bot COMMAND` as a user runs it, or under cProfile with --profile."""
        if self.profile_dir is None:
            return [str(CLI), command]
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        return [sys.executable, "-m", "bench.profiled", str(self.profile_dir / f"{name}.prof"), command]

    def spawn(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None, address: str = "") -> Proc:
        log = self.tmp / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                list(argv), cwd=ROOT, env=env if env is not None else dict(os.environ),
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
            )
        proc = Proc(name, list(argv), popen, log, address, address)
        self.procs.append(proc)
        self._order.append(proc)
        return proc

    async def temporal(self, name: str = "temporal") -> DevServer:
        """The Temporal dev server binary as its own process, as `dev` starts it."""
        server = DevServer(self.tmp / name, port=free_port(), ui_port=free_port())
        await server.start()
        self._servers.append(server)
        self.note(f"{name:<14} pid {server.process.pid if server.process else '?':<8} {server.address}  "
                  f"(temporal server start-dev)")
        return server

    async def serve(self, env: dict[str, str], name: str = "serve") -> Proc:
        port = free_port()
        env = {**env, "PLAYBOOK_BOT_HTTP_PORT": str(port)}
        proc = self.spawn(name, self.cli(name, "serve"), env, f"http://127.0.0.1:{port}")
        await ready(proc, proc.url)
        return proc

    async def worker(self, env: dict[str, str], name: str = "worker") -> Proc:
        port = free_port()
        env = {**env, "PLAYBOOK_BOT_WORKER_METRICS_PORT": str(port)}
        proc = self.spawn(name, self.cli(name, "worker"), env, f"http://127.0.0.1:{port} (metrics)")
        proc.url = f"http://127.0.0.1:{port}"
        await ready(proc, proc.url)
        return proc

    async def dev(self, env: dict[str, str], name: str = "dev") -> tuple[Proc, str]:
        """`playbook-bot dev` on ports chosen here; returns it and its embedded Temporal's address."""
        port, temporal_port = free_port(), free_port()
        env = {**env, "PLAYBOOK_BOT_HTTP_PORT": str(port), "PLAYBOOK_BOT_DEV_SERVER_PORT": str(temporal_port),
               "PLAYBOOK_BOT_DEV_SERVER_UI_PORT": str(free_port())}
        env.pop("PLAYBOOK_BOT_TEMPORAL_ADDRESS", None)
        self._dev_data.append(Path(env["PLAYBOOK_BOT_DATA_DIR"]))
        proc = self.spawn(name, self.cli(name, "dev"), env, f"http://127.0.0.1:{port}")
        await ready(proc, proc.url, timeout=120)
        address = f"127.0.0.1:{temporal_port}"
        proc.address += f", Temporal {address} (embedded)"
        return proc, address

    async def floor_worker(self, address: str, task_queue: str, kind: str = "floor", name: str = "floor-worker") -> Proc:
        """A plain temporalio worker process running the hand-written workflows (bench/workers.py)."""
        proc = self.spawn(name, [sys.executable, "-m", "bench.workers", address, task_queue, kind])
        await polling(proc, address, task_queue)
        return proc

    async def floor_bolt(self, address: str, task_queue: str, api_url: str, token: str, name: str = "floor-bolt") -> Proc:
        """The minimal Bolt app (verify, start, ack) with its worker in its process (bench/floor_bolt.py)."""
        port = free_port()
        proc = self.spawn(name, [sys.executable, "-m", "bench.floor_bolt", address, task_queue, str(port),
                                 SIGNING_SECRET, api_url, token], address=f"http://127.0.0.1:{port}")
        await ready(proc, proc.url)
        return proc

    async def load(self, kind: str, *args: str) -> list[dict[str, Any]]:
        """`python -m bench.load KIND ARGS` in its own process; its JSON lines, once it is done."""
        self._loads += 1
        name = f"load-{kind}-{self._loads}"
        argv = [sys.executable, "-m", "bench.load", kind, *args]
        log = self.tmp / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as err:
            child = await asyncio.create_subprocess_exec(
                *argv, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=err, start_new_session=True
            )
        self.note(f"{name:<14} pid {child.pid:<8} -  (python {' '.join(argv[1:])}, exits when done)")
        try:
            out, _ = await child.communicate()
        finally:
            if child.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
                await child.wait()
        if child.returncode != 0:
            raise RuntimeError(f"{name} exited {child.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        return [json.loads(line) for line in out.decode().splitlines() if line.strip()]

    def note(self, line: str) -> None:
        self.notes.append(line)
        self._order.append(line)

    def describe(self) -> str:
        def line(p: Proc | str) -> str:
            if isinstance(p, str):
                return p
            argv = " ".join(Path(a).name if i == 0 else a for i, a in enumerate(p.argv))
            return f"{p.name:<14} pid {p.pid:<8} {p.address or '-'}  ({argv})"

        return "topology (each its own process, in start order):\n  " + "\n  ".join(line(p) for p in self._order)

    def layout(self) -> list[dict[str, Any]]:
        """The topology for results.json."""
        return [{"name": p.name, "pid": p.pid, "address": p.address, "argv": p.argv[1:]} for p in self.procs] + [
            {"note": n} for n in self.notes
        ]

    async def close(self) -> None:
        for proc in reversed(self.procs):
            await asyncio.to_thread(proc.stop)
        for data_dir in self._dev_data:  # `dev` stops its server; if it was killed instead, stop it here
            with contextlib.suppress(OSError, ValueError, KeyError):
                record = json.loads((data_dir / RECORD_FILE).read_text())
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(int(record["pid"]), signal.SIGKILL)
        for server in reversed(self._servers):
            await server.stop()


@contextlib.asynccontextmanager
async def topology(tmp: Path, profile_dir: Path | None = None) -> AsyncIterator[Topology]:
    """A Topology whose processes are all stopped on the way out, however it is left (Ctrl-C too)."""
    topo = Topology(tmp, profile_dir)
    try:
        yield topo
    finally:
        await asyncio.shield(topo.close())


async def ready(proc: Proc, url: str, timeout: float = 90.0) -> None:
    """Until GET url/readyz answers 200 (the process exiting first is an error)."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=5) as http:
        while True:
            proc.check()
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(f"{url}/readyz")).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{proc.name} not ready at {url}/readyz after {timeout:.0f}s (log {proc.log})")
            await asyncio.sleep(0.3)


async def polling(proc: Proc, address: str, task_queue: str, timeout: float = 90.0) -> None:
    """Until some worker polls `task_queue`'s workflow tasks."""
    from temporalio.api.enums.v1 import TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
    from temporalio.client import Client

    client = await Client.connect(address)
    request = DescribeTaskQueueRequest(
        namespace=client.namespace, task_queue=TaskQueue(name=task_queue),
        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
    )
    deadline = time.monotonic() + timeout
    while not (await client.workflow_service.describe_task_queue(request)).pollers:
        proc.check()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{proc.name} not polling {task_queue} after {timeout:.0f}s (log {proc.log})")
        await asyncio.sleep(0.3)


def run(main: Coroutine[Any, Any, None]) -> None:
    """asyncio.run, with SIGTERM handled as Ctrl-C is: the bench is cancelled and every process it
    started is stopped on the way out."""

    async def guarded() -> None:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        await main

    try:
        asyncio.run(guarded())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("bench interrupted: every process it started is stopped", file=sys.stderr)
        sys.exit(130)


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def _processes() -> Iterator[tuple[os.DirEntry[str], list[str]]]:
    """Each living process's /proc entry and its stat fields after "pid (comm) ": state ppid pgrp ..."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            text = Path(entry.path, "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        yield entry, text[text.rindex(")") + 2 :].split()


def _tree_cpu(roots: dict[str, int]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each root process and its living descendants
    (a front door's policy child, `dev`'s worker and Temporal children)."""
    parent, used = {}, {}
    for entry, fields in _processes():
        pid = int(entry.name)
        parent[pid], used[pid] = int(fields[1]), int(fields[11]) + int(fields[12])
    children: dict[int, list[int]] = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    tick = os.sysconf("SC_CLK_TCK")
    totals = {}
    for name, root in roots.items():
        stack, ticks = [root], 0
        while stack:
            pid = stack.pop()
            ticks += used.get(pid, 0)
            stack.extend(children.get(pid, ()))
        totals[name] = ticks / tick
    return totals


def on_cpu() -> dict[str, dict[str, int]]:
    """Each thread's time on a CPU so far (µs, keyed "PID/TID") and each process's parent. Read from
    the scheduler's own count (/proc/PID/task/TID/schedstat, in ns): a burst of a few hundred ms is
    a few ticks of the clock /proc/PID/stat counts in. Per thread, so one that ends between two
    readings takes its time with it rather than making its process's total go down."""
    us, parent = {}, {}
    for entry, fields in _processes():
        try:
            tasks = list(os.scandir(Path(entry.path, "task")))
        except OSError:
            continue  # gone meanwhile
        parent[entry.name] = int(fields[1])
        for task in tasks:
            try:
                us[f"{entry.name}/{task.name}"] = int(Path(task.path, "schedstat").read_text().split()[0]) // 1000
            except (OSError, ValueError, IndexError):
                continue
    return {"us": us, "parent": parent}


class WindowCpu:
    """Where the cores went inside a load process's measured windows (its burst, first request sent
    to last answer): CPU ms per process of the topology (with its descendants), the load process,
    and everything else on the host ("other": the bench process's fakes among it), from the
    `on_cpu` readings the load took around each window. A thread that ended inside a window is not
    counted (the fakes' request threads): "other" is a floor."""

    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        self.windows: list[dict[str, float]] = []

    def add(self, reading: dict[str, Any]) -> None:
        roots = {p.pid: p.name for p in self.topo.procs}
        roots.update({s.process.pid: f"temporal {i}" if i else "temporal"
                      for i, s in enumerate(self.topo._servers) if s.process is not None})
        load = int(reading["load"])
        before = reading["before"]["us"]
        parent = {int(pid): int(ppid) for pid, ppid in reading["after"]["parent"].items()}
        # The load's own CPU between its first request and its last answer, as it timed it: its
        # threads read by the scans would count the second scan too.
        used: dict[str, float] = {"load": float(reading["load_ms"])}
        for task, us in reading["after"]["us"].items():
            owner, seen = int(task.split("/")[0]), 0
            if owner == load:
                continue
            while owner not in roots and owner in parent and seen < 64:  # up the tree to a root
                owner, seen = parent[owner], seen + 1
            name = roots.get(owner, "other")
            used[name] = used.get(name, 0.0) + (us - before.get(task, 0)) / 1000
        used["wall"] = float(reading["wall_ms"])
        self.windows.append(used)

    def line(self) -> str:
        """Mean per window: CPU ms of each, busiest first, and the wall time it spanned."""
        if not self.windows:
            return "no window measured"
        names = {name for window in self.windows for name in window} - {"wall"}
        mean = {name: sum(w.get(name, 0.0) for w in self.windows) / len(self.windows) for name in names}
        wall = sum(w["wall"] for w in self.windows) / len(self.windows)
        parts = ", ".join(f"{name} {ms:.0f}" for name, ms in sorted(mean.items(), key=lambda kv: -kv[1]) if ms >= 1)
        return f"CPU ms in the burst, mean of {len(self.windows)}: {parts} (total {sum(mean.values()):.0f} in {wall:.0f} ms)"


class CpuMeter:
    """Where the machine's cores went during one side of a bench: CPU seconds per process (with its
    children), the load processes included (reaped children of this process)."""

    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        self._start: dict[str, float] = {}
        self._began = 0.0
        self.used: dict[str, float] = {}  # summed over every `with` of this meter (a side's rounds)
        self.elapsed = 0.0

    def _now(self) -> dict[str, float]:
        roots = {p.name: p.pid for p in self.topo.procs if p.alive()}
        roots.update({f"temporal {i}" if i else "temporal": s.process.pid
                      for i, s in enumerate(self.topo._servers) if s.process is not None})
        totals = _tree_cpu(roots)
        children = os.times()
        totals["load"] = children.children_user + children.children_system
        return totals

    def __enter__(self) -> CpuMeter:
        self._start, self._began = self._now(), time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._now()
        self.elapsed += time.monotonic() - self._began
        for name in end:
            self.used[name] = self.used.get(name, 0.0) + max(0.0, end[name] - self._start.get(name, 0.0))

    def line(self, elapsed: float | None = None) -> str:
        """CPU seconds per process; `elapsed`: the wall time to divide by (default: inside the meter)."""
        elapsed = self.elapsed if elapsed is None else elapsed
        used = {name: seconds for name, seconds in self.used.items() if seconds > 0.05}
        total = sum(used.values())
        parts = ", ".join(f"{name} {seconds:.1f}" for name, seconds in sorted(used.items(), key=lambda kv: -kv[1]))
        return f"CPU seconds: {parts} (total {total:.1f} in {elapsed:.1f} s = {total / elapsed:.2f} cores)"
