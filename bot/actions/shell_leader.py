"""The leader of a `shell.run` step's process group: starts the command in its group, and takes the
whole group down if the worker dies.

A parent-death signal reaches only the process it is set on. Set on the command itself, a
wrapper (`sh -c`, a script that runs kubectl) died with a SIGKILLed worker, but what it had
started was re-parented to init and went on, while Temporal retried the step on another worker:
two copies of one remediation at once (red team). This leader gets SIGTERM when the worker dies
(bot.actions.shell sets it) and when the worker stops the step (a timeout, a cancel): it passes
SIGTERM to the group and gives the command GRACE seconds. A command that ends in time is reported
as it ended (its exit code, or the signal that ended it), to a worker still there to hear it; the
group's rest is then the worker's to kill. Past GRACE, or with the worker gone, the leader SIGKILLs
the group, itself included. Otherwise it waits for the command and ends as the command ended.

    python -I -S shell_leader.py GRACE REPORT_FD DROP PROGRAM ARGV0 [ARG...]

REPORT_FD: where an exec that fails is said ("<errno> <strerror>", then exit status CANNOT_START),
a pipe only the worker reads (never the command's stderr, which the command writes too). DROP:
comma-separated variables to remove before the exec, which the leader has and the command must
not (LC_CTYPE, which Python's C-locale coercion adds; LD_LIBRARY_PATH, which Python may need).
Standard library only, run without site (-S): it starts in about 10 ms.
"""

from __future__ import annotations

import os
import signal
import sys
import time

CANNOT_START = 255
RESET = (signal.SIGTERM, signal.SIGPIPE, signal.SIGXFSZ)  # as a shell starts a command (Python ignores the last two)
SIGNALS = {signal.SIGTERM, signal.SIGCHLD}  # taken with sigwait, never by a handler: no race with the reaping


def main(args: list[str]) -> None:
    grace, report, drop = float(args[0]), int(args[1]), [name for name in args[2].split(",") if name]
    program, argv = args[3], args[4:]
    os.set_inheritable(report, False)  # the command never holds it
    for name in drop:
        os.environ.pop(name, None)
    worker = os.getppid()
    errors_r, errors_w = os.pipe()  # (not inheritable: a successful exec closes it, so the read sees EOF)
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    command = os.fork()
    if command == 0:
        for sig in RESET:
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, ())  # nothing blocked: not ours, nor the worker thread's
        os.close(errors_r)
        try:
            os.execv(program, argv)
        except OSError as exc:
            os.write(errors_w, f"{exc.errno} {exc.strerror}".encode())
        os._exit(CANNOT_START)
    os.close(errors_w)
    failed = b""
    while chunk := os.read(errors_r, 512):
        failed += chunk
    if failed:
        os.write(report, failed)
    status, stopping = _wait(command, grace)
    if stopping and (status is None or os.getppid() != worker):
        os.killpg(0, signal.SIGKILL)  # not ended in time, or no one left to hear how it ended
    if failed or status is None:
        os._exit(CANNOT_START)
    _end_as(status)


def _wait(command: int, grace: float) -> tuple[int | None, bool]:
    """The command's wait status (None: it outlived the grace after a SIGTERM), and whether a
    SIGTERM came. The first SIGTERM is passed to the group; GRACE seconds on, the wait ends."""
    deadline: float | None = None
    while True:
        done, status = os.waitpid(command, os.WNOHANG)
        if done:
            return status, deadline is not None
        if deadline is None:
            got = signal.sigwaitinfo(SIGNALS)
        else:
            left = deadline - time.monotonic()
            if left <= 0:
                return None, True
            got = signal.sigtimedwait(SIGNALS, left)
        if got is not None and got.si_signo == signal.SIGTERM and deadline is None:
            deadline = time.monotonic() + grace
            try:
                os.killpg(0, signal.SIGTERM)  # (ours, too: blocked, and taken by the next wait)
            except OSError:
                pass


def _end_as(status: int) -> None:
    """Exit as the command did: its code, or killed by its signal (without a core file of our own)."""
    if os.WIFSIGNALED(status):
        import resource

        sig = os.WTERMSIG(status)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if sig not in (signal.SIGKILL, signal.SIGSTOP):  # (those two have no handler to reset)
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
        os.kill(os.getpid(), sig)
    os._exit(os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    main(sys.argv[1:])
