"""`shell.run`: start an allow-listed executable with an argv list, never through a shell.

The process gets its own process group; a timeout, a cancel or a leader that exits early takes
the whole group down with it, so no step leaves processes behind.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import ctypes
import errno
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import structlog
from pydantic import Field, field_validator

from bot.actions.base import (
    ActionContext,
    ActionFailed,
    ActionParams,
    ActionRefused,
    action,
    whole_number_as_text,
)
from bot.actions.secrets import MASK_MARGIN, cut_masked
from bot.actions.shell_leader import CANNOT_START
from bot.playbook.data import FilterError, loads_bounded
from bot.playbook.durations import Duration, format_duration

log = structlog.get_logger("bot.actions.shell")

INHERITED_ENV = ("PATH", "HOME", "LANG")
_PR_SET_PDEATHSIG = 1
# The step's group leader (bot/actions/shell_leader.py): it takes the whole group down when the
# worker dies, so that the retry on a new worker does not race a leftover copy of the same step.
LEADER = str(Path(__file__).with_name("shell_leader.py"))


def _die_with(worker: int) -> Callable[[], None]:
    def die_with_worker() -> None:
        """In the leader before exec: a worker that dies (SIGKILL included) sends it SIGTERM (Linux),
        on which it stops the whole group: not only itself, as a signal set on the command would."""
        if sys.platform == "linux":
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != worker:  # it died before the signal was set: nothing would send it
                os._exit(1)

    return die_with_worker


# The worker's variables the leader (a Python) may need to start, kept from the command.
LEADER_NEEDS = ("LD_LIBRARY_PATH",)
REFUSED_ERRNOS = frozenset({errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOEXEC, errno.E2BIG})
MAX_OUTPUT = 256 * 1024  # per stream; both land in workflow history (2 MB payload limit)
STDERR_IN_MESSAGE = 500  # characters of stderr quoted in a failure message
MAX_STDIN = 64 * 1024  # bytes: stdin is a step argument, so it lands in workflow history and the audit trail
JSON_MAX_DEPTH = 32  # `parse: json`: nesting accepted in stdout
STDOUT_IN_MESSAGE = 200  # characters of stdout quoted when it is not JSON
DRAIN_AFTER_EXIT = 1.0  # seconds to collect output once the group is gone
EXIT_POLL = 0.02  # seconds between looks at the leader's exit status


class ShellRunParams(ActionParams):
    argv: list[str] = Field(min_length=1, description="Executable and arguments; never a shell string.")
    cwd: str | None = Field(None, description="Working directory (default: the worker's).")
    env: dict[str, str] = Field(default_factory=dict, description="Added to PATH, HOME and LANG from the worker.")
    timeout: Duration = Field("5m", validate_default=True)  # a string: the JSON Schema default reads "5m"
    output_limit: int = Field(
        64 * 1024,
        ge=0,
        le=MAX_OUTPUT,
        description="Bytes kept per stream: the start of stdout, the end of stderr (where errors are).",
    )
    stdin: str | None = Field(
        None, description=f"Text written to the command's standard input (UTF-8, at most {MAX_STDIN} bytes); "
        "without it the command reads an empty input.",
    )
    parse: Literal["json"] | None = Field(
        None, description="json: stdout must be one JSON document, given to later steps as output.json; "
        "stdout that is not JSON, or was cut at output_limit, fails the step.",
    )

    @field_validator("stdin")
    @classmethod
    def _stdin_size(cls, value: str | None) -> str | None:
        if value is not None and len(value.encode()) > MAX_STDIN:
            raise ValueError(f"stdin: {len(value.encode())} bytes, more than {MAX_STDIN}")
        return value

    @field_validator("argv", mode="before")
    @classmethod
    def _argv_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            raise ValueError("must be a list like [kubectl, rollout, restart, deploy/x], never a shell string")
        return [whole_number_as_text(v) for v in value] if isinstance(value, list) else value

    @field_validator("argv")
    @classmethod
    def _argv_items(cls, value: list[str]) -> list[str]:
        if not value[0]:
            raise ValueError("the executable (first item) must not be empty")
        if any("\0" in arg for arg in value):
            raise ValueError("arguments must not contain NUL")
        return value

    @field_validator("env", mode="before")
    @classmethod
    def _env_values(cls, value: Any) -> Any:
        return {k: whole_number_as_text(v) for k, v in value.items()} if isinstance(value, dict) else value

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not name or "=" in name or "\0" in name or "\0" in text:
                raise ValueError(f"bad environment variable {name!r}")
        return value

    @field_validator("timeout")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("timeout must be positive")
        return value


class _Capture:
    """Keep the first (`head`) or last (`tail`) `limit` bytes of a stream and drain the rest.
    MASK_MARGIN bytes more are held until `text`, which masks them before it cuts them off."""

    def __init__(self, limit: int, keep: str) -> None:
        self.limit, self.keep = limit, keep
        self.data = bytearray()
        self.seen = 0

    @property
    def truncated(self) -> bool:
        return self.seen > self.limit

    async def read(self, stream: asyncio.StreamReader) -> None:
        held = self.limit + MASK_MARGIN
        while chunk := await stream.read(65536):
            self.data += chunk
            self.seen += len(chunk)
            if len(self.data) > held:
                if self.keep == "head":
                    del self.data[held:]
                else:
                    del self.data[: len(self.data) - held]

    def text(self, mask: Callable[[Any], Any]) -> str:
        text = self._decoded()
        return cut_masked(text, self.limit, self.keep, mask) if self.truncated else text

    def _decoded(self) -> str:
        data = bytes(self.data)
        cut = self.seen > len(data)  # (the stream went on past what is held)
        if cut and self.keep == "tail":
            # A cut at the start may split a UTF-8 character: drop its continuation bytes.
            skip = 0
            while skip < min(3, len(data)) and data[skip] & 0xC0 == 0x80:
                skip += 1
            data = data[skip:]
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        return decoder.decode(data, final=not (cut and self.keep == "head"))


class ShellActions:
    """`allow`: bare names (looked up on the worker's PATH) or absolute paths, matched exactly."""

    def __init__(self, allow: list[str], *, kill_grace: float = 2.0, environ: Mapping[str, str] | None = None) -> None:
        self._allow = list(allow)
        self._kill_grace = kill_grace
        self._environ = os.environ if environ is None else environ

    @action("shell.run", ShellRunParams)
    async def run(self, params: ShellRunParams, ctx: ActionContext) -> dict[str, Any]:
        """Run an allow-listed command; a non-zero exit fails the step."""
        name = params.argv[0]
        program = self._resolve(name)
        if params.cwd is not None and not Path(params.cwd).is_dir():
            raise ActionFailed(f"shell.run: working directory {params.cwd!r} does not exist", retryable=False)
        env = {key: self._environ[key] for key in INHERITED_ENV if key in self._environ} | params.env
        # A retried step gets the same key, so a script can tell a retry from a new request.
        env |= {"PLAYBOOK_BOT_IDEMPOTENCY_KEY": ctx.idempotency_key, "PLAYBOOK_BOT_RUN_ID": ctx.run_id,
                "PLAYBOOK_BOT_STEP_ID": ctx.step_id}

        # What the leader needs and the command must not get: dropped before the exec.
        needs = {key: self._environ[key] for key in LEADER_NEEDS if key in self._environ and key not in env}
        drop = ",".join(sorted({*needs, *(var for var in ("LC_CTYPE",) if var not in env)}))
        report_r, report_w = os.pipe()  # the leader says here that the exec failed (bot/actions/shell_leader.py)
        started = time.monotonic()
        spawn = asyncio.ensure_future(
            asyncio.create_subprocess_exec(
                # the resolved path: a PATH in `env` cannot redirect it
                sys.executable, "-I", "-S", LEADER, str(self._kill_grace), str(report_w), drop, program, *params.argv,
                pass_fds=(report_w,),
                stdin=asyncio.subprocess.DEVNULL if params.stdin is None else asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=params.cwd,
                env=env | needs,
                start_new_session=True,  # own session and process group, killed as a whole
                preexec_fn=_die_with(os.getpid()),
            )
        )
        try:
            return await self._run(spawn, params, ctx, name, started, report_r)
        finally:
            for fd in (report_r, report_w):
                with contextlib.suppress(OSError):
                    os.close(fd)

    async def _run(self, spawn: asyncio.Future[asyncio.subprocess.Process], params: ShellRunParams,
                   ctx: ActionContext, name: str, started: float, report: int) -> dict[str, Any]:
        try:
            proc = await asyncio.shield(spawn)
        except asyncio.CancelledError:
            # Cancelled while the process was being started: it may be running already, and
            # nothing else would stop it. Let the start finish, then take the group down.
            with contextlib.suppress(Exception):
                await self._terminate(await spawn)
            raise
        except OSError as exc:
            if isinstance(exc, (FileNotFoundError, PermissionError)) or exc.errno in (errno.ENOEXEC, errno.E2BIG):
                raise ActionRefused(f"shell.run: cannot start {name}: {exc.strerror or exc}") from None
            raise ActionFailed(f"shell.run: cannot start {name}: {exc.strerror or exc}") from None  # EAGAIN, ENOMEM
        assert proc.stdout is not None and proc.stderr is not None

        stdout, stderr = _Capture(params.output_limit, "head"), _Capture(params.output_limit, "tail")
        feeding = [_feed(proc.stdin, params.stdin.encode())] if proc.stdin is not None and params.stdin is not None else []
        readers = asyncio.gather(stdout.read(proc.stdout), stderr.read(proc.stderr), *feeding)
        try:
            try:
                async with asyncio.timeout(params.timeout.total_seconds()):
                    code = await _exited(proc)
            except TimeoutError:
                await self._terminate(proc)
                output = _output(proc.returncode, stdout, stderr, started, ctx.mask)
                log.warning("shell command timed out", executable=name, duration_ms=output["duration_ms"])
                raise ActionFailed(
                    f"shell.run: {name} timed out after {format_duration(params.timeout)} and was killed",
                    output=output,
                ) from None
            self._kill_group(proc.pid, signal.SIGKILL)  # whatever the command left running in its group
            with contextlib.suppress(TimeoutError):  # a process that left the group may hold the pipes
                await asyncio.wait_for(asyncio.shield(readers), DRAIN_AFTER_EXIT)
        except asyncio.CancelledError:
            await self._terminate(proc)
            raise
        finally:
            readers.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await readers

        if code == CANNOT_START and (said := _reported(report)):
            number, _, why = said.partition(" ")
            cause = ActionRefused if number.isdigit() and int(number) in REFUSED_ERRNOS else ActionFailed  # (EAGAIN: again)
            raise cause(f"shell.run: cannot start {name}: {why}")
        output = _output(code, stdout, stderr, started, ctx.mask)
        log.info("shell command finished", executable=name, exit_code=code, duration_ms=output["duration_ms"])
        if code != 0:
            # (masked before its tail is cut: a secret the cut split would no longer be known)
            raise ActionFailed(f"shell.run: {name} {_how_it_ended(code)}: {_tail(ctx.mask(output['stderr']))}",
                               output=output)
        if params.parse == "json":
            output["json"] = _parsed(name, output, params.output_limit)
        return output

    def _resolve(self, name: str) -> str:
        """The path to execute, if `name` is allowed; refuse otherwise, saying how to allow it."""
        if "/" in name and not os.path.isabs(name):
            raise ActionRefused(
                f"shell.run: executable {name!r} is a relative path, which is never allowed "
                "(it would depend on the working directory); use a bare name or an absolute path"
            )
        if name not in self._allow:
            allowed = f"allowed now: {', '.join(self._allow)}" if self._allow else "nothing is allowed now"
            raise ActionRefused(
                f"shell.run: executable {name!r} is not allowed; add it to PLAYBOOK_BOT_SHELL_ALLOW "
                f"(a bare name or an absolute path); {allowed}"
            )
        if os.path.isabs(name):
            if not os.path.isfile(name):
                raise ActionRefused(f"shell.run: executable {name!r} is allowed but does not exist")
            if not os.access(name, os.X_OK):
                raise ActionRefused(f"shell.run: {name!r} is allowed but is not executable")
            return name
        path = self._environ.get("PATH", os.defpath)
        found = shutil.which(name, path=path)
        if found is None:
            raise ActionRefused(f"shell.run: executable {name!r} is allowed but was not found on PATH ({path})")
        return os.path.abspath(found)

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        """SIGTERM the group, give it `kill_grace` seconds, then SIGKILL whatever is left."""
        try:
            if proc.returncode is None:
                self._kill_group(proc.pid, signal.SIGTERM)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(_exited(proc), self._kill_grace)
        finally:
            self._kill_group(proc.pid, signal.SIGKILL)  # even if we are cancelled again meanwhile
        with contextlib.suppress(TimeoutError):  # so the output can say how it ended
            await asyncio.wait_for(_exited(proc), 1.0)

    @staticmethod
    def _kill_group(pgid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)


def _reported(report: int) -> str:
    """What the leader said on its report pipe: why the exec failed, or "" (it started)."""
    os.set_blocking(report, False)
    try:
        return os.read(report, 512).decode(errors="replace").strip()
    except BlockingIOError:
        return ""


async def _exited(proc: asyncio.subprocess.Process) -> int:
    """The leader's exit status once it exits. Not `proc.wait()`: that also waits for the pipes
    to close, which a background child holding stdout can put off for ever."""
    while proc.returncode is None:
        await asyncio.sleep(EXIT_POLL)
    return proc.returncode


async def _feed(pipe: asyncio.StreamWriter, data: bytes) -> None:
    """Write stdin and close it, beside the readers (a command that writes before it reads must not
    block on a full pipe); a command that exits or closes stdin without reading it all is its business."""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        pipe.write(data)
        await pipe.drain()
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        pipe.close()
        await pipe.wait_closed()


def _parsed(name: str, output: dict[str, Any], limit: int) -> Any:
    """`parse: json`: stdout as one JSON value. Not JSON is a permanent failure (running the command
    again would print the same); the message quotes only the start of stdout."""
    if output["stdout_truncated"]:
        raise ActionFailed(
            f"shell.run: parse: json: {name} wrote more than output_limit ({limit} bytes) to stdout, so it was cut "
            f"and is not whole JSON; raise output_limit (at most {MAX_OUTPUT}) or make the command print less",
            retryable=False, output=output,
        )
    try:
        return loads_bounded(output["stdout"], MAX_OUTPUT, JSON_MAX_DEPTH)
    except FilterError as exc:
        text = output["stdout"].strip()
        start = text[:STDOUT_IN_MESSAGE] + ("…" if len(text) > STDOUT_IN_MESSAGE else "")
        shown = f"stdout starts {start!r}" if text else "stdout is empty"
        raise ActionFailed(f"shell.run: parse: json: {name}'s stdout is {exc}; {shown}", retryable=False,
                           output=output) from None


def _output(code: int | None, stdout: _Capture, stderr: _Capture, started: float,
            mask: Callable[[Any], Any]) -> dict[str, Any]:
    return {
        "exit_code": code,
        "stdout": stdout.text(mask),
        "stderr": stderr.text(mask),
        "stdout_truncated": stdout.truncated,
        "stderr_truncated": stderr.truncated,
        "duration_ms": round((time.monotonic() - started) * 1000),
    }


def _how_it_ended(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _tail(text: str) -> str:
    text = text.strip()
    if not text:
        return "(nothing on stderr)"
    return text if len(text) <= STDERR_IN_MESSAGE else "…" + text[-STDERR_IN_MESSAGE:]
