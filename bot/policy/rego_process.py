"""Talking to the embedded engine's child process (bot.policy.embedded_child).

The child holds rego-cpp, which can take its process down; everything here turns that into
ChildCrashed so callers can deny and restart instead of dying with it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import structlog

from bot.policy import wire

log = structlog.get_logger(__name__)

CHILD_MODULE = "bot.policy.embedded_child"
# The directory holding the `bot` package, so the child imports the same code even when the
# worker runs from another directory without the package installed.
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


class ChildCrashed(Exception):
    """The child exited, was killed, or broke the protocol; its state is gone."""


class ChildTimeout(Exception):
    """The child did not answer in time; it has been killed (its state is unknown)."""


def child_command() -> list[str]:
    return [sys.executable, "-m", CHILD_MODULE]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    return env


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


class RegoProcess:
    """One child process; one request at a time (callers serialise with their own lock)."""

    def __init__(self) -> None:
        self._proc: asyncio.subprocess.Process | None = None
        self._stderr_task: asyncio.Task[None] | None = None
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=8)
        self._next_id = 0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            *child_command(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=child_env(),
        )
        self._stderr_task = asyncio.create_task(self._drain_stderr(self._proc))
        log.debug("policy.child_started", pid=self._proc.pid)

    async def _drain_stderr(self, proc: asyncio.subprocess.Process) -> None:
        """Log what the child (or rego-cpp, when it aborts) writes to stderr."""
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            text = line.decode(errors="replace").rstrip()
            if text:
                self._stderr_tail.append(text)
                log.warning("policy.child_stderr", pid=proc.pid, line=text)

    async def request(self, message: dict[str, Any], timeout: float, **encoded: bytes) -> dict[str, Any]:
        """One request and its answer; `encoded` fields are already JSON (see wire.encode)."""
        frame = wire.encode({**message, "id": self._next_id + 1}, **encoded)
        proc = self._proc
        if proc is None or proc.returncode is not None:
            raise ChildCrashed(self._death_note())
        assert proc.stdin is not None and proc.stdout is not None
        self._next_id += 1
        request_id = self._next_id
        try:
            async with asyncio.timeout(timeout):
                proc.stdin.write(frame)
                await proc.stdin.drain()
                answer = await wire.read_frame_async(proc.stdout)
        except TimeoutError:
            self.kill()
            raise ChildTimeout(f"no answer within {timeout:g}s") from None
        except (asyncio.IncompleteReadError, ConnectionError, BrokenPipeError) as exc:
            self.kill()
            await self._reap(proc)
            raise ChildCrashed(self._death_note()) from exc
        except wire.FrameError as exc:
            self.kill()
            raise ChildCrashed(f"protocol error: {exc}") from exc
        except BaseException:
            # Cancelled mid-request: an answer may still be in flight, so the stream can no
            # longer be trusted. Kill rather than risk reading it as the next answer.
            self.kill()
            raise
        if answer.get("id") != request_id:
            self.kill()
            raise ChildCrashed(f"protocol error: answer {answer.get('id')} to request {request_id}")
        return answer

    async def _reap(self, proc: asyncio.subprocess.Process) -> None:
        try:
            async with asyncio.timeout(2):
                await proc.wait()
            if self._stderr_task:
                async with asyncio.timeout(0.5):
                    await asyncio.shield(self._stderr_task)
        except TimeoutError:
            pass

    def _death_note(self) -> str:
        code = self._proc.returncode if self._proc else None
        note = f"policy engine process {describe_exit(code)}"
        if self._stderr_tail:
            note += f": {self._stderr_tail[-1]}"
        return note

    def kill(self) -> None:
        """SIGKILL by pid. Not Process.kill(): it goes through Popen.send_signal, which first polls
        and can reap a child that just died, so asyncio's child watcher then finds no child and
        reports exit status 255 instead of how it died (a crash would be misreported)."""
        if self._proc is not None and self._proc.returncode is None:
            try:
                os.kill(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    async def stop(self) -> None:
        """Close stdin (the child exits on end of input); kill it if it lingers."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.returncode is None and proc.stdin is not None:
            proc.stdin.close()
            try:
                async with asyncio.timeout(1):
                    await proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)  # by pid, as kill() explains
                await proc.wait()
        if self._stderr_task is not None:
            self._stderr_task.cancel()
            try:
                await self._stderr_task
            except asyncio.CancelledError:
                pass


def run_once(messages: list[dict[str, Any]], timeout: float = 60.0) -> list[dict[str, Any]]:
    """Run a fresh child over a fixed list of requests (load checks, test runs); blocking."""
    frames = b"".join(wire.encode({**message, "id": index}) for index, message in enumerate(messages))
    try:
        done = subprocess.run(
            child_command(), input=frames, capture_output=True, timeout=timeout, env=child_env(), check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ChildTimeout(f"no answer within {timeout:g}s") from exc
    answers = wire.read_frames(done.stdout)
    if len(answers) < len(messages):
        tail = done.stderr.decode(errors="replace").strip().splitlines()
        note = f"policy engine process {describe_exit(done.returncode)}"
        raise ChildCrashed(f"{note}: {tail[-1]}" if tail else note)
    return answers
