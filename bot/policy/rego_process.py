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
import time
from pathlib import Path
from typing import Any

import structlog

from bot import eventloop
from bot.policy import wire
from bot.streams import lines

log = structlog.get_logger(__name__)

CHILD_MODULE = "bot.policy.embedded_child"
# The directory holding the `bot` package, so the child imports the same code even when the
# worker runs from another directory without the package installed.
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


READ_ONLY = frozenset({"eval", "ping"})  # requests that change nothing in the child: safe to give up on
# How long the event loop polls for an answer instead of sleeping (bot.eventloop): the shipped
# policy answers in about 0.4 ms. A child whose last answer took more than twice as long is waited
# for asleep (twice: an answer is slower when both sides wake from sleep for it, as after a pause).
SPIN = 0.001


class ChildCrashed(Exception):
    """The child exited, was killed, or broke the protocol; its state is gone."""


class ChildTimeout(Exception):
    """The child did not answer in time; it has been killed (its state is unknown)."""


def child_command() -> list[str]:
    return [sys.executable, "-m", CHILD_MODULE]


# What the child's environment keeps of ours: what Python and its locale need. Nothing else: Rego
# reads the environment (`opa.runtime().env`), and a policy or data change must not be able to put
# the envelope key, a Slack token or a playbook secret into a decision's reasons (red team).
CHILD_ENV = ("PATH", "HOME", "LANG", "TMPDIR", "TZ", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "LD_LIBRARY_PATH")


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name in CHILD_ENV or name.startswith("LC_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    return {**env, **(extra or {})}


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


class _ChildProtocol(asyncio.subprocess.SubprocessStreamProtocol):
    """The child's pipes as create_subprocess_exec has them, but for stdout: its bytes go straight
    to RegoProcess, which hands each answer to its request in the callback that read it (a reader
    task in between would cost every answer another pass of a busy event loop)."""

    def __init__(self, owner: RegoProcess, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=2**16, loop=loop)
        self._owner = owner

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        if fd == 1:
            self._owner._received(data if isinstance(data, bytes) else data.encode())
        else:
            super().pipe_data_received(fd, data)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 1:
            self._owner._stdout_closed(exc)
        super().pipe_connection_lost(fd, exc)


class RegoProcess:
    """One child process, its requests pipelined: each is written as soon as it is asked and
    answered by its id, so the child goes from one question to the next without waiting for this
    process's event loop between them (a burst of questions costs the child's time, not a round
    trip each). The child answers in order; a request never kills the child for waiting behind
    others, only when the child makes no progress for `timeout` while this one is pending."""

    def __init__(self) -> None:
        self._proc: asyncio.subprocess.Process | None = None
        self._stderr_task: asyncio.Task[None] | None = None
        self._ended: asyncio.Task[None] | None = None  # settles the requests once stdout has ended
        self._buffer = bytearray()  # stdout's bytes not yet a whole answer
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=8)
        self._next_id = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._answered = 0  # answers read so far: progress, for the hung-child check
        self._broken: Exception | None = None  # why the stream can no longer be used
        self._last_sent = (0, 0.0)  # the latest request's id and when it was written
        self._quick = True  # the answer to the latest request came within SPIN: poll for the next
        self._answered_at = -1.0  # when the latest answer was read (the child polls CHILD_SPIN after it)
        self.crash_reported = False  # its owner has seen it die (and restarts it once)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None and self._broken is None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.subprocess_exec(
            lambda: _ChildProtocol(self, loop),
            *child_command(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=child_env(),
        )
        self._proc = asyncio.subprocess.Process(transport, protocol, loop)  # as create_subprocess_exec makes it
        self._stderr_task = asyncio.create_task(self._drain_stderr(self._proc))
        log.debug("policy.child_started", pid=self._proc.pid)

    async def _drain_stderr(self, proc: asyncio.subprocess.Process) -> None:
        """Log what the child (or rego-cpp, when it aborts) writes to stderr."""
        assert proc.stderr is not None
        async for line in lines(proc.stderr):
            text = line.decode(errors="replace").rstrip()
            if text:
                self._stderr_tail.append(text)
                log.warning("policy.child_stderr", pid=proc.pid, line=text)

    def _received(self, data: bytes) -> None:
        """Bytes of the child's stdout: each whole answer goes to its request as it arrives."""
        self._buffer += data
        try:
            answers = wire.take_frames(self._buffer)
        except wire.FrameError as exc:
            self._give_up(ChildCrashed(f"protocol error: {exc}"), exc)
            return
        for answer in answers:
            self._answered += 1
            request_id = answer.get("id")
            future = self._pending.pop(request_id, None) if isinstance(request_id, int) else None
            if future is not None:
                if not future.done():
                    future.set_result(answer)
            elif not (isinstance(request_id, int) and 0 < request_id <= self._next_id):
                # Not an answer to anything asked (one whose asker gave up was dropped above).
                self._give_up(ChildCrashed(f"protocol error: answer {request_id!r} to no request"))
                return
            self._answered_at = time.monotonic()
            if request_id == self._last_sent[0]:
                self._quick = self._answered_at - self._last_sent[1] < 2 * SPIN

    def _stdout_closed(self, exc: Exception | None) -> None:
        """The child's stdout ended: once it has exited (how it died is the requests' reason),
        every pending request fails."""
        if self._proc is not None and self._ended is None:
            self._ended = asyncio.ensure_future(self._after_end(self._proc, exc))

    async def _after_end(self, proc: asyncio.subprocess.Process, exc: BaseException | None) -> None:
        """The child is gone (or its pipe is): once it has exited, every request fails saying how."""
        self.kill()
        await self._reap(proc)
        self._fail(ChildCrashed(self._death_note(proc)), exc)

    def _give_up(self, error: Exception, cause: BaseException | None = None) -> None:
        """The child can no longer be trusted (it hangs, breaks the protocol, or may hold what
        its owner does not know): every request fails with `error`, and it is killed."""
        self._fail(error, cause)
        self.kill()

    def _fail(self, error: Exception, cause: BaseException | None) -> None:
        """The stream is done: every request pending and every later one fails with `error`
        (the first reason wins: a child killed for hanging reports the timeout, not the kill)."""
        if self._broken is None:
            self._broken = error
            error.__cause__ = cause
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(self._error())

    def _error(self) -> Exception:
        """A fresh copy of why the stream broke, for one caller (a shared instance would gather
        every caller's traceback)."""
        assert self._broken is not None
        return type(self._broken)(*self._broken.args)

    async def request(self, message: dict[str, Any], timeout: float, **encoded: bytes) -> dict[str, Any]:
        """One request and its answer; `encoded` fields are already JSON (see wire.encode).
        ChildTimeout when the child answered nothing for `timeout` while this was pending (it is
        killed: its state is unknown); ChildCrashed when it died or broke the protocol."""
        frame = wire.encode({**message, "id": self._next_id + 1}, **encoded)
        proc = self._proc
        if proc is None or proc.returncode is not None:
            raise ChildCrashed(self._death_note())
        if self._broken is not None:
            raise self._error()
        assert proc.stdin is not None
        self._next_id += 1
        request_id = self._next_id
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._pending[request_id] = future
        watch = loop.call_later(timeout, self._watch, future, timeout, self._answered)
        try:
            proc.stdin.write(frame)  # whole frames: concurrent requests never interleave inside one
            sent = time.monotonic()
            self._last_sent = (request_id, sent)
            if self._quick:  # (a child still polling after its last answer is on a core already)
                eventloop.answer_due(self, SPIN, peer_running=sent - self._answered_at < wire.CHILD_SPIN)
            await proc.stdin.drain()
            return await future
        except (ConnectionError, BrokenPipeError) as exc:  # the child's end of stdin is gone
            await self._after_end(proc, exc)
            raise self._error() from exc
        except asyncio.CancelledError:
            if message.get("op") not in READ_ONLY:
                # The frame went out, so the child may act on it (a load: a policy its owner does
                # not know it holds): what it holds is no longer known, and it is killed.
                self._give_up(ChildCrashed(f"a {message.get('op')!r} request was cancelled halfway"))
            raise
        finally:
            watch.cancel()
            if not future.done():
                future.cancel()  # a watch rescheduled meanwhile sees it done and stops
            # Given up (cancelled) or done: an answer still in flight is dropped by its id.
            self._pending.pop(request_id, None)
            if not self._pending:  # every pending request passes here, however it ended
                eventloop.nothing_due(self)

    def _watch(self, future: asyncio.Future[dict[str, Any]], timeout: float, progress: int) -> None:
        """`timeout` after a request (and after each answer since): a child that answered nothing
        in that time while this request waited hangs; it is killed and every request fails."""
        if future.done():
            return
        if self._answered == progress:
            self._give_up(ChildTimeout(f"no answer within {timeout:g}s"))
            return
        asyncio.get_running_loop().call_later(timeout, self._watch, future, timeout, self._answered)

    async def _reap(self, proc: asyncio.subprocess.Process) -> None:
        try:
            async with asyncio.timeout(2):
                await proc.wait()
            if self._stderr_task:
                async with asyncio.timeout(0.5):
                    await asyncio.shield(self._stderr_task)
        except TimeoutError:
            pass

    def _death_note(self, proc: asyncio.subprocess.Process | None = None) -> str:
        proc = proc or self._proc
        code = proc.returncode if proc else None
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
        if self._ended is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._ended), 1)
        # Answered before it exited, or not at all: what is still pending is denied now, not at its timeout.
        self._fail(ChildCrashed("policy engine process stopped"), None)
        for task in (self._ended, self._stderr_task):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass


def run_once(messages: list[dict[str, Any]], timeout: float = 60.0,
             env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Run a fresh child over a fixed list of requests (load checks, test runs); blocking. `env`:
    variables the child gets besides CHILD_ENV (a test of a policy that reads one)."""
    frames = b"".join(wire.encode({**message, "id": index}) for index, message in enumerate(messages))
    try:
        done = subprocess.run(
            child_command(), input=frames, capture_output=True, timeout=timeout, env=child_env(env), check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ChildTimeout(f"no answer within {timeout:g}s") from exc
    answers = wire.read_frames(done.stdout)
    if len(answers) < len(messages):
        tail = done.stderr.decode(errors="replace").strip().splitlines()
        note = f"policy engine process {describe_exit(done.returncode)}"
        raise ChildCrashed(f"{note}: {tail[-1]}" if tail else note)
    return answers
