"""Real processes for end-to-end tests: the `playbook-bot` console script, free ports, clean-up.

Every long-running child starts in its own session so a test can take its whole process group
down in a `finally`; nothing here mocks Temporal.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from bot.devstack import free_port  # noqa: F401  (the tests' ports: below the ephemeral range)

BIN = Path(sys.executable).parent
CLI = BIN / "playbook-bot"
ROOT = Path(__file__).resolve().parents[2]
CRASH_CODES = (134, 139, -6, -11)  # abort / segfault: a crash at interpreter exit

PERMISSIVE_POLICY = """\
package playbook.authz

decision := {"allow": true, "require_approval": false, "min_approvals": 0, "approver_groups": [], "reasons": []}

approver := {"allow": true, "reasons": []}

start := {"allow": true, "reasons": []}

cancel := {"allow": true, "reasons": []}
"""


def write_policies(root: Path) -> Path:
    """A policies dir that allows everything, so these tests do not depend on the shipped rules."""
    authz = root / "playbook" / "authz"
    authz.mkdir(parents=True, exist_ok=True)
    (authz / "authz.rego").write_text(PERMISSIVE_POLICY)
    return root


def base_env(**settings: Any) -> dict[str, str]:
    """The test's environment without any PLAYBOOK_BOT_* leaking in, plus the given settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLAYBOOK_BOT_")}
    env["PLAYBOOK_BOT_LOG_FORMAT"] = "json"
    for key, value in settings.items():
        if value is not None:
            env[f"PLAYBOOK_BOT_{key.upper()}"] = str(value)
    return env


@dataclass
class Result:
    args: Sequence[str]
    code: int
    stdout: str
    stderr: str
    elapsed: float

    def json(self) -> Any:
        return json.loads(self.stdout)

    def error_line(self) -> str:
        """The one-line reason: the last non-empty stderr line (log lines may come before it)."""
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        assert lines, f"nothing on stderr for {list(self.args)} (exit {self.code})"
        return lines[-1]

    def __str__(self) -> str:
        return (
            f"playbook-bot {' '.join(self.args)} -> exit {self.code} in {self.elapsed:.1f}s\n"
            f"--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"
        )


def cli(args: Sequence[str], env: Mapping[str, str], timeout: float = 60, cwd: Path | None = None) -> Result:
    """Run the console script the way a user does; a hang is killed with its whole group."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [str(CLI), *args],
        env=dict(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc.pid)
        stdout, stderr = proc.communicate()
        raise AssertionError(f"playbook-bot {' '.join(args)} hung for {timeout}s\n{stdout}\n{stderr}") from None
    finally:
        kill_group(proc.pid)  # whatever it left in its group
    result = Result(list(args), proc.returncode, stdout, stderr, time.monotonic() - started)
    assert result.code not in CRASH_CODES, f"crashed:\n{result}"
    return result


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def descendants(pid: int) -> set[int]:
    """Every live process below `pid`, whatever session it moved to (the dev server, policy child...)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def http_status(url: str, timeout: float = 2) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return None


def kill_strays(marker: str) -> list[int]:
    """SIGKILL processes whose command line holds `marker` (a tmp path only our tests use):
    what a killed worker's own-session children leave behind."""
    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
    return killed


class Service:
    """A long-running `playbook-bot` command (dev, worker) in its own session, output to files."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str], logs: Path, name: str) -> None:
        logs.mkdir(parents=True, exist_ok=True)
        self.args = list(args)
        self.out_path = logs / f"{name}.out"
        self.err_path = logs / f"{name}.err"
        self._out = open(self.out_path, "w")
        self._err = open(self.err_path, "w")
        self.proc = subprocess.Popen(
            [str(CLI), *args],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=self._err,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        return self.err_path.read_text()

    def stdout(self) -> str:
        return self.out_path.read_text()

    def terminate(self, timeout: float = 15, sig: int = signal.SIGTERM, group: bool = False) -> int | None:
        """Signal the leader (`kill PID`) or its whole group (Ctrl-C in a terminal) and wait for it
        to exit; None if it did not within `timeout`."""
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(self.pid, sig)
            else:
                self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> int:
        kill_group(self.pid)
        return self.proc.wait(10)

    def close(self) -> None:
        """Always safe: kills the whole group if anything is left, closes the log files."""
        kill_group(self.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self._out.close()
        self._err.close()

    def __str__(self) -> str:
        return f"playbook-bot {' '.join(self.args)} (pid {self.pid})\n--- stderr\n{self.stderr()[-4000:]}"
