"""The leader of a `shell.run` step's process group: starts the command in its group, and takes the
whole group down if the worker dies.

A parent-death signal reaches only the process it is set on. Set on the command itself, a
wrapper (`sh -c`, a script that runs kubectl) died with a SIGKILLed worker, but what it had
started was re-parented to init and went on, while Temporal retried the step on another worker:
two copies of one remediation at once (red team). This leader gets SIGTERM when the worker dies
(bot.actions.shell sets it), signals the group, gives it GRACE seconds, then SIGKILLs the group,
itself included. Otherwise it waits for the command and ends as the command ended (its exit code,
or the signal that killed it), so the worker reads the command's own status.

    python -I -S shell_leader.py GRACE PROGRAM ARGV0 [ARG...]

Standard library only, run without site (-S): it starts in about 10 ms. An exec that fails is
said on stderr as `shell_leader: cannot start: <errno> <strerror>` with exit status CANNOT_START.
"""

from __future__ import annotations

import os
import signal
import sys
import time

CANNOT_START = 255
POLL = 0.02  # seconds between looks at the command while the group is being stopped


def _stop(command: int, grace: float) -> None:
    """SIGTERM the group, wait up to `grace` for the command, then SIGKILL the group (and us)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        os.killpg(0, signal.SIGTERM)
    except OSError:
        pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(command, os.WNOHANG)
        except ChildProcessError:
            break
        if done:
            break
        time.sleep(POLL)
    os.killpg(0, signal.SIGKILL)


def main(args: list[str]) -> None:
    grace, program, argv = float(args[0]), args[1], args[2:]
    errors_r, errors_w = os.pipe()
    os.set_inheritable(errors_w, False)  # closed by a successful exec: the read below sees EOF
    started: list[int] = []
    # Before the fork, so that no SIGTERM finds us without it (the command resets it).
    signal.signal(signal.SIGTERM, lambda *_: _stop(started[0], grace) if started else os.killpg(0, signal.SIGKILL))
    command = os.fork()
    if command == 0:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.close(errors_r)
        try:
            os.execv(program, argv)
        except OSError as exc:
            os.write(errors_w, f"{exc.errno} {exc.strerror}".encode())
        os._exit(CANNOT_START)
    started.append(command)
    os.close(errors_w)
    failed = b""
    while chunk := os.read(errors_r, 512):
        failed += chunk
    os.close(errors_r)
    if failed:
        os.write(2, b"shell_leader: cannot start: " + failed + b"\n")
    while True:
        try:
            _, status = os.waitpid(command, 0)
            break
        except InterruptedError:
            continue
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):  # (those two have no handler to reset)
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
        os.kill(os.getpid(), sig)
    os._exit(CANNOT_START if failed else os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    main(sys.argv[1:])
